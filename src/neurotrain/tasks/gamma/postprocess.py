"""Network output -> physical result: peak search and per-line peak measurements, vectorised on the device.

Units: energies and widths in keV, areas in the units of the spectrum given (counts or normalised counts).

* :func:`measure_lines` - at known line energies, the window (total peak area) method of Gilmore, "Practical
  Gamma-ray Spectrometry" (2nd ed., 2008), ch. 5: the region of interest (ROI) is +-``half_width`` around the
  line, the continuum under it a straight line through the means of ``side_channels`` channels just outside
  the ROI on each side, net area = ROI sum - continuum sum; its variance G + (n / 2m)^2 * (side sum) (n ROI
  channels, m side channels per side). FWHM: half-maximum crossings of the continuum-subtracted peak,
  linearly interpolated between channels (no Gaussian fit). Centroid: net-weighted mean energy of the
  channels within one measured FWHM of the maximum.
* :func:`find_peaks` - multi-scale Mexican-hat (Ricker) search: significance = wavelet response / its Poisson
  standard deviation computed from the measured counts; local maxima above a threshold. With the input's
  resolution given, each candidate must also carry a significant net area (see :func:`find_peaks`), and the
  measured counts must prefer it as a peak of its own (:func:`peaks_the_counts_support`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from neurotrain.tasks.gamma.baseline import resolution_matrix, richardson_lucy
from neurotrain.tasks.gamma.losses import ricker_kernel
from neurotrain.tasks.gamma.simulate import broaden

#: FWHM of a Gaussian in units of its sigma, 2 sqrt(2 ln 2)
FWHM_PER_SIGMA = 2.3548200450309493
#: Ricker scales (channels) of the peak search: from sub-keV HPGe-like peaks to ~10 % scintillator peaks
PEAK_SCALES = (1.0, 2.0, 4.0, 8.0)


def _gather_windows(spec: Tensor, start: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Windows of ``k`` channels from ``start`` (B, L): values (B, L, k) and channel indices (B, L, k)."""
    b, n = spec.shape
    idx = (start.unsqueeze(2) + torch.arange(k, device=spec.device)).clamp(0, n - 1)
    vals = spec.gather(1, idx.reshape(b, -1)).view(*idx.shape)
    return vals, idx


def line_windows(
    line_e: Tensor, line_mask: Tensor, fwhm_in: Tensor, window_fwhm: float, min_kev: float,
    line_area: Tensor | None = None, neighbour_fraction: float = 0.05,
) -> Tensor:
    """Half-width (keV) of the ROI of each line: ``window_fwhm`` x input FWHM, but at most half the distance to
    the nearest other line of the spectrum, and at least ``min_kev``. With ``line_area`` given, only
    neighbours holding more than ``neighbour_fraction`` of the line's area shorten the ROI (a weak neighbour
    biases the net area by less than that fraction; a 2.5-channel ROI on a broad peak measures noise)."""
    d = (line_e.unsqueeze(2) - line_e.unsqueeze(1)).abs()
    other = line_mask.unsqueeze(1) & line_mask.unsqueeze(2)
    if line_area is not None:
        other = other & (line_area.unsqueeze(1) > neighbour_fraction * line_area.unsqueeze(2))
    eye = torch.eye(line_e.shape[1], dtype=torch.bool, device=line_e.device).unsqueeze(0)
    d = torch.where(other & ~eye & (d > 0.05), d, torch.full_like(d, 1e9))
    nearest = d.amin(dim=2)
    return torch.minimum(window_fwhm * fwhm_in, 0.5 * nearest).clamp_min(min_kev)


def measure_lines(
    spec: Tensor, edges: Tensor, line_e: Tensor, half_width: Tensor, tol_kev: float = 3.0,
    noise_var: Tensor | None = None, min_significance: float = 0.0, side_channels: int = 2,
    min_roi_fwhm: float = 1.0,
) -> dict[str, Tensor]:
    """Measure the peak at each line by the window method (module docstring).

    ``spec`` (B, N) on the uniform grid ``edges`` (N+1,); ``line_e`` and ``half_width`` (B, L) keV.
    ``noise_var`` (B, N): variance of each channel in the units of ``spec`` (the measured counts, scaled);
    without it the significance is infinite. Returns ``area``, ``area_sigma``, ``significance``, ``centroid``,
    ``fwhm``, ``height``, ``valid`` and ``crossings`` (both half-maximum crossings found in the ROI), each
    (B, L). A measurement is valid when the ROI and its side channels lie inside the spectrum, the continuum-subtracted maximum within ``tol_kev`` of the line is positive, both
    half-maximum crossings lie inside the ROI, the ROI reaches at least ``min_roi_fwhm`` measured FWHM on each
    side of the line (else the side channels sit on the peak's own flanks and the "peak" is a cap of it), and
    area / area_sigma >= ``min_significance``. An invalid line is a miss: its numbers mean nothing.
    """
    b, n = spec.shape
    dev = spec.device
    e0 = float(edges[0])
    w = float(edges[1] - edges[0])
    m = int(side_channels)
    hw_ch = torch.ceil(half_width / w - 1e-6).long().clamp_min(1)  # ROI: centre channel +- hw_ch
    k = int(2 * (int(hw_ch.max()) + m) + 1)
    centre = torch.floor((line_e - e0) / w).long()
    start = centre - k // 2
    vals, idx = _gather_windows(spec, start, k)
    rel = torch.arange(k, device=dev).view(1, 1, -1) - k // 2
    hw3 = hw_ch.unsqueeze(2)
    inside = rel.abs() <= hw3
    left_side = (rel < -hw3) & (rel >= -hw3 - m)
    right_side = (rel > hw3) & (rel <= hw3 + m)
    in_spectrum = (centre - hw_ch - m >= 0) & (centre + hw_ch + m < n)
    lo_v = (vals * left_side).sum(2) / m
    hi_v = (vals * right_side).sum(2) / m
    # continuum: straight line through the side means at their mean positions -(hw + (m+1)/2), +(hw + (m+1)/2)
    x_side = hw_ch.float() + 0.5 * (m + 1)
    relf = rel.float()
    bkg = lo_v.unsqueeze(2) + (relf + x_side.unsqueeze(2)) * ((hi_v - lo_v) / (2 * x_side)).unsqueeze(2)
    net = (vals - bkg) * inside
    area = net.sum(2)
    n_roi = (2 * hw_ch + 1).float()
    if noise_var is not None:
        var_vals, _ = _gather_windows(noise_var, start, k)
        g = (var_vals * inside).sum(2)
        side = (var_vals * (left_side | right_side)).sum(2)
        area_sigma = torch.sqrt((g + (n_roi / (2 * m)) ** 2 * side).clamp_min(1e-12))
        significance = area / area_sigma
    else:
        area_sigma = torch.zeros_like(area)
        significance = torch.full_like(area, float("inf"))
    # maximum within the tolerance around the line
    tol_ch = max(1, int(math.ceil(tol_kev / w)))
    near = inside & (rel.abs() <= tol_ch)
    pos = torch.arange(k, device=dev).view(1, 1, -1).float()
    peak_pos = torch.where(near, net, torch.full_like(net, -1e30)).argmax(2)
    height = net.gather(2, peak_pos.unsqueeze(2)).squeeze(2)
    half = (height / 2).unsqueeze(2)
    below = (net < half) & inside
    left_cand = below & (pos < peak_pos.unsqueeze(2).float())
    right_cand = below & (pos > peak_pos.unsqueeze(2).float())
    li = torch.where(left_cand, pos, torch.full_like(pos, -1)).amax(2).long()
    ri = torch.where(right_cand, pos, torch.full_like(pos, 1e9)).amin(2).long()
    crossings = (li >= 0) & (ri < k)  # both half-maximum crossings inside the ROI: an FWHM exists
    valid = crossings & (height > 0) & in_spectrum
    li_c, ri_c = li.clamp(0, k - 2), ri.clamp(1, k - 1)
    yl0, yl1 = net.gather(2, li_c.unsqueeze(2)).squeeze(2), net.gather(2, (li_c + 1).unsqueeze(2)).squeeze(2)
    yr0, yr1 = net.gather(2, (ri_c - 1).unsqueeze(2)).squeeze(2), net.gather(2, ri_c.unsqueeze(2)).squeeze(2)
    hh = half.squeeze(2)
    xl = li_c.float() + ((hh - yl0) / (yl1 - yl0).where((yl1 - yl0).abs() > 1e-12, torch.ones_like(yl0))).clamp(0, 1)
    xr = (ri_c - 1).float() + ((yr0 - hh) / (yr0 - yr1).where((yr0 - yr1).abs() > 1e-12, torch.ones_like(yr0))).clamp(0, 1)
    fwhm = (xr - xl) * w
    # the ROI must hold the peak: its edges at least min_roi_fwhm measured FWHM from the line
    valid = valid & ((hw_ch.float() + 0.5) * w >= min_roi_fwhm * fwhm)
    valid = valid & (significance >= min_significance)
    # centroid: channels within one measured FWHM of the maximum, net counts > 0
    reach = (fwhm / w).clamp_min(1.0).unsqueeze(2)
    cw = net.clamp_min(0) * ((pos - peak_pos.unsqueeze(2).float()).abs() <= reach) * inside
    centres_e = e0 + (idx.float() + 0.5) * w
    centroid = (cw * centres_e).sum(2) / cw.sum(2).clamp_min(1e-12)
    valid = valid & (cw.sum(2) > 0)
    return {
        "area": area, "area_sigma": area_sigma, "significance": significance, "centroid": centroid,
        "fwhm": fwhm, "height": height, "valid": valid, "crossings": crossings,
    }


def _unit_gauss_response(kernel: Tensor, sigma: float) -> float:
    """Response of a Ricker ``kernel`` (1, 1, K) to a unit-area Gaussian of ``sigma`` channels at its centre."""
    half = kernel.shape[-1] // 2
    x = torch.arange(-half, half + 1, device=kernel.device, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return float((kernel.double().flatten() * g / g.sum()).sum())


def significance_map(
    spec_counts: Tensor, noise_counts: Tensor, scales: tuple[float, ...] = PEAK_SCALES, min_sep: int | None = None,
    return_area: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Ricker response / sqrt(Poisson variance of the response), best over ``scales`` (channels).

    ``spec_counts`` (B, N) is the spectrum searched (counts); ``noise_counts`` (B, N) the measured counts that
    set the noise level. Returns (B, N). With ``min_sep`` a scale counts at a channel only where its own map
    has a local maximum within +-``min_sep`` channels (else a broad scale centred on a strong peak hides a
    weaker neighbour found at a fine scale); elsewhere the value is -inf. With ``return_area`` also the
    wavelet estimate of the net peak area (B, N): the response at the chosen scale divided by that scale's
    response to a unit-area Gaussian of sigma = scale (zero-sum kernel: a smooth continuum drops out)."""
    x = spec_counts.unsqueeze(1)
    v = noise_counts.clamp_min(1.0).unsqueeze(1)
    best = torch.full_like(spec_counts, float("-inf"))
    area = torch.zeros_like(spec_counts)
    for s in scales:  # a handful of wavelet scales, each one batched convolution
        k = ricker_kernel(s, x.device, x.dtype)
        r = F.conv1d(F.pad(x, (k.shape[-1] // 2,) * 2, mode="replicate"), k).squeeze(1)
        var = F.conv1d(F.pad(v, (k.shape[-1] // 2,) * 2, mode="replicate"), k**2).squeeze(1)
        sig = r / var.sqrt().clamp_min(1e-9)
        if min_sep is not None:
            mx = F.max_pool1d(sig.unsqueeze(1), 2 * min_sep + 1, stride=1, padding=min_sep).squeeze(1)
            sig = torch.where(sig >= mx, sig, torch.full_like(sig, float("-inf")))
        area = torch.where(sig > best, r / _unit_gauss_response(k, s), area)
        best = torch.maximum(best, sig)
    return (best, area) if return_area else best


def _window_sum(cum: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Sum of channels lo..hi (inclusive, clamped) from a zero-prefixed cumulative sum (B, N+1)."""
    n = cum.shape[1] - 1
    lo = lo.clamp(0, n - 1)
    hi = hi.clamp(0, n - 1)
    return cum.gather(1, hi + 1) - cum.gather(1, lo)


def resolution_counts(noise_counts: Tensor, edges: Tensor, resolution_kev: Tensor) -> Tensor:
    """Measured counts (B, N) within +-1 input FWHM (``resolution_kev`` (B, N) keV) of each channel: the data
    that any method has to build a peak at that channel from."""
    w = float(edges[1] - edges[0])
    b, n = noise_counts.shape
    r = torch.ceil(resolution_kev / w).long().clamp_min(1)
    cum = F.pad(torch.cumsum(noise_counts, 1), (1, 0))
    c = torch.arange(n, device=noise_counts.device).unsqueeze(0).expand(b, -1)
    return _window_sum(cum, c - r, c + r)


def find_peaks(
    spec_counts: Tensor, noise_counts: Tensor, edges: Tensor, threshold: float = 4.0, min_sep: int = 3,
    resolution_kev: Tensor | None = None, measured_domain: bool = False, merge_reach_fwhm: float | None = 1.0,
    continuum_width_fwhm: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Peak search. Returns (mask (B, N) of peak channels, energies (B, N) keV at those channels, sub-channel
    refined by a 3-point parabola on the spectrum).

    Candidates are local maxima (+-``min_sep`` channels) of the Ricker significance above ``threshold`` at any
    scale, the most significant one kept within +-``min_sep`` channels (:func:`significance_map`).
    With ``resolution_kev`` (B, N), the input detector's FWHM at each channel, a candidate is kept only when
    its wavelet net-area estimate (:func:`significance_map`) is at least ``threshold`` x sqrt(measured counts within +-1 input
    FWHM) - a Currie-type test against the counts that every method (input, deconvolution, network, ideal
    target) has to build that peak from. It rejects what the per-channel test alone lets through at high
    counts: wiggles of the continuum, steps (Compton edges, Lu-176 beta onsets) and ringing beside strong
    peaks, none of which carries a significant net area. Then, unless ``merge_reach_fwhm`` is None, each
    survivor must pass :func:`peaks_the_counts_support` (``measured_domain``: ``spec_counts`` is itself at the
    input resolution, e.g. the measured spectrum; ``continuum_width_fwhm``: its null for isolated peaks)."""
    sig, area = significance_map(spec_counts, noise_counts, min_sep=min_sep, return_area=True)
    mx = F.max_pool1d(sig.unsqueeze(1), 2 * min_sep + 1, stride=1, padding=min_sep).squeeze(1)
    is_peak = (sig >= mx) & (sig > threshold)
    is_peak[:, :2] = False
    is_peak[:, -2:] = False
    if resolution_kev is not None:
        resolution_kev = resolution_kev.expand_as(spec_counts)
        n_res = resolution_counts(noise_counts, edges, resolution_kev)
        is_peak = is_peak & (area >= threshold * n_res.clamp_min(1.0).sqrt())
        if merge_reach_fwhm is not None:
            is_peak = peaks_the_counts_support(
                spec_counts, noise_counts, edges, is_peak, area, resolution_kev, threshold, measured_domain,
                merge_reach_fwhm, continuum_width_fwhm=continuum_width_fwhm,
            )
    w = float(edges[1] - edges[0])
    y0 = F.pad(spec_counts, (1, 1), mode="replicate")
    ym, yc, yp = y0[:, :-2], y0[:, 1:-1], y0[:, 2:]
    den = ym - 2 * yc + yp
    shift = torch.where(den.abs() > 1e-12, 0.5 * (ym - yp) / den, torch.zeros_like(den)).clamp(-0.5, 0.5)
    energy = float(edges[0]) + (torch.arange(spec_counts.shape[1], device=spec_counts.device) + 0.5 + shift) * w
    return is_peak, energy


def peaks_the_counts_support(
    spec_counts: Tensor, counts: Tensor, edges: Tensor, peaks: Tensor, area: Tensor, resolution_kev: Tensor,
    threshold: float, measured_domain: bool = False, merge_reach_fwhm: float = 1.0, side_channels: int = 3,
    max_elements: int = 1 << 24, continuum_width_fwhm: float | None = None,
) -> Tensor:
    """Keep the found ``peaks`` (B, N) that the measured ``counts`` (B, N) support as peaks of their own.

    A sharpened spectrum can split one measured peak into several, or put ringing beside it; the measured
    counts cannot tell such structure apart from one peak when it lies well within the input resolution.
    For each candidate two forward models of the counts are compared: the spectrum broadened to the input
    resolution (``resolution_kev`` (B, N), FWHM in keV), and the same with the candidate's net area moved
    into the nearest candidate of larger wavelet area within ``merge_reach_fwhm`` input FWHM - or, when there
    is none, removed, or with ``continuum_width_fwhm`` spread as a Gaussian that many input FWHM wide (the
    counts there are continuum shape, not a line: a network that gathers a smooth continuum into a narrow
    peak leaves its own continuum short, and against mere removal that shortfall would vouch for the peak).
    The net area is :func:`measure_lines`'s (``side_channels`` per side) over +-1 input
    FWHM, narrowed to half the distance to that larger neighbour (so the neighbour's area never moves with
    it); it moves as a Gaussian of the input FWHM. The candidate is kept when the Poisson likelihood ratio prefers the first model by
    2 ln LR >= ``threshold``^2 (Wilks: ``threshold`` sigma for one parameter). The same rule applies to every
    enhanced spectrum (network, baseline, target), so the test compares methods on what the data say.
    ``measured_domain`` (the spectrum is the measurement itself) skips the test: a model equal to the counts
    leaves it without power. ``area`` (B, N), the wavelet area estimate, only ranks the candidates; spectra
    are taken in groups whose (group, candidates, N) working set stays under ``max_elements``.
    """
    if measured_domain or not bool(peaks.any()):
        return peaks
    b, n = spec_counts.shape
    k = int(peaks.sum(1).max())
    chunk = max(1, max_elements // (k * max(k, n)))
    score = torch.where(peaks, area, torch.full_like(area, float("-inf")))
    top, idx = score.topk(k, dim=1)
    valid = torch.isfinite(top)
    if not bool(valid.any()):
        return peaks
    centres = 0.5 * (edges[1:] + edges[:-1])
    width = float(edges[1] - edges[0])
    # continue the spectrum beyond both ends by its end values, so that broadening does not lose the
    # continuum there (a model short of counts near an end would welcome any invented peak)
    pad = min(n, int(math.ceil(3 * float(resolution_kev.max()) / width)))
    steps = torch.arange(1, pad + 1, device=edges.device, dtype=edges.dtype) * width
    edges_ext = torch.cat([edges[0] - steps.flip(0), edges, edges[-1] + steps])
    model = broaden(
        F.pad(spec_counts.clamp_min(0).unsqueeze(1), (pad, pad), mode="replicate").squeeze(1), edges_ext,
        F.pad(resolution_kev.unsqueeze(1), (pad, pad), mode="replicate").squeeze(1),
    )[:, pad : pad + n].clamp_min(1e-6)
    fw = resolution_kev.gather(1, idx)
    keep = torch.ones_like(valid)
    for s in range(0, b, chunk):  # groups of spectra bound the (group, K, K) and (group, K, N) working sets
        sl = slice(s, s + chunk)
        idx_k, top_k, v_k, fw_k = idx[sl], top[sl], valid[sl], fw[sl]
        e_k = centres[idx_k]
        # partner: the nearest candidate with a larger wavelet area within merge_reach_fwhm input FWHM
        d = (e_k.unsqueeze(2) - e_k.unsqueeze(1)).abs()
        larger = (top_k.unsqueeze(1) > top_k.unsqueeze(2)) & v_k.unsqueeze(1) & (d <= merge_reach_fwhm * fw_k.unsqueeze(2))
        dmin, partner = torch.where(larger, d, torch.full_like(d, float("inf"))).min(2)
        has = torch.isfinite(dmin)
        # net area by the window method, the window narrowed to half the gap to the larger neighbour
        half = torch.ceil(fw_k / width)
        half = torch.where(has, torch.minimum(half, torch.floor((torch.round(dmin / width) - 1) / 2)), half).clamp_min(1)
        a_k = measure_lines(spec_counts[sl], edges, e_k, half * width, side_channels=side_channels)["area"]
        a_k = a_k.clamp_min(0).masked_fill(~v_k, 0.0)
        sig = (fw_k / FWHM_PER_SIGMA).clamp_min(1e-3).unsqueeze(2)
        cdf = torch.special.ndtr((edges.view(1, 1, -1) - e_k.unsqueeze(2)) / sig)
        shape = cdf[..., 1:] - cdf[..., :-1]  # (c, K, N): unit-area peak at the input resolution
        if continuum_width_fwhm is None:
            elsewhere = torch.zeros_like(shape)
        else:
            wide = torch.special.ndtr((edges.view(1, 1, -1) - e_k.unsqueeze(2)) / (sig * continuum_width_fwhm))
            elsewhere = wide[..., 1:] - wide[..., :-1]
        moved = torch.where(has.unsqueeze(2), shape.gather(1, partner.unsqueeze(2).expand(-1, -1, n)), elsewhere)
        m1 = model[sl].unsqueeze(1)
        m0 = (m1 + a_k.unsqueeze(2) * (moved - shape)).clamp_min(1e-6)
        llr = (counts[sl].unsqueeze(1) * torch.log(m1 / m0) - (m1 - m0)).sum(2)
        keep[sl] = (2 * llr >= threshold**2) | ~v_k
    drop = torch.zeros_like(peaks).scatter_(1, idx, valid & ~keep)
    return peaks & ~drop


def refine_to_counts(spec: Tensor, counts: Tensor, edges: Tensor, r662: float, power: float, iterations: int) -> Tensor:
    """Data-consistency refinement of enhanced spectra ``spec`` (B, N, counts per channel) against the measured
    ``counts`` (B, N): ``iterations`` Richardson-Lucy steps with the input detector's resolution (FWHM law
    ``r662``, ``power``), started from ``spec``.

    Each step multiplies the spectrum by A^T (y / A x) / A^T 1, a factor that varies only on the scale of the
    input resolution: peak areas move to what the measured counts support (the network places peaks well,
    but its areas scatter), and no structure finer than that scale is added. Where a peak of ``spec`` and the
    data disagree in position the factor tilts across it and widens it. 0 iterations returns ``spec``.
    """
    if iterations <= 0:
        return spec
    a = resolution_matrix(edges.to(spec.device), r662, power).to(spec.dtype)
    return richardson_lucy(counts.to(spec.dtype), a, iterations, init=spec)


def compact_peaks(peaks: Tensor, energy: Tensor) -> tuple[Tensor, Tensor]:
    """Peak mask (B, N) and channel energies (B, N) -> a padded peak list: energies (B, K) keV in ascending
    order and their validity (B, K), K the most peaks of any spectrum (at least 1)."""
    k = max(1, int(peaks.sum(1).max())) if peaks.numel() else 1
    score = torch.where(peaks, -energy, torch.full_like(energy, float("-inf")))
    top, idx = score.topk(min(k, peaks.shape[1]), dim=1)
    valid = torch.isfinite(top)
    return torch.where(valid, energy.gather(1, idx), torch.zeros_like(top)), valid


def physical_peaks(
    spec: Tensor, edges: Tensor, energy: Tensor, valid: Tensor, fwhm_in: Tensor, window_fwhm: float, tol_kev: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Drop the physically impossible peaks of a peak list: those whose window measurement
    (:func:`measure_lines`, ROI +-``window_fwhm`` x ``fwhm_in`` keV, narrowed by the list's other peaks) gives
    a net area <= 0, no positive maximum, or no FWHM (a half-maximum crossing missing inside the ROI: the
    list would carry NaN). A negative-area "peak" is what the window method returns where there is a dip, not
    a line. Nothing else is asked here (ROI inside the spectrum, significance): those are the search's tests.

    ``spec`` (B, N) on ``edges``; ``energy``, ``valid``, ``fwhm_in`` (B, K). Returns (keep (B, K), the
    measurement dict of :func:`measure_lines`); ``valid & ~keep`` are the dropped peaks, to be counted."""
    width = float(edges[1] - edges[0])
    hw = line_windows(energy, valid, fwhm_in, window_fwhm, 2.5 * width)
    m = measure_lines(spec, edges, energy, hw, tol_kev)
    possible = m["crossings"] & (m["height"] > 0) & (m["area"] > 0) & torch.isfinite(m["fwhm"]) & (m["fwhm"] > 0)
    return valid & possible, m


def counts_support(counts: Tensor, edges: Tensor, energy: Tensor, fwhm_kev: Tensor, reach_fwhm: float = 2.0) -> tuple[Tensor, Tensor]:
    """How strongly the *measured* counts themselves hold a line at each ``energy`` (K,) keV of input FWHM
    ``fwhm_kev`` (K,): weighted least squares, over the channels within +-``reach_fwhm`` FWHM, of a quadratic
    continuum plus a Gaussian of that FWHM at that energy (weights 1 / max(counts, 1), the Poisson variance),
    on any grid ``edges`` (N+1,), uniform or not. Returns (net area counts, its significance area / sigma),
    each (K,). A line an enhanced spectrum lists where this is below the detection threshold is not in the
    data: the counts prefer no peak there (e.g. a 121.6 keV line in a Ba-133 + Cs-137 CsI spectrum)."""
    e64, edges64 = energy.double().view(-1, 1), edges.double().view(1, -1)
    fw = fwhm_kev.double().view(-1, 1).clamp_min(1e-6)
    centres = 0.5 * (edges64[:, 1:] + edges64[:, :-1])
    x = (centres - e64) / fw  # (K, N)
    sig = fw / FWHM_PER_SIGMA
    g = torch.special.ndtr((edges64[:, 1:] - e64) / sig) - torch.special.ndtr((edges64[:, :-1] - e64) / sig)
    w = (x.abs() < reach_fwhm).double() / counts.double().clamp_min(1.0).view(1, -1)
    design = torch.stack([torch.ones_like(x), x, x**2, g], 2)  # (K, N, 4)
    a = torch.einsum("kni,kn,knj->kij", design, w, design)
    rhs = torch.einsum("kni,kn,n->ki", design, w, counts.double())
    # a window too short for four parameters is singular: no support
    a = a + 1e-9 * torch.eye(4, dtype=a.dtype, device=a.device)
    beta = torch.linalg.solve(a, rhs)
    var = torch.linalg.inv(a)[:, 3, 3].clamp_min(1e-30)
    return beta[:, 3].to(energy.dtype), (beta[:, 3] / var.sqrt()).to(energy.dtype)
