"""The vision bench's data-pipeline stages (``bench/vision.py`` runs them): where the time of a loader-fed training
step goes, stage by stage.

Per batch the path is: worker copies the batch out of the decoded cache (shared memory) -> main process receives
it -> pin-memory thread copies it into pinned memory -> non-blocking H2D copy -> uint8 -> float on the device ->
augmentation on the device -> forward / backward / AdamW. Each row times a prefix or a piece of that chain:

* ``augment_*``: the augmentation alone on a device batch: device time (ms / batch, synchronised), host time
  (ms / batch to *issue* it, not synchronised: what it takes from the Python thread that also feeds the GPU) and
  ``host_sync`` (the first synchronising call under ``torch.cuda.set_sync_debug_mode("error")``, or "none"),
  ``ops`` (aten operations per call, and the compute kernels among them),
  for the task's fused warp and, for comparison, kornia's ``AugmentationSequential`` (the path before);
* ``h2d_ms``: a pinned uint8 batch copied to the device and scaled to float;
* ``loader_*`` (``vision.py``): the loader alone;
* ``train_loop_*``: training in one loop, fed five ways: a device-resident batch (the synthetic rate; and with
  the augmentation), the loader without and with augmentation, the loader through a copy stream that moves
  batch i+1 while batch i trains, and the task's device-resident training cache (``device_cache``: the whole
  decoded split uploaded once, each batch gathered on the device from the sampler's indices; the task's own
  ``loader_options`` and ``on_batch``, ``tasks/vision/device_cache.py``). Each reports images/s, the GPU busy %
  (NVML, sampled every 0.1 s) and the host's mean ms per step in each stage (``wait``: blocked on the loader,
  including issuing the copy and the float conversion, and for ``device_cache`` the gather; ``aug``; ``step``:
  issuing forward / backward / step, which blocks once the GPU queue is full, so a host that runs ahead shows
  its slack there).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from _timing import sync, timed


class GpuSampler:
    """GPU utilisation (%) sampled every ``period`` s in a thread while active (pynvml, else nvidia-smi)."""

    def __init__(self, index: int = 0, period: float = 0.1) -> None:
        self.index, self.period, self.samples = index, period, []
        self._stop = threading.Event()
        self._read = self._reader()

    def _reader(self) -> Callable[[], float]:
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
        except Exception:  # noqa: BLE001 - no NVML: fall back to the command line tool
            def smi() -> float:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", str(self.index)], capture_output=True, text=True, timeout=5)
                return float(out.stdout.strip().splitlines()[0])
            return smi

    def __enter__(self) -> GpuSampler:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.samples.append(self._read())
                except Exception:  # noqa: BLE001
                    return
                time.sleep(self.period)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors to ``device`` non-blocking (as Lightning moves a batch), then uint8 -> float there."""
    from neurotrain.tasks.vision.augment import to_float_batch

    return to_float_batch({k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()})


def copy_stream_batches(batches: Iterator[dict[str, Any]], device: torch.device) -> Iterator[dict[str, Any]]:
    """``batches`` moved to ``device`` on a side stream one batch ahead, so the H2D copy of batch i+1 overlaps the
    compute of batch i; the compute stream waits for the copy and the tensors are marked used on it (so the
    allocator does not hand their memory back early)."""
    side = torch.cuda.Stream(device)

    def load(b: dict[str, Any]) -> dict[str, Any]:
        with torch.cuda.stream(side):
            return to_device(b, device)

    nxt = None
    for b in batches:
        cur, nxt = nxt, load(b)
        if cur is not None:
            yield cur
        torch.cuda.current_stream(device).wait_stream(side)
        for v in nxt.values():
            if torch.is_tensor(v) and v.device.type == "cuda":
                v.record_stream(torch.cuda.current_stream(device))
    if nxt is not None:
        yield nxt


def _augment_section(which: str) -> Any:
    from neurotrain.tasks.vision.data_config import AugmentSection

    if which == "flips":  # what the loader-fed training rows use: flips and quarter turns
        return AugmentSection(enabled=True, p_intensity=0.0)
    return AugmentSection(enabled=True, rotate_deg=30, p_rotate=0.5, elastic_alpha=4.0, elastic_sigma=16.0,
                          p_elastic=0.5, crop_size=(384, 384), p_intensity=0.5)


def kornia_flips(batch: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
    """The augmentation before the fused warp, for comparison: kornia flips + quarter turns on image and mask."""
    import kornia.augmentation as K

    seq = K.AugmentationSequential(K.RandomHorizontalFlip(p=0.5), K.RandomVerticalFlip(p=0.5),
                                   K.RandomRotation90(times=(0, 3), p=0.5), data_keys=None, random_apply=False)

    def run(b: dict[str, Any]) -> Any:
        out = seq({"input": b["image"], "mask": b["mask"][:, None].float()})
        return out["input"], out["mask"][:, 0].round().long()

    return run


VIEW_OPS = {"aten::select", "aten::slice", "aten::view", "aten::unsqueeze", "aten::permute", "aten::expand",
            "aten::as_strided", "aten::alias", "aten::t", "aten::transpose", "aten::reshape", "aten::_unsafe_view",
            "aten::squeeze", "aten::detach", "aten::lift_fresh", "aten::empty", "aten::empty_strided",
            "aten::empty_like", "aten::resolve_conj", "aten::resolve_neg", "aten::result_type", "aten::is_nonzero"}


def op_counts(fn: Callable[[], object]) -> dict[str, int]:
    """Operations of one call (``torch.profiler``, host side): ``dispatched`` every aten call, ``kernels`` the
    innermost ones that compute (views and allocations left out: on a GPU, roughly one launch each)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    leaf = [e for e in ops if e.name not in VIEW_OPS and not any(c.name.startswith("aten::") for c in e.cpu_children)]
    return {"dispatched": len(ops), "kernels": len(leaf)}


def bench_augment(args: Any, device: torch.device, record: Callable[[str, object], None]) -> None:
    """Device and host ms per batch of the augmentation alone, on a uint8-born batch of the bench's size."""
    from neurotrain.tasks.vision.augment import build_augment

    g = torch.Generator().manual_seed(0)
    b = {"image": torch.randint(0, 256, (args.train_batch, 3, args.size, args.size), generator=g, dtype=torch.uint8),
         "mask": torch.randint(0, 2, (args.train_batch, args.size, args.size), generator=g, dtype=torch.uint8)}
    dev = to_device(b, device)
    augs = {w: build_augment(_augment_section(w), "segmentation") for w in ("flips", "all")}
    fns = {f"augment_fused_{w}": (lambda aug: lambda: aug(dict(dev)))(a) for w, a in augs.items()}
    try:
        kf = kornia_flips(dev)
        fns["augment_kornia_flips"] = lambda: kf(dev)
    except Exception as exc:  # noqa: BLE001 - the comparison row is optional
        record("augment_kornia_flips_error", f"{type(exc).__name__}: {exc}")
    for name, fn in fns.items():
        if device.type == "cuda":  # does a call make the host wait for the GPU? (kornia's too, for the record)
            fn()  # the first call builds; the second is checked
            torch.cuda.synchronize(device)
            torch.cuda.set_sync_debug_mode("error")
            try:
                fn()
                record(f"{name}_host_sync", "none")
            except RuntimeError as exc:
                record(f"{name}_host_sync", str(exc).splitlines()[0])
            finally:
                torch.cuda.set_sync_debug_mode("default")
        record(f"{name}_device_ms", round(1e3 * timed(fn, device, args.repeats * 4, warmup=3), 3))
        record(f"{name}_ops", op_counts(fn))
        n = max(args.repeats * 4, 8)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        host = time.perf_counter() - t0
        sync(device)
        record(f"{name}_host_ms", round(1e3 * host / n, 3))
    pinned = {k: (v.pin_memory() if device.type == "cuda" else v) for k, v in b.items()}
    record("h2d_float_ms", round(1e3 * timed(lambda: to_device(pinned, device), device, args.repeats * 4, warmup=2), 3))


def ahead(loader: Any) -> int:
    """Batches the loader's workers hold ready (workers x prefetch factor), plus two."""
    return loader.num_workers * (loader.prefetch_factor or 0) + 2


def cycle(loader: Any, n: int) -> Iterator[Any]:
    """``n`` batches, cycling over epochs (workers persist)."""
    k = 0
    while True:
        for b in loader:
            yield b
            k += 1
            if k >= n:
                return


class DeviceCacheFeed:
    """The task's device-resident training path over a training set ``ds`` (a cached ``seg_folder`` with uint8
    samples): ``VisionTask.loader_options`` decides and attaches the cache (``loader.device_cache``: ``auto`` on
    CUDA, so its budget rule is the one exercised; ``on`` elsewhere) and gives the loader's options (no workers,
    no pinning, the task's collate); :meth:`prepare` is what Lightning and the task do to each batch: tensors to
    the device non-blocking, then ``VisionTask.on_batch`` (gather from the resident tensors, uint8 -> float)."""

    def __init__(self, args: Any, ds: Any, device: torch.device, sampler: Any) -> None:
        from neurotrain.config import validate_config
        from neurotrain.registry import TASKS

        cuda = device.type == "cuda"
        self.task = TASKS.get("vision")
        self.cfg = validate_config({
            "task": "vision", "kind": "segmentation",
            "data": {"batch_size": args.train_batch, "num_workers": args.workers},
            "trainer": {"accelerator": "cuda" if cuda else "cpu"},
            "data_source": {"name": "seg_folder", "root": str(ds.spec.root), "channels": ds.spec.channels},
            "loader": {"device_cache": "auto" if cuda else "on"},
        })
        opts = self.task.loader_options(self.cfg, "train", ds)
        self.cache = getattr(ds, "device_cache", None)
        self.loader = torch.utils.data.DataLoader(ds, batch_size=args.train_batch, sampler=sampler, drop_last=True,
                                                  **opts)
        self.device = device

    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        moved = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        return self.task.on_batch(self.cfg, moved, False)

    def host_sync(self) -> str:
        """The first synchronising call of fetching, moving and gathering one batch once the split is resident
        (``torch.cuda.set_sync_debug_mode("error")``), or "none"."""
        it = iter(self.loader)
        self.prepare(next(it))  # uploads the split (its copies may synchronise: once per run)
        torch.cuda.synchronize(self.device)
        b = next(it)
        torch.cuda.set_sync_debug_mode("error")
        try:
            self.prepare(b)
            return "none"
        except RuntimeError as exc:
            return str(exc).splitlines()[0]
        finally:
            torch.cuda.set_sync_debug_mode("default")


def train_loop(args: Any, net: torch.nn.Module, step: Callable[..., None], device: torch.device, source: str,
               loader: Any = None, augment: bool = True, feed: DeviceCacheFeed | None = None) -> dict[str, Any]:
    """Train ``args.loader_steps`` steps fed by ``source``: ``resident`` (one device batch, reused), ``loader``
    (the task's loader, moved as Lightning does), ``copy_stream`` (the loader, moved one batch ahead on a
    side stream) or ``device_cache`` (``feed``: the task's device-resident training cache);
    ``step(net, opt, image, mask, bf16)`` is one training step. Returns images/s, the GPU busy % and the host's
    ms per step in each stage."""
    from neurotrain.tasks.vision.augment import build_augment, identity

    cuda = device.type == "cuda"
    aug = build_augment(_augment_section("flips"), "segmentation") if augment else identity
    net = net.to(device).train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    steps = args.loader_steps
    if source == "resident":
        g = torch.Generator().manual_seed(0)
        one = to_device({"image": torch.randint(0, 256, (args.train_batch, 3, args.size, args.size), generator=g,
                                                dtype=torch.uint8),
                         "mask": torch.randint(0, 2, (args.train_batch, args.size, args.size), generator=g,
                                               dtype=torch.uint8)}, device)
        warm = 3
        raw: Iterator[Any] = iter([one] * (steps + warm))
        moved = raw
    elif source == "device_cache":
        assert feed is not None
        warm = ahead(feed.loader) + 1  # the first batch uploads the split
        moved = (feed.prepare(b) for b in cycle(feed.loader, steps + warm))
    else:
        warm = ahead(loader)
        raw = cycle(loader, steps + warm)
        moved = copy_stream_batches(raw, device) if source == "copy_stream" and cuda else (
            to_device(b, device) for b in raw)
    stage = {"wait": 0.0, "aug": 0.0, "step": 0.0}

    def one_step(timing: bool) -> None:
        t0 = time.perf_counter()
        b = next(moved)
        t1 = time.perf_counter()
        b = aug(b)
        t2 = time.perf_counter()
        step(net, opt, b["image"].contiguous(memory_format=torch.channels_last), b["mask"], cuda)
        if timing:
            t3 = time.perf_counter()
            stage["wait"] += t1 - t0  # includes issuing the copy (h2d) for the loader rows
            stage["aug"] += t2 - t1
            stage["step"] += t3 - t2

    for _ in range(warm):  # workers, cuDNN autotuning, the prefetch queue
        one_step(False)
    sync(device)
    sampler = GpuSampler(device.index or 0) if cuda else None
    t0 = time.perf_counter()
    with sampler if sampler is not None else contextlib.nullcontext():
        for _ in range(steps):
            one_step(True)
        sync(device)
    dt = time.perf_counter() - t0
    tag = f"train_loop_{source}" + ("" if augment else "_noaug")
    res = {f"{tag}_images_per_s": round(steps * args.train_batch / dt, 1),
           f"{tag}_gpu_util_percent": sampler.mean if sampler is not None else None}
    res.update({f"{tag}_host_{k}_ms": round(1e3 * v / steps, 3) for k, v in stage.items()})
    return res


def bench_pipeline(args: Any, loader: Any, net: torch.nn.Module, step: Callable[..., None], device: torch.device,
                   record: Callable[[str, object], None], feed: DeviceCacheFeed | None = None) -> None:
    """The training-loop rows, then the ratio the issue asks about: loader-fed (with augmentation) over the
    synthetic rate (a device-resident batch, no augmentation); the same for the device-resident training cache
    when ``feed`` holds one."""
    rows = [("resident", False), ("resident", True), ("loader", False), ("loader", True)]
    if device.type == "cuda":
        rows.append(("copy_stream", True))
    if feed is not None and feed.cache is not None:
        record("device_cache_mb", round(feed.cache.nbytes / 1e6, 1))
        if device.type == "cuda":
            record("device_cache_host_sync", feed.host_sync())
        rows += [("device_cache", False), ("device_cache", True)]
    rates = {}
    for source, augment in rows:
        for k, v in train_loop(args, net, step, device, source, loader, augment, feed).items():
            record(k, v)
            if k.endswith("_images_per_s"):
                rates[(source, augment)] = v
    base = rates[("resident", False)]
    for source in ("loader", "copy_stream", "device_cache"):
        if (source, True) in rates and base:
            record(f"train_loop_{source}_fraction_of_synthetic", round(rates[(source, True)] / base, 3))
