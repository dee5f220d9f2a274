"""Network output -> physical result: peak search and per-line peak measurements, vectorised on the device.

Units: energies and widths in keV, areas in the units of the spectrum given (counts or normalised counts).

* :func:`measure_lines` - at known line energies: net area (linear background from the window ends),
  centroid (background-subtracted weighted mean of the channels within one measured FWHM of the maximum),
  FWHM (half-maximum crossings with linear interpolation between channels).
* :func:`find_peaks` - multi-scale Mexican-hat (Ricker) search: significance = wavelet response / its Poisson
  standard deviation computed from the measured counts; local maxima above a threshold.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from neurotrain.tasks.gamma.losses import ricker_kernel


def _gather_windows(spec: Tensor, start: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Windows of ``k`` channels from ``start`` (B, L): values (B, L, k) and channel indices (B, L, k)."""
    b, n = spec.shape
    idx = (start.unsqueeze(2) + torch.arange(k, device=spec.device)).clamp(0, n - 1)
    vals = spec.gather(1, idx.reshape(b, -1)).view(*idx.shape)
    return vals, idx


def line_windows(line_e: Tensor, line_mask: Tensor, fwhm_in: Tensor, window_fwhm: float, min_kev: float) -> Tensor:
    """Half-width (keV) of the measurement window of each line: ``window_fwhm`` x input FWHM, but at most
    half the distance to the nearest other line of the spectrum, and at least ``min_kev``."""
    d = (line_e.unsqueeze(2) - line_e.unsqueeze(1)).abs()
    other = line_mask.unsqueeze(1) & line_mask.unsqueeze(2)
    eye = torch.eye(line_e.shape[1], dtype=torch.bool, device=line_e.device).unsqueeze(0)
    d = torch.where(other & ~eye & (d > 0.05), d, torch.full_like(d, 1e9))
    nearest = d.amin(dim=2)
    return torch.minimum(window_fwhm * fwhm_in, 0.5 * nearest).clamp_min(min_kev)


def measure_lines(spec: Tensor, edges: Tensor, line_e: Tensor, half_width: Tensor, tol_kev: float = 3.0) -> dict[str, Tensor]:
    """Measure the peak at each line: returns ``area``, ``centroid``, ``fwhm``, ``height``, ``valid`` (B, L).

    ``spec`` (B, N) on the uniform grid ``edges`` (N+1,); ``line_e`` and ``half_width`` (B, L) keV.
    """
    b, n = spec.shape
    e0 = float(edges[0])
    w = float(edges[1] - edges[0])
    hw_ch = torch.ceil(half_width / w).long().clamp_min(2)
    k = int(2 * int(hw_ch.max()) + 1)
    centre = torch.floor((line_e - e0) / w).long()
    start = centre - k // 2
    vals, idx = _gather_windows(spec, start, k)
    rel = torch.arange(k, device=spec.device).view(1, 1, -1) - k // 2
    inside = rel.abs() <= hw_ch.unsqueeze(2)
    in_range = (start.unsqueeze(2) + torch.arange(k, device=spec.device) >= 0) & (
        start.unsqueeze(2) + torch.arange(k, device=spec.device) < n
    )
    inside = inside & in_range
    # background: straight line between the mean of 2 channels at each window end
    lo_pos = (k // 2 - hw_ch).clamp_min(0)
    hi_pos = (k // 2 + hw_ch).clamp(max=k - 1)
    lo_v = 0.5 * (vals.gather(2, lo_pos.unsqueeze(2)) + vals.gather(2, (lo_pos + 1).clamp(max=k - 1).unsqueeze(2))).squeeze(2)
    hi_v = 0.5 * (vals.gather(2, hi_pos.unsqueeze(2)) + vals.gather(2, (hi_pos - 1).clamp_min(0).unsqueeze(2))).squeeze(2)
    pos = torch.arange(k, device=spec.device).view(1, 1, -1).float()
    frac = ((pos - lo_pos.unsqueeze(2)) / (hi_pos - lo_pos).clamp_min(1).unsqueeze(2)).clamp(0, 1)
    bkg = lo_v.unsqueeze(2) + frac * (hi_v - lo_v).unsqueeze(2)
    net = (vals - bkg) * inside
    area = net.sum(2)
    # maximum within the tolerance around the line
    tol_ch = max(1, int(math.ceil(tol_kev / w)))
    near = inside & (rel.abs() <= tol_ch)
    peak_pos = torch.where(near, net, torch.full_like(net, -1e30)).argmax(2)
    height = net.gather(2, peak_pos.unsqueeze(2)).squeeze(2)
    half = (height / 2).unsqueeze(2)
    below = (net < half) & inside
    left_cand = below & (pos < peak_pos.unsqueeze(2).float())
    right_cand = below & (pos > peak_pos.unsqueeze(2).float())
    li = torch.where(left_cand, pos, torch.full_like(pos, -1)).amax(2).long()
    ri = torch.where(right_cand, pos, torch.full_like(pos, 1e9)).amin(2).long()
    valid = (li >= 0) & (ri < k) & (height > 0)
    li_c, ri_c = li.clamp(0, k - 2), ri.clamp(1, k - 1)
    yl0, yl1 = net.gather(2, li_c.unsqueeze(2)).squeeze(2), net.gather(2, (li_c + 1).unsqueeze(2)).squeeze(2)
    yr0, yr1 = net.gather(2, (ri_c - 1).unsqueeze(2)).squeeze(2), net.gather(2, ri_c.unsqueeze(2)).squeeze(2)
    hh = half.squeeze(2)
    xl = li_c.float() + ((hh - yl0) / (yl1 - yl0).where((yl1 - yl0).abs() > 1e-12, torch.ones_like(yl0))).clamp(0, 1)
    xr = (ri_c - 1).float() + ((yr0 - hh) / (yr0 - yr1).where((yr0 - yr1).abs() > 1e-12, torch.ones_like(yr0))).clamp(0, 1)
    fwhm = (xr - xl) * w
    # centroid: channels within one measured FWHM of the maximum, net counts > 0
    reach = (fwhm / w).clamp_min(1.0).unsqueeze(2)
    cw = net.clamp_min(0) * ((pos - peak_pos.unsqueeze(2).float()).abs() <= reach) * inside
    centres_e = e0 + (idx.float() + 0.5) * w
    centroid = (cw * centres_e).sum(2) / cw.sum(2).clamp_min(1e-12)
    valid = valid & (cw.sum(2) > 0)
    return {"area": area, "centroid": centroid, "fwhm": fwhm, "height": height, "valid": valid}


def significance_map(spec_counts: Tensor, noise_counts: Tensor, scales: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)) -> Tensor:
    """Max over ``scales`` (channels) of Ricker response / sqrt(Poisson variance of the response).

    ``spec_counts`` (B, N) is the spectrum searched (counts); ``noise_counts`` (B, N) the measured counts that
    set the noise level. Returns (B, N)."""
    x = spec_counts.unsqueeze(1)
    v = noise_counts.clamp_min(1.0).unsqueeze(1)
    best = torch.full_like(spec_counts, -1e9)
    for s in scales:  # a handful of wavelet scales, each one batched convolution
        k = ricker_kernel(s, x.device, x.dtype)
        r = F.conv1d(F.pad(x, (k.shape[-1] // 2,) * 2, mode="replicate"), k).squeeze(1)
        var = F.conv1d(F.pad(v, (k.shape[-1] // 2,) * 2, mode="replicate"), k**2).squeeze(1)
        best = torch.maximum(best, r / var.sqrt().clamp_min(1e-9))
    return best


def find_peaks(
    spec_counts: Tensor, noise_counts: Tensor, edges: Tensor, threshold: float = 4.0, min_sep: int = 3
) -> tuple[Tensor, Tensor]:
    """Peak search. Returns (mask (B, N) of peak channels, energies (B, N) keV at those channels, sub-channel
    refined by a 3-point parabola on the spectrum)."""
    sig = significance_map(spec_counts, noise_counts)
    mx = F.max_pool1d(sig.unsqueeze(1), 2 * min_sep + 1, stride=1, padding=min_sep).squeeze(1)
    is_peak = (sig >= mx) & (sig > threshold)
    is_peak[:, :2] = False
    is_peak[:, -2:] = False
    w = float(edges[1] - edges[0])
    y0 = F.pad(spec_counts, (1, 1), mode="replicate")
    ym, yc, yp = y0[:, :-2], y0[:, 1:-1], y0[:, 2:]
    den = ym - 2 * yc + yp
    shift = torch.where(den.abs() > 1e-12, 0.5 * (ym - yp) / den, torch.zeros_like(den)).clamp(-0.5, 0.5)
    energy = float(edges[0]) + (torch.arange(spec_counts.shape[1], device=spec_counts.device) + 0.5 + shift) * w
    return is_peak, energy
