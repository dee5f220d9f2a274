"""A device-resident training cache: the decoded training split lives on the training device and every batch is
gathered there by index, so data loading costs the host almost nothing per step.

Why: on one H200 (``bench/vision.py --pipeline-only``, 512x512, batch 16, docs/results/vision.md) the U-Net loop
fed by a batch already on the GPU trained 1,140 images/s (GPU 86.5 % busy) with the fused augmentation, but fed
by the worker DataLoader over the decoded cache only 825 images/s (68 % busy): the host waited on the loader just
0.64 ms per step, yet its step grew from 12.3 to 16.3 ms, as the pin-memory thread and the batch hand-over
between processes compete with the Python thread that issues the GPU's kernels. MONAI's documented remedy
(Project-MONAI/tutorials, ``acceleration/fast_model_training_guide.md``: "Cache IO and transforms data to GPU",
CacheDataset up to ``ToDeviced``, and "ThreadDataLoader vs. DataLoader": with the data cached and light
transforms, the worker processes only add IPC time and lower the GPU utilisation), as FFCV and DALI do too:
upload once, no worker processes, no pinned copies of images, no inter-process batch per step.

Under DDP every rank holds the whole training split (MONAI's BraTS example caches one partition per GPU instead;
that would tie each rank to its partition, while the sampler here deals the indices anew every epoch).

How (the sampling is untouched; only where the bytes come from changes):

* the engine's training DataLoader keeps the task's sampler (class-balanced, weighted, priority; shuffling;
  Lightning's ``DistributedSampler`` under DDP, so each rank draws its own share), but runs with no workers
  (pinning only the small index tensor, on CUDA) and its dataset's batched fetch (``CachedItems.__getitems__``)
  returns an *index batch*: one int64 (2, B) tensor (row 0: the item each index serves, a bad file replaced by
  the next good one exactly as ``__getitem__`` and ``cache.cached_batch`` do; row 1: that item's slot in the
  resident tensors), the paths, and this cache;
* Lightning moves that small tensor to the device (non-blocking: no wait for the GPU queue); the task's
  ``on_batch`` hook (:func:`resolve`) gathers image, mask or label with one ``index_select`` each from the
  resident uint8 tensors, uploaded on first use to that device. The result equals, bit for bit, the batch the
  worker loader delivers (uint8 image and mask, int64 index and label, paths), so the float scaling and the fused
  augmentation (``augment2d.py``) that follow are the same code on the same bytes.

Eligible training sets: 2D segmentation (image + mask) or classification (image + label) served from the decoded
uint8 cache (``cache.py``), every good image of one size after the configured resize (a stack needs one shape).
Detection (a varying number of boxes per image), 3D patches, hybrid mixes and sets without the cache stay on the
worker loader; :func:`attach` logs one line saying which path and why.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from neurotrain.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_KEY = "_device_cache"  # the DeviceCache of an index batch (a plain object: Lightning moves tensors only)
ROWS_KEY = "_device_rows"  # int64 (2, B): row 0 the served item, row 1 its slot in the resident tensors
UPLOAD_CHUNK_BYTES = 256 * 2**20  # host staging per copy while uploading: bounds the extra host memory to 256 MiB
GB = 1e9
UINT8 = 0  # cache.DTYPES code of uint8


class DeviceCache:
    """The good items of a decoded-cache dataset as resident tensors, per device (uploaded on first use).

    Not a dataclass on purpose: Lightning's batch transfer recurses into dataclasses, and this object rides in
    the index batch."""

    def __init__(self, ds: Any, kind: str, good: np.ndarray, shape: tuple[int, int, int]) -> None:
        self.ds, self.kind, self.shape = ds, kind, shape
        n = len(ds)
        self.good = good
        # item i -> the next good item at or after i, cyclically (the bad-file rule of VisionDataset.__getitem__)
        pos = np.searchsorted(good, np.arange(n))
        self.serve = good[pos % len(good)].astype(np.int64)
        self.slot_of = np.full(n, -1, dtype=np.int64)
        self.slot_of[good] = np.arange(len(good))
        c, h, w = shape
        self.item_bytes = c * h * w + (h * w if kind == "segmentation" else 0) + (
            np.dtype(np.int64).itemsize if kind == "classification" else 0)
        self._resident: dict[str, dict[str, torch.Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_resident"] = {}  # a copy in another process uploads its own
        return state

    @property
    def nbytes(self) -> int:
        """Bytes the resident tensors take on one device."""
        return int(self.item_bytes * len(self.good))

    def __len__(self) -> int:
        return len(self.good)

    # ------------------------------------------------------------------ host side, per step
    def index_batch(self, indices: Any) -> dict[str, Any]:
        """The index batch of the sampler's ``indices`` (ints, or ``(epoch, i)`` pairs): see the module docstring."""
        idx = np.fromiter((i[1] if isinstance(i, tuple) else i for i in indices), dtype=np.int64, count=len(indices))
        js = self.serve[idx % len(self.serve)]
        rows = torch.from_numpy(np.stack([js, self.slot_of[js]]))
        return {CACHE_KEY: self, ROWS_KEY: rows, "path": [self.ds.item_path(int(j)) for j in js]}

    # ------------------------------------------------------------------ device side
    def tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The resident ``image`` (G, C, H, W) uint8, ``mask`` (G, H, W) uint8 or ``label`` (G,) int64 on
        ``device``; uploaded the first time, in chunks of at most ``UPLOAD_CHUNK_BYTES``."""
        key = str(device)
        got = self._resident.get(key)
        if got is None:
            got = self._resident[key] = self._upload(device)
        return got

    def _upload(self, device: torch.device) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        cache = self.ds._cache
        G = len(self.good)
        c, h, w = self.shape
        out = {"image": torch.empty((G, c, h, w), dtype=torch.uint8, device=device)}
        if self.kind == "segmentation":
            out["mask"] = torch.empty((G, h, w), dtype=torch.uint8, device=device)
        else:
            labels = np.asarray([int(self.ds.items[int(j)][1]) for j in self.good], dtype=np.int64)
            out["label"] = torch.from_numpy(labels).to(device)
        step = max(1, UPLOAD_CHUNK_BYTES // max(1, self.item_bytes))
        for k0 in range(0, G, step):  # a loop over chunks of images (one memcpy each), once per run
            js = self.good[k0:k0 + step]
            out["image"][k0:k0 + len(js)].copy_(torch.from_numpy(np.stack([cache.image(int(j)) for j in js])))
            if "mask" in out:
                out["mask"][k0:k0 + len(js)].copy_(torch.from_numpy(np.stack([cache.mask(int(j)) for j in js])))
        log.info("vision: device cache: %d training images (%.3f GB) uploaded to %s in %.1f s", G, self.nbytes / GB,
                 device, time.perf_counter() - t0)
        return out


def is_index_batch(batch: Any) -> bool:
    """Whether ``batch`` is an index batch of a :class:`DeviceCache` (still to be gathered)."""
    return isinstance(batch, dict) and CACHE_KEY in batch


def resolve(batch: Any) -> Any:
    """An index batch -> the batch itself, gathered on the device its index tensor sits on (the training device,
    after Lightning's transfer): ``image`` (B, C, H, W) uint8, ``mask`` (B, H, W) uint8 or ``label`` (B,) int64,
    ``index`` (B,) int64, ``path``. Any other batch passes unchanged."""
    if not is_index_batch(batch):
        return batch
    dc: DeviceCache = batch[CACHE_KEY]
    rows = batch[ROWS_KEY]
    res = dc.tensors(rows.device)
    slot = rows[1]
    out: dict[str, Any] = {k: v.index_select(0, slot) for k, v in res.items()}
    out["index"] = rows[0]
    out["path"] = batch["path"]
    return out


def resolve_on_host(batch: Any) -> Any:
    """An index batch -> the worker loader's batch, read from the memory-mapped cache (``cache.cached_batch``)
    without uploading the whole split (for batches used on the CPU, e.g. int8 calibration); others unchanged."""
    if not is_index_batch(batch):
        return batch
    from neurotrain.tasks.vision.cache import cached_batch

    dc: DeviceCache = batch[CACHE_KEY]
    return cached_batch(dc.ds, batch[ROWS_KEY][0].tolist())


# ---------------------------------------------------------------------- the decision


def build(ds: Any, kind: str) -> tuple[DeviceCache | None, str]:
    """A :class:`DeviceCache` over ``ds`` for a ``kind`` task, or None and the reason it cannot be one."""
    if kind == "detection":
        return None, "detection: a varying number of boxes per image (they stay on the worker loader)"
    cache = getattr(ds, "_cache", None)
    if cache is None or not hasattr(ds, "_bad"):
        return None, ("the training set is not served from the decoded cache (data_source.cache false, "
                      "a hybrid mix, 3D volumes or a torchvision set)")
    if getattr(ds.spec, "fov", False):
        return None, "data_source.fov: field-of-view masks ride along with each sample"
    if getattr(ds, "kind", None) != kind:
        return None, f"the training set yields {getattr(ds, 'kind', None)} samples, the task trains {kind}"
    if not getattr(ds, "raw_uint8", False):
        return None, "the cache holds images other than 8-bit (or loader.raw_uint8 is false)"
    n = len(ds)
    bad = np.zeros(n, dtype=bool)
    bad[sorted(ds._bad)] = True
    good = np.flatnonzero(~bad)
    if len(good) == 0:
        return None, "every training file is bad"
    index = cache.index[good]  # (G, 2, 6): offset, nbytes, dtype code, C, H, W per image and mask
    shapes = np.unique(index[:, 0, 3:6], axis=0)
    if len(shapes) != 1:
        return None, (f"training images differ in size after the configured resize ({len(shapes)} sizes, e.g. "
                      f"{[tuple(int(v) for v in s) for s in shapes[:3]]}; set data_source.size to stack them)")
    if kind == "segmentation" and not (index[:, 1, 2] == UINT8).all():
        return None, "masks of more than 256 classes (int32) in the cache"
    return DeviceCache(ds, kind, good, tuple(int(v) for v in shapes[0])), ""


def budget_bytes(section: Any) -> float:
    """The device-cache budget in bytes: ``device_cache_max_gb``, else ``device_cache_memory_fraction`` of the
    current CUDA device's total memory."""
    if section.device_cache_max_gb is not None:
        return float(section.device_cache_max_gb) * GB
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return float(section.device_cache_memory_fraction) * float(props.total_memory)


def accelerator_is_cuda(cfg: Any) -> bool:
    """Whether the trainer's accelerator is (or, for ``auto``, resolves to) CUDA, and CUDA is there (a config
    that says ``gpu`` read on a CPU-only machine, e.g. by ``neurotrain export``, keeps the worker loader)."""
    return cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def choose(cfg: Any, ds: Any) -> tuple[DeviceCache | None, str]:
    """Apply ``cfg.loader.device_cache`` (auto | on | off) to the training set ``ds``: the cache to use (or None)
    and the one-line reason. ``on`` with a set that cannot live on the device raises :class:`ConfigError`."""
    mode = cfg.loader.device_cache
    if mode == "off":
        return None, "loader.device_cache is off"
    if mode == "auto" and not accelerator_is_cuda(cfg):
        return None, (f"the accelerator is not CUDA (trainer.accelerator {cfg.trainer.accelerator}, "
                      f"CUDA available: {torch.cuda.is_available()})")
    dc, why = build(ds, cfg.task_kind)
    if dc is None:
        if mode == "on":
            raise ConfigError(f"config: loader.device_cache: expected a training set that can live on the device "
                              f"(got {why})")
        return None, why
    if mode == "auto":
        budget = budget_bytes(cfg.loader)
        if dc.nbytes > budget:
            return None, (f"the training set needs {dc.nbytes / GB:.2f} GB, over the budget of {budget / GB:.2f} GB "
                          f"(loader.device_cache_max_gb / device_cache_memory_fraction)")
    return dc, f"{len(dc)} images of {dc.shape}, {dc.nbytes / GB:.3f} GB (loader.device_cache {mode})"


def attach(cfg: Any, ds: Any) -> DeviceCache | None:
    """Decide once per training set (:func:`choose`), log which path feeds training and why, and hook the cache
    into the set's batched fetch (``CachedItems.__getitems__``). Returns the cache, or None for the worker
    loader."""
    if getattr(ds, "_device_cache_decided", False):
        return getattr(ds, "device_cache", None)
    dc, why = choose(cfg, ds)
    if dc is not None:
        log.info("vision: training batches gathered on the device from a resident cache: %s", why)
    else:
        log.info("vision: training batches from the worker DataLoader (device cache off: %s)", why)
    if hasattr(ds, "_bad"):  # a cache-backed VisionDataset: its __getitems__ reads the attribute
        ds.device_cache = dc
    ds._device_cache_decided = True
    return dc
