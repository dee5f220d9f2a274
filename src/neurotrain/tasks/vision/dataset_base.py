"""Reading image and mask files, and the base class every vision dataset shares.

Pixel conventions (the vision task's sample format):

- ``image``: float32 (C, H, W) in [0, 1]: uint8 / 255, uint16 / 65535, bool as 0/1, float
  files as stored. Channels: a grayscale file is promoted to RGB when 3 channels are asked
  for; an RGB file where 1 channel is asked for is an error unless ``convert_gray`` (then
  ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B). An alpha channel is dropped.
- ``mask``: int64 (H, W) class indices 0..n_classes-1; with 2 classes a 0/255 mask is
  read as 0/1; ``label_map`` maps stored values to classes first. A palette (GIF/PNG "P")
  mask with a gray palette is read as gray values, otherwise as palette indices (VOC style).

Bad files raise :class:`DataError` naming the file; with ``on_bad_file: skip`` the dataset
records ``(path, reason)`` in ``dataset.skipped`` and serves the next good sample instead, so
an epoch never stops on a bad file.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from neurotrain.errors import DataError
from neurotrain.tasks.vision.cache import CachedItems
from neurotrain.tasks.vision.data_config import DatasetSpec, TaskKind

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights
SPLIT_ALIASES = {"train": ("train", "training", "Training"), "val": ("val", "valid", "validation"),
                 "test": ("test", "testing", "Testing")}


# --------------------------------------------------------------------------- reading files


_TIFF_QUIET = threading.local()


class _QuietWhileReading(logging.Filter):
    """Drops tifffile's log lines (damaged tags, short reads) while this module reads a file: the read ends in
    pixels or in one DataError line naming the file, so those lines would only push that line off the screen."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_TIFF_QUIET, "on", False)


logging.getLogger("tifffile").addFilter(_QuietWhileReading())


@contextmanager
def _quiet_tifffile() -> Iterator[None]:
    _TIFF_QUIET.on = True  # per thread: the cache decodes with several threads at once
    try:
        yield
    finally:
        _TIFF_QUIET.on = False


def _tiff_channel_axis(axes: str, shape: tuple[int, ...], path: Path) -> int | None:
    """Where the channels of a TIFF's first series are (tifffile's axes: ``Y``, ``X``, samples ``S`` or ImageJ/OME
    channels ``C``), None for a grayscale image. Any other axis (pages ``Q``/``I``, depth ``Z``, time ``T``) makes a
    stack, which a 2-D folder cannot take: one DataError saying so rather than misreading pages as rows or
    channels."""
    extra = [a for a in axes if a not in "YX"]
    if "Y" not in axes or "X" not in axes or len(extra) > 1 or (extra and extra[0] not in "SC"):
        raise DataError(f"{path}: image shape: expected one 2-D image, axes Y X [channels] (got a TIFF stack of "
                        f"shape {tuple(int(n) for n in shape)}, axes {axes})")
    return axes.index(extra[0]) if extra else None


def _read_array(path: Path) -> np.ndarray:
    """Decode ``path`` into a numpy array (H, W) or (H, W, C); DataError on any failure."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with _quiet_tifffile(), tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                c = _tiff_channel_axis(series.axes, series.shape, path)
                arr = series.asarray()
            # planar RGB (axes SYX) or ImageJ/OME channels (CYX) come channels first: move them last
            return np.asarray(np.moveaxis(arr, 0, -1) if c == 0 else arr)
        from PIL import Image

        with Image.open(path) as im:
            im.load()  # decodes now: a truncated file fails here, not later
            if im.mode == "P":
                im = _palette_to_values(im)
            elif im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16)
            elif im.mode == "CMYK":
                im = im.convert("RGB")
            return np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{path}: file: expected an image file (got no file)") from None
    except DataError:
        raise
    except Exception as exc:  # PIL/tifffile raise many kinds; all mean "cannot decode"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: image data: expected a readable PNG/TIFF/JPEG image (got {first})") from None


def _palette_to_values(im: Any) -> Any:
    """A gray palette (every entry r == g == b) -> its gray values; otherwise keep the indices."""
    pal = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    if len(pal) and np.all(pal[:, 0] == pal[:, 1]) and np.all(pal[:, 1] == pal[:, 2]):
        return im.convert("L")
    return im


def image_header(path: Path) -> tuple[int, int, int]:
    """(H, W, channels) from the file header only (no pixel decoding); DataError if unreadable."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with _quiet_tifffile(), tifffile.TiffFile(path) as tf:
                axes, shape = tf.series[0].axes, tuple(tf.series[0].shape)
            c = _tiff_channel_axis(axes, shape, path)
            return int(shape[axes.index("Y")]), int(shape[axes.index("X")]), 1 if c is None else int(shape[c])
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            return h, w, len(im.getbands())
    except FileNotFoundError:
        raise DataError(f"{path}: file: expected an image file (got no file)") from None
    except DataError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: image header: expected a readable PNG/TIFF/JPEG image (got {first})") from None


def to_unit_float(arr: np.ndarray, path: Path) -> np.ndarray:
    """Integer pixels -> float32 in [0, 1] by the dtype's full range; floats as stored."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return ((arr.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
    raise DataError(f"{path}: pixel type: expected integer or float pixels (got {arr.dtype})")


def fit_channels(img: np.ndarray, channels: int, convert_gray: bool, path: Path) -> np.ndarray:
    """(H, W[, C]) float -> (C, H, W) with ``channels`` channels (see the module docstring)."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise DataError(f"{path}: image shape: expected (H, W) or (H, W, C) (got {tuple(img.shape)})")
    c = img.shape[2]
    if c == 4 and channels != 4:
        img, c = img[:, :, :3], 3  # drop alpha
    if c == 2 and channels != 2:
        img, c = img[:, :, :1], 1  # gray + alpha
    if c != channels:
        if c == 1 and channels == 3:
            img = np.repeat(img, 3, axis=2)
        elif c == 3 and channels == 1:
            if not convert_gray:
                raise DataError(
                    f"{path}: channels: expected a 1-channel (grayscale) image (got 3 channels; "
                    "set convert_gray: true to convert)"
                )
            img = (img * np.asarray(LUMA, dtype=np.float32)).sum(axis=2, keepdims=True)
        else:
            raise DataError(f"{path}: channels: expected {channels} (got {c})")
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


def read_image(path: Path, channels: int = 3, convert_gray: bool = False) -> torch.Tensor:
    """Read a 2D image file -> float32 (C, H, W) in [0, 1]."""
    return torch.from_numpy(stored_to_unit(stored_image(path, channels, convert_gray)))


STORED_INTEGER = (np.uint8, np.uint16)  # pixel types kept as stored (the rest becomes float32 in [0, 1])


def stored_image(path: Path, channels: int = 3, convert_gray: bool = False) -> np.ndarray:
    """Read a 2D image file -> (C, H, W) with ``channels`` channels in the file's own 8/16-bit type (a grey file
    repeated to RGB, alpha dropped), or float32 in [0, 1] for other types and for RGB -> luma conversion.
    :func:`stored_to_unit` of it equals :func:`read_image` exactly; the decoded-image cache keeps this form."""
    arr = _read_array(path)
    if arr.dtype not in STORED_INTEGER:
        return fit_channels(to_unit_float(arr, path), channels, convert_gray, path)
    c = 1 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else -1)
    if c in (3, 4) and channels == 1:  # luma weights make non-integer values: the float path
        return fit_channels(to_unit_float(arr, path), channels, convert_gray, path)
    img = arr[:, :, None] if arr.ndim == 2 else arr
    if img.ndim != 3:
        raise DataError(f"{path}: image shape: expected (H, W) or (H, W, C) (got {tuple(arr.shape)})")
    if c == 4 and channels != 4:
        img, c = img[:, :, :3], 3
    if c == 2 and channels != 2:
        img, c = img[:, :, :1], 1
    if c != channels:
        if not (c == 1 and channels == 3):
            raise DataError(f"{path}: channels: expected {channels} (got {c})")
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def stored_to_unit(arr: np.ndarray) -> np.ndarray:
    """A :func:`stored_image` array -> float32 in [0, 1] (uint8 / 255, uint16 / 65535, float as is)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    return arr.astype(np.float32, copy=False)


def resize_stored(arr: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize a (C, H, W) :func:`stored_image` array like :func:`resize_pair` (bilinear, antialiased); 8/16-bit
    images are rounded back to their type (at most half a grey level from the float result)."""
    if size is None or tuple(arr.shape[-2:]) == tuple(size):
        return arr
    out = resize_pair(torch.from_numpy(stored_to_unit(arr)), None, size)[0].numpy()
    if arr.dtype in STORED_INTEGER:
        top = float(np.iinfo(arr.dtype).max)
        return np.rint(out * top).astype(arr.dtype)
    return out


def read_mask(path: Path, n_classes: int, label_map: dict[int, int] | None = None) -> torch.Tensor:
    """Read a 2D mask file -> int64 (H, W) class indices; DataError for values outside the classes."""
    arr = _read_array(path)
    if arr.ndim == 3:
        # an RGB(A) mask whose channels agree is a gray mask saved as colour
        if not np.all(arr[..., :3] == arr[..., :1]):
            raise DataError(f"{path}: mask: expected a single-channel class-index mask (got {arr.shape[2]} differing channels)")
        arr = arr[..., 0]
    return values_to_classes(np.asarray(arr), n_classes, label_map, path)


def _present_values(arr: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a histogram for 8/16-bit masks (several times faster than np.unique)."""
    if arr.dtype in (np.uint8, np.uint16, np.bool_):
        return np.flatnonzero(np.bincount(arr.ravel().astype(np.intp, copy=False), minlength=2)).astype(np.int64)
    return np.unique(arr).astype(np.int64)


def values_to_classes(arr: np.ndarray, n_classes: int, label_map: dict[int, int] | None, path: Path) -> torch.Tensor:
    """Stored mask values -> int64 class indices (label_map, then 0/255 -> 0/1 for 2 classes)."""
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(arr == np.round(arr)):
            raise DataError(f"{path}: mask values: expected integer class indices (got non-integer floats)")
    values = _present_values(arr)
    out = arr.astype(np.int64)
    if label_map:
        unknown = sorted(set(values.tolist()) - set(label_map))
        if unknown:
            raise DataError(f"{path}: mask values: expected values in {sorted(label_map)} (got {unknown[:10]})")
        lut_keys = np.asarray(sorted(label_map), dtype=np.int64)
        lut_vals = np.asarray([label_map[k] for k in lut_keys.tolist()], dtype=np.int64)
        out = lut_vals[np.searchsorted(lut_keys, out)]
        values = np.unique(out)
    elif n_classes == 2 and set(values.tolist()) <= {0, 255} and 255 in values:
        out = (out == 255).astype(np.int64)
        values = np.asarray([0, 1]) if 0 in values else np.asarray([1])
    bad = values[(values < 0) | (values >= n_classes)]
    if bad.size:
        raise DataError(f"{path}: mask values: expected class indices 0..{n_classes - 1} (got {bad[:10].tolist()})")
    return torch.from_numpy(out)


# --------------------------------------------------------------------------- folders and splits


def require_dir(path: Path, what: str) -> Path:
    if not Path(path).is_dir():
        raise DataError(f"{path}: {what}: expected an existing folder (got {'a file' if Path(path).exists() else 'nothing'})")
    return Path(path)


def list_files(folder: Path, suffix: str | Sequence[str]) -> list[Path]:
    """Sorted files in ``folder`` ending with ``suffix`` (case-insensitive); DataError if none."""
    require_dir(folder, "folder")
    suffixes = (suffix,) if isinstance(suffix, str) else tuple(suffix)
    low = tuple(s.lower() for s in suffixes)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(low) and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: files: expected at least one *{'|*'.join(suffixes)} file (got none)")
    return files


def split_folder(root: Path, split: str) -> Path | None:
    """``root/<split>`` (or an alias: training/valid/validation/testing) when it exists, else None."""
    for name in SPLIT_ALIASES[split]:
        if (root / name).is_dir():
            return root / name
    return None


def split_indices(n: int, fractions: Sequence[float], seed: int, split: str) -> np.ndarray:
    """Indices of ``split`` in a seeded permutation of range(n) cut by ``fractions`` (train, val, test).

    Cut points are rounded so every index lands in exactly one split; a split with a
    non-zero fraction gets at least one item when n >= 3.
    """
    order = np.random.default_rng(seed).permutation(n)
    f = np.asarray(fractions, dtype=np.float64)
    counts = np.floor(f * n).astype(int)
    for k in np.argsort(-(f * n - counts)):  # largest remainders first
        if counts.sum() >= n:
            break
        counts[k] += 1
    if n >= 3:
        for k in range(3):  # a requested split is never empty
            if f[k] > 0 and counts[k] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[k] = 1
    stops = np.cumsum(counts)
    k = ("train", "val", "test").index(split)
    return np.sort(order[stops[k] - counts[k] : stops[k]])


def resize_pair(image: torch.Tensor, mask: torch.Tensor | None, size: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resize (C, H, W) bilinear (antialiased) and (H, W) nearest to ``size``; no-op if already there."""
    if size is None or tuple(image.shape[-2:]) == tuple(size):
        return image, mask
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
    if mask is not None:
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return image, mask


# --------------------------------------------------------------------------- base dataset


class VisionDataset(CachedItems, Dataset, ABC):
    """Base of every vision dataset: sample dicts, bad-file policy, per-sample labels.

    Subclasses implement ``__len__``, ``item_path(i)`` and ``load(i)`` (may raise DataError),
    and may override ``sample_labels()``; those of image folders decode through the cache
    (:class:`cache.CachedItems`: ``open_cache``, ``cached_image``, ``cached_mask``, batched ``__getitems__``).
    """

    kind: TaskKind = "segmentation"

    def __init__(self, spec: DatasetSpec, split: str) -> None:
        self.spec = spec
        self.split = split
        self.skipped: list[tuple[str, str]] = []
        self.class_names: list[str] = []
        self._bad: set[int] = set()
        self._cache = None  # cache.DecodedCache once open_cache() ran
        self.raw = False  # cache.CachedItems.raw

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abstractmethod
    def item_path(self, i: int) -> str:
        """The file sample ``i`` is read from (for messages)."""

    @abstractmethod
    def load(self, i: int) -> dict[str, Any]:
        """Sample ``i`` as the contract's dict (image, target, path)."""

    def skip(self, path: str | Path, reason: str) -> None:
        """Record a skipped file (``on_bad_file: skip``) and log it once."""
        self.skipped.append((str(path), reason))
        log.warning("skipped %s", reason)

    def __getitem__(self, i: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(i, tuple):  # (epoch, index) from samplers.EpochSampler
            epoch, i = i
            if hasattr(self, "set_epoch") and getattr(self, "epoch", None) != epoch:
                self.set_epoch(epoch)  # type: ignore[attr-defined]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        i %= n
        for j in (i + k for k in range(n)):  # a bad file is replaced by the next good one
            j %= n
            if j in self._bad:
                continue
            try:
                sample = self.load(j)
            except DataError as exc:
                if self.spec.on_bad_file == "error":
                    raise
                self._bad.add(j)
                self.skip(self.item_path(j), str(exc))
                continue
            sample["index"] = j
            sample.setdefault("path", self.item_path(j))
            return sample
        raise DataError(f"{self.spec.root}: files: expected at least one readable sample (got {n} bad files)")

    def sample_labels(self) -> torch.Tensor:
        """int64 (N,) one group per sample for the samplers: the class (classification) or
        foreground presence 0/1 (segmentation, reads every mask once)."""
        out = []
        for i in range(len(self)):
            s = self[i]
            out.append(int(s["label"]) if "label" in s else int(bool((s["mask"] > 0).any())))
        return torch.tensor(out, dtype=torch.int64)
