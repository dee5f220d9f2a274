"""Reading both LAMOST FITS layouts, CSV/HDF5 spectra, bad files and catalogues."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from neurotrain.errors import ConfigError, DataError
from neurotrain.tasks.stellar import io
from neurotrain.tasks.stellar.config import ReadSection

from .conftest import COEFF0, COEFF1, lamost_wave, make_arrays


@pytest.mark.parametrize("fast", [True, False])
def test_both_layouts_read_the_same(new_fits, old_fits, fast):
    cfg = ReadSection(fast_fits=fast)
    a = io.read_spectrum(new_fits("spec-1.fits", z=2e-4, seed=3), cfg)
    b = io.read_spectrum(old_fits("spec-2.fits", z=2e-4, seed=3), cfg)
    assert a.id == "spec-1" and b.id == "spec-2"
    assert a.z == pytest.approx(2e-4) and b.z == pytest.approx(2e-4)
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_allclose(a.wavelength, lamost_wave(), rtol=1e-7)  # stored as float32
    assert a.wavelength.dtype == np.float64 and a.flux.dtype == np.float32
    # ANDMASK bit 4 at pixels 100..102: masked, ivar 0
    assert a.mask[100:103].all() and not a.mask[:100].any()
    assert (a.ivar[a.mask] == 0).all() and (b.ivar[b.mask] == 0).all()
    assert a.meta["OBSID"] == 101 and a.meta["SUBCLASS"] == "G2" and a.meta["SNRG"] == 40.0


def test_andmask_bits_select(new_fits):
    p = new_fits(z=0.0)
    assert not io.read_spectrum(p, ReadSection(andmask_bits=1)).mask[100:103].any()  # bit 4 not selected
    assert io.read_spectrum(p, ReadSection(andmask_bits=4)).mask[100:103].all()


def test_wavelength_from_coeffs(new_fits, old_fits):
    a = io.read_spectrum(new_fits(with_wavelength=False))
    b = io.read_spectrum(old_fits(rows=2))  # flux and ivar only
    want = 10.0 ** (COEFF0 + COEFF1 * np.arange(a.flux.size))
    np.testing.assert_allclose(a.wavelength, want, rtol=1e-12)
    np.testing.assert_allclose(b.wavelength, want, rtol=1e-12)


@pytest.mark.parametrize("fast", [True, False])
def test_bad_files_name_file_and_field(tmp_path, new_fits, fast):
    cfg = ReadSection(fast_fits=fast)
    good = new_fits("good.fits")
    data = good.read_bytes()
    (tmp_path / "trunc.fits").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.fits").write_text("not a fits file\n" * 100)
    with pytest.raises(DataError, match=r"trunc\.fits"):
        io.read_spectrum(tmp_path / "trunc.fits", cfg)
    with pytest.raises(DataError, match=r"text\.fits.*not a readable FITS"):
        io.read_spectrum(tmp_path / "text.fits", cfg)
    with pytest.raises(DataError, match=r"noz\.fits: Z:"):
        io.read_spectrum(new_fits("noz.fits", z=None), cfg)
    assert io.read_spectrum(new_fits("noz2.fits", z=None), ReadSection(require_z=False, fast_fits=fast)).z is None
    a = make_arrays()
    a["flux"][:] = np.nan
    with pytest.raises(DataError, match=r"nan\.fits: FLUX"):
        io.read_spectrum(new_fits("nan.fits", arrays=a), cfg)
    a = make_arrays()
    a["ivar"][:] = 0
    with pytest.raises(DataError, match=r"ivar0\.fits: IVAR"):
        io.read_spectrum(new_fits("ivar0.fits", arrays=a), cfg)
    a = make_arrays()
    a["wave"][2000] = a["wave"][1990]
    with pytest.raises(DataError, match=r"mono\.fits: WAVELENGTH.*increasing"):
        io.read_spectrum(new_fits("mono.fits", arrays=a), cfg)
    # a FITS with neither layout: a 1-D primary image
    from astropy.io import fits
    fits.PrimaryHDU(np.zeros(10, np.float32)).writeto(tmp_path / "oned.fits")
    with pytest.raises(DataError, match=r"oned\.fits: layout"):
        io.read_spectrum(tmp_path / "oned.fits", cfg)


def test_csv_and_h5_spectra(tmp_path):
    a = make_arrays(z=0.0)
    pd.DataFrame({"wavelength": a["wave"], "flux": a["flux"], "ivar": a["ivar"], "z": 1e-4}).to_csv(
        tmp_path / "s.csv", index=False)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        for k, v in (("wavelength", a["wave"]), ("flux", a["flux"]), ("ivar", a["ivar"])):
            f[k] = v
        f.attrs["z"] = 1e-4
    c = io.read_spectrum(tmp_path / "s.csv")
    h = io.read_spectrum(tmp_path / "s.h5")
    np.testing.assert_allclose(c.flux, a["flux"], rtol=1e-6)
    np.testing.assert_array_equal(h.flux, a["flux"])
    assert c.z == pytest.approx(1e-4) and h.z == pytest.approx(1e-4)
    pd.DataFrame({"wavelength": [1, 2], "flux": [1, 2]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad\.csv: columns.*ivar"):
        io.read_spectrum(tmp_path / "bad.csv")


def test_find_read_many_stack(tmp_path, new_fits, old_fits):
    (tmp_path / "sub").mkdir()
    p1 = new_fits("a.fits")
    p2 = old_fits("sub/b.fits")
    (tmp_path / "c.fits").write_text("junk")
    found = io.find_spectra([tmp_path, p1], ["*.fits"])
    assert found == sorted([p1, p2, tmp_path / "c.fits"])
    with pytest.raises(DataError, match="nowhere"):
        io.find_spectra([tmp_path / "nowhere"])
    good, skipped = io.read_many(found, ReadSection(), workers=2)
    assert [s.id for s in good] == ["a", "b"]
    assert len(skipped) == 1 and skipped[0][0].name == "c.fits" and "c.fits" in skipped[0][1]
    short = io.Spectrum("s", p1, good[0].wavelength[:100], good[0].flux[:100], good[0].ivar[:100],
                        good[0].mask[:100], None)
    raw = io.stack_spectra([good[0], short])
    assert raw["wave"].shape == (2, 3909) and raw["wave"].dtype == torch.float64
    assert raw["flux"].dtype == torch.float32 and raw["mask"].dtype == torch.bool
    assert bool(raw["mask"][1, 100:].all()) and float(raw["ivar"][1, 100:].abs().sum()) == 0
    assert bool((raw["wave"][1].diff() > 0).all())
    assert raw["z"].tolist() == pytest.approx([1e-3, 0.0])


def test_real_files_fast_equals_astropy(stellar_realdata):
    files = sorted(stellar_realdata.glob("*.fits"))[:5]
    for f in files:
        a = io.read_spectrum(f, ReadSection(fast_fits=True))
        b = io.read_spectrum(f, ReadSection(fast_fits=False))
        assert a.z == b.z and a.meta == b.meta
        np.testing.assert_array_equal(a.flux, b.flux)
        np.testing.assert_array_equal(a.ivar, b.ivar)
        np.testing.assert_array_equal(a.wavelength, b.wavelength)
        assert a.wavelength[0] == pytest.approx(3700.0, abs=0.1) and a.flux.size == 3909


# ----------------------------------------------------------------------------------- catalogues


def test_catalog_reading_and_validation(tmp_path):
    p1 = tmp_path / "X_FE.csv"
    p1.write_text("spec,teff,logg,FE_H,C_FE\nspec-1.fits,5000,4.5,-0.1,0.05\n3703110,4800,x,0.0,\n")
    p2 = tmp_path / "galah_X_FE.csv"
    p2.write_text("spec,TEFF,MG_FE\n3703111.0,6000,0.2\n")
    cat = io.read_catalog([p1, p2], "spec", ["TEFF", "LOGG", "FE_H", "MG_FE"])
    assert cat["id"].tolist() == ["spec-1", "3703110", "3703111"]
    assert cat["LOGG"].isna().tolist() == [False, True, True]
    assert cat.attrs["non_numeric"] == {"LOGG": 1}
    assert np.isnan(cat.loc[0, "MG_FE"]) and cat.loc[2, "MG_FE"] == pytest.approx(0.2)
    with pytest.raises(ConfigError, match=r"labels \['NA_FE'\]"):
        io.read_catalog([p1], "spec", ["TEFF", "NA_FE"])
    with pytest.raises(ConfigError, match=r"X_FE\.csv: obsid"):
        io.read_catalog([p1], "obsid", ["TEFF"])
    p3 = tmp_path / "dup.csv"
    p3.write_text("spec,TEFF\na,1\nb,2\na,3\n")
    with pytest.raises(DataError, match=r"dup\.csv: spec: expected unique ids.*'a'"):
        io.read_catalog([p3], "spec")
    p4 = tmp_path / "other.csv"
    p4.write_text("spec,TEFF\nspec-1,1\n")
    with pytest.raises(DataError, match=r"other\.csv.*spec-1"):
        io.read_catalog([p1, p4], "spec", ["TEFF"])


def test_write_labels(tmp_path):
    df = pd.DataFrame({"id": ["a", "b"], "TEFF": [5000.0, 6000.0], "TEFF_ERR": [50.0, 60.0]})
    io.write_labels_csv(tmp_path / "l.csv", df)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "l.csv", dtype={"id": str}), df, check_dtype=False)
    io.write_labels_h5(tmp_path / "l.h5", df)
    with h5py.File(tmp_path / "l.h5") as f:
        assert list(f.attrs["columns"]) == ["id", "TEFF", "TEFF_ERR"]
        assert [x.decode() for x in f["id"][()]] == ["a", "b"]
        np.testing.assert_array_equal(f["TEFF"][()], [5000.0, 6000.0])
    assert not list(tmp_path.glob(".*tmp*"))


def test_process_reading_equals_threads(new_fits, old_fits, tmp_path):
    paths = [new_fits(f"p{i}.fits", seed=i) for i in range(3)] + [old_fits("o.fits")]
    (tmp_path / "bad.fits").write_text("junk")
    paths.append(tmp_path / "bad.fits")
    a, sa = io.read_many(paths, ReadSection(), workers=2)
    b, sb = io.read_many(paths, ReadSection(processes=True), workers=2)
    assert [s.id for s in a] == [s.id for s in b] == ["p0", "p1", "p2", "o"]
    assert [p for p, _ in sa] == [p for p, _ in sb] == [tmp_path / "bad.fits"]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.flux, y.flux)


def test_fast_header_values():
    from neurotrain.tasks.stellar.fits_fast import _value

    assert _value("'O''Brien '  / a comment") == "O'Brien"
    assert _value("'LAMOST J0912+27'") == "LAMOST J0912+27"
    assert _value("   -5.617D-05 / z") == pytest.approx(-5.617e-05)
    assert _value("12 / n") == 12 and _value("T") is True and _value("F") is False


def test_andmask_any_bit_is_the_integer_part(new_fits):
    """``andmask_bits=0``: a pixel is bad when the mask's integer part is non-zero or the mask is NaN."""
    a = make_arrays()
    a["andmask"][:] = 0
    a["andmask"][10:16] = [0.5, 1.0, np.nan, 32.0, -2.0, -0.75]
    s = io.read_spectrum(new_fits("m.fits", arrays=a))
    assert s.mask[10:16].tolist() == [False, True, True, True, True, False]
    assert s.mask.sum() == 4 and (s.ivar[s.mask] == 0).all()
    assert io.read_spectrum(new_fits("m2.fits", arrays=a), ReadSection(andmask_bits=32)).mask[10:16].tolist() == [
        False, False, False, True, True, False]  # NaN counts as bit 1; -2 has every high bit set
