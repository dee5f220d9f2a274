"""Measured PSFs: a calibration file evaluated in pure PyTorch (no compiled extension).

DECODE evaluated SMAP's cubic-spline PSF with a compiled CUDA package that broke installs for
years. Here both calibration formats, told apart by suffix, become the same thing, piecewise
tricubic polynomials with 64 coefficients per voxel, summed with gathers only by
:func:`neurotrain.tasks.smlm.spline_mat.render_coefficients` on any device:

* a SMAP/DECODE cubic-spline calibration ``*.mat`` (MATLAB v5 or v7.3), whose coefficients are
  used as stored (see :mod:`neurotrain.tasks.smlm.spline_mat`);
* our own HDF5 z-stack of the PSF sampled on the camera pixel grid (e.g. an averaged bead scan),
  interpolated with Catmull-Rom cubic convolution along x, y and z (Keys, IEEE TASSP 29:1153,
  1981) — a C1 piecewise-cubic spline through the samples. :func:`stack_coefficients` writes that
  interpolant as per-voxel polynomials once; :func:`tricubic` is the same interpolant evaluated
  directly from the samples.

Calibration file (HDF5): dataset ``psf`` ``[Nz, Ny, Nx]``, each z-slice the fraction of an
emitter's photons per pixel (normalised to sum 1 on write), the emitter at the stack's centre
``((Ny-1)/2, (Nx-1)/2)`` pixel centre; attributes ``dz_nm`` (z step) and ``z0_nm`` (z of slice 0).
:func:`write_calibration` writes one; :func:`gaussian_calibration` builds one from the analytic
astigmatic PSF (used by the tests and as an example).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from neurotrain.errors import ConfigError, DataError
from neurotrain.tasks.smlm.spline_mat import N_TERMS, is_matlab_calibration, render_coefficients, render_cspline

if TYPE_CHECKING:
    from neurotrain.tasks.smlm.config import PSFSection


def write_calibration(path: str | Path, psf: np.ndarray, dz_nm: float, z0_nm: float) -> Path:
    """Write a PSF z-stack ``[Nz, Ny, Nx]`` (each slice normalised to sum 1) as a calibration file."""
    import h5py

    from neurotrain.io.atomic import atomic_path

    psf = np.asarray(psf, dtype=np.float32)
    if psf.ndim != 3 or min(psf.shape) < 4:
        raise DataError(f"{path}: psf must be [Nz, Ny, Nx] with every side >= 4 (got {psf.shape})")
    psf = psf / psf.sum((1, 2), keepdims=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("psf", data=psf)
        f.attrs["dz_nm"] = float(dz_nm)
        f.attrs["z0_nm"] = float(z0_nm)
    return Path(path)


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[np.ndarray, float, float]:
    import h5py

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config error: psf.calibration: {p}: file not found")
    try:
        with h5py.File(p, "r") as f:
            if "psf" not in f:
                raise DataError(f"{p}: calibration needs a 'psf' dataset [Nz, Ny, Nx] (got {list(f.keys())})")
            psf = np.asarray(f["psf"][()], dtype=np.float32)
            dz, z0 = float(f.attrs["dz_nm"]), float(f.attrs["z0_nm"])
    except (OSError, KeyError) as exc:
        raise DataError(f"{p}: cannot read PSF calibration ({exc})") from None
    if psf.ndim != 3 or min(psf.shape) < 2:
        raise DataError(f"{p}: psf must be 3D [Nz, Ny, Nx] with every side >= 2 (got shape {psf.shape})")
    return psf, dz, z0


def load_calibration(psf_cfg: PSFSection, device: torch.device) -> tuple[torch.Tensor, float, float]:
    """The calibration stack on ``device`` with its ``(dz_nm, z0_nm)``."""
    if psf_cfg.calibration is None:
        raise ConfigError("config error: psf.calibration: required when psf.kind is 'spline' (got null)")
    arr, dz, z0 = _load(str(psf_cfg.calibration))
    return torch.as_tensor(arr, device=device), dz, z0


# Catmull-Rom weights of the 4 samples around t as polynomials in t: row i holds the coefficients of
# 1, t, t^2, t^3 in the weight of sample i - 1 (the same weights as _catmull_rom).
_CATMULL_ROM = np.array([[0.0, -0.5, 1.0, -0.5],
                         [1.0, 0.0, -2.5, 1.5],
                         [0.0, 0.5, 2.0, -1.5],
                         [0.0, 0.0, -0.5, 0.5]])


def stack_coefficients(psf: np.ndarray) -> np.ndarray:
    """Per-voxel polynomial form ``[Nz-1, Ny-1, Nx-1, 64]`` (term ``16 p_z + 4 p_y + p_x``) of the
    Catmull-Rom interpolant of ``psf`` ``[Nz, Ny, Nx]``, with the stack's end samples repeated
    beyond its edges (as :func:`tricubic` clamps its indices)."""
    from numpy.lib.stride_tricks import sliding_window_view

    padded = np.pad(np.asarray(psf, dtype=np.float64), 1, mode="edge")
    win = sliding_window_view(padded, (4, 4, 4))  # [Nz-1, Ny-1, Nx-1, i_z, i_y, i_x]
    m = _CATMULL_ROM
    c = np.einsum("zyxijk,ip,jq,kr->zyxpqr", win, m, m, m, optimize=True)
    return np.ascontiguousarray(c.reshape(*c.shape[:3], N_TERMS), dtype=np.float32)


@lru_cache(maxsize=4)
def _stack_coeff_on(path: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(stack_coefficients(_load(path)[0]), device=device, dtype=dtype)


def _catmull_rom(t: torch.Tensor) -> torch.Tensor:
    """Cubic-convolution weights (a = -0.5) of the 4 samples around fractional position ``t``, ``[..., 4]``."""
    t2, t3 = t * t, t * t * t
    return torch.stack([-0.5 * t3 + t2 - 0.5 * t, 1.5 * t3 - 2.5 * t2 + 1, -1.5 * t3 + 2 * t2 + 0.5 * t,
                        0.5 * t3 - 0.5 * t2], -1)


def tricubic(vol: torch.Tensor, z: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Interpolate ``vol`` ``[Nz, Ny, Nx]`` at fractional voxel coordinates (any equal shapes);
    zero outside the stack laterally, clamped to the end slices in z."""
    nz, ny, nx = vol.shape
    out_lat = (y < 0) | (y > ny - 1) | (x < 0) | (x > nx - 1)
    z = z.clamp(0, nz - 1)
    bz, by, bx = z.floor(), y.floor(), x.floor()
    wz, wy, wx = _catmull_rom(z - bz), _catmull_rom(y - by), _catmull_rom(x - bx)
    off = torch.arange(-1, 3, device=vol.device)
    iz = (bz.long()[..., None] + off).clamp(0, nz - 1)
    iy = (by.long()[..., None] + off).clamp(0, ny - 1)
    ix = (bx.long()[..., None] + off).clamp(0, nx - 1)
    vals = vol[iz[..., :, None, None], iy[..., None, :, None], ix[..., None, None, :]]  # [..., 4, 4, 4]
    w = wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]
    return torch.where(out_lat, torch.zeros_like(x), (vals * w).sum((-1, -2, -3)))


def render_spline(group: torch.Tensor, n_groups: int, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                  photons: torch.Tensor, height: int, width: int, psf_cfg: PSFSection,
                  pixel_size_nm: float | None = None) -> torch.Tensor:
    """Expected photons ``[n_groups, H, W]`` from the calibrated PSF (positions in px, z in nm).

    Each emitter contributes over the calibration's lateral extent around it, added into its frame
    with one ``index_put_(accumulate=True)``. For ``*.mat`` calibrations ``pixel_size_nm`` (if
    given) is checked against the calibration's camera pixel size.
    """
    if psf_cfg.calibration is None:
        raise ConfigError("config error: psf.calibration: required when psf.kind is 'spline' (got null)")
    if is_matlab_calibration(psf_cfg.calibration):
        return render_cspline(psf_cfg.calibration, group, n_groups, x, y, z, photons, height, width, pixel_size_nm)
    psf, dz, z0 = _load(str(psf_cfg.calibration))
    coeff = _stack_coeff_on(str(psf_cfg.calibration), x.device, x.dtype)
    _, ny, nx = psf.shape
    return render_coefficients(coeff, (ny - 1) / 2, (nx - 1) / 2, -z0 / dz, dz, group, n_groups, x, y, z, photons,
                               height, width)


def gaussian_calibration(psf_cfg: PSFSection, pixel_size_nm: float, size: int = 21, z_range_nm: tuple[float, float] = (-800.0, 800.0),
                         dz_nm: float = 20.0) -> tuple[np.ndarray, float, float]:
    """A calibration stack sampled from the analytic (astigmatic) Gaussian PSF: ``(psf, dz_nm, z0_nm)``."""
    from neurotrain.tasks.smlm.psf import integrated_gaussian_1d, psf_sigmas

    zs = torch.arange(z_range_nm[0], z_range_nm[1] + 1e-6, dz_nm, dtype=torch.float64)
    sx, sy = psf_sigmas(psf_cfg, zs, pixel_size_nm)
    c = torch.full_like(zs, size / 2.0)
    ex = integrated_gaussian_1d(c, sx, size)
    ey = integrated_gaussian_1d(c, sy, size)
    return (ey[:, :, None] * ex[:, None, :]).numpy().astype(np.float32), dz_nm, float(zs[0])
