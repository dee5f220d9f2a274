"""SMAP / DECODE cubic-spline PSF calibrations (``*_3dcal.mat``), evaluated exactly in PyTorch.

SMAP (Ries lab; Li et al., Nat. Methods 15:367, 2018) calibrates a measured 3D PSF from bead
z-stacks and saves it as piecewise tricubic polynomials; DECODE (Speiser et al., Nat. Methods
18:1082, 2021) simulates with the same file through a compiled C/CUDA package (``spline_psf``).
Here the polynomials are summed with tensor gathers only, on any device.

File layout (SMAP ``calibrate3D``/``getstackcal_g``; DECODE ``load_spline``):

* struct ``SXY`` (a struct array for position-dependent calibrations: the first element is
  used, as DECODE does) with struct field ``cspline``; files saved outside SMAP hold
  ``cspline`` as a top-level variable instead.
* ``cspline.coeff``: single ``[Na, Nb, Nz, 64]`` in MATLAB order, or a cell holding one per
  channel (the first, the reference channel, is used). Voxel ``(a, b, c)`` with offsets
  ``t_a, t_b, t_z`` in ``[0, 1)`` has value ``sum coeff(a, b, c, 16 p_z + 4 p_b + p_a + 1)
  t_a^p_a t_b^p_b t_z^p_z`` (SMAP ``Spline3D_interp`` builds the 64 terms in this order and
  ``simSplinePSF``/``spline_psf`` evaluate them so). The grid is one shorter than the PSF
  stack it was fitted to: voxel ``a`` spans stack samples ``a`` and ``a + 1``, and the
  constant term ``c_000`` is the stack sample itself. Axis ``a`` is the first MATLAB image
  axis, the camera row (SMAP's fitters report its coordinate as ``ypix``), so ``a`` is our y.
  The lateral step is one camera pixel of the bead acquisition.
* ``cspline.x0``: 1-based index of the PSF centre pixel in the cut-out ROI (``dRx + 1``);
  the emitter sits at voxel coordinate ``x0 - 1`` along both lateral axes.
* ``cspline.z0`` and ``cspline.dz``: z in voxel coordinates is ``z_nm / dz + z0`` (SMAP's
  simulator and DECODE; ``z0`` is used as stored, it is not shifted by one). Recent SMAP
  fitters report z with the opposite sign; we follow DECODE: larger z, later stack slice.
* ``parameters.cam_pixelsize_um`` (optional): the calibration's camera pixel size.
* The PSF was normalised to unit sum over the ROI near focus, so ``photons * value`` is the
  expected photon count of a pixel; light that falls outside the ROI far from focus is lost,
  as in SMAP and DECODE.

MATLAB v5/v7 files are read with :func:`scipy.io.loadmat`, v7.3 files (HDF5) with h5py: there
arrays are stored with their axes reversed, and cells and struct arrays are object references.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotrain.errors import ConfigError, DataError

N_TERMS = 64  # 4 x 4 x 4 polynomial terms per voxel
# Largest number of gathered coefficients ([emitters, Ny, Nx, 64]) held at once while rendering.
_GATHER_BUDGET = 1 << 24
# Calibration and simulation pixel sizes must agree to this relative tolerance: the spline's
# lateral step is one calibration pixel.
PIXEL_SIZE_RTOL = 0.01


@dataclass(frozen=True)
class CSplineCalibration:
    """A cubic-spline PSF in our axis order.

    ``coeff`` ``[Nz, Ny, Nx, 64]`` float32, term ``16 p_z + 4 p_y + p_x`` multiplies
    ``t_z^p_z t_y^p_y t_x^p_x``; ``ref_y``/``ref_x`` the emitter's lateral voxel coordinate;
    z (nm) maps to voxel coordinate ``z / dz_nm + z0``; ``pixel_size_nm`` ``(x, y)`` of the
    calibration camera if the file records it.
    """

    coeff: np.ndarray
    dz_nm: float
    z0: float
    ref_y: float
    ref_x: float
    pixel_size_nm: tuple[float, float] | None = None


def is_matlab_calibration(path: str | Path) -> bool:
    """Whether ``path`` names a MATLAB calibration (by suffix; v7.3 files are HDF5 inside)."""
    return Path(path).suffix.lower() == ".mat"


def smap_to_internal(coeff: np.ndarray) -> np.ndarray:
    """SMAP ``[Na, Nb, Nz, 64]`` (term ``16 p_z + 4 p_b + p_a``) -> ours ``[Nz, Ny, Nx, 64]``."""
    na, nb, nz, _ = coeff.shape
    c = coeff.reshape(na, nb, nz, 4, 4, 4)  # [a, b, z, p_z, p_b, p_a]
    return np.ascontiguousarray(c.transpose(2, 0, 1, 3, 5, 4).reshape(nz, na, nb, N_TERMS), dtype=np.float32)


# --- reading ------------------------------------------------------------------------------------


def _first(value: Any) -> Any:
    """The first element of a MATLAB cell / struct array (object ndarray), else ``value``."""
    while isinstance(value, np.ndarray) and value.dtype == object:
        if value.size == 0:
            return None
        value = value.flat[0]
    return value


class _V5:
    """Field access into a v5/v7 MAT file loaded by scipy (structs as attribute objects)."""

    def __init__(self, path: Path) -> None:
        import scipy.io

        try:
            self.vars = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
        except Exception as exc:  # noqa: BLE001 -- on foreign bytes scipy raises ValueError, MatReadError, zlib.error, ...
            why = " ".join(str(exc).split())
            raise DataError(f"{path}: not a readable MATLAB calibration file ({type(exc).__name__}: {why})") from None

    def top(self, name: str) -> Any:
        return _first(self.vars.get(name))

    def names(self) -> list[str]:
        return sorted(k for k in self.vars if not k.startswith("__"))

    @staticmethod
    def child(node: Any, name: str) -> Any:
        return _first(getattr(node, name, None)) if node is not None and not isinstance(node, np.ndarray) else None

    @staticmethod
    def fields(node: Any) -> list[str]:
        return list(getattr(node, "_fieldnames", []) or [])

    @staticmethod
    def array(node: Any) -> np.ndarray:
        return np.asarray(node)


class _V73:
    """Field access into a v7.3 MAT file (HDF5): groups are structs, references are cells."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.h5py = h5py
        try:
            self.f = h5py.File(path, "r")
        except OSError as exc:
            raise DataError(f"{path}: not a readable MATLAB v7.3 calibration file ({' '.join(str(exc).split())})") from None

    def close(self) -> None:
        self.f.close()

    def _deref(self, node: Any) -> Any:
        while isinstance(node, self.h5py.Dataset) and self.h5py.check_dtype(ref=node.dtype) is not None:
            refs = node[()]
            if refs.size == 0:
                return None
            node = self.f[refs.flat[0]]
        return node

    def top(self, name: str) -> Any:
        return self._deref(self.f[name]) if name in self.f else None

    def names(self) -> list[str]:
        return sorted(k for k in self.f if not k.startswith("#"))

    def child(self, node: Any, name: str) -> Any:
        if isinstance(node, self.h5py.Group) and name in node:
            return self._deref(node[name])
        return None

    def fields(self, node: Any) -> list[str]:
        return sorted(node.keys()) if isinstance(node, self.h5py.Group) else []

    def array(self, node: Any) -> np.ndarray:
        if not isinstance(node, self.h5py.Dataset):
            return np.asarray(None)
        return np.asarray(node[()]).T  # MATLAB writes column-major: HDF5 sees the axes reversed


def _number(path: Path, reader: Any, node: Any, field: str, n: int = 1) -> np.ndarray:
    if node is None:
        raise DataError(f"{path}: field '{field}' missing")
    try:
        arr = np.asarray(reader.array(node), dtype=np.float64).ravel()
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.size not in (1, n) or not np.isfinite(arr).all():
        raise DataError(f"{path}: field '{field}' must be a finite number (got {reader.array(node)!r:.60})")
    return arr


def _read(path: Path, reader: Any) -> CSplineCalibration:
    sxy = reader.top("SXY")
    if sxy is not None:
        cs, where = reader.child(sxy, "cspline"), "SXY.cspline"
        if cs is None:
            raise DataError(f"{path}: field 'SXY.cspline' missing (SXY has {reader.fields(sxy)})")
    else:
        cs, where = reader.top("cspline"), "cspline"
        if cs is None:
            raise DataError(f"{path}: field 'SXY' missing: expected a SMAP 3D calibration with SXY.cspline "
                            f"(variables: {reader.names()})")
    node = reader.child(cs, "coeff")
    if node is None:
        raise DataError(f"{path}: field '{where}.coeff' missing ({where} has {reader.fields(cs)})")
    try:
        coeff = np.asarray(reader.array(node), dtype=np.float32)
    except (TypeError, ValueError):
        coeff = np.empty(0, dtype=np.float32)
    if coeff.ndim != 4 or coeff.shape[3] != N_TERMS or min(coeff.shape) < 1:
        raise DataError(f"{path}: field '{where}.coeff' must be [Nx, Ny, Nz, {N_TERMS}] (got shape {coeff.shape})")
    if not np.isfinite(coeff).all():
        raise DataError(f"{path}: field '{where}.coeff' holds non-finite values")
    dz = float(_number(path, reader, reader.child(cs, "dz"), f"{where}.dz")[0])
    if dz <= 0:
        raise DataError(f"{path}: field '{where}.dz' must be > 0 nm (got {dz})")
    z0 = float(_number(path, reader, reader.child(cs, "z0"), f"{where}.z0")[0])
    x0 = _number(path, reader, reader.child(cs, "x0"), f"{where}.x0", n=2)
    ref_y, ref_x = float(x0[0]) - 1.0, float(x0[-1]) - 1.0  # 1-based MATLAB index -> voxel coordinate
    pixel = None
    params = reader.top("parameters")
    px_node = reader.child(params, "cam_pixelsize_um") if params is not None else None
    if px_node is not None:
        try:
            px = np.asarray(reader.array(px_node), dtype=np.float64).ravel()
            if px.size in (1, 2) and np.isfinite(px).all() and (px > 0).all():
                pixel = (float(px[0]) * 1000.0, float(px[-1]) * 1000.0)
        except (TypeError, ValueError):
            pixel = None  # optional metadata: an odd entry does not make the spline unusable
    return CSplineCalibration(smap_to_internal(coeff), dz, z0, ref_y, ref_x, pixel)


def _file_key(path: str | Path) -> tuple[str, int, int]:
    """Cache key that changes when the file is rewritten."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config error: psf.calibration: {p}: file not found")
    st = p.stat()
    return str(p), st.st_mtime_ns, st.st_size


def read_smap_calibration(path: str | Path) -> CSplineCalibration:
    """Read a SMAP ``*_3dcal.mat`` (v5/v7 or v7.3) into a :class:`CSplineCalibration`.

    Raises :class:`ConfigError` for a missing file and :class:`DataError` (one line naming the
    file and field) for anything else that is not a usable calibration.
    """
    return _read_cached(*_file_key(path))


@lru_cache(maxsize=4)
def _read_cached(path: str, mtime_ns: int, size: int) -> CSplineCalibration:
    import h5py

    p = Path(path)
    if h5py.is_hdf5(p):
        reader = _V73(p)
        try:
            return _read(p, reader)
        finally:
            reader.close()
    return _read(p, _V5(p))


# --- evaluation ---------------------------------------------------------------------------------


def _powers(t: torch.Tensor) -> torch.Tensor:
    """``[..., 4]``: ``1, t, t^2, t^3``."""
    return torch.stack([torch.ones_like(t), t, t * t, t * t * t], -1)


def term_weights(tz: torch.Tensor, ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
    """The 64 monomials ``t_z^p_z t_y^p_y t_x^p_x`` in coefficient order, ``[..., 64]``."""
    w = _powers(tz)[..., :, None, None] * _powers(ty)[..., None, :, None] * _powers(tx)[..., None, None, :]
    return w.flatten(-3)


def _z_voxel(sz: torch.Tensor, nz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel index and offset along z; beyond the calibrated range the end value is held."""
    sz = sz.clamp(0, nz)
    iz = sz.floor().clamp(max=nz - 1)
    return iz.long(), sz - iz


def evaluate_cspline(coeff: torch.Tensor, sz: torch.Tensor, sy: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
    """Spline value at voxel coordinates ``(sz, sy, sx)`` (equal shapes), one gather per point.

    ``coeff`` ``[Nz, Ny, Nx, 64]``. Zero outside ``[0, Ny) x [0, Nx)`` laterally; z is held at
    the ends of the calibrated range (SMAP and ``spline_psf`` clamp the z voxel index too).
    """
    nz, ny, nx, _ = coeff.shape
    iz, tz = _z_voxel(sz, nz)
    iy, ix = sy.floor(), sx.floor()
    inside = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    w = term_weights(tz, sy - iy, sx - ix).to(coeff.dtype)
    c = coeff[iz, iy.long().clamp(0, ny - 1), ix.long().clamp(0, nx - 1)]  # [..., 64]
    return torch.where(inside, (c * w).sum(-1), torch.zeros((), dtype=coeff.dtype, device=coeff.device))


@lru_cache(maxsize=8)
def _coeff_on(key: tuple[str, int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The coefficients on ``device`` once, not one host-to-device copy per simulated batch."""
    return torch.as_tensor(_read_cached(*key).coeff, device=device, dtype=dtype)


def render_cspline(path: str | Path, group: torch.Tensor, n_groups: int, x: torch.Tensor, y: torch.Tensor,
                   z: torch.Tensor, photons: torch.Tensor, height: int, width: int,
                   pixel_size_nm: float | None = None) -> torch.Tensor:
    """Expected photons ``[n_groups, H, W]`` from the SMAP calibration at ``path`` (see
    :func:`render_coefficients`); ``pixel_size_nm``, if given, must match the calibration's."""
    key = _file_key(path)
    cal = _read_cached(*key)
    if pixel_size_nm is not None and cal.pixel_size_nm is not None and any(
            abs(p - pixel_size_nm) > PIXEL_SIZE_RTOL * pixel_size_nm for p in cal.pixel_size_nm):
        raise ConfigError(f"config error: simulate.pixel_size_nm: {pixel_size_nm} nm, but {path} was "
                          f"calibrated with {cal.pixel_size_nm[0]:g} nm camera pixels")
    coeff = _coeff_on(key, x.device, x.dtype) if x.numel() else torch.empty(1, 1, 1, N_TERMS)
    return render_coefficients(coeff, cal.ref_y, cal.ref_x, cal.z0, cal.dz_nm, group, n_groups, x, y, z, photons,
                               height, width)


def render_coefficients(coeff: torch.Tensor, ref_y: float, ref_x: float, z0: float, dz_nm: float,
                        group: torch.Tensor, n_groups: int, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                        photons: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Expected photons ``[n_groups, H, W]`` of emitters at ``x, y`` (px, pixel centres at ``i + 0.5``)
    and ``z`` (nm) with ``photons`` each, emitter ``i`` added into frame ``group[i]``.

    ``coeff`` ``[Nz, Ny, Nx, 64]`` on the emitters' device and dtype; the emitter sits at lateral
    voxel coordinate ``(ref_y, ref_x)``, z maps to ``z / dz_nm + z0``. The grid and the camera
    share the pixel pitch, so every pixel of an emitter's ``Ny x Nx`` footprint sits at the same
    offsets ``(t_y, t_x)`` inside its voxel: the 64 monomials are computed once per emitter and
    contracted with the gathered coefficients of its z voxel. Slightly negative spline ringing is
    clipped to 0 (an expected photon count).
    """
    dev, dt = x.device, x.dtype
    frames = torch.zeros(n_groups * height * width, device=dev, dtype=dt)
    if x.numel() == 0:
        return frames.view(n_groups, height, width)
    nz, ny, nx, _ = coeff.shape
    # pixel row r is at voxel coordinate r + 0.5 - y + ref_y = voxel a + t_y with r = a - ky
    sy0, sx0 = 0.5 - y + ref_y, 0.5 - x + ref_x
    ky, kx = sy0.floor(), sx0.floor()
    iz, tz = _z_voxel(z / dz_nm + z0, nz)
    w = term_weights(tz, sy0 - ky, sx0 - kx)  # [E, 64]
    rows = torch.arange(ny, device=dev)[None, :, None] - ky.long()[:, None, None]  # [E, Ny, 1]
    cols = torch.arange(nx, device=dev)[None, None, :] - kx.long()[:, None, None]  # [E, 1, Nx]
    rows, cols = torch.broadcast_tensors(rows, cols)
    ok = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    idx = (group[:, None, None] * height + rows) * width + cols
    chunk = max(1, _GATHER_BUDGET // (ny * nx * N_TERMS))
    vals = torch.cat([torch.einsum("eyxq,eq->eyx", coeff[iz[s:s + chunk]], w[s:s + chunk])
                      for s in range(0, x.numel(), chunk)])
    vals = vals.clamp(min=0) * photons[:, None, None]
    frames.index_put_((idx[ok],), vals[ok], accumulate=True)
    return frames.view(n_groups, height, width)
