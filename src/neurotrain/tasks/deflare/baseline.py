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
