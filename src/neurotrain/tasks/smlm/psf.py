"""Point-spread functions: pixel-integrated 2D Gaussian and astigmatic 3D Gaussian.

Units: positions in camera pixels (pixel ``i`` covers ``[i, i+1)``, its centre is ``i + 0.5``),
widths in pixels inside this module, axial positions ``z`` in nm.

* 2D Gaussian: the widefield PSF approximated by a Gaussian of sigma ~= 0.21 lambda / NA
  (Zhang, Zerubia & Olivo-Marin, Appl. Opt. 46:1819, 2007), ~100 nm for 670 nm light at
  NA 1.45; integrated over each pixel with the error function, so a PSF sums to the emitter's
  photon count (Smith et al., Nat. Methods 7:373, 2010, eq. 2).
* Astigmatic 3D: a cylindrical lens makes the widths depend on z (Huang et al., Science
  319:810, 2008): sigma_x(z) = sigma0 sqrt(1 + ((z - c)/d)^2 + A((z - c)/d)^3 + B((z - c)/d)^4)
  and sigma_y the same with z -> focal offset -c.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from neurotrain.tasks.smlm.config import PSFSection

_SQRT2 = math.sqrt(2.0)


def integrated_gaussian_1d(centre: torch.Tensor, sigma: torch.Tensor, n_pix: int) -> torch.Tensor:
    """Fraction of a unit 1D Gaussian falling in each of ``n_pix`` pixels.

    Args:
        centre: ``[N]`` centres in pixels. sigma: ``[N]`` widths in pixels.
    Returns:
        ``[N, n_pix]``; each row sums to 1 when the Gaussian lies inside the pixel range.
    """
    edges = torch.arange(n_pix + 1, device=centre.device, dtype=centre.dtype)
    cdf = torch.erf((edges[None, :] - centre[:, None]) / (_SQRT2 * sigma[:, None]))
    return 0.5 * (cdf[:, 1:] - cdf[:, :-1])


def integrated_gaussian_1d_grad(centre: torch.Tensor, sigma: torch.Tensor, edges: torch.Tensor) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel integrals and their derivatives w.r.t. centre and sigma.

    ``edges`` is ``[N, n_pix + 1]`` (per-row pixel edges). Returns ``(E, dE/dcentre, dE/dsigma)``,
    each ``[N, n_pix]``. Used by the CRLB and the maximum-likelihood baseline fit.
    """
    s = sigma[:, None]
    u = (edges - centre[:, None]) / s
    cdf = 0.5 * torch.erf(u / _SQRT2)
    pdf = torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    e = cdf[:, 1:] - cdf[:, :-1]
    de_dc = -(pdf[:, 1:] - pdf[:, :-1]) / s
    de_ds = -(pdf[:, 1:] * u[:, 1:] - pdf[:, :-1] * u[:, :-1]) / s
    return e, de_dc, de_ds


def astig_sigma(z: torch.Tensor, sigma0: float, c: float, d: float, a: float = 0.0, b: float = 0.0) -> torch.Tensor:
    """Huang et al. (2008) defocus curve: width (same unit as ``sigma0``) at axial position ``z`` (nm)."""
    t = (z - c) / d
    return sigma0 * torch.sqrt((1 + t * t + a * t**3 + b * t**4).clamp(min=1e-6))


def astig_sigma_dz(z: torch.Tensor, sigma0: float, c: float, d: float, a: float = 0.0, b: float = 0.0) -> torch.Tensor:
    """d sigma / d z of :func:`astig_sigma` (unit of ``sigma0`` per nm)."""
    t = (z - c) / d
    inner = (1 + t * t + a * t**3 + b * t**4).clamp(min=1e-6)
    return sigma0 * (2 * t + 3 * a * t * t + 4 * b * t**3) / (2 * d * torch.sqrt(inner))


def psf_sigmas(psf: PSFSection, z_nm: torch.Tensor, pixel_size_nm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Widths ``(sigma_x, sigma_y)`` in pixels of the configured Gaussian PSF at ``z_nm``."""
    s0 = psf.sigma_nm / pixel_size_nm
    if psf.kind in ("gaussian", "spline"):  # spline: the Gaussian approximation the baseline starts from
        s = torch.full_like(z_nm, s0)
        return s, s
    sx = astig_sigma(z_nm, s0, psf.focal_offset_nm, psf.depth_nm, psf.astig_a, psf.astig_b)
    sy = astig_sigma(z_nm, s0, -psf.focal_offset_nm, psf.depth_nm, psf.astig_a, psf.astig_b)
    return sx, sy


def psf_sigma_derivs(psf: PSFSection, z_nm: torch.Tensor, pixel_size_nm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d sigma_x/dz, d sigma_y/dz)`` in pixels per nm (zero for the 2D Gaussian)."""
    if psf.kind in ("gaussian", "spline"):
        return torch.zeros_like(z_nm), torch.zeros_like(z_nm)
    s0 = psf.sigma_nm / pixel_size_nm
    return (astig_sigma_dz(z_nm, s0, psf.focal_offset_nm, psf.depth_nm, psf.astig_a, psf.astig_b),
            astig_sigma_dz(z_nm, s0, -psf.focal_offset_nm, psf.depth_nm, psf.astig_a, psf.astig_b))


def render_emitters(group: torch.Tensor, n_groups: int, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                    photons: torch.Tensor, height: int, width: int, psf: PSFSection,
                    pixel_size_nm: float) -> torch.Tensor:
    """Expected photons per pixel of ``n_groups`` frames, ``[n_groups, height, width]``.

    Each emitter ``i`` (position ``x, y`` in pixels, ``z`` in nm, ``photons`` expected photons)
    lands in frame ``group[i]``. The separable PSF makes a frame a batched matrix product
    ``Ey^T diag(N) Ex`` over the emitters of that frame, computed for all frames at once.
    """
    from neurotrain.tasks.smlm.tensors import pad_by_group

    dev, dt = x.device, x.dtype
    if psf.kind == "spline":
        from neurotrain.tasks.smlm.spline import render_spline

        return render_spline(group, n_groups, x, y, z, photons, height, width, psf, pixel_size_nm)
    if x.numel() == 0:
        return torch.zeros(n_groups, height, width, device=dev, dtype=dt)
    sx, sy = psf_sigmas(psf, z, pixel_size_nm)
    ex = integrated_gaussian_1d(x, sx, width)  # [N, W]
    ey = integrated_gaussian_1d(y, sy, height) * photons[:, None]  # [N, H]
    (pex, pey), _ = pad_by_group(group, n_groups, ex, ey)  # [G, K, W], [G, K, H]
    return torch.bmm(pey.transpose(1, 2), pex)
