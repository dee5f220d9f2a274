"""Vision datasets: image/mask folders, image folders, CSV labels, COCO JSON, NIfTI volumes, mixes.

Every dataset returns the sample dicts described in :mod:`.dataset_base` (``image``,
``mask`` | ``label`` | ``boxes``+``labels``, ``path``, ``index``). ``build_dataset(spec,
split)`` builds any registered dataset by name (``neurotrain.registry.DATASETS``);
``build_training_dataset`` honours a ``HybridSection`` and a ``PatchSection``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotrain.errors import DataError
from neurotrain.registry import DATASETS
from neurotrain.tasks.vision.coco import CocoDetection
from neurotrain.tasks.vision.hybrid import HybridDataset
from neurotrain.tasks.vision.data_config import DatasetSpec, HybridSection, PatchSection
from neurotrain.tasks.vision.dataset_base import (
    IMAGE_SUFFIXES,
    VisionDataset,
    image_header,
    list_files,
    read_image,
    read_mask,
    require_dir,
    resize_pair,
    resize_stored,
    split_folder,
    split_indices,
    stored_image,
)
from neurotrain.tasks.vision.cache import mask_storage
from neurotrain.tasks.vision.volumes import NiftiSegmentation

__all__ = [
    "CocoDetection",
    "CsvClassification",
    "HybridDataset",
    "ImageFolderClassification",
    "NiftiSegmentation",
    "SegmentationFolder",
    "build_dataset",
    "build_training_dataset",
    "detection_collate",
]


class SegmentationFolder(VisionDataset):
    """Pairs of image and mask files.

    Either ``pairs`` is given (named layouts build it), or ``spec.root`` holds
    ``<image_dir>/<stem><image_suffix>`` and ``<mask_dir>/<stem><mask_suffix>`` (in
    ``root/<split>/`` when that folder exists, otherwise split by ``spec.split_fractions``).
    Up front it checks that each image has its mask and that their header sizes agree.
    """

    kind = "segmentation"

    def __init__(self, spec: DatasetSpec, split: str = "train", pairs: Sequence[tuple[Path, Path]] | None = None,
                 presplit: bool = False) -> None:
        super().__init__(spec, split)
        if pairs is None:
            root = require_dir(Path(spec.root or "."), "dataset root")
            base = split_folder(root, split)
            presplit = base is not None
            base = base or root
            img_dir = base / (spec.image_dir or "images")
            msk_dir = base / (spec.mask_dir or "masks")
            isuf, msuf = spec.image_suffix or ".png", spec.mask_suffix or ".png"
            images = list_files(img_dir, isuf)
            pairs = [(p, msk_dir / (p.name[: len(p.name) - len(isuf)] + msuf)) for p in images]
        pairs = list(pairs)
        if not pairs:
            raise DataError(f"{spec.root}: image/mask pairs: expected at least one (got none)")
        if not presplit:
            n = len(pairs)
            pairs = [pairs[k] for k in split_indices(n, spec.split_fractions, spec.split_seed, split)]
            # a folder too small for its fractions (a split gets a pair only from 3 pairs on); a split whose
            # fraction is 0 was asked to be empty
            if not pairs and spec.split_fractions[("train", "val", "test").index(split)] > 0:
                raise DataError(f"{spec.root}: {split} split: expected at least one image/mask pair (got none of {n} "
                                f"with split_fractions {list(spec.split_fractions)}; add pairs or change them)")
        self.pairs = self._validate(pairs)
        self.class_names = [f"class{k}" for k in range(spec.n_classes)]
        if spec.cache:
            self.open_cache(self.pairs, self._decode_stored, {"kind": "segmentation"})

    def _decode_stored(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item i for the cache: the stored image and the mask class indices, both resized to ``spec.size``."""
        img, msk = self.pairs[i]
        image = stored_image(img, self.spec.channels, self.spec.convert_gray)
        mask = read_mask(msk, self.spec.n_classes, self.spec.label_map)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DataError(f"{msk}: mask shape: expected {tuple(image.shape[-2:])} like its image (got {tuple(mask.shape)})")
        _, mask = resize_pair(torch.zeros(1, *mask.shape), mask, self.spec.size)
        return resize_stored(image, self.spec.size), mask_storage(mask.numpy(), self.spec.n_classes)

    def _validate(self, pairs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
        good = []
        for img, msk in pairs:
            try:
                if not msk.is_file():
                    raise DataError(f"{img}: mask: expected {msk} (got no file)")
                hi, wi, _ = image_header(img)
                hm, wm, _ = image_header(msk)
                if (hi, wi) != (hm, wm):
                    raise DataError(f"{msk}: mask shape: expected {hi}x{wi} like its image {img.name} (got {hm}x{wm})")
                if self.spec.validate_files == "full" and not self.spec.cache:  # the cache build decodes all
                    self._load_pair(img, msk)
            except DataError as exc:
                if self.spec.on_bad_file == "error":
                    raise
                self.skip(img, str(exc))
                continue
            good.append((img, msk))
        if not good:
            raise DataError(f"{self.spec.root}: image/mask pairs: expected at least one good pair (got {len(pairs)} bad)")
        return good

    def __len__(self) -> int:
        return len(self.pairs)

    def item_path(self, i: int) -> str:
        return str(self.pairs[i][0])

    def _load_pair(self, img: Path, msk: Path) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_image(img, self.spec.channels, self.spec.convert_gray)
        mask = read_mask(msk, self.spec.n_classes, self.spec.label_map)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DataError(f"{msk}: mask shape: expected {tuple(image.shape[-2:])} like its image (got {tuple(mask.shape)})")
        return image, mask

    def load(self, i: int) -> dict[str, Any]:
        if self._cache is not None:
            return {"image": self.cached_image(i), "mask": self.cached_mask(i), "path": str(self.pairs[i][0])}
        image, mask = self._load_pair(*self.pairs[i])
        image, mask = resize_pair(image, mask, self.spec.size)
        return {"image": image, "mask": mask, "path": str(self.pairs[i][0])}

    def sample_labels(self) -> torch.Tensor:
        """Foreground presence (0/1) per sample, from the masks only."""
        if self._cache is not None:
            return torch.tensor([int(i not in self._bad and bool(self._cache.mask(i).any())) for i in range(len(self))],
                                dtype=torch.int64)
        out = []
        for _, msk in self.pairs:
            try:
                out.append(int(bool((read_mask(msk, self.spec.n_classes, self.spec.label_map) > 0).any())))
            except DataError:
                out.append(0)
        return torch.tensor(out, dtype=torch.int64)


class _ClassificationBase(VisionDataset):
    """A list of (image path, class index) with lazily decoded images."""

    kind = "classification"
    items: list[tuple[Path, int]]

    def _finish(self, items: list[tuple[Path, int]], presplit: bool) -> None:
        if not presplit:  # stratified: every class is split by the same fractions
            labels = np.asarray([c for _, c in items])
            keep: list[int] = []
            for c in np.unique(labels):
                idx = np.flatnonzero(labels == c)
                keep += idx[split_indices(len(idx), self.spec.split_fractions, self.spec.split_seed + int(c), self.split)].tolist()
            items = [items[k] for k in sorted(keep)]
        if not items:
            raise DataError(f"{self.spec.root}: {self.split} split: expected at least one image (got none with "
                            f"split_fractions {list(self.spec.split_fractions)}; add images or change them)")
        good = []
        for p, c in items:
            try:
                if self.spec.validate_files == "full" and not self.spec.cache:  # the cache build decodes all
                    read_image(p, self.spec.channels, self.spec.convert_gray)
                else:
                    image_header(p)
            except DataError as exc:
                if self.spec.on_bad_file == "error":
                    raise
                self.skip(p, str(exc))
                continue
            good.append((p, c))
        if not good:
            raise DataError(f"{self.spec.root}: images: expected at least one readable image (got {len(items)} bad)")
        self.items = good
        if self.spec.cache:
            self.open_cache([(p, None) for p, _ in good], self._decode_stored, {"kind": "classification"})

    def _decode_stored(self, i: int) -> tuple[np.ndarray, None]:
        path = self.items[i][0]
        return resize_stored(stored_image(path, self.spec.channels, self.spec.convert_gray), self.spec.size), None

    def __len__(self) -> int:
        return len(self.items)

    def item_path(self, i: int) -> str:
        return str(self.items[i][0])

    def load(self, i: int) -> dict[str, Any]:
        path, label = self.items[i]
        if self._cache is not None:
            return {"image": self.cached_image(i), "label": torch.tensor(label, dtype=torch.int64), "path": str(path)}
        image, _ = resize_pair(read_image(path, self.spec.channels, self.spec.convert_gray), None, self.spec.size)
        return {"image": image, "label": torch.tensor(label, dtype=torch.int64), "path": str(path)}

    def sample_labels(self) -> torch.Tensor:
        return torch.tensor([c for _, c in self.items], dtype=torch.int64)


class ImageFolderClassification(_ClassificationBase):
    """``root/<class>/*.png|jpg|tif...`` (or ``root/<split>/<class>/...``); classes in sorted order."""

    def __init__(self, spec: DatasetSpec, split: str = "train") -> None:
        super().__init__(spec, split)
        root = require_dir(Path(spec.root or "."), "dataset root")
        base = split_folder(root, split)
        presplit = base is not None
        base = base or root
        found = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
        names = spec.class_names or found
        if not names:
            raise DataError(f"{base}: class folders: expected one sub-folder per class (got none)")
        missing = sorted(set(names) - set(found))
        if missing:
            raise DataError(f"{base}: class folders: expected {missing} (got {found})")
        self.class_names = list(names)
        suffixes = (spec.image_suffix,) if spec.image_suffix else IMAGE_SUFFIXES
        items = [(p, k) for k, name in enumerate(names) for p in list_files(base / name, suffixes)]
        self._finish(items, presplit)


class CsvClassification(_ClassificationBase):
    """A CSV with ``path_column`` (relative to the CSV's folder) and ``label_column`` (class index or name)."""

    def __init__(self, spec: DatasetSpec, split: str = "train") -> None:
        super().__init__(spec, split)
        root = require_dir(Path(spec.root or "."), "dataset root")
        base = split_folder(root, split)
        presplit = base is not None and (base / spec.csv_file).is_file()
        table = (base if presplit else root) / spec.csv_file
        if not table.is_file():
            raise DataError(f"{table}: CSV file: expected a file with columns {spec.path_column},{spec.label_column} (got no file)")
        try:
            with table.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                cols = reader.fieldnames or []
                for col in (spec.path_column, spec.label_column):
                    if col not in cols:
                        raise DataError(f"{table}: columns: expected a column {col!r} (got {cols})")
                # a short row leaves its missing fields None: read as empty, reported by line below
                rows = [((r[spec.path_column] or "").strip(), (r[spec.label_column] or "").strip()) for r in reader]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{table}: CSV: expected UTF-8 text with columns {spec.path_column},{spec.label_column} "
                            f"(got {str(exc).splitlines()[0][:80]})") from None
        if not rows:
            raise DataError(f"{table}: rows: expected at least one (path, label) row (got none)")
        empty = [(line, p, lab) for line, (p, lab) in enumerate(rows, start=2) if not p or not lab]
        for line, p, lab in empty:  # never a class named "" or a path of the CSV's own folder
            field = spec.path_column if not p else spec.label_column
            msg = f"{table}: line {line}: {field}: expected a value (got an empty field)"
            if spec.on_bad_file == "error":
                raise DataError(msg)
            self.skip(table.parent / p if p else table, msg)
        lines = [line for line, (p, lab) in enumerate(rows, start=2) if p and lab]
        rows = [(p, lab) for p, lab in rows if p and lab]
        if not rows:
            raise DataError(f"{table}: rows: expected at least one (path, label) row with both fields (got none)")
        raw = [lab for _, lab in rows]
        if spec.class_names:
            names = list(spec.class_names)
        elif all(lab.lstrip("-").isdigit() for lab in raw):
            names = [str(k) for k in range(spec.n_classes)]
        else:
            names = sorted(set(raw))
        index = {n: k for k, n in enumerate(names)}
        items = []
        for line, (p, lab) in zip(lines, rows):
            k = index.get(lab)
            if k is None and lab.lstrip("-").isdigit() and not spec.class_names:
                k = int(lab)
            if k is None or not 0 <= k < max(len(names), 1):
                raise DataError(f"{table}: line {line}: label: expected one of {names[:10]} (got {lab!r})")
            items.append((table.parent / p, k))
        self.class_names = names
        self._finish(items, presplit)


def set_raw(ds: Any) -> bool:
    """Ask ``ds`` (and a mix's members) for uint8 samples (``VisionDataset.raw``) when every member serves them from
    a uint8-only cache, so one batch never mixes uint8 and float; returns whether it did."""
    parts = list(getattr(ds, "datasets", [ds]))
    if not parts or not all(isinstance(p, VisionDataset) and p._cache is not None and p._cache.all_uint8 for p in parts):
        return False
    for p in parts:
        p.raw = True
    return True


def vision_collate(data: Any) -> Any:
    """The task's collate for images with masks or labels: a batch a cached dataset pre-collated
    (``VisionDataset.__getitems__``) passes through, a list of samples is stacked by torch's default collate."""
    if isinstance(data, dict):
        return data
    return torch.utils.data.default_collate(data)


def detection_collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Detection samples -> one dict of lists (images may differ in size; K differs per image)."""
    keys = batch[0].keys()
    return {k: [s[k] for s in batch] for k in keys}


# --------------------------------------------------------------------------- registry


@DATASETS.register("seg_folder")
def _seg_folder(spec: DatasetSpec, split: str) -> SegmentationFolder:
    return SegmentationFolder(spec, split)


@DATASETS.register("class_folder")
def _class_folder(spec: DatasetSpec, split: str) -> ImageFolderClassification:
    return ImageFolderClassification(spec, split)


@DATASETS.register("class_csv")
def _class_csv(spec: DatasetSpec, split: str) -> CsvClassification:
    return CsvClassification(spec, split)


@DATASETS.register("coco")
def _coco(spec: DatasetSpec, split: str) -> CocoDetection:
    return CocoDetection(spec, split)


@DATASETS.register("nifti_folder")
def _nifti_folder(spec: DatasetSpec, split: str, patch: PatchSection | None = None) -> NiftiSegmentation:
    return NiftiSegmentation(spec, split, patch=patch)


def build_dataset(spec: DatasetSpec, split: str, patch: PatchSection | None = None) -> torch.utils.data.Dataset:
    """Build the registered dataset ``spec.name`` for ``split`` ('train' | 'val' | 'test').

    ``patch`` only matters to 3D datasets (random patches in the train split).
    """
    from neurotrain.tasks.vision import layouts, synthetic  # noqa: F401  (register the named layouts)

    if split not in ("train", "val", "test"):
        raise DataError(f"{spec.root}: split: expected train, val or test (got {split!r})")
    factory = DATASETS.get(spec.name)
    if spec.name in ("nifti_folder", "btcv", "brats"):
        return factory(spec, split, patch=patch)
    return factory(spec, split)


def build_training_dataset(source: DatasetSpec, hybrid: HybridSection, split: str,
                           patch: PatchSection | None = None) -> torch.utils.data.Dataset:
    """``source``, or when ``hybrid.datasets`` is non-empty their mix (ratios from ``hybrid.ratios``
    or each spec's ``weight``); val/test splits of a mix are the plain concatenation."""
    if not hybrid.datasets:
        return build_dataset(source, split, patch)
    parts = [build_dataset(s, split, patch) for s in hybrid.datasets]
    ratios = hybrid.ratios or [s.weight for s in hybrid.datasets]
    if split != "train":
        return HybridDataset(parts, [len(p) for p in parts], None, hybrid.seed)
    return HybridDataset(parts, ratios, hybrid.epoch_length, hybrid.seed)
