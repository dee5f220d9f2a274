"""Named local dataset layouts, as their archives unpack (nothing is ever downloaded).

==========  ==========================================================================
name        files under ``root`` (splits)
==========  ==========================================================================
drive       ``training/images/21_training.tif`` + ``training/1st_manual/21_manual1.gif``
            (+ ``training/mask/21_training_mask.gif``, the field of view, as ``fov`` when
            ``spec.fov``); ``test/images/01_test.tif`` + ``test/1st_manual/01_manual1.gif``.
            train/val: ``training/`` cut by the train:val fractions; test: ``test/``.
chase_db1   ``Image_01L.jpg`` + ``Image_01L_1stHO.png`` (first observer), one folder; split
            by ``split_fractions``.
stare       ``stare-images/im0001.ppm`` + ``labels-ah/im0001.ah.ppm`` (Hoover's labels), or
            both in ``root``; split by ``split_fractions``.
isic        ISIC 2018 task 1: ``ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg`` +
            ``ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png``; the
            ``Validation`` and ``Test`` folders of the same pattern when present; a split
            without its folder is cut from training (and then left out of train).
btcv        ``imagesTr/img0001.nii.gz`` + ``labelsTr/label0001.nii.gz`` (or the raw
            ``Training/img`` + ``Training/label``); 14 classes (background + 13 organs).
brats       ``<case>/<case>_{t1,t1ce,t2,flair}.nii.gz`` + ``<case>/<case>_seg.nii.gz``
            (BraTS 2020/2021); labels 0, 1 (necrosis), 2 (oedema), 4 (enhancing) -> 0..3.
mnist       torchvision's ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.
cifar10/100 torchvision's ``cifar-10-batches-py/`` / ``cifar-100-python/`` pickles.
==========  ==========================================================================

Defaults a layout knows (classes, channels, label map) apply unless the config sets them.
A missing root or file is one DataError naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotrain.errors import DataError
from neurotrain.registry import DATASETS
from neurotrain.tasks.vision.data_config import DatasetSpec, PatchSection
from neurotrain.tasks.vision.dataset_base import (
    VisionDataset,
    fit_channels,
    list_files,
    read_mask,
    require_dir,
    split_indices,
    to_unit_float,
)
from neurotrain.tasks.vision.datasets import SegmentationFolder
from neurotrain.tasks.vision.volumes import NiftiSegmentation

BRATS_LABELS = {0: 0, 1: 1, 2: 2, 4: 3}  # BraTS 2017-2021 label values -> contiguous classes
BTCV_CLASSES = 14  # background + 13 abdominal organs (Landman et al. 2015)


def with_defaults(spec: DatasetSpec, **defaults: Any) -> DatasetSpec:
    """``spec`` with ``defaults`` for the fields the user did not set explicitly."""
    update = {k: v for k, v in defaults.items() if k not in spec.model_fields_set}
    return spec.model_copy(update=update) if update else spec


def _root(spec: DatasetSpec) -> Path:
    if spec.root is None:
        raise DataError(f"{spec.name}: root: expected the folder the dataset was unpacked into (got none)")
    return require_dir(Path(spec.root), f"{spec.name} root")


def _train_val(n: int, spec: DatasetSpec, split: str) -> np.ndarray:
    """Cut a training folder into train/val by the train:val share of ``split_fractions``."""
    ft, fv, _ = spec.split_fractions
    total = ft + fv
    fr = (ft / total, fv / total, 0.0) if total > 0 else (1.0, 0.0, 0.0)
    return split_indices(n, fr, spec.split_seed, split)


def _pairs_by_name(images: list[Path], mask_dir: Path, mask_name: Any) -> list[tuple[Path, Path]]:
    return [(p, mask_dir / mask_name(p)) for p in images]


def _strip(name: str, suffix: str) -> str:
    return name[: len(name) - len(suffix)] if name.lower().endswith(suffix.lower()) else Path(name).stem


# --------------------------------------------------------------------------- retinal vessels


class DriveSegmentation(SegmentationFolder):
    """DRIVE (Staal et al. 2004): 565x584 RGB fundus images, vessel masks, FOV masks."""

    def __init__(self, spec: DatasetSpec, split: str) -> None:
        spec = with_defaults(spec, n_classes=2, channels=3)
        root = _root(spec)
        folder = root / ("test" if split == "test" else "training")
        tag = "test" if split == "test" else "training"
        images = list_files(folder / "images", f"_{tag}.tif")
        pairs = _pairs_by_name(images, folder / "1st_manual", lambda p: _strip(p.name, f"_{tag}.tif") + "_manual1.gif")
        if split != "test":
            pairs = [pairs[k] for k in _train_val(len(pairs), spec, split)]
        self.fov_dir = folder / "mask"
        self.tag = tag
        super().__init__(spec, split, pairs=pairs, presplit=True)

    def load(self, i: int) -> dict[str, Any]:
        sample = super().load(i)
        if self.spec.fov:
            img = self.pairs[i][0]
            fov = read_mask(self.fov_dir / (_strip(img.name, f"_{self.tag}.tif") + f"_{self.tag}_mask.gif"), 2)
            sample["fov"] = fov.bool()
        return sample


@DATASETS.register("drive")
def _drive(spec: DatasetSpec, split: str) -> DriveSegmentation:
    return DriveSegmentation(spec, split)


@DATASETS.register("chase_db1")
def _chase(spec: DatasetSpec, split: str) -> SegmentationFolder:
    """CHASE_DB1 (Fraz et al. 2012): 999x960 RGB, first human observer's vessel masks."""
    spec = with_defaults(spec, n_classes=2, channels=3)
    root = _root(spec)
    images = list_files(root, ".jpg")
    pairs = _pairs_by_name(images, root, lambda p: p.stem + "_1stHO.png")
    return SegmentationFolder(spec, split, pairs=pairs)


@DATASETS.register("stare")
def _stare(spec: DatasetSpec, split: str) -> SegmentationFolder:
    """STARE (Hoover et al. 2000): 700x605 RGB ``.ppm``, Adam Hoover's (``ah``) vessel labels."""
    spec = with_defaults(spec, n_classes=2, channels=3)
    root = _root(spec)
    img_dir = root / "stare-images" if (root / "stare-images").is_dir() else root
    lab_dir = root / "labels-ah" if (root / "labels-ah").is_dir() else root
    images = [p for p in list_files(img_dir, ".ppm") if not p.name.lower().endswith((".ah.ppm", ".vk.ppm"))]
    if not images:
        raise DataError(f"{img_dir}: files: expected at least one im*.ppm image (got none)")
    pairs = _pairs_by_name(images, lab_dir, lambda p: p.stem + ".ah.ppm")
    return SegmentationFolder(spec, split, pairs=pairs)


@DATASETS.register("isic")
def _isic(spec: DatasetSpec, split: str) -> SegmentationFolder:
    """ISIC 2018 task 1 lesion boundary segmentation (Codella et al. 2019): RGB JPEG, 0/255 masks."""
    spec = with_defaults(spec, n_classes=2, channels=3)
    root = _root(spec)
    parts = {"train": "Training", "val": "Validation", "test": "Test"}

    def pairs_of(part: str) -> list[tuple[Path, Path]]:
        images = list_files(root / f"ISIC2018_Task1-2_{part}_Input", ".jpg")
        return _pairs_by_name(images, root / f"ISIC2018_Task1_{part}_GroundTruth", lambda p: p.stem + "_segmentation.png")

    official = {sp: (root / f"ISIC2018_Task1-2_{part}_Input").is_dir() for sp, part in parts.items()}
    if split != "train" and official[split]:
        return SegmentationFolder(spec, split, pairs=pairs_of(parts[split]), presplit=True)
    # splits without their own folder are cut from training; the share of those with one stays in train
    fr = list(spec.split_fractions)
    for k, sp in ((1, "val"), (2, "test")):
        if official[sp]:
            fr[0], fr[k] = fr[0] + fr[k], 0.0
    train = pairs_of(parts["train"])
    keep = split_indices(len(train), fr, spec.split_seed, split)
    return SegmentationFolder(spec, split, pairs=[train[k] for k in keep], presplit=True)


# --------------------------------------------------------------------------- 3D volumes


@DATASETS.register("btcv")
def _btcv(spec: DatasetSpec, split: str, patch: PatchSection | None = None) -> NiftiSegmentation:
    """BTCV abdomen CT (Landman et al. 2015): 14 classes, one CT channel."""
    spec = with_defaults(spec, n_classes=BTCV_CLASSES)
    root = _root(spec)
    for img_dir, lab_dir in (("imagesTr", "labelsTr"), ("Training/img", "Training/label"), ("img", "label")):
        if (root / img_dir).is_dir():
            break
    images = list_files(root / img_dir, ".nii.gz")
    items = [([p], root / lab_dir / p.name.replace("img", "label", 1)) for p in images]
    return NiftiSegmentation(spec, split, patch=patch, items=items)


@DATASETS.register("brats")
def _brats(spec: DatasetSpec, split: str, patch: PatchSection | None = None) -> NiftiSegmentation:
    """BraTS 2020/2021 (Menze et al. 2015; Baid et al. 2021): 4 MRI channels, labels 0/1/2/4 -> 0..3."""
    spec = with_defaults(spec, n_classes=4, label_map=BRATS_LABELS)
    root = _root(spec)
    cases = sorted(d for d in root.iterdir() if d.is_dir() and (d / f"{d.name}_seg.nii.gz").is_file())
    if not cases:
        raise DataError(f"{root}: cases: expected folders <case>/<case>_seg.nii.gz (got none)")
    items = [([c / f"{c.name}_{m}.nii.gz" for m in spec.modalities], c / f"{c.name}_seg.nii.gz") for c in cases]
    return NiftiSegmentation(spec, split, patch=patch, items=items)


# --------------------------------------------------------------------------- torchvision classics


class TorchvisionClassification(VisionDataset):
    """MNIST / CIFAR-10 / CIFAR-100 read by torchvision from a local root (``download=False``).

    train/val are cut from the official training set by the train:val fractions; test is
    the official test set. ``path`` is ``<root>#<name>/<split>/<index>``.
    """

    kind = "classification"

    def __init__(self, spec: DatasetSpec, split: str, which: str) -> None:
        defaults = {"mnist": (1, 10), "cifar10": (3, 10), "cifar100": (3, 100)}[which]
        spec = with_defaults(spec, channels=defaults[0], n_classes=defaults[1])
        super().__init__(spec, split)
        root = _root(spec)
        try:
            tv = _TV[which](str(root), train=split != "test", download=False)
        except (RuntimeError, OSError, ValueError, EOFError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{root}: {which}: expected torchvision's {which} files unpacked here (got {first})") from None
        data = tv.data.numpy() if isinstance(tv.data, torch.Tensor) else np.asarray(tv.data)
        targets = np.asarray(tv.targets, dtype=np.int64)
        keep = _train_val(len(data), spec, split) if split != "test" else np.arange(len(data))
        self.data, self.targets = data[keep], targets[keep]
        self.name = which
        self.class_names = [str(c) for c in getattr(tv, "classes", range(spec.n_classes))]

    def __len__(self) -> int:
        return len(self.data)

    def item_path(self, i: int) -> str:
        return f"{self.spec.root}#{self.name}/{self.split}/{i}"

    def load(self, i: int) -> dict[str, Any]:
        p = Path(self.item_path(i))
        image = torch.from_numpy(fit_channels(to_unit_float(self.data[i], p), self.spec.channels, self.spec.convert_gray, p))
        if self.spec.size is not None:
            image = torch.nn.functional.interpolate(image[None], size=self.spec.size, mode="bilinear", antialias=True)[0]
        return {"image": image, "label": torch.tensor(int(self.targets[i])), "path": str(p)}

    def sample_labels(self) -> torch.Tensor:
        return torch.from_numpy(self.targets.copy())


def _local_cifar(base: Any) -> Any:
    """torchvision's CIFAR class without its MD5 checks, which read the whole archive on each start;
    a damaged pickle still fails while loading and becomes a DataError."""
    return type(
        f"Local{base.__name__}",
        (base,),
        {
            "train_list": [[n, None] for n, _ in base.train_list],
            "test_list": [[n, None] for n, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        },
    )


def _tv_classes() -> dict[str, Any]:
    from torchvision.datasets import CIFAR10, CIFAR100, MNIST

    return {"mnist": MNIST, "cifar10": _local_cifar(CIFAR10), "cifar100": _local_cifar(CIFAR100)}


_TV = _tv_classes()

for _which in ("mnist", "cifar10", "cifar100"):
    DATASETS.register(_which)(lambda spec, split, _w=_which: TorchvisionClassification(spec, split, _w))
