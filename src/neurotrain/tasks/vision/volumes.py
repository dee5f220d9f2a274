"""3D NIfTI volumes (nibabel) for segmentation, whole or as random training patches.

Axes: nibabel returns voxel arrays as (X, Y, Z[, C]); samples are channels-first
(C, D, H, W) = (C, Z, Y, X), masks (D, H, W). Intensities are scaled per volume and channel
by a robust min-max: the ``intensity_percentiles`` (default 0.5 % and 99.5 %) of a strided
subsample (every ``patch.stats_stride``-th voxel per axis) map to 0 and 1, then clipped.

Volumes larger than memory: in the train split with ``patch.enabled`` each item reads only
one patch through nibabel's array proxy (``img.dataobj[x0:x1, y0:y1, z0:z1]``), so memory
stays bounded by the patch; only the label volume is read whole, once per volume, to find
foreground voxels for centred patches (1 byte per voxel for uint8 labels). Validation and
test items are whole volumes, to be predicted with the memory-capped sliding window of
``neurotrain.engine.inference``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotrain.errors import DataError
from neurotrain.tasks.vision.data_config import DatasetSpec, PatchSection
from neurotrain.tasks.vision.dataset_base import VisionDataset, list_files, require_dir, split_folder, split_indices, values_to_classes

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _load_nifti(path: Path) -> Any:
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"{path}: file: expected a NIfTI volume (got no file)")
    try:
        return nib.load(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: NIfTI header: expected a readable .nii/.nii.gz volume (got {first})") from None


def _read(proxy_img: Any, path: Path, index: tuple[slice, ...] | None = None) -> np.ndarray:
    try:
        data = proxy_img.dataobj[index] if index is not None else proxy_img.dataobj[...]
        return np.asarray(data)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: voxel data: expected a complete NIfTI volume (got {first})") from None


class NiftiSegmentation(VisionDataset):
    """Image volumes (one file per channel, or one 4D file) with a label volume each.

    ``items``: list of ([image files of one case], label file); when None, ``spec.root``
    holds ``<image_dir>/*<image_suffix>`` (default ``imagesTr/*.nii.gz``) and
    ``<mask_dir>/<same name>`` (default ``labelsTr``).
    """

    kind = "segmentation"

    def __init__(self, spec: DatasetSpec, split: str = "train", patch: PatchSection | None = None,
                 items: Sequence[tuple[Sequence[Path], Path]] | None = None, presplit: bool = False) -> None:
        super().__init__(spec, split)
        self.patch = patch or PatchSection()
        if items is None:
            root = require_dir(Path(spec.root or "."), "dataset root")
            base = split_folder(root, split)
            presplit = base is not None
            base = base or root
            isuf = spec.image_suffix or ".nii.gz"
            msuf = spec.mask_suffix or isuf
            images = list_files(base / (spec.image_dir or "imagesTr"), isuf)
            items = [([p], base / (spec.mask_dir or "labelsTr") / (p.name[: len(p.name) - len(isuf)] + msuf)) for p in images]
        items = [(list(ims), lab) for ims, lab in items]
        if not presplit:
            items = [items[k] for k in split_indices(len(items), spec.split_fractions, spec.split_seed, split)]
        self.items = self._validate(items)
        self.use_patches = split == "train" and self.patch.enabled
        self.epoch = 0
        self._stats: dict[int, np.ndarray] = {}
        self._fg: dict[int, np.ndarray] = {}
        self.class_names = [f"class{k}" for k in range(spec.n_classes)]

    def _validate(self, items: list[tuple[list[Path], Path]]) -> list[tuple[list[Path], Path]]:
        good = []
        for ims, lab in items:
            try:
                lab_shape = tuple(_load_nifti(lab).shape[:3])
                for p in ims:
                    shp = tuple(_load_nifti(p).shape)
                    if shp[:3] != lab_shape:
                        raise DataError(f"{lab}: label shape: expected {shp[:3]} like its image {p.name} (got {lab_shape})")
                    if len(shp) > 4 or (len(shp) == 4 and len(ims) > 1):
                        raise DataError(f"{p}: shape: expected a 3D volume per channel file (got {shp})")
            except DataError as exc:
                if self.spec.on_bad_file == "error":
                    raise
                self.skip(ims[0], str(exc))
                continue
            good.append((ims, lab))
        if not good:
            raise DataError(f"{self.spec.root}: volumes: expected at least one good image/label pair (got {len(items)} bad)")
        return good

    # ------------------------------------------------------------------ sizes and indices

    def __len__(self) -> int:
        return len(self.items) * (self.patch.samples_per_volume if self.use_patches else 1)

    def volume_of(self, i: int) -> int:
        return i // self.patch.samples_per_volume if self.use_patches else i

    def item_path(self, i: int) -> str:
        return str(self.items[self.volume_of(i)][0][0])

    def set_epoch(self, epoch: int) -> None:
        """Draw new patch positions (they depend on seed, epoch and index)."""
        self.epoch = epoch

    # ------------------------------------------------------------------ reading

    def _channels(self, v: int, index: tuple[slice, ...] | None) -> np.ndarray:
        """(C, X, Y, Z) voxels of volume v, all or the ``index`` box (x, y, z slices)."""
        out = []
        for p in self.items[v][0]:
            img = _load_nifti(p)
            arr = _read(img, p, index + (slice(None),) * (len(img.shape) - 3) if index is not None else None)
            out.extend(np.moveaxis(arr, -1, 0) if arr.ndim == 4 else arr[None])
        return np.stack(out).astype(np.float32)

    def _intensity_range(self, v: int) -> np.ndarray:
        """(C, 2) robust low/high per channel from a strided subsample (cached)."""
        if v not in self._stats:
            s = self.patch.stats_stride
            sub = self._channels(v, (slice(None, None, s),) * 3)
            lo, hi = self.spec.intensity_percentiles
            q = np.percentile(sub.reshape(sub.shape[0], -1), [lo, hi], axis=1).T
            q[:, 1] = np.maximum(q[:, 1], q[:, 0] + 1e-6)
            self._stats[v] = q.astype(np.float32)
        return self._stats[v]

    def _normalise(self, v: int, arr: np.ndarray) -> np.ndarray:
        q = self._intensity_range(v)
        lo, hi = q[:, 0, None, None, None], q[:, 1, None, None, None]
        return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)

    def _labels(self, v: int, index: tuple[slice, ...] | None) -> torch.Tensor:
        lab = self.items[v][1]
        arr = _read(_load_nifti(lab), lab, index)
        return values_to_classes(np.rint(arr) if arr.dtype.kind == "f" else arr, self.spec.n_classes, self.spec.label_map, lab)

    def _foreground(self, v: int) -> np.ndarray:
        """(N, 3) x, y, z of up to ``max_foreground_points`` foreground voxels (cached)."""
        if v not in self._fg:
            lab = self.items[v][1]
            pts = np.argwhere(_read(_load_nifti(lab), lab) > 0)
            if len(pts) > self.patch.max_foreground_points:
                keep = np.random.default_rng(self.patch.seed).choice(len(pts), self.patch.max_foreground_points, replace=False)
                pts = pts[keep]
            self._fg[v] = pts
        return self._fg[v]

    def load(self, i: int) -> dict[str, Any]:
        v = self.volume_of(i)
        ims, lab = self.items[v]
        shape = tuple(_load_nifti(lab).shape[:3])  # (X, Y, Z)
        if not self.use_patches:
            image = self._normalise(v, self._channels(v, None))
            mask = self._labels(v, None)
        else:
            rng = np.random.default_rng([self.patch.seed, self.epoch, i])
            size_xyz = np.asarray(self.patch.size[::-1])  # (D, H, W) -> (X, Y, Z)
            fg = self._foreground(v) if self.patch.foreground_ratio > 0 else np.zeros((0, 3), int)
            if len(fg) and rng.random() < self.patch.foreground_ratio:
                centre = fg[rng.integers(len(fg))]
                start = centre - size_xyz // 2
            else:
                start = np.asarray([rng.integers(0, max(n - s, 0) + 1) for n, s in zip(shape, size_xyz, strict=True)])
            start = np.clip(start, 0, np.maximum(np.asarray(shape) - size_xyz, 0))
            box = tuple(slice(int(a), int(a + s)) for a, s in zip(start, size_xyz, strict=True))
            image = self._normalise(v, self._channels(v, box))
            mask = self._labels(v, box)
            pad = [(0, int(max(s - n, 0))) for n, s in zip(mask.shape, size_xyz, strict=True)]
            if any(p[1] for p in pad):  # volume smaller than the patch: zero-pad at the far end
                image = np.pad(image, [(0, 0), *pad])
                mask = torch.from_numpy(np.pad(mask.numpy(), pad))
        # (C, X, Y, Z) -> (C, Z, Y, X) = (C, D, H, W)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 2, 1)))
        mask_t = mask.permute(2, 1, 0).contiguous()
        return {"image": image_t, "mask": mask_t, "path": str(ims[0])}

    def sample_labels(self) -> torch.Tensor:
        fg = [int(bool(len(self._foreground(v)))) for v in range(len(self.items))]
        return torch.tensor([fg[self.volume_of(i)] for i in range(len(self))], dtype=torch.int64)
