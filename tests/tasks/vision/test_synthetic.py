from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from neurotrain.tasks.vision.data_config import DatasetSpec
from neurotrain.tasks.vision.dataset_base import read_mask
from neurotrain.tasks.vision.datasets import build_dataset
from neurotrain.tasks.vision.synthetic import stardist_nuclei, tiles, write_classification_set, write_segmentation_set

HAS_STARDIST = importlib.util.find_spec("stardist") is not None


def test_segmentation_set_binary_and_multiclass(tmp_path: Path) -> None:
    root = write_segmentation_set(tmp_path / "bin", n=6, size=32, seed=1)
    assert len(list((root / "images").glob("*.png"))) == 6 and len(list((root / "masks").glob("*.png"))) == 6
    ds = build_dataset(DatasetSpec(name="seg_folder", root=root, split_fractions=(1, 0, 0), channels=1), "train")
    fg_mean, bg_mean = [], []
    for i in range(len(ds)):
        s = ds[i]
        m = s["mask"].bool()
        assert m.any()  # every image holds at least one shape
        fg_mean.append(float(s["image"][0][m].mean()))
        bg_mean.append(float(s["image"][0][~m].mean()))
    assert np.mean(fg_mean) - np.mean(bg_mean) > 0.2  # shapes are brighter than the textured background
    multi = write_segmentation_set(tmp_path / "multi", n=12, size=32, seed=2, n_classes=4)
    values = set()
    for p in sorted((multi / "masks").glob("*.png")):
        values |= set(read_mask(p, 4).unique().tolist())
    assert values == {0, 1, 2, 3}


def test_sets_are_reproducible_and_reused(tmp_path: Path) -> None:
    a = write_segmentation_set(tmp_path / "a", n=2, size=16, seed=3)
    b = write_segmentation_set(tmp_path / "b", n=2, size=16, seed=3)
    assert (a / "images" / "shape_0000.png").read_bytes() == (b / "images" / "shape_0000.png").read_bytes()
    stamp = (a / "images" / "shape_0000.png").stat().st_mtime_ns
    write_segmentation_set(a, n=2, size=16, seed=3)  # complete already: not rewritten
    assert (a / "images" / "shape_0000.png").stat().st_mtime_ns == stamp


def test_classification_set_and_registered_dataset(tmp_path: Path) -> None:
    root = write_classification_set(tmp_path / "cls", n_per_class=4, size=16, seed=0)
    assert sorted(d.name for d in root.iterdir() if d.is_dir()) == ["disc", "square", "triangle"]
    spec = DatasetSpec(name="synthetic_shapes", root=tmp_path / "reg", synthetic={"kind": "classification", "n": 10, "size": 16})
    ds = build_dataset(spec, "train")
    assert spec.task_kind == "classification" and ds.class_names == ["disc", "square", "triangle"]
    assert torch.bincount(ds.sample_labels()).tolist() == [8, 8, 8]


def test_tiles_cover_the_image() -> None:
    img = torch.arange(10 * 12).reshape(10, 12)
    t, m, origins = tiles(img, img % 2, tile=4, stride=4)
    assert t.shape[1:] == (4, 4) and m is not None and m.shape == t.shape
    assert origins[:, 0].unique().tolist() == [0, 4, 6] and origins[:, 1].unique().tolist() == [0, 4, 8]
    for k, (y, x) in enumerate(origins.tolist()):
        assert torch.equal(t[k], img[y:y + 4, x:x + 4])
    rgb = torch.rand(3, 10, 12)
    t3, _, _ = tiles(rgb, None, 4, 4)
    assert t3.shape == (9, 3, 4, 4) and torch.equal(t3[4], rgb[:, 4:8, 4:8])


@pytest.mark.skipif(not HAS_STARDIST, reason="stardist is not installed (pip install --no-deps stardist)")
def test_stardist_real_image_tiles_without_leaks() -> None:
    img, inst = stardist_nuclei()
    assert img.shape == (512, 512) and inst.shape == (512, 512)
    assert len(np.unique(inst)) - 1 == 125  # the labelled nuclei
    spec = DatasetSpec(name="stardist_nuclei", tile=128, tile_stride=64, channels=1)
    parts = {sp: build_dataset(spec, sp) for sp in ("train", "val", "test")}
    assert len(parts["test"]) >= 1 and len(parts["val"]) >= 1 and len(parts["train"]) > 4
    s = parts["test"][0]
    assert s["image"].shape == (1, 128, 128) and 0 <= float(s["image"].min()) and float(s["image"].max()) <= 1
    assert torch.equal(s["mask"], (s["instances"] > 0).long())
    held = torch.cat([parts["val"].origins, parts["test"].origins])
    for o in parts["train"].origins:  # no training tile overlaps a held-out tile
        overlap = ((o < held + 128) & (held < o + 128)).all(1)
        assert not overlap.any()
    # nuclei are brighter than background in the normalised image
    assert float(s["image"][0][s["mask"].bool()].mean()) > float(s["image"][0][~s["mask"].bool()].mean()) + 0.1
