"""Classical event filters, for side-by-side evaluation with the network.

Both run on voxel grids ``(..., B, H, W)`` (2.5 ms bins with the seed's grid), batched
on the device, so they go through exactly the same encode -> filter -> decode path as the
network.

* :func:`ba_filter` - background-activity / nearest-neighbour filter (Delbruck 2008,
  "Frame-free dynamic digital vision"; Guo & Delbruck 2022, "Low cost and latency event
  camera background activity denoising", TPAMI): an event is kept when at least
  ``min_support`` events occurred in its 8-neighbourhood within the same or the previous
  ``window_bins`` bins (correlation time ~2.5-5 ms); isolated events are removed. It
  removes sensor noise, not flare, which is spatially dense.
* :func:`flicker_filter` - anti-flicker filter (as Prophesee's Metavision anti-flicker:
  pixels whose activity is periodic at a mains frequency are dropped): per pixel, the
  polarity series over the B bins is Fourier-analysed at 100 and 120 Hz; a pixel with at
  least ``min_events`` events, balanced polarity (``|sum v| / sum|v| < 0.5``) and a
  normalised spectral amplitude ``max_f |sum_b v_b e^{-2 pi i f t_b}| / sum|v| >=
  min_power`` is flickering, and all its events are removed. It removes flickering flare,
  and the flickering light source with it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def ba_filter(voxel: torch.Tensor, window_bins: int = 1, min_support: int = 1) -> torch.Tensor:
    """Keep cells whose spatial neighbours fired in the same or the ``window_bins`` previous bins."""
    shape = voxel.shape
    b, h, w = shape[-3:]
    v = torch.round(voxel).reshape(-1, 1, b, h, w)
    occ = (v != 0).to(voxel.dtype if voxel.dtype.is_floating_point else torch.float32)
    k = torch.ones((1, 1, window_bins + 1, 3, 3), dtype=occ.dtype, device=occ.device)
    k[..., 1, 1] = 0
    support = F.conv3d(F.pad(occ, (1, 1, 1, 1, window_bins, 0)), k)
    keep = support >= min_support
    return (v * keep).reshape(shape).to(voxel.dtype)


def flicker_filter(
    voxel: torch.Tensor,
    *,
    duration_us: int,
    flicker_hz: tuple[float, ...] = (100.0, 120.0),
    min_events: int = 4,
    min_power: float = 0.5,
) -> torch.Tensor:
    """Remove every event of pixels that flicker at one of ``flicker_hz`` (see module doc)."""
    shape = voxel.shape
    b, h, w = shape[-3:]
    v = torch.round(voxel).reshape(-1, b, h, w).float()
    tb = (torch.arange(b, device=v.device, dtype=torch.float32) + 0.5) * (duration_us * 1e-6 / b)
    f = torch.tensor(flicker_hz, device=v.device, dtype=torch.float32)
    ph = 2 * math.pi * f[:, None] * tb[None]  # (F, B)
    re = torch.einsum("fb,nbhw->nfhw", torch.cos(ph), v)
    im = torch.einsum("fb,nbhw->nfhw", torch.sin(ph), v)
    amp = torch.sqrt(re * re + im * im).amax(1)
    tot = v.abs().sum(1)
    net = v.sum(1).abs()
    flick = (tot >= min_events) & (net < 0.5 * tot) & (amp >= min_power * tot)
    return (v * (~flick)[:, None]).reshape(shape).to(voxel.dtype)


# --------------------------------------------------------------------------- per-event filters
# The filters below decide keep/drop for each event of a stream (batched over scenes by
# ``b``), exactly as the network's mask output does, so all are scored by the same
# per-event metrics. Parameters are swept on validation data (:data:`SWEEPS`).

NEIGHBOURS_8 = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbour_support(
    b: torch.Tensor, t: torch.Tensor, x: torch.Tensor, y: torch.Tensor, size: tuple[int, int], tau_us: float
) -> torch.Tensor:
    """Number of 8-neighbours (0-8) whose latest event at or before each event's time is at
    most ``tau_us`` µs old: the support of the background-activity filter and of STCF.

    Exact and vectorised: events are sorted by (pixel, t) once, and each neighbour's latest
    event is found by one ``searchsorted`` per neighbour offset (no loop over events).
    """
    h, w = size
    t = t.long()
    span = int(t.max()) + 2 if t.numel() else 1
    pix = (b.long() * h + y.long()) * w + x.long()
    skey, _ = torch.sort(pix * span + t)
    support = torch.zeros(t.shape, dtype=torch.int16, device=t.device)
    for dy, dx in NEIGHBOURS_8:
        ny, nx = y.long() + dy, x.long() + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        npix = (b.long() * h + ny.clamp(0, h - 1)) * w + nx.clamp(0, w - 1)
        j = torch.searchsorted(skey, npix * span + t, right=True) - 1
        jc = j.clamp_min(0)
        found = skey[jc]
        ok = inside & (j >= 0) & (found // span == npix) & (t - found % span <= tau_us)
        support += ok.to(torch.int16)
    return support


def stcf_keep(b: torch.Tensor, t: torch.Tensor, x: torch.Tensor, y: torch.Tensor, size: tuple[int, int], tau_us: float, k: int = 1) -> torch.Tensor:
    """Spatio-temporal correlation filter (Guo & Delbruck 2022, TPAMI): keep an event when at
    least ``k`` of its 8 neighbours fired within the past ``tau_us``. ``k = 1`` is the
    background-activity filter (Delbruck 2008)."""
    return neighbour_support(b, t, x, y, size, tau_us) >= k


def afk_keep(
    b: torch.Tensor,
    t: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    p: torch.Tensor,
    size: tuple[int, int],
    *,
    region_px: int = 4,
    min_period_us: float = 2_000.0,
    max_period_us: float = 20_000.0,
    min_onsets: int = 3,
    regular_fraction: float = 0.7,
    spare_radius: int = 1,
) -> torch.Tensor:
    """Anti-flicker filter in the style of Prophesee's Metavision AFK, sparing the source.

    The sensor is tiled into ``region_px`` x ``region_px`` regions (AFK's 4x4). In each
    region, an *onset* is an ON event that follows an OFF event of the region; a region
    flickers when it has at least ``min_onsets`` onsets and at least ``regular_fraction`` of
    the intervals between consecutive onsets that are longer than a debounce of
    ``min_period_us / 2`` lie in ``[min_period_us, max_period_us]`` (2-20 ms: 50-500 Hz,
    mains lighting at 100/120 Hz included). Events of flickering regions are dropped, except
    within ``spare_radius`` regions (Chebyshev distance) of the scene's most active
    flickering region - the light source itself, which a deflare must keep.
    """
    h, w = size
    rh, rw = -(-h // region_px), -(-w // region_px)
    n_scenes = int(b.max()) + 1 if b.numel() else 1
    R = n_scenes * rh * rw
    t = t.long()
    span = int(t.max()) + 2 if t.numel() else 1
    reg = (b.long() * rh + y.long() // region_px) * rw + x.long() // region_px
    order = torch.argsort(reg * span + t)
    rs, ts, ps = reg[order], t[order], p[order]
    onset = torch.zeros(rs.shape, dtype=torch.bool, device=rs.device)
    onset[1:] = (rs[1:] == rs[:-1]) & (ps[1:] > 0) & (ps[:-1] < 0)
    ro, to = rs[onset], ts[onset]
    d = (to[1:] - to[:-1]).double()
    same = (ro[1:] == ro[:-1]) & (d >= 0.5 * min_period_us)
    d, rr = d[same], ro[1:][same]
    inr = ((d >= min_period_us) & (d <= max_period_us)).double()
    n_int = torch.bincount(rr, minlength=R).double()
    n_in = torch.bincount(rr, weights=inr, minlength=R)
    flick = (n_int >= max(min_onsets - 1, 1)) & (n_in >= regular_fraction * n_int)
    # spare the source: the busiest flickering region of each scene and its neighbours
    act = torch.bincount(reg, minlength=R).double().view(n_scenes, rh, rw)
    fl = flick.view(n_scenes, rh, rw)
    busiest = torch.where(fl, act, torch.full_like(act, -1.0)).view(n_scenes, -1).argmax(1)
    by, bx = busiest // rw, busiest % rw
    gy = torch.arange(rh, device=b.device)[None, :, None]
    gx = torch.arange(rw, device=b.device)[None, None, :]
    near = ((gy - by[:, None, None]).abs() <= spare_radius) & ((gx - bx[:, None, None]).abs() <= spare_radius)
    near &= fl.any(dim=(1, 2))[:, None, None]
    drop = (fl & ~near).reshape(-1) if spare_radius >= 0 else fl.reshape(-1)
    return ~drop[reg]


# parameter grids swept on validation data (each filter is reported at its best flare F1)
SWEEPS: dict[str, list[dict[str, float]]] = {
    "identity": [{}],
    "ba_filter": [{"tau_us": tau, "k": 1} for tau in (500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000)],
    "stcf": [{"tau_us": tau, "k": k} for tau in (1_000, 2_000, 5_000, 10_000, 20_000) for k in (2, 3, 4, 5)],
    "afk": [
        {"min_onsets": m, "regular_fraction": f, "spare_radius": r}
        for m in (2, 3, 4) for f in (0.5, 0.7, 0.9) for r in (-1, 0, 1, 2)
    ],
}


def filter_keep(name: str, ev: dict[str, torch.Tensor], size: tuple[int, int], params: dict[str, float]) -> torch.Tensor:
    """Keep mask of filter ``name`` (identity, ba_filter, stcf, afk) on a labelled event batch."""
    b, t, x, y = ev["b"], ev["t"], ev["x"], ev["y"]
    if name == "identity":
        return torch.ones(t.shape, dtype=torch.bool, device=t.device)
    if name in ("ba_filter", "stcf"):
        return stcf_keep(b, t, x, y, size, float(params["tau_us"]), int(params["k"]))
    if name == "afk":
        return afk_keep(b, t, x, y, ev["p"], size, **params)  # type: ignore[arg-type]
    raise ValueError(f"unknown filter {name!r} (identity, ba_filter, stcf, afk)")
