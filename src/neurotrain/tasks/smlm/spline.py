"""Measured PSFs: a calibration voxel stack evaluated by tricubic interpolation in pure PyTorch.

DECODE evaluated SMAP's cubic-spline PSF with a compiled CUDA package that broke installs for
years; here the calibration is a z-stack of the PSF sampled on the camera pixel grid (e.g. an
averaged bead scan), interpolated with Catmull-Rom cubic convolution along x, y and z (Keys,
IEEE TASSP 29:1153, 1981) — a C1 piecewise-cubic spline through the samples — using gathers only,
so it runs on any device with no compiled extension.

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
    if psf.ndim != 3:
        raise DataError(f"{p}: psf must be 3D [Nz, Ny, Nx] (got shape {psf.shape})")
    return psf, dz, z0


def load_calibration(psf_cfg: PSFSection, device: torch.device) -> tuple[torch.Tensor, float, float]:
    """The calibration stack on ``device`` with its ``(dz_nm, z0_nm)``."""
    if psf_cfg.calibration is None:
        raise ConfigError("config error: psf.calibration: required when psf.kind is 'spline' (got null)")
    arr, dz, z0 = _load(str(psf_cfg.calibration))
    return torch.as_tensor(arr, device=device), dz, z0


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
                  photons: torch.Tensor, height: int, width: int, psf_cfg: PSFSection) -> torch.Tensor:
    """Expected photons ``[n_groups, H, W]`` from the calibrated PSF (positions in px, z in nm).

    Each emitter contributes over the calibration's lateral extent around it, added into its frame
    with one ``index_put_(accumulate=True)``.
    """
    dev, dt = x.device, x.dtype
    frames = torch.zeros(n_groups * height * width, device=dev, dtype=dt)
    if x.numel() == 0:
        return frames.view(n_groups, height, width)
    vol, dz, z0 = load_calibration(psf_cfg, dev)
    vol = vol.to(dt)
    nz, ny, nx = vol.shape
    ry, rx = ny // 2 + 1, nx // 2 + 1
    oy = torch.arange(-ry, ry + 1, device=dev)
    ox = torch.arange(-rx, rx + 1, device=dev)
    py = y.floor().long()[:, None, None] + oy[None, :, None]  # pixel rows  [E, Ry, 1]
    px = x.floor().long()[:, None, None] + ox[None, None, :]  # pixel cols  [E, 1, Rx]
    vy = (py + 0.5 - y[:, None, None]) + (ny - 1) / 2  # pixel centre in calibration voxels
    vx = (px + 0.5 - x[:, None, None]) + (nx - 1) / 2
    vz = ((z - z0) / dz)[:, None, None]
    vy, vx = torch.broadcast_tensors(vy, vx)
    val = tricubic(vol, vz.expand_as(vy), vy, vx).clamp(min=0) * photons[:, None, None]
    py, px = torch.broadcast_tensors(py, px)
    ok = (py >= 0) & (py < height) & (px >= 0) & (px < width)
    idx = (group[:, None, None] * height + py) * width + px
    frames.index_put_((idx[ok],), val[ok], accumulate=True)
    return frames.view(n_groups, height, width)


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
