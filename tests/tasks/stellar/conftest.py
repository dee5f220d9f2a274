"""Fixtures of the stellar tests: small LAMOST-like FITS files of both layouts, written with astropy.

A spectrum is a smooth continuum (a 5000 K-ish slope) times Gaussian absorption lines at known rest
wavelengths, Doppler-shifted by ``z`` and sampled on LAMOST's log-linear grid (log10 lambda = COEFF0 +
COEFF1 i, vacuum Angstrom), with Gaussian noise of a chosen S/N.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

COEFF0 = 3.5682
COEFF1 = 1e-4
N_PIX = 3909
#: (rest vacuum wavelength A, depth, sigma A) of the lines the fixtures carry
LINES = ((4862.7, 0.5, 3.0), (5174.1, 0.4, 2.0), (6564.6, 0.6, 3.0), (8544.4, 0.5, 2.5))


def lamost_wave(n: int = N_PIX) -> np.ndarray:
    return 10.0 ** (COEFF0 + COEFF1 * np.arange(n))


def continuum(wave: np.ndarray) -> np.ndarray:
    """A smooth, positive, sloped continuum (arbitrary flux units)."""
    x = (wave - 6400.0) / 2700.0
    return 1000.0 * (1.0 + 0.35 * x - 0.25 * x**2)


def line_profile(rest_wave: np.ndarray, lines=LINES) -> np.ndarray:
    prof = np.ones_like(rest_wave)
    for c, d, s in lines:
        prof *= 1.0 - d * np.exp(-0.5 * ((rest_wave - c) / s) ** 2)
    return prof


def make_arrays(z: float = 1e-3, snr: float = 50.0, seed: int = 0, n: int = N_PIX) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    wave = lamost_wave(n)
    true = continuum(wave) * line_profile(wave / (1.0 + z))
    sigma = continuum(wave) / snr
    flux = true + rng.normal(0.0, 1.0, n) * sigma
    ivar = 1.0 / sigma**2
    andmask = np.zeros(n)
    andmask[100:103] = 4.0  # "no sky" bit: masked
    ormask = np.zeros(n)
    return {"wave": wave, "flux": flux.astype(np.float32), "ivar": ivar.astype(np.float32),
            "andmask": andmask, "ormask": ormask, "true": true}


def _header(h: fits.Header, z: float | None, obsid: int) -> None:
    h["OBSID"] = obsid
    h["DESIG"] = "LAMOST J000000.00+000000.0"
    h["RA"] = 10.0
    h["DEC"] = 20.0
    h["CLASS"] = "STAR"
    h["SUBCLASS"] = "G2"
    if z is not None:
        h["Z"] = z
        h["Z_ERR"] = 1e-5
    h["SNRG"] = 40.0
    h["SNRR"] = 50.0
    h["COEFF0"] = COEFF0
    h["COEFF1"] = COEFF1


def write_new_layout(path: Path, *, z: float | None = 1e-3, snr: float = 50.0, seed: int = 0, obsid: int = 101,
                     with_wavelength: bool = True, arrays: dict | None = None) -> Path:
    """The newer LAMOST layout: empty primary (header) + binary table ``COADD`` with one row."""
    a = arrays or make_arrays(z=0.0 if z is None else z, snr=snr, seed=seed)
    n = a["flux"].size
    prim = fits.PrimaryHDU()
    _header(prim.header, z, obsid)
    cols = [fits.Column(name="FLUX", format=f"{n}E", array=a["flux"][None]),
            fits.Column(name="IVAR", format=f"{n}E", array=a["ivar"][None])]
    if with_wavelength:
        cols.append(fits.Column(name="WAVELENGTH", format=f"{n}E", array=a["wave"][None].astype(np.float32)))
    cols += [fits.Column(name="ANDMASK", format=f"{n}E", array=a["andmask"][None].astype(np.float32)),
             fits.Column(name="ORMASK", format=f"{n}E", array=a["ormask"][None].astype(np.float32)),
             fits.Column(name="NORMALIZATION", format=f"{n}E", array=np.ones((1, n), np.float32))]
    tab = fits.BinTableHDU.from_columns(cols, name="COADD")
    fits.HDUList([prim, tab]).writeto(path, overwrite=True)
    return path


def write_old_layout(path: Path, *, z: float | None = 1e-3, snr: float = 50.0, seed: int = 0, obsid: int = 202,
                     rows: int = 5, arrays: dict | None = None) -> Path:
    """The older LAMOST layout: a ``rows x N`` primary image (flux, ivar, wavelength, andmask, ormask)."""
    a = arrays or make_arrays(z=0.0 if z is None else z, snr=snr, seed=seed)
    img = np.stack([a["flux"], a["ivar"], a["wave"], a["andmask"], a["ormask"]]).astype(np.float32)[:rows]
    prim = fits.PrimaryHDU(img)
    _header(prim.header, z, obsid)
    fits.HDUList([prim]).writeto(path, overwrite=True)
    return path


@pytest.fixture
def new_fits(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``new_fits("name.fits", z=..., snr=...)`` writes a newer-layout file into tmp_path."""
    def make(name: str = "new.fits", **kw) -> Path:
        return write_new_layout(tmp_path / name, **kw)
    return make


@pytest.fixture
def old_fits(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``old_fits("name.fits", z=..., rows=...)`` writes an older-layout file into tmp_path."""
    def make(name: str = "old.fits", **kw) -> Path:
        return write_old_layout(tmp_path / name, **kw)
    return make


@pytest.fixture
def stellar_realdata(realdata: Path) -> Path:
    d = realdata / "stellar"
    files = sorted(d.glob("*.fits"))
    if not files:
        pytest.skip(f"{d}: no real LAMOST spectra")
    return d
