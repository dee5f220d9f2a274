from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from neurotrain.errors import DataError
from neurotrain.registry import DATASETS
from neurotrain.tasks.vision.data_config import DatasetSpec, HybridSection, PatchSection
from neurotrain.tasks.vision.datasets import (
    CocoDetection,
    HybridDataset,
    build_dataset,
    build_training_dataset,
    detection_collate,
)

from .conftest import disc_pair, write_image, write_nifti


def seg(root: Path, **kw) -> DatasetSpec:
    return DatasetSpec(name="seg_folder", root=root, **kw)


# --------------------------------------------------------------------------- segmentation folders


def test_registry_knows_every_configured_name() -> None:
    build_dataset  # noqa: B018  (importing datasets registers the names; layouts/synthetic on first build)
    from neurotrain.tasks.vision import layouts, synthetic  # noqa: F401

    expected = {"seg_folder", "class_folder", "class_csv", "coco", "nifti_folder", "drive", "chase_db1", "stare", "isic",
                "btcv", "brats", "mnist", "cifar10", "cifar100", "synthetic_shapes", "stardist_nuclei"}
    assert expected <= set(DATASETS.names())


def test_segmentation_folder_samples_and_splits(seg_folder: Path) -> None:
    parts = {sp: build_dataset(seg(seg_folder), sp) for sp in ("train", "val", "test")}
    paths = [set(p for p, _ in parts[sp].pairs) for sp in parts]
    assert [len(p) for p in paths] == [8, 1, 1]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and len(set.union(*paths)) == 10
    s = parts["train"][0]
    assert s["image"].shape == (3, 8, 8) and s["image"].dtype == torch.float32
    assert s["mask"].dtype == torch.int64 and set(s["mask"].unique().tolist()) <= {0, 1}
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    # the disc is bright where the mask is 1 (0/255 mask read as 0/1, aligned with its image)
    fg = s["mask"].bool()
    if fg.any():
        assert float(s["image"][0][fg].min()) > float(s["image"][0][~fg].max())
    assert s["path"].endswith(".png") and s["index"] == 0
    batch = next(iter(DataLoader(parts["train"], batch_size=4)))
    assert batch["image"].shape == (4, 3, 8, 8) and batch["mask"].shape == (4, 8, 8)


def test_presplit_folders_and_resize(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            img, msk = disc_pair(8, i)
            write_image(tmp_path / split / "images" / f"a{i}.png", img)
            write_image(tmp_path / split / "masks" / f"a{i}.png", msk)
    ds = build_dataset(seg(tmp_path, size=(16, 12)), "val")
    assert len(ds) == 2
    s = ds[1]
    assert s["image"].shape == (3, 16, 12) and s["mask"].shape == (16, 12) and s["mask"].dtype == torch.int64


def test_suffixes_and_dirs_configurable(tmp_path: Path) -> None:
    img, msk = disc_pair(8)
    for i in range(3):
        write_image(tmp_path / "img" / f"c{i}_raw.tif", img[:, :, 0])
        write_image(tmp_path / "lab" / f"c{i}_lab.png", msk)
    spec = seg(tmp_path, image_dir="img", mask_dir="lab", image_suffix="_raw.tif", mask_suffix="_lab.png", channels=1,
               split_fractions=(1.0, 0.0, 0.0))
    ds = build_dataset(spec, "train")
    assert len(ds) == 3 and ds[0]["image"].shape == (1, 8, 8)


def test_sixteen_bit_tiff_and_jpeg(tmp_path: Path) -> None:
    from neurotrain.tasks.vision.dataset_base import read_image

    arr = np.full((4, 5), 65535 // 2, np.uint16)
    t = read_image(write_image(tmp_path / "a.tif", arr), channels=1)
    assert t.shape == (1, 4, 5) and torch.allclose(t, torch.full_like(t, (65535 // 2) / 65535))
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    j = read_image(write_image(tmp_path / "a.jpg", rgb), channels=3)
    assert j.shape == (3, 8, 8) and float(j[0].mean()) > 0.9 and float(j[1].mean()) < 0.1


def test_mask_shape_mismatch_names_the_mask(seg_folder: Path) -> None:
    write_image(seg_folder / "masks" / "im03.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(DataError, match=r"masks/im03\.png: mask shape: expected 8x8"):
        build_dataset(seg(seg_folder, split_fractions=(1, 0, 0)), "train")
    ds = build_dataset(seg(seg_folder, split_fractions=(1, 0, 0), on_bad_file="skip"), "train")
    assert len(ds) == 9 and len(ds.skipped) == 1 and "im03" in ds.skipped[0][0]


def test_mask_values_outside_classes(seg_folder: Path) -> None:
    bad = np.zeros((8, 8), np.uint8)
    bad[0, 0] = 7
    write_image(seg_folder / "masks" / "im00.png", bad)
    msg = r"im00\.png: mask values: expected class indices 0\.\.2 \(got \[7\]\)"
    ds = build_dataset(seg(seg_folder, split_fractions=(1, 0, 0), n_classes=3, cache=False), "train")
    with pytest.raises(DataError, match=msg):
        ds[0]
    with pytest.raises(DataError, match=msg):  # the decoded cache decodes every file when it is built
        build_dataset(seg(seg_folder, split_fractions=(1, 0, 0), n_classes=3), "train")
    with pytest.raises(DataError, match="im00.png"):  # full validation finds it up front
        build_dataset(seg(seg_folder, split_fractions=(1, 0, 0), n_classes=3, validate_files="full"), "train")


def test_truncated_image_error_or_counted_skip(seg_folder: Path) -> None:
    p = seg_folder / "images" / "im04.png"
    p.write_bytes(p.read_bytes()[:60])  # header intact, pixel data cut
    spec = seg(seg_folder, split_fractions=(1, 0, 0), cache=False)
    ds = build_dataset(spec, "train")
    with pytest.raises(DataError, match=r"im04\.png: image data"):
        [ds[i] for i in range(len(ds))]
    with pytest.raises(DataError, match=r"im04\.png: image data"):  # cached: found when the cache is built
        build_dataset(spec.model_copy(update={"cache": True}), "train")
    for cache in (False, True):
        ds = build_dataset(spec.model_copy(update={"on_bad_file": "skip", "cache": cache}), "train")
        seen = [int(i) for b in DataLoader(ds, batch_size=3) for i in b["index"]]  # a whole epoch, no crash
        assert len(seen) == 10 and 4 not in seen
        assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("im04.png")


def test_missing_mask_and_empty_and_missing_folders(seg_folder: Path, tmp_path: Path) -> None:
    (seg_folder / "masks" / "im01.png").unlink()
    with pytest.raises(DataError, match=r"im01\.png: mask: expected .*masks/im01\.png \(got no file\)"):
        build_dataset(seg(seg_folder, split_fractions=(1, 0, 0)), "train")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty/images: files: expected at least one \*\.png file \(got none\)"):
        build_dataset(seg(tmp_path / "empty"), "train")
    with pytest.raises(DataError, match=r"nowhere: dataset root: expected an existing folder"):
        build_dataset(seg(tmp_path / "nowhere"), "train")


def test_channel_rules(tmp_path: Path) -> None:
    from neurotrain.tasks.vision.dataset_base import read_image

    gray = write_image(tmp_path / "g.png", np.full((4, 4), 128, np.uint8))
    rgb = write_image(tmp_path / "c.png", np.full((4, 4, 3), (255, 0, 0), np.uint8))
    assert read_image(gray, channels=3).shape == (3, 4, 4)
    with pytest.raises(DataError, match=r"c\.png: channels: expected a 1-channel"):
        read_image(rgb, channels=1)
    luma = read_image(rgb, channels=1, convert_gray=True)
    assert luma.shape == (1, 4, 4) and torch.allclose(luma, torch.full_like(luma, 0.299))


# --------------------------------------------------------------------------- classification


def test_image_folder_classification_stratified(tmp_path: Path) -> None:
    for name, n in (("cat", 10), ("dog", 20)):
        for i in range(n):
            write_image(tmp_path / name / f"{i}.png", np.full((4, 4), i, np.uint8))
    spec = DatasetSpec(name="class_folder", root=tmp_path, channels=1, split_fractions=(0.6, 0.2, 0.2))
    tr, va = build_dataset(spec, "train"), build_dataset(spec, "val")
    assert tr.class_names == ["cat", "dog"]
    assert torch.bincount(tr.sample_labels()).tolist() == [6, 12] and torch.bincount(va.sample_labels()).tolist() == [2, 4]
    s = tr[0]
    assert s["label"].dtype == torch.int64 and s["image"].shape == (1, 4, 4)


def test_csv_classification_names_and_bad_label(tmp_path: Path) -> None:
    for i in range(6):
        write_image(tmp_path / "img" / f"{i}.png", np.zeros((4, 4), np.uint8))
    rows = [("img/0.png", "b"), ("img/1.png", "a"), ("img/2.png", "b"), ("img/3.png", "a"), ("img/4.png", "b"), ("img/5.png", "a")]
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label"), *rows])
    ds = build_dataset(DatasetSpec(name="class_csv", root=tmp_path, channels=1, split_fractions=(1, 0, 0)), "train")
    assert ds.class_names == ["a", "b"] and ds.sample_labels().tolist() == [1, 0, 1, 0, 1, 0]
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label"), ("img/0.png", "0"), ("img/1.png", "5")])
    with pytest.raises(DataError, match=r"labels\.csv: line 3: label: expected one of \['0', '1'\] \(got '5'\)"):
        build_dataset(DatasetSpec(name="class_csv", root=tmp_path, channels=1, n_classes=2), "train")


# --------------------------------------------------------------------------- COCO detection


def _coco(tmp_path: Path, boxes: list[list[float]], cats: list[int], crowd: list[int] | None = None) -> Path:
    write_image(tmp_path / "images" / "a.png", np.zeros((20, 30, 3), np.uint8))
    anns = [{"id": k + 1, "image_id": 1, "bbox": b, "category_id": c, "iscrowd": (crowd or [0] * len(boxes))[k]}
            for k, (b, c) in enumerate(zip(boxes, cats))]
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}], "annotations": anns,
           "categories": [{"id": 7, "name": "cell"}, {"id": 3, "name": "nucleus"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    return tmp_path


def test_coco_boxes_and_labels(tmp_path: Path) -> None:
    root = _coco(tmp_path, [[2, 3, 10, 5], [0, 0, 30, 20], [1, 1, 2, 2]], [7, 3, 3], crowd=[0, 0, 1])
    ds = CocoDetection(DatasetSpec(name="coco", root=root, split_fractions=(1, 0, 0)), "train")
    s = ds[0]
    assert ds.class_names == ["background", "nucleus", "cell"]
    assert torch.equal(s["boxes"], torch.tensor([[2.0, 3.0, 12.0, 8.0], [0.0, 0.0, 30.0, 20.0]]))
    assert s["labels"].tolist() == [2, 1] and s["boxes"].dtype == torch.float32
    batch = detection_collate([s, s])
    assert isinstance(batch["image"], list) and len(batch["boxes"]) == 2


def test_coco_box_outside_image(tmp_path: Path) -> None:
    root = _coco(tmp_path, [[2, 3, 10, 5], [25, 10, 20, 5]], [7, 7])
    with pytest.raises(DataError, match=r"annotations\.json: annotation 2 \(image a\.png\): bbox: expected inside the 30x20 image"):
        CocoDetection(DatasetSpec(name="coco", root=root, split_fractions=(1, 0, 0)), "train")
    ds = CocoDetection(DatasetSpec(name="coco", root=root, split_fractions=(1, 0, 0), on_bad_file="skip"), "train")
    assert len(ds.skipped) == 1 and len(ds[0]["boxes"]) == 1


# --------------------------------------------------------------------------- hybrid mixing


def test_hybrid_ratios_and_epochs(seg_folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    for i in range(4):
        img, msk = disc_pair(8, 100 + i)
        write_image(other / "images" / f"o{i}.png", img)
        write_image(other / "masks" / f"o{i}.png", msk)
    hy = HybridSection(datasets=[seg(seg_folder, split_fractions=(1, 0, 0)), seg(other, split_fractions=(1, 0, 0))],
                       ratios=[1, 3], epoch_length=40)
    ds = build_training_dataset(DatasetSpec(), hy, "train")
    assert isinstance(ds, HybridDataset) and len(ds) == 40
    src = [ds[i]["source"] for i in range(len(ds))]
    assert src.count(0) == 10 and src.count(1) == 30
    first = ds._idx.copy()
    ds.set_epoch(1)
    assert not np.array_equal(first, ds._idx)
    with pytest.raises(DataError, match="one kind of target"):
        HybridDataset([ds.datasets[0], build_dataset(DatasetSpec(name="synthetic_shapes", root=tmp_path / "c",
                      synthetic={"kind": "classification", "n": 3, "size": 8}), "train")])


# --------------------------------------------------------------------------- NIfTI volumes


def _volume_case(root: Path, name: str, shape=(12, 10, 8), label_shape=None) -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, shape).astype(np.float32)
    lab = np.zeros(label_shape or shape, np.uint8)
    lab[2:5, 3:6, 1:3] = 1
    img[2:5, 3:6, 1:3] += 100
    write_nifti(root / "imagesTr" / f"{name}.nii.gz", img)
    write_nifti(root / "labelsTr" / f"{name}.nii.gz", lab)


def test_nifti_patches_and_whole_volumes(tmp_path: Path) -> None:
    for k in range(3):
        _volume_case(tmp_path, f"c{k}")
    spec = DatasetSpec(name="nifti_folder", root=tmp_path, split_fractions=(1 / 3, 1 / 3, 1 / 3))
    patch = PatchSection(size=(4, 4, 4), samples_per_volume=5, foreground_ratio=1.0)
    tr = build_dataset(spec, "train", patch)
    assert len(tr) == 5
    for i in range(len(tr)):
        s = tr[i]
        assert s["image"].shape == (1, 4, 4, 4) and s["mask"].shape == (4, 4, 4)
        assert s["mask"].any()  # centred on foreground
        assert float(s["image"][0][s["mask"].bool()].mean()) > float(s["image"][0][~s["mask"].bool()].mean()) if (~s["mask"].bool()).any() else True
    va = build_dataset(spec, "val", patch)
    v = va[0]
    # (X, Y, Z) = (12, 10, 8) on disk -> (C, D, H, W) = (1, 8, 10, 12)
    assert v["image"].shape == (1, 8, 10, 12) and v["mask"].shape == (8, 10, 12)
    assert v["mask"][1, 3, 2] == 1 and v["mask"][0, 3, 2] == 0  # z=1, y=3, x=2 is inside the labelled box
    assert 0 <= float(v["image"].min()) and float(v["image"].max()) <= 1


def test_nifti_label_shape_mismatch(tmp_path: Path) -> None:
    _volume_case(tmp_path, "c0", label_shape=(12, 10, 7))
    with pytest.raises(DataError, match=r"labelsTr/c0\.nii\.gz: label shape: expected \(12, 10, 8\)"):
        build_dataset(DatasetSpec(name="nifti_folder", root=tmp_path, split_fractions=(1, 0, 0)), "train")


def test_worker_processes_and_hybrid_epoch_reaches_members(tmp_path: Path) -> None:
    for k in range(2):
        _volume_case(tmp_path / "v", f"c{k}")
    vol = build_dataset(DatasetSpec(name="nifti_folder", root=tmp_path / "v", split_fractions=(1, 0, 0)), "train",
                        PatchSection(size=(4, 4, 4), samples_per_volume=2, foreground_ratio=0.0))
    hy = HybridDataset([vol], epoch_length=4)
    first = vol[0]["image"]
    assert torch.equal(first, vol[0]["image"])  # same epoch, same patch
    hy.set_epoch(1)
    assert vol.epoch == 1 and not torch.equal(first, vol[0]["image"])  # the mix passes the epoch on: new patches
    batches = list(DataLoader(vol, batch_size=2, num_workers=2))  # the dataset pickles into workers
    assert sum(len(b["index"]) for b in batches) == 4


def test_coco_polygons_become_instance_masks(tmp_path: Path) -> None:
    root = _coco(tmp_path, [[2, 3, 10, 5]], [3])
    doc = json.loads((root / "annotations.json").read_text())
    doc["annotations"][0]["segmentation"] = [[2, 3, 12, 3, 12, 8, 2, 8]]  # the box as a polygon
    (root / "annotations.json").write_text(json.dumps(doc))
    s = CocoDetection(DatasetSpec(name="coco", root=root, split_fractions=(1, 0, 0), size=(40, 60)), "train")[0]
    assert s["masks"].shape == (1, 40, 60) and s["masks"].dtype == torch.uint8
    assert torch.allclose(s["boxes"], torch.tensor([[4.0, 6.0, 24.0, 16.0]]))  # scaled by 2 with the image
    ys, xs = s["masks"][0].nonzero().unbind(1)
    assert 5 <= int(ys.min()) <= 7 and 15 <= int(ys.max()) <= 17 and 3 <= int(xs.min()) <= 5 and 23 <= int(xs.max()) <= 25
