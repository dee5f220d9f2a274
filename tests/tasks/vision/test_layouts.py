"""Each named layout loads from a tiny fake tree of its real file names (8x8 images)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from neurotrain.errors import DataError
from neurotrain.tasks.vision.data_config import DatasetSpec, PatchSection
from neurotrain.tasks.vision.datasets import build_dataset

from .conftest import disc_pair, write_image, write_nifti


def spec(name: str, root: Path, **kw) -> DatasetSpec:
    return DatasetSpec(name=name, root=root, **kw)


def test_drive(tmp_path: Path) -> None:
    for part, tag, ids in (("training", "training", range(21, 26)), ("test", "test", range(1, 3))):
        for i in ids:
            img, msk = disc_pair(8, i)
            write_image(tmp_path / part / "images" / f"{i:02d}_{tag}.tif", img)
            write_image(tmp_path / part / "1st_manual" / f"{i:02d}_manual1.gif", msk)
            write_image(tmp_path / part / "mask" / f"{i:02d}_{tag}_mask.gif", np.full((8, 8), 255, np.uint8))
    s = spec("drive", tmp_path, split_fractions=(0.6, 0.2, 0.2), fov=True)
    tr, va, te = (build_dataset(s, sp) for sp in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (4, 1, 2)
    x = te[0]
    assert x["path"].endswith("01_test.tif") and x["image"].shape == (3, 8, 8)
    assert set(x["mask"].unique().tolist()) == {0, 1} and x["fov"].all()
    fg = x["mask"].bool()
    assert float(x["image"][0][fg].min()) > float(x["image"][0][~fg].max())  # the GIF mask lies on the bright disc


def test_chase_db1(tmp_path: Path) -> None:
    for i in range(1, 6):
        for eye in "LR":
            img, msk = disc_pair(8, i)
            write_image(tmp_path / f"Image_{i:02d}{eye}.jpg", img)
            write_image(tmp_path / f"Image_{i:02d}{eye}_1stHO.png", msk)
            write_image(tmp_path / f"Image_{i:02d}{eye}_2ndHO.png", msk)
    ds = build_dataset(spec("chase_db1", tmp_path), "train")
    assert len(ds) == 8 and all(m.name.endswith("_1stHO.png") for _, m in ds.pairs)
    assert ds[0]["mask"].max() == 1


def test_stare(tmp_path: Path) -> None:
    for i in (1, 2, 3, 4, 5):
        img, msk = disc_pair(8, i)
        write_image(tmp_path / "stare-images" / f"im{i:04d}.ppm", img)
        write_image(tmp_path / "labels-ah" / f"im{i:04d}.ah.ppm", np.repeat(msk[:, :, None], 3, 2))
    ds = build_dataset(spec("stare", tmp_path, split_fractions=(1, 0, 0)), "train")
    assert len(ds) == 5 and ds.pairs[0][1].name == "im0001.ah.ppm"
    assert ds[0]["mask"].dtype == torch.int64 and ds[0]["mask"].max() == 1


def test_isic(tmp_path: Path) -> None:
    for part, ids in (("Training", range(0, 4)), ("Validation", range(10, 12))):
        for i in ids:
            img, msk = disc_pair(8, i)
            write_image(tmp_path / f"ISIC2018_Task1-2_{part}_Input" / f"ISIC_{i:07d}.jpg", img)
            write_image(tmp_path / f"ISIC2018_Task1_{part}_GroundTruth" / f"ISIC_{i:07d}_segmentation.png", msk)
    no_test = spec("isic", tmp_path, split_fractions=(0.9, 0.1, 0.0))
    tr, va = build_dataset(no_test, "train"), build_dataset(no_test, "val")
    assert len(tr) == 4 and len(va) == 2  # the official folders, not a cut
    assert va[0]["path"].endswith("ISIC_0000010.jpg")
    s = spec("isic", tmp_path, split_fractions=(0.5, 0.25, 0.25))
    te, tr = build_dataset(s, "test"), build_dataset(s, "train")  # no Test folder: cut from training, without a leak
    assert len(te) == 1 and len(tr) == 3
    assert not {p for p, _ in te.pairs} & {p for p, _ in tr.pairs}


def test_btcv(tmp_path: Path) -> None:
    for i in (1, 2, 3):
        lab = np.zeros((8, 8, 6), np.uint8)
        lab[1:4, 1:4, 1:3] = 13
        write_nifti(tmp_path / "imagesTr" / f"img{i:04d}.nii.gz", np.random.default_rng(i).normal(0, 1, (8, 8, 6)).astype(np.float32))
        write_nifti(tmp_path / "labelsTr" / f"label{i:04d}.nii.gz", lab)
    s = spec("btcv", tmp_path, split_fractions=(1, 0, 0))
    ds = build_dataset(s, "train", PatchSection(size=(4, 4, 4), samples_per_volume=2))
    assert ds.spec.n_classes == 14 and len(ds) == 6
    x = ds[0]
    assert x["image"].shape == (1, 4, 4, 4) and x["mask"].max() <= 13


def test_brats_four_channels_and_label_map(tmp_path: Path) -> None:
    for k in range(2):
        case = f"BraTS2021_{k:05d}"
        seg = np.zeros((8, 8, 8), np.uint8)
        seg[1, 1, 1], seg[2, 2, 2], seg[3, 3, 3] = 1, 2, 4
        for m in ("t1", "t1ce", "t2", "flair"):
            write_nifti(tmp_path / case / f"{case}_{m}.nii.gz", np.random.default_rng(k).normal(0, 1, (8, 8, 8)).astype(np.float32))
        write_nifti(tmp_path / case / f"{case}_seg.nii.gz", seg)
    ds = build_dataset(spec("brats", tmp_path, split_fractions=(0.5, 0.5, 0.0)), "val")
    x = ds[0]
    assert x["image"].shape == (4, 8, 8, 8)
    assert sorted(x["mask"].unique().tolist()) == [0, 1, 2, 3] and x["mask"][3, 3, 3] == 3


def _idx(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = struct.pack(">I", 0x0800 + arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(head + arr.astype(np.uint8).tobytes())


def test_mnist_from_local_root(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    for prefix, n in (("train", 20), ("t10k", 5)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", np.random.default_rng(0).integers(0, 255, (n, 8, 8)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    s = spec("mnist", tmp_path, split_fractions=(0.8, 0.2, 0.0))
    tr, va, te = (build_dataset(s, sp) for sp in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (16, 4, 5)
    x = te[3]
    assert x["image"].shape == (1, 8, 8) and int(x["label"]) == 3 and tr.spec.n_classes == 10


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_cifar_from_local_root(tmp_path: Path, which: str) -> None:
    rng = np.random.default_rng(0)
    if which == "cifar10":
        base, files, key, meta = "cifar-10-batches-py", [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"], "labels", ("batches.meta", "label_names", 10)
    else:
        base, files, key, meta = "cifar-100-python", ["train", "test"], "fine_labels", ("meta", "fine_label_names", 100)
    (tmp_path / base).mkdir()
    for f in files:
        with (tmp_path / base / f).open("wb") as fh:
            pickle.dump({"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), key: [1, 2, 3, 0]}, fh)
    with (tmp_path / base / meta[0]).open("wb") as fh:
        pickle.dump({meta[1]: [f"c{k}" for k in range(meta[2])]}, fh)
    te = build_dataset(spec(which, tmp_path), "test")
    assert len(te) == 4 and te[0]["image"].shape == (3, 32, 32) and int(te[2]["label"]) == 3
    assert len(te.class_names) == meta[2]


@pytest.mark.parametrize("name", ["drive", "chase_db1", "stare", "isic", "btcv", "brats", "mnist", "cifar10", "cifar100"])
def test_missing_root_is_one_clear_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match=r"absent: .*expected an existing folder"):
        build_dataset(spec(name, tmp_path / "absent"), "train")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_empty_torchvision_root_fetches_nothing(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match=rf"{tmp_path}: {name}: expected torchvision's {name} files"):
        build_dataset(spec(name, tmp_path), "train")
    assert list(tmp_path.iterdir()) == []
