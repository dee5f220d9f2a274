"""Cramér-Rao lower bound of a pixelated Gaussian PSF with background.

Poisson pixels with expectation mu_k = N E_x(i) E_y(j) + b (E the pixel integrals of the PSF)
have Fisher information I_ab = sum_k (d mu_k / d a)(d mu_k / d b) / mu_k (Ober, Ram & Ward,
Biophys. J. 86:1185, 2004; Smith et al., Nat. Methods 7:373, 2010). An EMCCD's multiplication
noise doubles the variance at high gain (excess-noise factor F = 2, Mortensen et al., Nat.
Methods 7:377, 2010), so I is divided by F. Parameters: x, y (px), [z (nm) for the astigmatic
PSF], N (photons), b (photons/px). The bound is diag(I^-1); evaluated for all emitters at once.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from neurotrain.tasks.smlm.psf import integrated_gaussian_1d_grad, psf_sigma_derivs, psf_sigmas

if TYPE_CHECKING:
    from neurotrain.tasks.smlm.config import PSFSection


def crlb(x_px: torch.Tensor, y_px: torch.Tensor, z_nm: torch.Tensor, photons: torch.Tensor, bg: torch.Tensor,
         psf: PSFSection, pixel_size_nm: float, excess_noise: float = 2.0, roi: int = 0) -> dict[str, torch.Tensor]:
    """Per-emitter CRLB standard deviations: ``x_nm``, ``y_nm``, ``z_nm`` (NaN in 2D), ``photons``, ``bg``.

    ``roi`` is the side of the square window summed over (0: 2 * ceil(5 sigma_max) + 1 pixels)
    centred on the pixel holding the emitter, its sub-pixel offset kept.
    """
    if psf.kind == "spline":  # the bound below is for the analytic Gaussian PSFs only
        nan = torch.full_like(photons, float("nan"))
        return {"x_nm": nan, "y_nm": nan.clone(), "z_nm": nan.clone(), "photons": nan.clone(), "bg": nan.clone()}
    dt = torch.float64
    x, y, z = x_px.to(dt), y_px.to(dt), z_nm.to(dt)
    n, b = photons.to(dt).clamp(min=1e-3), bg.to(dt).clamp(min=1e-6)
    sx, sy = psf_sigmas(psf, z, pixel_size_nm)
    three_d = psf.kind != "gaussian"
    if roi <= 0:
        smax = float(torch.cat([sx, sy]).max()) if sx.numel() else 1.0
        roi = 2 * int(math.ceil(5 * smax)) + 1
    half = roi // 2
    ox = x - torch.floor(x) + half  # position inside the ROI
    oy = y - torch.floor(y) + half
    edges = torch.arange(roi + 1, device=x.device, dtype=dt)[None].expand(x.numel(), -1)
    ex, dex, dsx = integrated_gaussian_1d_grad(ox, sx, edges)
    ey, dey, dsy = integrated_gaussian_1d_grad(oy, sy, edges)
    mu = n[:, None, None] * ey[:, :, None] * ex[:, None, :] + b[:, None, None]
    grads = [n[:, None, None] * ey[:, :, None] * dex[:, None, :], n[:, None, None] * dey[:, :, None] * ex[:, None, :]]
    if three_d:
        dsxz, dsyz = psf_sigma_derivs(psf, z, pixel_size_nm)
        grads.append(n[:, None, None] * (ey[:, :, None] * dsx[:, None, :] * dsxz[:, None, None]
                                          + dsy[:, :, None] * ex[:, None, :] * dsyz[:, None, None]))
    grads += [ey[:, :, None] * ex[:, None, :], torch.ones_like(mu)]
    j = torch.stack(grads, 1).flatten(2)  # [E, P, R*R]
    fisher = torch.einsum("epk,eqk->epq", j / mu.flatten(1)[:, None], j) / excess_noise
    var = torch.diagonal(torch.linalg.pinv(fisher), dim1=1, dim2=2).clamp(min=0)
    sd = var.sqrt()
    out = {"x_nm": sd[:, 0] * pixel_size_nm, "y_nm": sd[:, 1] * pixel_size_nm}
    if three_d:
        out["z_nm"], out["photons"], out["bg"] = sd[:, 2], sd[:, 3], sd[:, 4]
    else:
        out["z_nm"], out["photons"], out["bg"] = torch.full_like(sd[:, 0], float("nan")), sd[:, 2], sd[:, 3]
    return {k: v.to(photons.dtype) for k, v in out.items()}


def mortensen_variance(sigma_nm: float, pixel_nm: float, photons: float, bg: float, excess_noise: float = 1.0) -> float:
    """Mortensen et al. (2010) eq. 6 closed form of the MLE localisation variance (nm^2) per axis.

    sigma_a^2 = sigma^2 + a^2/12; tau = 2 pi sigma_a^2 b / (N a^2);
    var = F sigma_a^2 / N (1 + 4 tau + sqrt(2 tau / (1 + 4 tau))), with F the excess-noise factor.
    """
    sa2 = sigma_nm**2 + pixel_nm**2 / 12
    tau = 2 * math.pi * sa2 * bg / (photons * pixel_nm**2)
    return excess_noise * sa2 / photons * (1 + 4 * tau + math.sqrt(2 * tau / (1 + 4 * tau)))
