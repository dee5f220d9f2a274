"""The seed's spectrum preprocessing as batched tensor steps (CPU or GPU), each a function and a switch.

Raw batch (observed frame, see ``io.stack_spectra``) -> bad-pixel masking -> optional denoising ->
rest frame (lambda_rest = lambda_obs / (1 + z)) -> flux-conserving resampling onto one log-lambda grid
-> per-arm continuum (Chebyshev, iteratively reweighted with asymmetric clipping) -> normalisation and
final clip -> S/N and drop reasons. A batch is one set of tensor operations: no Python loop runs over
spectra or pixels (only over the two arms and the few continuum iterations).

The seed's known problems and what is done about them:

* blue end (< 5000 A): H and K, the Balmer series, the G band and Mg b depress most pixels below the
  true continuum. Clipping is asymmetric (``clip_low_sigma`` 1.5 < ``clip_high_sigma`` 3), so each
  iteration drops points below the fit and the fit climbs to the upper envelope; the blue arm has its
  own polynomial, so the red arm's well-defined continuum does not pull it.
* S/N < 3: dropped (``min_snr``), counted with reason ``low_snr``.
* residuals above 8500 A (telluric water, fringing): the default grid ends at 8800 A, the red arm is
  fitted on its own, and emission-like spikes are masked before resampling.

Units: wavelength Angstrom (vacuum), flux in the file's units until normalised, ivar = 1 / sigma^2.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from neurotrain.tasks.stellar.config import PreprocessSection

#: drop-reason names, indexed by the integer code in ``pre["reason"]`` (0 = kept)
REASONS: tuple[str, ...] = ("kept", "too_short", "all_nan", "low_snr", "few_good_pixels")
KEPT, TOO_SHORT, ALL_NAN, LOW_SNR, FEW_GOOD = range(len(REASONS))


def rest_grid(cfg: PreprocessSection, device: str | torch.device | None = None) -> torch.Tensor:
    """The common rest-frame grid: (M,) float64 vacuum Angstrom, log-linear with step
    ``grid_step_log10`` in log10 lambda from ``grid_min_aa`` up to ``grid_max_aa``."""
    lo, hi = math.log10(cfg.grid_min_aa), math.log10(cfg.grid_max_aa)
    m = int(math.floor((hi - lo) / cfg.grid_step_log10 + 1e-9)) + 1
    return 10.0 ** (lo + cfg.grid_step_log10 * torch.arange(m, dtype=torch.float64, device=device))


def _running_median(x: torch.Tensor, good: torch.Tensor, width: int) -> torch.Tensor:
    """Median of the good pixels within ``width`` around each pixel (NaN where none)."""
    h = width // 2
    xn = torch.where(good, x, torch.full_like(x, float("nan")))
    win = F.pad(xn, (h, h), value=float("nan")).unfold(-1, 2 * h + 1, 1)
    return torch.nanmedian(win, dim=-1).values


def mask_bad_pixels(flux: torch.Tensor, ivar: torch.Tensor, mask: torch.Tensor,
                    cfg: PreprocessSection) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bad pixels -> (flux 0, ivar 0, mask True). Always: the file's mask, non-finite values, ivar <= 0.
    With ``cfg.mask_bad_pixels`` also positive spikes (cosmic rays, sky-line residuals): flux above the
    running median (``clip_window_px``) by more than ``clip_sigma`` times the pixel's noise, the noise
    floored at ``clip_rel_floor`` of the median; and flux below -``clip_sigma`` sigma (unphysical)."""
    bad = mask | ~torch.isfinite(flux) | ~torch.isfinite(ivar) | (ivar <= 0)
    if cfg.mask_bad_pixels:
        med = _running_median(flux, ~bad, cfg.clip_window_px)
        sig = torch.sqrt(1.0 / ivar.clamp_min(1e-30) + (cfg.clip_rel_floor * med.abs()) ** 2)
        spike = torch.isfinite(med) & ((flux - med) > cfg.clip_sigma * sig)
        negative = flux * torch.sqrt(ivar.clamp_min(0)) < -cfg.clip_sigma
        bad = bad | spike | negative
    zero = torch.zeros((), dtype=flux.dtype, device=flux.device)
    return torch.where(bad, zero, flux), torch.where(bad, zero.to(ivar.dtype), ivar), bad


def denoise(flux: torch.Tensor, ivar: torch.Tensor, sigma_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian smoothing (``sigma_px`` pixels) by normalised convolution: bad pixels (ivar 0) neither
    contribute nor receive a value. The variance is propagated exactly per pixel (neighbours become
    correlated; keep ``sigma_px`` well below the LSF, ~1.1 px sigma at R 1800 on LAMOST's grid)."""
    half = max(1, int(math.ceil(4 * sigma_px)))
    t = torch.arange(-half, half + 1, dtype=flux.dtype, device=flux.device)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    k = (k / k.sum()).view(1, 1, -1)
    w = (ivar > 0).to(flux.dtype)
    var = torch.where(ivar > 0, 1.0 / ivar.clamp_min(1e-30), torch.zeros_like(ivar))

    def conv(x: torch.Tensor, kern: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x.unsqueeze(1), kern, padding=half).squeeze(1)

    den = conv(w, k)
    ok = (w > 0) & (den > 0)
    num = conv(flux * w, k)
    var_s = conv(var * w, k * k) / den.clamp_min(1e-30) ** 2
    flux_s = torch.where(ok, num / den.clamp_min(1e-30), flux)
    ivar_s = torch.where(ok & (var_s > 0), 1.0 / var_s.clamp_min(1e-30), torch.zeros_like(var_s))
    return flux_s, ivar_s.to(ivar.dtype)


def to_rest_frame(wave: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Observed -> rest-frame wavelength: lambda_rest = lambda_obs / (1 + z), per spectrum."""
    return wave / (1.0 + z.to(wave.dtype)).unsqueeze(-1)


def _edges(centres: torch.Tensor) -> torch.Tensor:
    """Pixel edges (..., N+1) halfway between centres in log lambda, ends extrapolated by half a step."""
    lg = torch.log(centres)
    mid = 0.5 * (lg[..., 1:] + lg[..., :-1])
    first = 2 * lg[..., :1] - mid[..., :1]
    last = 2 * lg[..., -1:] - mid[..., -1:]
    return torch.exp(torch.cat([first, mid, last], dim=-1))


def resample_loglam(wave: torch.Tensor, flux: torch.Tensor, ivar: torch.Tensor, grid: torch.Tensor,
                    max_bad_overlap: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flux-conserving rebinning of (B,N) spectra onto the (M,) grid.

    Each input pixel is a bin (edges halfway in log lambda) of constant flux density. An output pixel's
    flux is the integral of that step function over its own bin, divided by the part of the bin that
    good input pixels cover, so integrated flux is conserved and bad pixels (ivar 0) are left out. The
    variance is var_out = sum_j (o_j / G) (d_j / G) var_j (o_j: overlap with input bin j of width d_j,
    G: good overlap): exact for fully covered input bins, and for a partly covered one it keeps the
    covariance that rebinning creates between neighbours, so the S/N per pixel is not inflated.
    Output pixels covered by bad or absent pixels for more than ``max_bad_overlap`` of their width get
    ivar 0 and flux 0. Returns (flux, ivar, covered fraction), each (B,M) in the flux dtype.
    """
    dtype = flux.dtype
    e = _edges(wave.to(torch.float64))  # (B,N+1)
    d = e.diff(dim=-1)
    good = ivar > 0
    f = torch.where(good, flux, torch.zeros_like(flux)).to(torch.float64)
    var = torch.where(good, 1.0 / ivar.to(torch.float64).clamp_min(1e-300), torch.zeros_like(d))
    zeros = torch.zeros_like(e[..., :1])
    cum = torch.stack([torch.cat([zeros, torch.cumsum(y, -1)], -1)
                       for y in (f * d, var * d * d, good.to(torch.float64) * d)], -1)  # (B,N+1,3)
    q = _edges(grid.to(torch.float64)).expand(e.shape[0], -1).contiguous()  # (B,M+1)
    n = d.shape[-1]
    idx = (torch.searchsorted(e.contiguous(), q, right=True) - 1).clamp(0, n - 1)
    t = ((q - torch.gather(e, -1, idx)) / torch.gather(d, -1, idx)).clamp(0.0, 1.0).unsqueeze(-1)
    lo = torch.gather(cum, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
    hi = torch.gather(cum, 1, (idx + 1).unsqueeze(-1).expand(-1, -1, 3))
    val = lo + t * (hi - lo)  # cumulative integrals at the output edges
    dv = val.diff(dim=1)  # (B,M,3)
    width = q.diff(dim=-1)
    g = dv[..., 2]
    cover = g / width
    ok = (cover > 1.0 - max_bad_overlap) & (g > 0)
    gs = g.clamp_min(1e-300)
    out_f = torch.where(ok, dv[..., 0] / gs, torch.zeros_like(g))
    out_v = dv[..., 1] / gs**2
    out_i = torch.where(ok & (out_v > 0), 1.0 / out_v.clamp_min(1e-300), torch.zeros_like(g))
    return out_f.to(dtype), out_i.to(dtype), cover.to(dtype)


def _chebyshev(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Chebyshev polynomials T_0..T_degree at x in [-1, 1]: (..., degree+1)."""
    out = [torch.ones_like(x), x]
    for _ in range(2, degree + 1):
        out.append(2 * x * out[-1] - out[-2])
    return torch.stack(out[: degree + 1], -1)


def _arms(grid: torch.Tensor, split_aa: float) -> list[slice]:
    """Pixel ranges of the blue and red arm on the increasing grid (an empty arm is left out)."""
    nb = int((grid < split_aa).sum())
    return [a for a in (slice(0, nb), slice(nb, grid.shape[0])) if a.stop > a.start]


def fit_continuum(grid: torch.Tensor, flux: torch.Tensor, ivar: torch.Tensor,
                  cfg: PreprocessSection) -> torch.Tensor:
    """Pseudo-continuum (B,M): per arm (split at ``arm_split_aa``) a Chebyshev polynomial of
    ``continuum_degree`` in wavelength, fitted by weighted least squares (weights ivar) to all spectra at
    once (one batched solve of the block-diagonal normal equations), ``continuum_iterations`` times,
    each time dropping pixels whose relative residual flux/continuum - 1 lies below ``clip_low_sigma`` or
    above ``clip_high_sigma`` times the arm's robust scatter (1.4826 x MAD)."""
    dtype = flux.dtype
    arms = _arms(grid, cfg.arm_split_aa)
    p = cfg.continuum_degree + 1
    basis = torch.zeros(grid.shape[0], p * len(arms), dtype=dtype, device=flux.device)
    for k, a in enumerate(arms):
        g = grid[a]
        x = (2 * (g - g.min()) / (g.max() - g.min()).clamp_min(1e-12) - 1).to(dtype)
        basis[a, k * p:(k + 1) * p] = _chebyshev(x, cfg.continuum_degree)
    w0 = torch.where(ivar > 0, ivar, torch.zeros_like(ivar))
    keep = w0 > 0
    q = basis.shape[1]
    eye = torch.eye(q, dtype=dtype, device=flux.device)
    # normal matrices of all spectra as one GEMM: A_b = sum_m w_bm T_m T_m^T = w @ (M, q*q)
    outer = (basis.unsqueeze(2) * basis.unsqueeze(1)).reshape(grid.shape[0], q * q)
    cont = torch.zeros_like(flux)
    for _ in range(cfg.continuum_iterations):
        w = w0 * keep
        a_mat = (w @ outer).view(-1, q, q)
        diag = a_mat.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)
        a_mat = a_mat + (cfg.continuum_ridge * diag)[:, None, None] * eye
        rhs = (w * flux) @ basis
        coef = torch.linalg.solve(a_mat, rhs.unsqueeze(-1)).squeeze(-1)
        cont = coef @ basis.T
        r = flux / torch.where(cont > 0, cont, torch.full_like(cont, float("nan"))) - 1.0
        lim_lo = torch.zeros_like(flux)
        lim_hi = torch.zeros_like(flux)
        for a in arms:
            ra = torch.where(keep[:, a], r[:, a], torch.full_like(r[:, a], float("nan")))
            centre = torch.nanmedian(ra, dim=-1, keepdim=True).values
            s = 1.4826 * torch.nanmedian((ra - centre).abs(), dim=-1, keepdim=True).values
            s = torch.nan_to_num(s, nan=1.0).clamp_min(cfg.continuum_min_scatter)
            centre = torch.nan_to_num(centre, nan=0.0)
            lim_lo[:, a] = centre - cfg.clip_low_sigma * s
            lim_hi[:, a] = centre + cfg.clip_high_sigma * s
        new = (w0 > 0) & (r > lim_lo) & (r < lim_hi)
        # an arm must keep enough points for its polynomial; otherwise keep the previous selection
        enough = torch.stack([new[:, a].sum(-1) > 2 * p for a in arms], -1).all(-1, keepdim=True)
        keep = torch.where(enough, new, keep)
    return cont


def normalise(flux: torch.Tensor, ivar: torch.Tensor, cont: torch.Tensor,
              cfg: PreprocessSection) -> tuple[torch.Tensor, torch.Tensor]:
    """flux / continuum and ivar * continuum^2, clipped to ``final_clip``. Pixels with a non-positive
    continuum, no data, or above the upper clip (emission spikes) get ivar 0 and flux 1."""
    ok = torch.isfinite(cont) & (cont > 0) & (ivar > 0)
    c = torch.where(ok, cont, torch.ones_like(cont))
    nf = flux / c
    lo, hi = cfg.final_clip
    ok = ok & (nf <= hi)
    nf = torch.where(ok, nf.clamp(lo, hi), torch.ones_like(nf))
    niv = torch.where(ok, ivar * c * c, torch.zeros_like(ivar))
    return nf, niv


def snr(flux: torch.Tensor, ivar: torch.Tensor, good: torch.Tensor | None = None) -> torch.Tensor:
    """Median S/N per pixel, median(flux * sqrt(ivar)) over good pixels (ivar > 0 and ``good``); 0 if none."""
    g = ivar > 0 if good is None else good & (ivar > 0)
    s = torch.where(g, flux * torch.sqrt(ivar.clamp_min(0)), torch.full_like(flux, float("nan")))
    return torch.nan_to_num(torch.nanmedian(s, dim=-1).values, nan=0.0)


def preprocess_batch(raw: dict[str, torch.Tensor], cfg: PreprocessSection,
                     return_stages: bool = False) -> dict[str, Any]:
    """Raw batch -> ``{"flux", "ivar"}`` (B,M) normalised on :func:`rest_grid`, ``"snr"`` (B,),
    ``"keep"`` (B,) bool and ``"reason"`` (B,) int8 (codes of :data:`REASONS`). Dropped spectra still
    get finite outputs. With ``return_stages`` also ``"stages"``: the grid and every intermediate
    (observed, rest-frame resampled, continuum, normalised) for figures."""
    wave, flux, ivar, mask = raw["wave"], raw["flux"], raw["ivar"], raw["mask"]
    z = raw.get("z")
    if not flux.is_floating_point():
        flux = flux.float()
    ivar = ivar.to(flux.dtype)
    z = torch.zeros(flux.shape[0], dtype=torch.float64, device=flux.device) if z is None else torch.nan_to_num(z.to(torch.float64))
    grid = rest_grid(cfg, flux.device)
    present = torch.isfinite(flux)
    all_nan = ~present.any(-1)
    mflux, mivar, bad = mask_bad_pixels(flux, ivar, mask, cfg)
    rest = to_rest_frame(wave.to(torch.float64), z) if cfg.rest_frame else wave.to(torch.float64)
    in_grid = (rest >= grid[0]) & (rest <= grid[-1])
    s_n = snr(mflux, mivar, in_grid)
    # coverage of the grid (in log lambda) by pixels that carry a number at all
    inf = torch.full_like(rest, float("inf"))
    lo = torch.where(present, rest, inf).amin(-1).clamp_min(grid[0])
    hi = torch.where(present, rest, -inf).amax(-1).clamp_max(grid[-1])
    span = math.log(grid[-1].item() / grid[0].item())
    coverage = (torch.log(hi / lo) / span).clamp_min(0).nan_to_num(0.0)
    if cfg.denoise:
        mflux, mivar = denoise(mflux, mivar, cfg.denoise_sigma_px)
    rflux, rivar, _ = resample_loglam(rest, mflux, mivar, grid, cfg.max_bad_overlap)
    if cfg.continuum:
        cont = fit_continuum(grid, rflux, rivar, cfg)
    else:  # final normalisation only: divide by the median of the good pixels
        med = torch.nanmedian(torch.where(rivar > 0, rflux, torch.full_like(rflux, float("nan"))), -1).values
        cont = torch.nan_to_num(med, nan=1.0).unsqueeze(-1).expand_as(rflux)
    nflux, nivar = normalise(rflux, rivar, cont, cfg)
    good_frac = (nivar > 0).to(torch.float64).mean(-1)
    reason = torch.zeros(flux.shape[0], dtype=torch.int8, device=flux.device)
    reason = torch.where(s_n < cfg.min_snr, torch.full_like(reason, LOW_SNR), reason)
    reason = torch.where(good_frac < cfg.min_good_fraction, torch.full_like(reason, FEW_GOOD), reason)
    reason = torch.where(coverage < cfg.min_good_fraction, torch.full_like(reason, TOO_SHORT), reason)
    reason = torch.where(all_nan, torch.full_like(reason, ALL_NAN), reason)
    out: dict[str, Any] = {"flux": nflux, "ivar": nivar, "snr": s_n, "keep": reason == 0, "reason": reason}
    if return_stages:
        nan = torch.full_like(rflux, float("nan"))
        out["stages"] = {
            "grid": grid, "obs_wave": wave, "obs_flux": torch.where(bad, torch.full_like(mflux, float("nan")), mflux),
            "rest_flux": torch.where(rivar > 0, rflux, nan), "continuum": cont,
            "norm_flux": torch.where(nivar > 0, nflux, nan), "z": z,
        }
    return out


def network_input(pre: dict[str, torch.Tensor], in_channels: int,
                  cfg: PreprocessSection | None = None) -> torch.Tensor:
    """(B, C, M) float32 network input. Channel 0: normalised flux, 1.0 where a pixel has no data.
    Channel 1 (``in_channels`` 2): the normalised inverse error sqrt(ivar) / ``inv_sigma_scale``
    (S/N 100 per pixel -> 1.0), capped at ``inv_sigma_max``, 0 where a pixel has no data."""
    cfg = cfg or PreprocessSection()
    good = pre["ivar"] > 0
    x0 = torch.where(good, pre["flux"], torch.ones_like(pre["flux"])).float()
    if in_channels == 1:
        return x0.unsqueeze(1)
    x1 = torch.where(good, torch.sqrt(pre["ivar"].clamp_min(0)) / cfg.inv_sigma_scale, torch.zeros_like(pre["ivar"]))
    return torch.stack([x0, x1.clamp_max(cfg.inv_sigma_max).float()], 1)
