"""Decode-once cache of a 2D dataset: every image (and mask) decoded a single time into one memory-mapped file.

Why: decoding a 512x512 PNG pair costs ~10-30 ms of CPU, so eight loader workers fed only ~28 images/s to an
H200 (docs/results/vision.md). Reading a decoded image back is a slice of a memory-mapped file (the page cache
keeps it in RAM after the first epoch): a copy of 0.8 MB per 512x512 RGB uint8 image, thousands per second
per worker.

Layout of one cache (a folder ``<cache_dir>/<name>-<key>``, published by one atomic rename of a finished temporary
folder, so a crash never leaves a half cache and concurrent builders, e.g. DDP ranks, race harmlessly):

* ``data.bin`` - the arrays back to back, raw bytes: each image as :func:`dataset_base.stored_image` gives it
  ((C, H, W) uint8 / uint16 as stored, float32 in [0, 1] otherwise, after the configured resize), each mask
  as class indices in ``uint8`` (<= 256 classes) or ``int32``;
* ``index.npy`` - int64 (N, 2, 6): per item and array (image, mask) ``offset, nbytes, dtype code, C, H, W``
  (``nbytes`` -1: no array - a bad file, or no mask);
* ``meta.json`` - format version, key, the per-item skip reasons and whether every image is uint8.

The key is a SHA-256 of the format version, the decoding options and, per file, its path, size and
modification time (ns): touching, replacing or adding a file makes a new cache; an old one is never reused
for changed data. Bad files are decoded at build time: ``on_bad_file: error`` stops the build with the file's
one-line error, ``skip`` records the reason and the dataset serves the next good item, as without the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotrain.errors import DataError

CACHE_FORMAT = 1
CACHE_FOLDER = ".neurotrain-cache"  # default place: inside the dataset root (hidden: not a class folder)
DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32), np.dtype(np.int32))
NO_ARRAY = -1
INT64_BYTES = 8  # index and label views of a batch storage (cached_batch)

Decoded = tuple[np.ndarray, np.ndarray | None]


def file_signature(paths: Sequence[Path | None]) -> list[Any]:
    """(path, size, mtime_ns) per file; ``None`` for a missing one (its error surfaces when it is decoded)."""
    out: list[Any] = []
    for p in paths:
        if p is None:
            out.append(None)
            continue
        try:
            st = os.stat(p)
            out.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(p), None, None])
    return out


def cache_key(items: Sequence[Sequence[Path | None]], options: dict[str, Any]) -> str:
    """Hex key of a file list (each item: image path, then mask path or None) and the decoding options."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "options": options}, sort_keys=True, default=str).encode())
    for item in items:
        h.update(json.dumps(file_signature(list(item))).encode())
    return h.hexdigest()[:24]


def default_cache_dir(root: Path | None) -> Path:
    """``<root>/.neurotrain-cache`` when that can be written, else ``$XDG_CACHE_HOME/neurotrain/vision``
    (``~/.cache/neurotrain/vision``)."""
    if root is not None:
        cand = Path(root) / CACHE_FOLDER
        try:
            cand.mkdir(parents=True, exist_ok=True)
            if os.access(cand, os.W_OK):
                return cand
        except OSError:
            pass
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "neurotrain" / "vision"


class DecodedCache:
    """A finished cache folder, opened read-only; the memory map opens lazily in each process (workers included:
    the object pickles as its folder only)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text(encoding="utf-8"))
        self.meta = meta
        self.index = np.load(self.folder / "index.npy")
        self.skipped: dict[int, str] = {int(k): v for k, v in meta["skipped"].items()}
        self.all_uint8: bool = bool(meta["all_uint8"])
        self._data: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_data"] = None  # never ship the map's pages to a worker: it reopens the file
        return state

    def __len__(self) -> int:
        return len(self.index)

    def _array(self, i: int, which: int) -> np.ndarray | None:
        off, nbytes, code, c, h, w = (int(v) for v in self.index[i, which])
        if nbytes == NO_ARRAY:
            return None
        if self._data is None:
            size = (self.folder / "data.bin").stat().st_size
            self._data = np.memmap(self.folder / "data.bin", dtype=np.uint8, mode="r", shape=(size,)) if size else np.zeros(0, np.uint8)
        flat = self._data[off: off + nbytes].view(DTYPES[code])
        return flat.reshape((c, h, w) if which == 0 else (h, w))

    def image(self, i: int) -> np.ndarray | None:
        """(C, H, W) stored image of item ``i`` (a read-only view of the map); None for a bad item."""
        return self._array(i, 0)

    def mask(self, i: int) -> np.ndarray | None:
        """(H, W) class indices of item ``i``; None for a bad item or a dataset without masks."""
        return self._array(i, 1)

    @classmethod
    def build_or_open(cls, cache_dir: Path, name: str, key: str, n: int, decode: Callable[[int], Decoded],
                      on_bad_file: str, workers: int = 1) -> DecodedCache:
        """Open ``<cache_dir>/<name>-<key>``, or build it by calling ``decode(i)`` for i in range(n) (threads:
        image decoders release the GIL) and publish it atomically. ``decode`` raises DataError for a bad file:
        re-raised when ``on_bad_file`` is ``"error"``, recorded otherwise."""
        folder = Path(cache_dir) / f"{name}-{key}"
        if (folder / "meta.json").is_file():
            return cls(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            _write(tmp, key, n, decode, on_bad_file, workers)
            try:
                os.rename(tmp, folder)
            except OSError:  # another process published the same cache first: theirs is identical
                if not (folder / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(folder)


def _write(folder: Path, key: str, n: int, decode: Callable[[int], Decoded], on_bad_file: str, workers: int) -> None:
    index = np.full((n, 2, 6), NO_ARRAY, dtype=np.int64)
    skipped: dict[str, str] = {}
    all_uint8 = True
    offset = 0

    def safe(i: int) -> Decoded | DataError:
        try:
            return decode(i)
        except DataError as exc:
            return exc

    with (folder / "data.bin").open("wb") as fh, ThreadPoolExecutor(max(1, workers)) as pool:
        for i, got in enumerate(pool.map(safe, range(n))):  # in order; decoding runs ahead in the pool
            if isinstance(got, DataError):
                if on_bad_file == "error":
                    raise got
                skipped[str(i)] = str(got)
                continue
            for which, arr in enumerate(got):
                if arr is None:
                    continue
                arr = np.ascontiguousarray(arr)
                if arr.dtype not in DTYPES:
                    raise DataError(f"cache: item {i}: expected one of {[str(d) for d in DTYPES]} (got {arr.dtype})")
                shape = arr.shape if which == 0 else (1, *arr.shape)
                index[i, which] = (offset, arr.nbytes, DTYPES.index(arr.dtype), *shape)
                if which == 0:
                    all_uint8 &= arr.dtype == np.uint8
                fh.write(arr.tobytes())
                offset += arr.nbytes
        fh.flush()
        os.fsync(fh.fileno())
    np.save(folder / "index.npy", index)
    meta = {"format": CACHE_FORMAT, "key": key, "n": n, "skipped": skipped, "all_uint8": all_uint8, "bytes": offset}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def mask_storage(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """Class indices in the smallest cache type: uint8 for <= 256 classes, else int32."""
    return mask.astype(np.uint8 if n_classes <= 256 else np.int32)


def cached_batch(ds: Any, indices: Sequence[Any]) -> dict[str, Any] | None:
    """One pre-collated uint8 batch of a cached dataset (``VisionDataset.__getitems__``): each image and mask is
    copied once, from the map straight into the batch tensor (in a loader worker, a tensor in shared memory, so
    handing it to the main process copies nothing); image, mask, index and label are views of one storage, so
    the batch travels as one shared-memory segment. Indices may be ``(epoch, i)`` pairs; bad items are
    replaced by the next good one, as ``__getitem__`` does. None when the items differ in size (no batch
    tensor can hold them) or carry more than image and mask / label."""
    from torch.utils.data import get_worker_info

    cache = ds._cache
    kind = getattr(ds, "kind", None)
    if cache is None or getattr(ds.spec, "fov", False) or kind not in ("segmentation", "classification"):
        return None
    n = len(ds)
    js = []
    for i in indices:
        if isinstance(i, tuple):
            i = i[1]
        j = int(i) % n
        for _ in range(n):
            if j not in ds._bad:
                break
            j = (j + 1) % n
        else:
            return None  # every item bad: __getitem__ raises the one-line error
        js.append(j)
    shapes = {tuple(int(v) for v in cache.index[j, 0, 3:6]) for j in js}
    if len(shapes) != 1 or not all(int(cache.index[j, 0, 2]) == 0 for j in js):  # one size, uint8 only
        return None
    c, h, w = shapes.pop()
    if kind == "segmentation" and not all(int(cache.index[j, 1, 2]) == 0 for j in js):
        return None  # more than 256 classes: int32 masks take the per-sample path
    shared = get_worker_info() is not None
    # one storage holds the whole batch (image, mask, index, label as views): a worker hands it to the main process
    # as one shared-memory segment, one file descriptor, instead of one per tensor (each a socket round trip in
    # the main process's pin-memory thread, about 0.5 ms on the CPU of this machine)
    B = len(js)
    n_img, n_mask = B * c * h * w, (B * h * w if kind == "segmentation" else 0)
    off_idx = -(-(n_img + n_mask) // INT64_BYTES) * INT64_BYTES  # int64 views start 8-byte aligned
    total = off_idx + (2 if kind == "classification" else 1) * B * INT64_BYTES
    if shared:  # allocated in shared memory from the start, as torch's default_collate does in workers
        base = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(total))
    else:
        base = torch.empty(total, dtype=torch.uint8)
    image = base[:n_img].view(B, c, h, w)
    mask = base[n_img:n_img + n_mask].view(B, h, w) if kind == "segmentation" else None
    index = base[off_idx:off_idx + B * INT64_BYTES].view(torch.int64)
    img_np = image.numpy()
    msk_np = mask.numpy() if mask is not None else None
    for k, j in enumerate(js):  # a loop over images (one memcpy each), not over pixels
        np.copyto(img_np[k], cache.image(j))
        if msk_np is not None:
            np.copyto(msk_np[k], cache.mask(j))
    index.numpy()[:] = js
    out: dict[str, Any] = {"image": image, "path": [ds.item_path(j) for j in js], "index": index}
    if mask is not None:
        out["mask"] = mask
    else:
        label = base[off_idx + B * INT64_BYTES:].view(torch.int64)
        label.numpy()[:] = [int(ds.items[j][1]) for j in js]
        out["label"] = label
    return out


class CachedItems:
    """The cache side of ``dataset_base.VisionDataset`` (a mixin: it uses the dataset's ``spec``, ``split``,
    ``item_path``, ``skip``, ``_bad`` and ``__getitem__``)."""

    spec: Any
    split: str
    _bad: set[int]
    _cache: Any = None  # a DecodedCache once open_cache() ran
    #: True: images come as stored (uint8) and masks as uint8, for the training loaders; the task scales them
    #: on the device (VisionTask.on_batch). Only honoured when the cache holds uint8 images only.
    raw = False
    #: a device_cache.DeviceCache once the task put the training split on the device: batched fetches then
    #: return index batches, gathered on the device by VisionTask.on_batch (device_cache.resolve)
    device_cache: Any = None

    def open_cache(self, files: Sequence[Sequence[Path | None]], decode: Any, options: dict[str, Any]) -> None:
        """Open (or build on first use) the decoded cache of ``files`` (per item: image path, mask path or None);
        ``decode(i)`` gives item i as ``(stored image, stored mask or None)``. Items the build found bad are
        skipped like bad files (``on_bad_file``)."""
        spec = self.spec
        opts = {"class": type(self).__name__, "channels": spec.channels, "convert_gray": spec.convert_gray,
                "n_classes": spec.n_classes, "label_map": spec.label_map, "size": spec.size, **options}
        key = cache_key(files, opts)
        where = Path(spec.cache_dir) if spec.cache_dir is not None else default_cache_dir(spec.root)
        self._cache = DecodedCache.build_or_open(where, f"{type(self).__name__.lower()}-{self.split}", key,
                                                 len(files), decode, spec.on_bad_file, spec.cache_workers)
        for i, reason in sorted(self._cache.skipped.items()):
            if spec.on_bad_file == "error":  # a cache built under "skip" still stops an "error" run
                raise DataError(reason)
            self._bad.add(i)
            self.skip(self.item_path(i), reason)

    @property
    def raw_uint8(self) -> bool:
        """Whether samples carry uint8 images / masks (``raw`` asked for and the cache holds uint8 only)."""
        return bool(self.raw and self._cache is not None and self._cache.all_uint8)

    def cached_image(self, i: int) -> torch.Tensor:
        """Item i's image from the cache: uint8 (C, H, W) when :attr:`raw_uint8`, else float32 in [0, 1]."""
        arr = self._cache.image(i)
        if arr is None:  # never served: bad items are in self._bad
            raise DataError(f"{self.item_path(i)}: cache: expected a decoded image (got a bad file)")
        if self.raw_uint8:
            return torch.from_numpy(np.array(arr))  # a copy: the map is read-only and shared
        from neurotrain.tasks.vision.dataset_base import stored_to_unit  # (dataset_base imports this module)

        return torch.from_numpy(stored_to_unit(np.array(arr)))

    def cached_mask(self, i: int) -> torch.Tensor:
        """Item i's mask from the cache: uint8 (H, W) when :attr:`raw_uint8` (<= 256 classes), else int64."""
        arr = self._cache.mask(i)
        if arr is None:
            raise DataError(f"{self.item_path(i)}: cache: expected a decoded mask (got a bad file)")
        if self.raw_uint8 and arr.dtype == np.uint8:
            return torch.from_numpy(np.array(arr))
        return torch.from_numpy(arr.astype(np.int64))

    def __getitems__(self, indices: Sequence[Any]) -> Any:
        """A whole batch of indices at once (DataLoader's batched fetch): with :attr:`raw_uint8`, one pre-collated
        batch dict straight from the cache (``cache.cached_batch``; the task's loaders collate with
        ``datasets.vision_collate``, which passes it through); with a :attr:`device_cache`, the index batch the
        device gathers from; otherwise the list of samples."""
        if self.device_cache is not None:
            return self.device_cache.index_batch(indices)
        if self.raw_uint8:
            batch = cached_batch(self, indices)
            if batch is not None:
                return batch
        return [self[i] for i in indices]
