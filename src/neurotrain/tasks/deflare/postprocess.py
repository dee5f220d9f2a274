"""File in, file out: events -> 20 ms segments -> voxels -> (network | filter) -> events.

Two ways back from voxels to events (``postprocess.mode``):

* ``mask`` (default): the exact output. Each original event looks up the network's output
  in its own voxel cell (gather by the encoder's own index, :func:`voxel.event_cells`) and
  is kept when the cell's flare-free fraction ``clamp(out / in, 0, 1)`` reaches
  ``postprocess.keep_threshold``. The output is a subset of the input, in input order, with
  the original t, x, y and stored polarity values in the input's dtypes; an identity
  network keeps every event.
* ``decode``: the seed's decoder (counts per cell, timestamps drawn uniformly in the bin);
  microsecond timing is lost and ON/OFF pairs in a cell cancel.

The pipeline streams: events are read in chunks (``pipeline.chunk_events``), regrouped
into segments on the absolute grid ``k * segment_duration_us``, and
``pipeline.batch_segments`` segments at a time are encoded in one ``index_add_`` on the
device, passed through the model, decoded (seeded) and appended to the output file. Memory
is bounded by one batch of segments, whatever the file length. Output bins outside the
recording's ``[t_first, t_last]`` are zeroed, so the output never extends the time axis.

Reading (decompression, segmenting) runs ``pipeline.io_queue_depth`` batches ahead in a
background thread and writing (compression) one thread behind, so for a recording longer
than one batch the three overlap; the per-stage seconds in :class:`FileResult` are the time
the device loop spent in (or waiting for) each stage, so hidden I/O shows as ~0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotrain.engine.inference import autocast
from neurotrain.errors import DataError
from neurotrain.io.background import BackgroundSink, prefetch
from neurotrain.tasks.deflare.events import EventChunk, EventFileInfo, Segment, iter_segments
from neurotrain.tasks.deflare.h5read import inspect_events, iter_chunks
from neurotrain.tasks.deflare.h5write import EventWriter
from neurotrain.tasks.deflare.voxel import active_bins_mask, event_cells, events_to_voxel, keep_fraction, voxel_to_events

VoxelFn = Callable[[torch.Tensor], torch.Tensor]
DebugHook = Callable[[dict[str, Any]], None]


@dataclass
class FileResult:
    input: Path
    output: Path | None
    events_in: int = 0
    events_out: int = 0
    segments: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def resolve_sensor_size(info: EventFileInfo, cfg: Any) -> tuple[int, int]:
    """The file's own ``sensor_size`` attribute, else ``voxel.sensor_size`` from the config."""
    return tuple(info.sensor_size) if info.sensor_size else tuple(cfg.voxel.sensor_size)  # type: ignore[return-value]


def _batched(segments: Iterator[Segment], n: int) -> Iterator[list[Segment]]:
    buf: list[Segment] = []
    for s in segments:
        buf.append(s)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def encode_segments(
    segs: list[Segment], cfg: Any, size: tuple[int, int], device: torch.device, return_cells: bool = False
) -> tuple[torch.Tensor, ...]:
    """(S, 1, B, H, W) voxels of a list of segments (one ``index_add_``) and their starts (S,).

    With ``return_cells`` also the events' cells ``(idx0, idx1, w1)`` of
    :func:`voxel.event_cells`, in the order of the segments' events, for the per-event lookup.
    """
    D = cfg.voxel.segment_duration_us
    # one host->device copy per segment and the concatenation on the device: no host-side copy
    parts = [s.events.to_torch(device) for s in segs]
    tt = {k: torch.cat([q[k] for q in parts]) if len(parts) > 1 else parts[0][k] for k in ("t", "x", "y", "p")}
    counts = torch.tensor([len(s.events) for s in segs], device=device)
    seg_t = torch.repeat_interleave(torch.arange(len(segs), device=device), counts)
    starts = torch.tensor([s.t_start for s in segs], device=device, dtype=torch.int64)
    vox = events_to_voxel(
        tt["t"], tt["x"], tt["y"], tt["p"], num_bins=cfg.voxel.num_bins, sensor_size=size, duration_us=D,
        t_start=starts, segment=seg_t, num_segments=len(segs), method=cfg.voxel.method,
    )
    if not return_cells:
        return vox.unsqueeze(1), starts
    idx0, idx1, w1, _ = event_cells(
        tt["t"], tt["x"], tt["y"], num_bins=cfg.voxel.num_bins, sensor_size=size, duration_us=D,
        t_start=starts, segment=seg_t, method=cfg.voxel.method,
    )
    return vox.unsqueeze(1), starts, idx0, idx1, w1


def iter_file_voxels(
    path: Path, cfg: Any, size: tuple[int, int] | None = None, device: torch.device | str = "cpu"
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(segment indices, (S, 1, B, H, W) voxels) of a file, ``pipeline.batch_segments`` at a time."""
    info = inspect_events(path)
    size = size or resolve_sensor_size(info, cfg)
    D = cfg.voxel.segment_duration_us
    chunks = iter_chunks(path, cfg.pipeline.chunk_events, size, info)
    for segs in _batched(iter_segments(chunks, D), cfg.pipeline.batch_segments):
        vox, _ = encode_segments(segs, cfg, size, torch.device(device))
        yield [s.index for s in segs], vox


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def process_file(
    in_path: str | Path,
    out_path: str | Path | None,
    fn: VoxelFn,
    cfg: Any,
    device: torch.device | str = "cpu",
    debug_hook: DebugHook | None = None,
) -> FileResult:
    """Run ``fn`` over every segment of ``in_path`` and write the decoded events to ``out_path``.

    ``fn`` maps (S, 1, B, H, W) voxels to voxels of the same shape (a network, a classical
    filter, or the identity for the seed's encode->decode baseline). ``out_path=None`` runs
    without writing (benchmarks). The output mirrors the input's layout and dtypes and
    appears only when complete. Per-stage wall times are in ``FileResult.seconds``.
    """
    in_path = Path(in_path)
    device = torch.device(device)
    info = inspect_events(in_path)
    if info.num_events == 0:
        raise DataError(f"{in_path}: events: expected at least one event (the file holds none; nothing to deflare)")
    size = resolve_sensor_size(info, cfg)
    D, B = cfg.voxel.segment_duration_us, cfg.voxel.num_bins
    pl = cfg.pipeline
    mask_mode = getattr(getattr(cfg, "postprocess", None), "mode", "mask") == "mask"
    gen = torch.Generator(device=device)
    gen.manual_seed(int(pl.decode_seed))
    res = FileResult(in_path, Path(out_path) if out_path is not None else None)
    secs = {"read": 0.0, "encode": 0.0, "network": 0.0, "decode": 0.0, "write": 0.0}
    writer: EventWriter | None = None
    sink: BackgroundSink[dict[str, np.ndarray]] | None = None
    if out_path is not None:
        writer = EventWriter(
            out_path, like=info, compression=None if pl.compression == "none" else "gzip",
            compression_opts=pl.compression_level, attrs={"sensor_size": list(size)},
        )
        writer.__enter__()
        w = writer
        sink = BackgroundSink(lambda e: w.append(e["t"], e["x"], e["y"], e["p"], raw_p=bool(e.get("raw", False))), pl.io_queue_depth)
    batches = prefetch(_batched(iter_segments(iter_chunks(in_path, pl.chunk_events, size, info), D),
                                pl.batch_segments), pl.io_queue_depth)
    try:
        batch_no = 0
        while True:
            t0 = time.perf_counter()
            segs = next(batches, None)
            secs["read"] += time.perf_counter() - t0
            if segs is None:
                break
            t0 = time.perf_counter()
            enc = encode_segments(segs, cfg, size, device, return_cells=mask_mode)
            vin, starts = enc[0], enc[1]
            _sync(device)
            t1 = time.perf_counter()
            secs["encode"] += t1 - t0
            with torch.no_grad():
                vout = fn(vin).float()
            _sync(device)
            t2 = time.perf_counter()
            secs["network"] += t2 - t1
            n_in = sum(len(s.events) for s in segs)
            if mask_mode:
                ev_np = select_events(segs, vin, vout, enc[2], enc[3], enc[4], cfg, with_segment=debug_hook is not None)
            else:
                keep = active_bins_mask(starts, B, D, info.t_first, info.t_last)
                vout = vout * keep[:, None, :, None, None]
                ev = voxel_to_events(
                    vout[:, 0], duration_us=D, t_start=starts, generator=gen,
                    max_events=int(pl.max_events_factor * max(n_in, 1000)), t_min=info.t_first, t_max=info.t_last,
                )
                keys = ("t", "x", "y", "p", "segment") if debug_hook is not None else ("t", "x", "y", "p")
                small = {"x": torch.int32, "y": torch.int32, "segment": torch.int32}
                ev_np = {k: (ev[k].to(small[k]) if k in small else ev[k]).cpu().numpy() for k in keys}
            t3 = time.perf_counter()
            secs["decode"] += t3 - t2
            if sink is not None:
                sink.submit(ev_np)
            secs["write"] += time.perf_counter() - t3
            res.events_in += n_in
            res.events_out += int(ev_np["t"].shape[0])
            res.segments += len(segs)
            if debug_hook is not None and batch_no < pl.debug_iterations:
                debug_hook({
                    "file": in_path, "batch": batch_no, "segment_offset": res.segments - len(segs),
                    "input_voxel": vin, "output_voxel": vout,
                    "starts": starts, "sensor_size": size, "output_events": ev_np,
                    "input_events": EventChunk.concat([s.events for s in segs]), "fn": fn,
                })
            batch_no += 1
        if sink is not None:
            t0 = time.perf_counter()
            sink.close()
            secs["write"] += time.perf_counter() - t0
    except BaseException as exc:
        batches.close()
        if sink is not None:
            try:
                sink.close()
            except BaseException:  # noqa: BLE001 - the first error is the one to report
                pass
        if writer is not None:
            writer.__exit__(type(exc), exc, exc.__traceback__)
        if isinstance(exc, ValueError):
            raise DataError(f"{in_path}: {exc}") from None
        raise
    if writer is not None:
        t0 = time.perf_counter()
        writer.__exit__(None, None, None)
        secs["write"] += time.perf_counter() - t0
    res.seconds = secs
    return res


def select_events(
    segs: list[Segment],
    vin: torch.Tensor,
    vout: torch.Tensor,
    idx0: torch.Tensor,
    idx1: torch.Tensor,
    w1: torch.Tensor,
    cfg: Any,
    with_segment: bool = False,
) -> dict[str, Any]:
    """The kept original events of a batch of segments (``postprocess.mode="mask"``).

    Returns NumPy columns ``t``, ``x``, ``y`` and ``p`` (the stored polarity values when the
    reader kept them, with ``raw=True``, else the sign) of the events whose flare-free
    fraction (:func:`voxel.keep_fraction`) is ``>= postprocess.keep_threshold``, in input
    order; ``segment`` (batch-local index) too when ``with_segment``.
    """
    pp = cfg.postprocess
    frac = keep_fraction(vin, vout, idx0, idx1, w1, pp.min_cell_abs)
    keep = (frac >= pp.keep_threshold).cpu().numpy()
    ev = EventChunk.concat([s.events for s in segs])
    out: dict[str, Any] = {"t": ev.t[keep], "x": ev.x[keep], "y": ev.y[keep]}
    if ev.praw is not None:
        out["p"], out["raw"] = ev.praw[keep], True
    else:
        out["p"] = ev.p[keep]
    if with_segment:
        seg = np.repeat(np.arange(len(segs), dtype=np.int32), [len(s.events) for s in segs])
        out["segment"] = seg[keep]
        out["p_sign"] = ev.p[keep]
    return out


def model_fn(model: torch.nn.Module, device: torch.device | str, precision: str = "fp32") -> VoxelFn:
    """Wrap a voxel network for :func:`process_file` (eval mode, optional bf16/fp16 autocast).

    A batch of segments that does not fit in device memory is split in halves (recursively,
    down to one segment) instead of failing, so ``pipeline.batch_segments`` is a speed knob,
    not a memory risk; outputs stay on the device for decoding.
    """
    device = torch.device(device)
    model = model.to(device).eval()

    def run(v: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model(v).float()

    def fn(v: torch.Tensor) -> torch.Tensor:
        try:
            return run(v)
        except torch.OutOfMemoryError:
            if v.shape[0] == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            h = v.shape[0] // 2
            return torch.cat([fn(v[:h]), fn(v[h:])])

    fn.model = model  # type: ignore[attr-defined]
    return fn


def identity_fn(v: torch.Tensor) -> torch.Tensor:
    """The seed's ``--baseline``: encode -> decode, no network."""
    return v
