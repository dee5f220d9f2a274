"""Events <-> voxel grids, vectorised on the device.

A segment of ``duration_us`` µs starting at ``t_start`` is cut into ``num_bins`` time bins.
Integer arithmetic places an event at relative time ``r = t - t_start`` (µs) into bin
``(r * num_bins) // duration_us``; bin ``k`` therefore holds the integer times
``[ceil(k D / B), ceil((k+1) D / B))``. The seed's grid is D = 20 000 µs, B = 8, i.e. 2.5 ms
per bin (seed: "统一20ms/8bins时间分辨率").

* :func:`events_to_voxel` - the seed's encoding: each event adds its polarity (+1/-1) to its
  cell, one ``index_add_`` for any number of segments at once; or the bilinear-in-time grid
  of Zhu et al. 2019 ("Unsupervised event-based learning of optical flow, depth, and
  egomotion", CVPR), where an event at normalised time ``t* = (B-1) r / D`` adds
  ``p * max(0, 1 - |k - t*|)`` to bins ``k = floor(t*)`` and ``floor(t*) + 1``.
* :func:`event_cells` / :func:`keep_fraction` - the exact-output path: each original event
  looks up the network's output in the cell(s) it was encoded into (gather by index) and
  is kept or dropped as a whole, its own t, x, y, p untouched.
* :func:`voxel_to_events` - the seed's decoding: a cell's value is rounded to an integer
  ``v``; ``|v|`` events of polarity ``sign(v)`` are drawn with integer timestamps uniform in
  the cell's bin (seeded generator). For integer voxels ``encode(decode(v)) == v`` exactly.
* :func:`pad_to_multiple` / :func:`crop_to` - any sensor size runs through a U-Net whose
  pooling needs H and W divisible by ``2**(levels-1)``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

VoxelMethod = Literal["count", "bilinear"]


def _as_long(a: torch.Tensor) -> torch.Tensor:
    return a if a.dtype == torch.int64 else a.long()


def check_grid(num_bins: int, duration_us: int) -> None:
    """Each bin must hold at least one integer microsecond."""
    if num_bins < 1 or duration_us < num_bins:
        raise ValueError(f"voxel grid: need 1 <= num_bins <= duration_us (got num_bins={num_bins}, duration_us={duration_us})")


def bin_lower_edges(num_bins: int, duration_us: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Integer lower edges (µs, relative to the segment start) of bins ``0..num_bins`` (length B+1):
    ``ceil(k D / B)``."""
    k = torch.arange(num_bins + 1, device=device, dtype=torch.int64)
    return -((-k * duration_us) // num_bins)


def event_cells(
    t: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_bins: int,
    sensor_size: tuple[int, int],
    duration_us: int,
    t_start: int | torch.Tensor = 0,
    segment: torch.Tensor | None = None,
    method: VoxelMethod = "count",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The voxel cells each event went into: the one index arithmetic of the encoder.

    Returns ``(idx0, idx1, w1, valid)``: flat indices into the ``(S, B, H, W)`` (or
    ``(B, H, W)``) grid of the two time bins the event touches, the weight ``w1`` of the
    second (the first has ``1 - w1``) and whether the event lies inside its segment. With
    ``method="count"`` both indices are the event's own bin and ``w1 = 0``; with
    ``"bilinear"`` they are ``floor(t*)`` and ``floor(t*) + 1`` (Zhu et al. 2019).
    """
    if method not in ("count", "bilinear"):
        raise ValueError(f"events_to_voxel: method must be 'count' or 'bilinear' (got {method!r})")
    h, w = sensor_size
    device = t.device
    t = _as_long(t)
    starts = torch.as_tensor(t_start, device=device, dtype=torch.int64)
    if segment is not None:
        segment = _as_long(segment)
        rel = t - (starts[segment] if starts.ndim else starts)
    else:
        rel = t - starts
    valid = (rel >= 0) & (rel < duration_us)
    base = _as_long(y) * w + _as_long(x)
    if segment is not None:
        base = base + segment * (num_bins * h * w)
    if method == "count":
        b0 = ((rel * num_bins) // duration_us).clamp(0, num_bins - 1)
        idx0 = base + b0 * (h * w)
        return idx0, idx0, torch.zeros(t.shape, dtype=torch.float32, device=device), valid
    ts = rel.to(torch.float64) * (num_bins - 1) / duration_us
    b0 = ts.floor()
    w1 = (ts - b0).to(torch.float32)
    b0 = b0.long().clamp(0, num_bins - 1)
    b1 = (b0 + 1).clamp(max=num_bins - 1)
    return base + b0 * (h * w), base + b1 * (h * w), w1, valid


def keep_fraction(
    vin: torch.Tensor,
    vout: torch.Tensor,
    idx0: torch.Tensor,
    idx1: torch.Tensor,
    w1: torch.Tensor,
    min_abs: float = 1e-6,
) -> torch.Tensor:
    """Per-event flare-free fraction, looked up in the event's own cells (gather by index).

    ``vin``/``vout``: input and output voxels ``(S, [1,] B, H, W)``; ``idx0, idx1, w1`` from
    :func:`event_cells` on the same grid. A cell's flare-free fraction is
    ``clamp(out / in, 0, 1)``: the share of the cell's signed input value that the network
    keeps (the voxel is one signed channel, so an event's polarity enters through the sign
    of its cell). A cell whose ON and OFF events cancel (``|in| <= min_abs``) carries no
    value of its own; it takes its pixel's fraction over the segment,
    ``clamp(sum_b sign(in_b) out_b / sum_b |in_b|, 0, 1)`` (1 when every cell of the pixel
    cancels). With the bilinear grid an event's fraction is ``(1 - w1) f[idx0] + w1 f[idx1]``,
    the weights the encoder spread it with. The identity network gives exactly 1 for every
    event.
    """
    h, w = vin.shape[-2:]
    nb = vin.shape[-3]
    a = vin.reshape(-1, nb, h * w).float()
    o = vout.reshape(-1, nb, h * w).float()
    sa = torch.sign(a)
    den = a.abs().sum(1)  # (S, H*W)
    pix = torch.where(den > min_abs, ((sa * o).sum(1) / den.clamp_min(min_abs)).clamp(0.0, 1.0), torch.ones_like(den)).reshape(-1)
    a, o = a.reshape(-1), o.reshape(-1)

    def cell(idx: torch.Tensor) -> torch.Tensor:
        ai, oi = a[idx], o[idx]
        ok = ai.abs() > min_abs
        ratio = (oi / torch.where(ok, ai, torch.ones_like(ai))).clamp(0.0, 1.0)
        pidx = (idx // (nb * h * w)) * (h * w) + idx % (h * w)
        return torch.where(ok, ratio, pix[pidx])

    f0 = cell(idx0)
    if idx1 is idx0:
        return f0
    w1 = w1.float()
    return torch.where(w1 > 0, (1 - w1) * f0 + w1 * cell(idx1), f0)


def events_to_voxel(
    t: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    p: torch.Tensor,
    *,
    num_bins: int,
    sensor_size: tuple[int, int],
    duration_us: int,
    t_start: int | torch.Tensor = 0,
    segment: torch.Tensor | None = None,
    num_segments: int | None = None,
    method: VoxelMethod = "count",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Accumulate events into a voxel grid.

    Args:
        t: timestamps (µs), any integer dtype.
        x, y: pixel coordinates, ``0 <= x < W``, ``0 <= y < H`` (not checked here; the
            readers check files).
        p: polarity as a sign (+1/-1) or any number (added as is).
        num_bins: time bins B per segment.
        sensor_size: (H, W).
        duration_us: segment duration D (µs).
        t_start: segment start (µs); a tensor of per-segment starts when ``segment`` is given.
        segment: optional per-event segment index in ``[0, num_segments)``; events of all
            segments are accumulated in one ``index_add_``.
        num_segments: number of segments S (required with ``segment``).
        method: ``"count"`` (the seed's) or ``"bilinear"`` (Zhu et al. 2019).

    Returns:
        ``(B, H, W)`` voxel, or ``(S, B, H, W)`` when ``segment`` is given. Events outside
        ``[t_start, t_start + D)`` are ignored.
    """
    check_grid(num_bins, duration_us)
    h, w = sensor_size
    device = t.device
    s_count = 1 if segment is None else int(num_segments if num_segments is not None else 0)
    if segment is not None and s_count < 1:
        raise ValueError("events_to_voxel: num_segments is required with segment")
    idx0, idx1, w1, valid = event_cells(
        t, x, y, num_bins=num_bins, sensor_size=sensor_size, duration_us=duration_us, t_start=t_start,
        segment=segment, method=method,
    )
    vals = p.to(dtype)
    out = torch.zeros(s_count * num_bins * h * w, dtype=dtype, device=device)
    if method == "count":
        out.index_add_(0, idx0[valid], vals[valid])
    else:
        w1 = w1.to(dtype)
        idx = torch.cat([idx0, idx1])
        wts = torch.cat([vals * (1 - w1), vals * w1])
        m = torch.cat([valid, valid & (idx1 != idx0)])
        out.index_add_(0, idx[m], wts[m])
    shape = (num_bins, h, w) if segment is None else (s_count, num_bins, h, w)
    return out.view(shape)


def voxel_to_events(
    voxel: torch.Tensor,
    *,
    duration_us: int,
    t_start: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
    max_events: int | None = None,
    t_min: int | None = None,
    t_max: int | None = None,
) -> dict[str, torch.Tensor]:
    """Decode a voxel grid into events (the seed's uniform-in-bin decoding).

    Args:
        voxel: ``(B, H, W)`` or ``(S, B, H, W)``; values are rounded to integers first.
        duration_us: segment duration D (µs).
        t_start: start (µs) of the segment, or a length-S tensor of starts.
        generator: torch generator on ``voxel.device`` for the timestamps (seeded output).
        max_events: refuse to decode more events than this (guards against a diverged
            network asking for billions of events).
        t_min, t_max: optional recording range (µs, inclusive); a bin that straddles it
            draws its timestamps only inside it, so a partial first/last bin never moves
            events outside the recording (each event stays in its bin: exactness holds).

    Returns:
        dict of 1-D tensors ``t`` (int64 µs), ``x``, ``y`` (int64), ``p`` (int8 sign) and
        ``segment`` (int64), sorted by time (stable, so ties keep cell order).
    """
    if voxel.ndim == 3:
        voxel = voxel.unsqueeze(0)
    if voxel.ndim != 4:
        raise ValueError(f"voxel_to_events: expected (B,H,W) or (S,B,H,W), got shape {tuple(voxel.shape)}")
    s, nb, h, w = voxel.shape
    check_grid(nb, duration_us)
    device = voxel.device
    v = torch.round(voxel).to(torch.int64).reshape(-1)
    counts = v.abs()
    total = int(counts.sum())
    if max_events is not None and total > max_events:
        raise ValueError(f"voxel_to_events: {total} events exceed max_events={max_events}")
    cell = torch.repeat_interleave(torch.arange(v.numel(), device=device), counts, output_size=total)
    p = torch.sign(v[cell]).to(torch.int8)
    seg, rem = cell // (nb * h * w), cell % (nb * h * w)
    b, rem = rem // (h * w), rem % (h * w)
    y, x = rem // w, rem % w
    edges = bin_lower_edges(nb, duration_us, device)
    starts = torch.as_tensor(t_start, device=device, dtype=torch.int64)
    s0 = starts[seg] if starts.ndim else starts
    lo, hi = s0 + edges[b], s0 + edges[b + 1]
    if t_min is not None:
        lo = torch.where(hi > t_min, torch.clamp(lo, min=int(t_min)), lo)
    if t_max is not None:
        hi = torch.where(lo <= t_max, torch.clamp(hi, max=int(t_max) + 1), hi)
    width = hi - lo
    u = torch.rand(total, generator=generator, device=device, dtype=torch.float64)
    t = lo + torch.minimum((u * width).long(), width - 1)
    order = torch.argsort(t, stable=True)
    return {"t": t[order], "x": x[order], "y": y[order], "p": p[order], "segment": seg[order]}


def pad_to_multiple(v: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the last two dims (H, W) at the bottom/right up to multiples of ``multiple``.

    Returns the padded tensor and the original (H, W) for :func:`crop_to`.
    """
    h, w = v.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        v = F.pad(v, (0, pw, 0, ph))
    return v, (h, w)


def crop_to(v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    return v[..., : size[0], : size[1]]


def active_bins_mask(
    seg_starts: torch.Tensor, num_bins: int, duration_us: int, t_first: int, t_last: int
) -> torch.Tensor:
    """``(S, B)`` bool: bins that overlap the recording ``[t_first, t_last]`` (µs).

    A file rarely starts or ends on the segment grid; output events are only decoded in
    bins the recording covers, so the partial first/last segment never gains events
    outside the original time range.
    """
    edges = bin_lower_edges(num_bins, duration_us, seg_starts.device)
    lo = seg_starts[:, None] + edges[None, :-1]
    hi = seg_starts[:, None] + edges[None, 1:]  # exclusive
    return (hi > t_first) & (lo <= t_last)
