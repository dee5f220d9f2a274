"""Energy grids, resolution laws and count-conserving broadening of the gamma task (keV, counts).

* Scintillator law FWHM(E) = r662 x 662 keV x (E / 662 keV)^p (GADRAS/MCNP GEB-like power law).
* HPGe law FWHM^2 = a + b E + c E^2 (:func:`hpge_fwhm`), the quadrature sum of electronic noise, Fano statistics
  and charge collection (``hpge.fwhm_coefficients``) or a fit through three anchors (:func:`hpge_coefficients`).
* :func:`broaden`: a variable-width Gaussian as one fixed-width convolution in u(E) = integral dE / FWHM(E);
  :func:`gaussian_lines`: exact Gaussians integrated over channels; :func:`resolution_matrix`: a fixed law as an
  (N, N) matrix, so a fixed-resolution detector costs one matrix product per batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from neurotrain.tasks.gamma import physics

def channel_edges(sim: Any, device: torch.device | None = None) -> torch.Tensor:
    """Channel edges (keV), ``n_channels + 1`` values from ``e_min_kev`` to ``e_max_kev``."""
    return torch.linspace(sim.e_min_kev, sim.e_max_kev, sim.n_channels + 1, device=device)


def measured_energy(e_true: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Library (true) energies, (M,) or (B, M) keV, where each spectrum's calibration shows them: (B, M).
    Identity for batches without ``calibration`` (files written before it existed)."""
    cal = batch.get("calibration")
    if e_true.dim() == 1:
        ref = cal if cal is not None else batch["input"]
        e_true = e_true.to(ref.device, torch.float32).expand(ref.shape[0], -1)
    return e_true if cal is None else e_true * cal[:, :1] + cal[:, 1:2]


def true_energy(e_meas: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`measured_energy` for (B, M) energies."""
    cal = batch.get("calibration")
    return e_meas if cal is None else (e_meas - cal[:, 1:2]) / cal[:, :1]


def channel_centers(sim: Any, device: torch.device | None = None) -> torch.Tensor:
    e = channel_edges(sim, device)
    return 0.5 * (e[1:] + e[:-1])


def scint_fwhm(energy: torch.Tensor, r662: torch.Tensor, power: torch.Tensor) -> torch.Tensor:
    """Scintillator FWHM (keV): r662 * 662 * (E/662)^power; parameters broadcast against ``energy``."""
    return r662 * 662.0 * (energy.clamp_min(1.0) / 662.0) ** power


def hpge_coefficients(anchors: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(a, b, c) of FWHM^2 = a + b E + c E^2 through three (energy keV, FWHM keV) anchors."""
    e = torch.tensor([a[0] for a in anchors], dtype=torch.float64)
    f = torch.tensor([a[1] for a in anchors], dtype=torch.float64)
    m = torch.stack([torch.ones_like(e), e, e**2], dim=1)
    a, b, c = torch.linalg.solve(m, f**2).tolist()
    return a, b, c


def hpge_fwhm(energy: torch.Tensor, coeffs: tuple[float, float, float]) -> torch.Tensor:
    a, b, c = coeffs
    return torch.sqrt((a + b * energy + c * energy**2).clamp_min(0.01))


def batched_interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Linear interpolation per row: ``x`` (B, M), ``xp`` (B, K) increasing, ``fp`` (B, K); clamped ends."""
    if xp.dim() == 1:
        xp = xp.expand(x.shape[0], -1)
    if fp.dim() == 1:
        fp = fp.expand(x.shape[0], -1)
    xp = xp.contiguous()
    idx = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.shape[1] - 1)
    x0, x1 = xp.gather(1, idx - 1), xp.gather(1, idx)
    f0, f1 = fp.gather(1, idx - 1), fp.gather(1, idx)
    t = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return f0 + t * (f1 - f0)


def broaden(
    hist: torch.Tensor,
    edges: torch.Tensor,
    fwhm_at: torch.Tensor,
    out_true_edges: torch.Tensor | None = None,
    points_per_fwhm: float = 4.0,
) -> torch.Tensor:
    """Gaussian broadening with an energy-dependent width, conserving counts.

    Args:
        hist: (B, N) counts per channel (deposits).
        edges: (N+1,) channel edges, keV.
        fwhm_at: (B, N) FWHM in keV at each channel centre (per sample).
        out_true_edges: (B, N+1) true energies of the *measured* channel edges (gain/offset jitter);
            default the same grid.
        points_per_fwhm: sampling of the u grid.
    Returns:
        (B, N) broadened counts on the measured grid.
    """
    b, n = hist.shape
    de = (edges[1:] - edges[:-1]).unsqueeze(0)
    u_edges = torch.cat([torch.zeros(b, 1, device=hist.device), torch.cumsum(de / fwhm_at.clamp_min(1e-3), 1)], 1)
    u_tot = u_edges[:, -1:]
    n_u = int(min(max(math.ceil(float(u_tot.max()) * points_per_fwhm), n), 8 * n))
    grid = torch.linspace(0, 1, n_u + 1, device=hist.device).unsqueeze(0) * u_tot  # (B, n_u+1)
    # cumulative sums in float64: in float32 a 1e7-count spectrum's differences would step by ~1 count per channel
    f64 = torch.float64
    cdf = torch.cat([torch.zeros(b, 1, device=hist.device, dtype=f64), torch.cumsum(hist.to(f64), 1)], 1)
    cdf_u = batched_interp(grid, u_edges, cdf)
    counts_u = (cdf_u[:, 1:] - cdf_u[:, :-1]).to(hist.dtype)
    du = u_tot / n_u  # (B,1) u units per bin
    sigma_bins = (1.0 / 2.3548200450309493) / du  # (B,1)
    half = int(math.ceil(4 * float(sigma_bins.max())))
    x = torch.arange(-half, half + 1, device=hist.device, dtype=hist.dtype).unsqueeze(0)
    # integrate the Gaussian over each bin so narrow kernels stay normalised
    lo = torch.special.ndtr((x - 0.5) / sigma_bins)
    hi = torch.special.ndtr((x + 0.5) / sigma_bins)
    kern = (hi - lo)
    kern = kern / kern.sum(1, keepdim=True)
    out_u = torch.nn.functional.conv1d(
        counts_u.unsqueeze(0), kern.flip(1).unsqueeze(1), padding=half, groups=b
    ).squeeze(0)
    cdf_back = torch.cat([torch.zeros(b, 1, device=hist.device, dtype=f64), torch.cumsum(out_u.to(f64), 1)], 1)
    target_edges = out_true_edges if out_true_edges is not None else edges.unsqueeze(0).expand(b, -1)
    u_at = batched_interp(target_edges, edges, u_edges)
    cdf_out = batched_interp(u_at, grid, cdf_back)
    # energies outside the grid: clamp to the cumulative ends (no counts created)
    return (cdf_out[:, 1:] - cdf_out[:, :-1]).clamp_min(0).to(hist.dtype)


def gaussian_lines(
    centers: torch.Tensor, areas: torch.Tensor, fwhm: torch.Tensor, edges: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """Sum of Gaussian peaks integrated over channels: ``centers``/``areas``/``fwhm`` (B, L) -> (B, N).

    Each peak is evaluated in a window of +-5 sigma (of the widest peak) around its centre and added with
    ``scatter_add``, so the cost is B x L x window, not B x L x N. Uniform channel edges assumed.
    """
    b, n_l = centers.shape
    n = edges.numel() - 1
    out = torch.zeros(b, n, device=centers.device, dtype=areas.dtype)
    keep = (areas > 0).any(0)
    if not bool(keep.any()):
        return out
    centers, areas, fwhm = centers[:, keep], areas[:, keep], fwhm[:, keep]
    sig = (fwhm / 2.3548200450309493).clamp_min(1e-3)
    e0 = float(edges[0])
    width = float(edges[1] - edges[0])
    k = int(min(n, math.ceil(10 * float(sig.max()) / width) + 3))
    offs = torch.arange(k + 1, device=centers.device)
    for s in range(0, centers.shape[1], chunk):  # chunks of lines bound the memory of (B, L, K)
        c, a, sg = centers[:, s : s + chunk], areas[:, s : s + chunk], sig[:, s : s + chunk]
        start = (torch.floor((c - e0) / width).long() - k // 2).clamp(0, max(n - k, 0))
        idx = start.unsqueeze(2) + offs  # (B, l, K+1) edge indices
        e = e0 + idx.to(c.dtype) * width
        cdf = torch.special.ndtr((e - c.unsqueeze(2)) / sg.unsqueeze(2))
        val = a.unsqueeze(2) * (cdf[..., 1:] - cdf[..., :-1])
        ch = idx[..., :-1].clamp(max=n - 1)
        out.scatter_add_(1, ch.reshape(b, -1), val.reshape(b, -1))
    return out


def room_return(line_e: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Energy distribution (B, L, N), per photon of each line ``line_e`` (B, L) keV, of the photons that reach
    the crystal after one Compton scatter in the surroundings: the Klein-Nishina distribution
    dsigma/dE' ~ eps + 1/eps - sin^2(theta) (eps = E'/E) over all angles, E' from E / (1 + 2E/511 keV) to E
    (Evans, "The Atomic Nucleus", 1955, ch. 23), integrated over channels; each row sums to 1 (0 for lines
    below the grid). Room walls, floor and table scatter at every angle; the slab response models only
    180-degree returns."""
    centers = 0.5 * (edges[1:] + edges[:-1])
    e = line_e.unsqueeze(2)
    eps = centers.view(1, 1, -1) / e.clamp_min(1e-3)
    k = e / physics.ME_C2
    inside = (eps <= 1) & (eps >= 1 / (1 + 2 * k))
    cos_t = 1 - (1 / eps.clamp_min(1e-6) - 1) / k.clamp_min(1e-9)
    shape = torch.where(inside, eps + 1 / eps.clamp_min(1e-6) - (1 - cos_t**2), torch.zeros_like(eps))
    return shape / shape.sum(2, keepdim=True).clamp_min(1e-12)


def resolution_matrix(edges: torch.Tensor, fwhm: torch.Tensor) -> torch.Tensor:
    """(N, N) matrix G of a fixed resolution law: row i is a deposit at channel centre i spread as a Gaussian of
    FWHM ``fwhm[i]`` (keV), integrated over the channels; rows sum to 1 (what leaves the grid is put back at the
    ends' neighbours, so counts are conserved). ``spectrum @ G`` broadens a batch of deposit histograms."""
    centers = 0.5 * (edges[1:] + edges[:-1])
    sig = (fwhm / 2.3548200450309493).clamp_min(1e-3).unsqueeze(1)
    cdf = torch.special.ndtr((edges.unsqueeze(0) - centers.unsqueeze(1)) / sig)  # (N, N+1)
    g = cdf[:, 1:] - cdf[:, :-1]
    g[:, 0] += cdf[:, 0]
    g[:, -1] += 1 - cdf[:, -1]
    return g


def resample(hist: torch.Tensor, edges: torch.Tensor, out_true_edges: torch.Tensor) -> torch.Tensor:
    """Counts of ``hist`` (B, N) on ``edges`` moved onto measured channels whose edges sit at the true energies
    ``out_true_edges`` (B, N+1) (gain/offset jitter), through the cumulative sum: counts are conserved inside the
    grid."""
    b = hist.shape[0]
    f64 = torch.float64  # as in broaden: float32 cumulative sums of 1e7 counts step by ~1 count
    cdf = torch.cat([torch.zeros(b, 1, device=hist.device, dtype=f64), torch.cumsum(hist.to(f64), 1)], 1)
    out = batched_interp(out_true_edges, edges.unsqueeze(0).expand(b, -1), cdf)
    return (out[:, 1:] - out[:, :-1]).clamp_min(0).to(hist.dtype)


def bin_lines(energy: torch.Tensor, area: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Lines ``energy``/``area`` (B, L) as a (B, N) histogram, each area split linearly between the two channel
    centres around its energy (centroid exact); lines outside the grid are dropped. Uniform channels assumed."""
    b = energy.shape[0]
    n = edges.numel() - 1
    width = edges[1] - edges[0]
    pos = (energy - edges[0]) / width - 0.5
    lo = torch.floor(pos)
    f = pos - lo
    lo = lo.long()
    inside = (energy >= edges[0]) & (energy < edges[-1])
    a = torch.where(inside, area, torch.zeros_like(area))
    out = torch.zeros(b, n, device=energy.device, dtype=area.dtype)
    # half a channel at either end has one neighbour only: all of the area goes to it
    w_hi = torch.where(lo < 0, torch.ones_like(f), torch.where(lo + 1 > n - 1, torch.zeros_like(f), f))
    out.scatter_add_(1, lo.clamp(0, n - 1), a * (1 - w_hi))
    out.scatter_add_(1, (lo + 1).clamp(0, n - 1), a * w_hi)
    return out


def resolution_band(edges: torch.Tensor, fwhm: torch.Tensor, sigmas: float = 6.0) -> tuple[torch.Tensor, int]:
    """The rows of :func:`resolution_matrix` within +-``sigmas`` of the widest sigma as a band (N, 2h+1):
    ``band[i, h + o]`` is the share of a deposit at channel i that lands in channel i + o (0 off the grid).
    For a narrow law (germanium: FWHM <= ~3 keV) :func:`apply_band` costs (2h+1) N per spectrum instead of N^2."""
    n = edges.numel() - 1
    width = float(edges[1] - edges[0])
    h = max(1, int(math.ceil(sigmas * float(fwhm.max()) / 2.3548200450309493 / width)) + 1)
    g = resolution_matrix(edges, fwhm)
    cols = torch.arange(n, device=edges.device).unsqueeze(1) + torch.arange(-h, h + 1, device=edges.device)
    ok = (cols >= 0) & (cols < n)
    return torch.where(ok, g.gather(1, cols.clamp(0, n - 1)), torch.zeros((), device=edges.device)), h


def apply_band(hist: torch.Tensor, band: torch.Tensor, h: int) -> torch.Tensor:
    """``hist`` (B, N) spread by a :func:`resolution_band`: (B, N), the same as ``hist @ resolution_matrix`` up to
    the tails beyond the band."""
    b, n = hist.shape
    cols = (torch.arange(n, device=hist.device).unsqueeze(1) + torch.arange(-h, h + 1, device=hist.device)).clamp(0, n - 1)
    spread = (hist.unsqueeze(2) * band.unsqueeze(0)).reshape(b, -1)
    return torch.zeros_like(hist).index_add_(1, cols.reshape(-1), spread)
