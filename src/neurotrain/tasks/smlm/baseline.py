"""The classical method: box detection + per-spot Gaussian maximum-likelihood fit (batched LM).

As in Picasso (Schnitzbauer et al., Nat. Protoc. 12:1198, 2017) and ThunderSTORM (Ovesny et al.,
Bioinformatics 30:2389, 2014): frames (in photons) are smoothed with the PSF Gaussian, a slowly
varying background (box mean over ~4 boxes) is subtracted, 3x3 local maxima whose implied photon
count (peak x 4 pi sigma^2, the peak of a Gaussian blurred by itself) exceeds ``min_photons`` are
spots. Each ``box x box`` spot is fitted with the pixel-integrated Gaussian plus flat background by
Poisson maximum likelihood (Smith et al., Nat. Methods 7:373, 2010) with Levenberg-Marquardt
iterations (Laurence & Chromy, Nat. Methods 7:338, 2010), all spots at once on the device.
Astigmatic data fit sigma_x and sigma_y separately; z is read off the calibration curve by
nearest approach in sqrt(sigma) space (Huang et al., Science 319:810, 2008). With a measured
(spline) PSF the baseline fits a 2D Gaussian and reports z = 0.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from neurotrain.tasks.smlm.postprocess import LOC_COLUMNS
from neurotrain.tasks.smlm.psf import integrated_gaussian_1d_grad, psf_sigmas

if TYPE_CHECKING:
    from neurotrain.tasks.smlm.config import SMLMConfig


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, H, W]`` (reflect padding), sigma in pixels."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, device=img.device, dtype=img.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(img[:, None], (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x[:, 0]


def detect_spots(frames: torch.Tensor, sigma_px: float, box: int, min_photons: float) -> tuple[torch.Tensor, ...]:
    """Candidate spots ``(frame, iy, ix, photon_estimate)`` in ``[N, H, W]`` photon frames."""
    sm = gaussian_blur(frames, sigma_px)
    k = 4 * box + 1
    pad = k // 2
    bgk = F.avg_pool2d(F.pad(frames[:, None], (pad, pad, pad, pad), mode="replicate"), k, stride=1)[:, 0]
    s = sm - bgk
    lm = s == F.max_pool2d(s[:, None], 3, stride=1, padding=1)[:, 0]
    est = s * 4 * math.pi * sigma_px**2
    f, iy, ix = torch.nonzero(lm & (est > min_photons), as_tuple=True)
    return f, iy, ix, est[f, iy, ix]


def extract_rois(frames: torch.Tensor, f: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor, box: int) -> torch.Tensor:
    """``box x box`` patches centred on the given pixels, ``[n, box, box]`` (edges replicated)."""
    half = box // 2
    p = F.pad(frames[:, None], (half, half, half, half), mode="replicate")[:, 0]
    ar = torch.arange(box, device=frames.device)
    rows = (iy[:, None] + ar)[:, :, None]
    cols = (ix[:, None] + ar)[:, None, :]
    return p[f[:, None, None], rows, cols]


def _model(theta: torch.Tensor, box: int, astig: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected counts ``[n, box*box]`` and Jacobian ``[n, P, box*box]``; theta = x, y, N, b, s(x)[, sy]."""
    n = theta.shape[0]
    edges = torch.arange(box + 1, device=theta.device, dtype=theta.dtype)[None].expand(n, -1)
    x, y, nph, b = theta[:, 0], theta[:, 1], theta[:, 2], theta[:, 3]
    sx = theta[:, 4]
    sy = theta[:, 5] if astig else sx
    ex, dex, dsx = integrated_gaussian_1d_grad(x, sx, edges)
    ey, dey, dsy = integrated_gaussian_1d_grad(y, sy, edges)
    psf = ey[:, :, None] * ex[:, None, :]
    mu = nph[:, None, None] * psf + b[:, None, None]
    jx = nph[:, None, None] * ey[:, :, None] * dex[:, None, :]
    jy = nph[:, None, None] * dey[:, :, None] * ex[:, None, :]
    js = [jx, jy, psf, torch.ones_like(psf)]
    gsx = nph[:, None, None] * ey[:, :, None] * dsx[:, None, :]
    gsy = nph[:, None, None] * dsy[:, :, None] * ex[:, None, :]
    js += [gsx, gsy] if astig else [gsx + gsy]
    return mu.flatten(1), torch.stack(js, 1).flatten(2)


def fit_spots(rois: torch.Tensor, sigma0: float, iterations: int = 20, astig: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Poisson-MLE fit of ``[n, box, box]`` photon patches by Levenberg-Marquardt.

    Returns ``theta`` ``[n, 5 or 6]`` = (x, y in px inside the patch, N photons, b photons/px,
    sigma(s) px) and the final negative log-likelihood per spot.
    """
    n, box, _ = rois.shape
    k = rois.flatten(1).clamp(min=0)
    dt = rois.dtype
    b0 = torch.quantile(k, 0.2, dim=1).clamp(min=0.1)
    n0 = (k - b0[:, None]).clamp(min=0).sum(1).clamp(min=10)
    c = torch.full((n,), box / 2.0, device=rois.device, dtype=dt)
    s = torch.full((n,), sigma0, device=rois.device, dtype=dt)
    cols = [c, c.clone(), n0, b0, s] + ([s.clone()] if astig else [])
    theta = torch.stack(cols, 1)
    lo = torch.tensor([0.0, 0.0, 1.0, 0.01, 0.3] + ([0.3] if astig else []), device=rois.device, dtype=dt)
    hi = torch.tensor([box, box, 1e7, 1e5, 5.0] + ([5.0] if astig else []), device=rois.device, dtype=dt)
    lam = torch.full((n,), 1e-2, device=rois.device, dtype=dt)

    def nll(mu: torch.Tensor) -> torch.Tensor:
        return (mu - k * torch.log(mu.clamp(min=1e-9))).sum(1)

    mu, j = _model(theta, box, astig)
    cost = nll(mu)
    eye = torch.eye(theta.shape[1], device=rois.device, dtype=dt)
    for _ in range(iterations):
        w = 1.0 / mu.clamp(min=1e-6)
        g = torch.einsum("npk,nk->np", j, 1 - k * w)
        h = torch.einsum("npk,nqk->npq", j * w[:, None], j)
        a = h + lam[:, None, None] * torch.diag_embed(torch.diagonal(h, dim1=1, dim2=2)) + 1e-9 * eye
        step = torch.linalg.solve(a, -g[..., None])[..., 0]
        cand = torch.minimum(torch.maximum(theta + step, lo), hi)
        mu_c, j_c = _model(cand, box, astig)
        cost_c = nll(mu_c)
        better = torch.isfinite(cost_c) & (cost_c < cost)
        theta = torch.where(better[:, None], cand, theta)
        mu = torch.where(better[:, None], mu_c, mu)
        j = torch.where(better[:, None, None], j_c, j)
        cost = torch.where(better, cost_c, cost)
        lam = torch.where(better, lam / 10, lam * 10).clamp(1e-7, 1e7)
    return theta, cost


def z_from_sigmas(sx: torch.Tensor, sy: torch.Tensor, cfg: SMLMConfig, n_grid: int = 601) -> torch.Tensor:
    """z (nm) whose calibrated (sigma_x, sigma_y) is nearest in sqrt-sigma space (Huang et al. 2008)."""
    z0, z1 = cfg.simulate.z_range_nm
    zg = torch.linspace(z0, z1, n_grid, device=sx.device, dtype=sx.dtype)
    gx, gy = psf_sigmas(cfg.psf, zg, cfg.simulate.pixel_size_nm)
    d = (sx.sqrt()[:, None] - gx.sqrt()[None]) ** 2 + (sy.sqrt()[:, None] - gy.sqrt()[None]) ** 2
    return zg[d.argmin(1)]


def localise_baseline(frames: torch.Tensor, cfg: SMLMConfig, frame_offset: int = 0) -> dict[str, torch.Tensor]:
    """Localise ``[N, H, W]`` photon frames; returns the same columns as the network's post-processing.

    ``prob`` holds the fitted photon count (a detection score for the precision-recall sweep).
    """
    bc = cfg.baseline
    px = cfg.simulate.pixel_size_nm
    astig = cfg.psf.kind == "astigmatic"  # a measured (spline) PSF gets a 2D fit: z is not recovered
    s0 = float(psf_sigmas(cfg.psf, torch.zeros(1, dtype=torch.float64), px)[0])
    box = bc.box if bc.box % 2 == 1 else bc.box + 1
    half = box // 2
    frames = frames.float()
    f, iy, ix, _ = detect_spots(frames, s0, box, bc.min_photons)
    h, w = frames.shape[-2:]
    inside = (iy >= half) & (iy < h - half) & (ix >= half) & (ix < w - half)  # whole box on the chip
    f, iy, ix = f[inside], iy[inside], ix[inside]
    rois = extract_rois(frames, f, iy, ix, box)
    theta, _ = fit_spots(rois.double(), s0, bc.iterations, astig)
    theta = theta.to(frames.dtype)
    moved = (theta[:, 0] - box / 2).abs().maximum((theta[:, 1] - box / 2).abs())
    ok = (moved < 1.5) & (theta[:, 2] > 0.5 * bc.min_photons)
    theta, f, iy, ix = theta[ok], f[ok], iy[ok], ix[ok]
    x = (ix - half).to(theta.dtype) + theta[:, 0]
    y = (iy - half).to(theta.dtype) + theta[:, 1]
    if astig:
        z = z_from_sigmas(theta[:, 4], theta[:, 5], cfg)
        sx, sy = theta[:, 4], theta[:, 5]
    else:
        z = torch.zeros_like(x)
        sx = sy = theta[:, 4]
    nan = torch.full_like(x, float("nan"))
    loc = {"frame": f + frame_offset, "x_nm": x * px, "y_nm": y * px, "z_nm": z, "photons": theta[:, 2],
           "bg": theta[:, 3], "prob": theta[:, 2], "sigma_x_nm": nan, "sigma_y_nm": nan, "sigma_z_nm": nan,
           "sigma_photons": nan, "psf_sigma_x_nm": sx * px, "psf_sigma_y_nm": sy * px}
    return {k: loc[k] for k in (*LOC_COLUMNS, "psf_sigma_x_nm", "psf_sigma_y_nm")}
