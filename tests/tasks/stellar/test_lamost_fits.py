"""The fast LAMOST FITS reader agrees with astropy byte for byte, and refuses what it does not know."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from neurotrain.tasks.stellar.lamost_fits import FitsLayoutError, read_lamost_fits

N = 64


def _old_layout(path: Path) -> np.ndarray:
    rng = np.random.default_rng(1)
    data = np.stack([rng.normal(100, 5, N), rng.uniform(0.1, 1, N), 10 ** (3.5682 + 1e-4 * np.arange(N)),
                     np.zeros(N), rng.integers(0, 3, N)]).astype(np.float32)
    hdu = fits.PrimaryHDU(data)
    hdu.header["Z"] = 1.5e-4
    hdu.header["OBJNAME"] = "it's a star"
    hdu.header["COEFF0"] = 3.5682
    hdu.writeto(path)
    return data


def _new_layout(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    cols = {k: rng.normal(size=N).astype(np.float32) for k in ("FLUX", "IVAR", "WAVELENGTH", "ANDMASK")}
    cols["ORMASK"] = rng.integers(0, 5, N).astype(np.int32)
    primary = fits.PrimaryHDU()
    primary.header["OBSID"] = 123456
    primary.header["Z"] = -2.5e-5
    primary.header["RA"] = 138.080956
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name=k, format=f"{N}{'J' if v.dtype == np.int32 else 'E'}", array=v[None]) for k, v in cols.items()],
        name="COADD",
    )
    fits.HDUList([primary, table]).writeto(path)
    return cols


def test_old_layout_matches_astropy(tmp_path: Path) -> None:
    p = tmp_path / "old.fits"
    data = _old_layout(p)
    c = read_lamost_fits(p)
    assert c.image is not None and np.array_equal(c.image, data)
    assert c.header["Z"] == pytest.approx(1.5e-4) and c.header["OBJNAME"] == "it's a star"
    assert not c.columns


def test_new_layout_and_gzip_match_astropy(tmp_path: Path) -> None:
    p = tmp_path / "new.fits"
    cols = _new_layout(p)
    gz = tmp_path / "new.fits.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    for path in (p, gz):
        c = read_lamost_fits(path)
        assert c.image is None
        assert c.header["OBSID"] == 123456 and c.header["RA"] == pytest.approx(138.080956)
        for k, v in cols.items():
            assert np.array_equal(c.columns[k][0], v), k


@pytest.mark.parametrize("cut", [0, 40, 2880 + 800, 2 * 2880 + 100, -2000])
def test_truncated_files_are_refused(tmp_path: Path, cut: int) -> None:
    p = tmp_path / "new.fits"
    _new_layout(p)
    raw = p.read_bytes()
    bad = tmp_path / "cut.fits"
    bad.write_bytes(raw[:cut] if cut >= 0 else raw[:cut])
    with pytest.raises(FitsLayoutError):
        read_lamost_fits(bad)


def test_file_cut_after_the_primary_header_has_neither_layout(tmp_path: Path) -> None:
    p = tmp_path / "new.fits"
    _new_layout(p)
    cut = tmp_path / "cut.fits"
    cut.write_bytes(p.read_bytes()[:2880])
    c = read_lamost_fits(cut)
    assert c.image is None and not c.columns


def test_garbage_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.fits"
    p.write_bytes(b"not a fits file at all" * 200)
    with pytest.raises(FitsLayoutError):
        read_lamost_fits(p)


def test_real_lamost_files_equal_astropy(realdata: Path) -> None:
    files = sorted((realdata / "stellar").glob("*.fits"))
    assert len(files) == 25
    for f in files:
        c = read_lamost_fits(f)
        with fits.open(f) as h:
            for name in h[1].data.columns.names:
                assert np.array_equal(np.asarray(h[1].data[name]), c.columns[name]), (f, name)
            for key in ("OBSID", "Z", "RA", "DEC", "CLASS", "SUBCLASS", "SNRG", "COEFF0", "COEFF1"):
                assert c.header[key] == h[0].header[key], (f, key)
