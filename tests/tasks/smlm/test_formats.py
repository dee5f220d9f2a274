"""Localisation tables against the real Picasso and ThunderSTORM formats.

Picasso facts (picassosr 0.11 source): ``io.save_locs`` writes ``DataFrame.to_records(index=False)``
as the HDF5 dataset ``locs`` and the metadata list with ``yaml.dump_all`` to ``<name>.yaml`` (plus a
JSON ``metadata`` dataset since 0.11); ``lib.ensure_sanity`` (run by ``load_locs``) needs Width,
Height and Frames in the metadata and drops rows with a NaN anywhere, x >= Width, y >= Height or a
negative x, y, lpx, lpy, lpz, photons, ellipticity, sx, sy. ThunderSTORM facts (source:
``MoleculeDescriptor``, ``PSFModel.Params``, ``DLMImportExport``): labels ``name [unit]``, quoted
in the header, every field parsed as a double, frames 1-based.
"""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from neurotrain.errors import DataError
from neurotrain.tasks.smlm.io import LocWriter, localization_precision_px, read_locs, write_locs
from neurotrain.tasks.smlm.postprocess import MC_COLUMNS

PX = 130.0
META = {"pixel_size_nm": PX, "width": 32, "height": 24, "n_frames": 10, "excess_noise_factor": 2.0}
PICASSO_BASE = ["frame", "x", "y", "photons", "sx", "sy", "bg", "lpx", "lpy", "ellipticity", "net_gradient"]


@pytest.fixture
def table() -> pd.DataFrame:
    n = 5
    return pd.DataFrame({
        "frame": np.arange(n), "x_nm": np.linspace(100, 3000, n), "y_nm": np.linspace(50, 2900, n),
        "z_nm": np.linspace(-300, 300, n), "photons": np.linspace(500, 5000, n), "bg": np.linspace(10, 50, n),
        "prob": np.linspace(0.5, 0.9, n), "sigma_x_nm": np.linspace(5, 25, n), "sigma_y_nm": np.linspace(6, 26, n),
        "sigma_z_nm": np.linspace(20, 60, n), "sigma_photons": np.linspace(50, 90, n),
        "psf_sigma_x_nm": np.linspace(110, 150, n), "psf_sigma_y_nm": np.linspace(140, 100, n),
        "x_mc_sigma_nm": np.linspace(1, 2, n), "y_mc_sigma_nm": np.linspace(2, 3, n),
        "z_mc_sigma_nm": np.linspace(3, 4, n), "photons_mc_sigma": np.linspace(4, 5, n)})


def picasso_sanity(rec: np.ndarray, info: list[dict]) -> np.ndarray:
    """The rows ``picasso.lib.ensure_sanity`` keeps (the rule restated, not Picasso's code)."""
    meta = {k: v for doc in info for k, v in doc.items()}
    for key in ("Width", "Height", "Frames"):
        assert key in meta, key
    keep = np.ones(len(rec), bool)
    for name in rec.dtype.names:
        keep &= np.isfinite(rec[name].astype(np.float64))
    keep &= (rec["x"] < meta["Width"]) & (rec["y"] < meta["Height"])
    for name in ("x", "y", "lpx", "lpy", "lpz", "photons", "ellipticity", "sx", "sy"):
        if name in rec.dtype.names:
            keep &= rec[name] >= 0
    return keep


# --------------------------------------------------------------------------- Picasso


def test_ours_has_picassos_fields_dtypes_units_and_metadata(tmp_path, table) -> None:
    path = write_locs(table, tmp_path / "a.hdf5", meta=META)
    with h5py.File(path) as f:
        rec = f["locs"][()]
        embedded = json.loads(f["metadata"][()])
    assert list(rec.dtype.names[:11]) == PICASSO_BASE
    assert rec.dtype["frame"] == np.uint32
    assert all(rec.dtype[n] == np.float32 for n in rec.dtype.names if n != "frame")
    assert {"z", "lpz", "prob", "photons_unc", "lpx_mc", "lpy_mc", "lpz_mc", "photons_unc_mc"} <= set(rec.dtype.names)
    np.testing.assert_allclose(rec["x"], table.x_nm / PX, rtol=1e-6)  # camera pixels
    np.testing.assert_allclose(rec["lpx"], table.sigma_x_nm / PX, rtol=1e-6)
    np.testing.assert_allclose(rec["sx"], table.psf_sigma_x_nm / PX, rtol=1e-6)
    np.testing.assert_allclose(rec["z"], table.z_nm, rtol=1e-6)  # nm
    np.testing.assert_allclose(rec["lpz"], table.sigma_z_nm, rtol=1e-6)
    np.testing.assert_allclose(rec["lpx_mc"], table.x_mc_sigma_nm / PX, rtol=1e-6)
    big, small = np.maximum(rec["sx"], rec["sy"]), np.minimum(rec["sx"], rec["sy"])
    np.testing.assert_allclose(rec["ellipticity"], (big - small) / big, rtol=1e-5)
    info = list(yaml.safe_load_all((tmp_path / "a.yaml").read_text()))
    assert len(info) == 2 and info == embedded
    merged = {k: v for doc in info for k, v in doc.items()}
    assert (merged["Width"], merged["Height"], merged["Frames"], merged["Pixelsize"]) == (32, 24, 10, PX)
    assert picasso_sanity(rec, info).all()


def test_tables_without_sigmas_survive_picassos_sanity_check(tmp_path, table) -> None:
    """A 6-channel network or the baseline has NaN sigmas; Picasso would drop every such row."""
    t = table.drop(columns=list(MC_COLUMNS))
    t[["sigma_x_nm", "sigma_y_nm", "sigma_z_nm", "sigma_photons"]] = np.nan
    path = write_locs(t, tmp_path / "b.hdf5", meta=META)
    with h5py.File(path) as f:
        rec = f["locs"][()]
    info = list(yaml.safe_load_all((tmp_path / "b.yaml").read_text()))
    assert picasso_sanity(rec, info).all()
    assert "photons_unc" not in rec.dtype.names and "lpx_mc" not in rec.dtype.names
    # lpx falls back to the Mortensen precision Picasso itself reports, EMCCD factor 2
    sx, sy = t.psf_sigma_x_nm / PX, t.psf_sigma_y_nm / PX
    sa2, so2 = sx ** 2 + 1 / 12, sy ** 2 + 1 / 12
    expect = np.sqrt(2 * sa2 * (16 / 9 + 8 * np.pi * np.sqrt(sa2 * so2) * t.bg / t.photons) / t.photons)
    np.testing.assert_allclose(rec["lpx"], expect, rtol=1e-5)
    np.testing.assert_allclose(localization_precision_px(np.array([1000.0]), np.array([1.0]), np.array([1.0]),
                                                         np.array([0.0])), np.sqrt((1 + 1 / 12) * 16 / 9 / 1000))


def test_picasso_file_written_like_save_locs_is_read(tmp_path) -> None:
    """As ``picasso.io.save_locs``: records from a DataFrame, ``yaml.dump_all`` of the info list
    (movie document first, Localize's with Pixelsize last), 3D fields from ``zfit``."""
    locs = pd.DataFrame({
        "frame": np.array([0, 3], np.uint32), "x": np.array([10.25, 20.5], np.float32),
        "y": np.array([5.0, 7.75], np.float32), "photons": np.array([1500, 800], np.float32),
        "sx": np.array([1.0, 1.2], np.float32), "sy": np.array([1.1, 0.9], np.float32),
        "bg": np.array([20, 30], np.float32), "lpx": np.array([0.1, 0.2], np.float32),
        "lpy": np.array([0.12, 0.22], np.float32), "ellipticity": np.array([0.09, 0.25], np.float32),
        "net_gradient": np.array([3000, 2000], np.float32), "z": np.array([-120.0, 250.0], np.float32),
        "d_zcalib": np.array([0.01, 0.02], np.float32), "lpz": np.array([30.0, 45.0], np.float32)})
    info = [{"Byte Order": "<", "Data Type": "uint16", "File": "movie.tif", "Frames": 10, "Height": 32, "Width": 32},
            {"Generated by": "Picasso Localize", "Box Size": 7, "Min. Net Gradient": 5000, "Pixelsize": PX}]
    with h5py.File(tmp_path / "p.hdf5", "w") as f:
        f.create_dataset("locs", data=locs.to_records(index=False))
    with open(tmp_path / "p.yaml", "w") as fh:
        yaml.dump_all(info, fh, default_flow_style=False)
    got = read_locs(tmp_path / "p.hdf5")
    assert got.frame.tolist() == [0, 3] and got.frame.dtype == np.int64
    np.testing.assert_allclose(got.x_nm, [10.25 * PX, 20.5 * PX], rtol=1e-6)
    np.testing.assert_allclose(got.sigma_y_nm, locs.lpy * PX, rtol=1e-6)
    np.testing.assert_allclose(got.psf_sigma_x_nm, locs.sx * PX, rtol=1e-6)
    np.testing.assert_allclose(got.z_nm, locs.z)
    np.testing.assert_allclose(got.sigma_z_nm, locs.lpz)
    assert (got.prob == 1.0).all() and got.sigma_photons.isna().all()
    # Picasso >= 0.11 without the .yaml: the embedded JSON metadata gives the pixel size
    (tmp_path / "p.yaml").unlink()
    with h5py.File(tmp_path / "p.hdf5", "a") as f:
        f.create_dataset("metadata", data=json.dumps(info))
    np.testing.assert_allclose(read_locs(tmp_path / "p.hdf5").y_nm, locs.y * PX, rtol=1e-6)


def test_picasso_sizes_default_to_the_data_and_streams_with_an_empty_first_chunk(tmp_path, table) -> None:
    with LocWriter(tmp_path / "s.hdf5", meta={"pixel_size_nm": PX, "three_d": False}) as w:
        w.append(table.iloc[:0])
        w.append(table.iloc[:2])
        w.append(table.iloc[2:].drop(columns=list(MC_COLUMNS)))  # a chunk without them: zeros, not NaN
    with h5py.File(tmp_path / "s.hdf5") as f:
        rec = f["locs"][()]
    info = list(yaml.safe_load_all((tmp_path / "s.yaml").read_text()))
    assert len(rec) == 5 and "z" not in rec.dtype.names  # 2D layout
    assert picasso_sanity(rec, info).all()
    assert info[0]["Frames"] == 5 and info[0]["Width"] >= table.x_nm.max() / PX


# --------------------------------------------------------------------------- ThunderSTORM

TS_3D = ('"id","frame","x [nm]","y [nm]","z [nm]","sigma1 [nm]","sigma2 [nm]","intensity [photon]",'
         '"offset [photon]","bkgstd [photon]","uncertainty_xy [nm]","uncertainty_z [nm]"')
TS_2D = ('"id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]","offset [photon]","bkgstd [photon]",'
         '"uncertainty_xy [nm]"')


@pytest.mark.parametrize("three_d,head", [(True, TS_3D), (False, TS_2D)])
def test_thunderstorm_header_strings_exact(tmp_path, table, three_d, head) -> None:
    t = table.copy()
    t.loc[1, "bg"] = np.nan
    lines = write_locs(t, tmp_path / "t.csv", meta={**META, "three_d": three_d}).read_text().splitlines()
    assert lines[0].startswith(head + ",")
    assert lines[0].endswith('"detection_probability","uncertainty_intensity [photon]","mc_sigma_x [nm]",'
                             '"mc_sigma_y [nm]","mc_sigma_z [nm]","mc_sigma_intensity [photon]"')
    n = lines[0].count(",") + 1
    assert all(line.count(",") + 1 == n for line in lines[1:])  # no quoted values, no empty fields
    assert ",NaN," in lines[2]  # Java's Double.parseDouble reads NaN, not an empty field
    assert lines[1].split(",")[:2] == ["1", "1"]  # ids and frames 1-based


def test_thunderstorm_written_file_is_read(tmp_path) -> None:
    (tmp_path / "ts.csv").write_text(
        '"id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]","offset [photon]","bkgstd [photon]",'
        '"chi2","uncertainty_xy [nm]"\n'
        "1,1,1234.5,2345.25,130.2,1500,12.3,3.4,1.1,10.5\n"
        "2,3,99.5,10,140,800,20,4,0.9,NaN\n")
    got = read_locs(tmp_path / "ts.csv")
    assert got.frame.tolist() == [0, 2]
    np.testing.assert_allclose(got.x_nm, [1234.5, 99.5])
    np.testing.assert_allclose(got.photons, [1500, 800])
    np.testing.assert_allclose(got.bg, [12.3, 20])
    np.testing.assert_allclose(got.sigma_x_nm, [10.5, np.nan])
    np.testing.assert_allclose(got.psf_sigma_y_nm, [130.2, 140])
    assert (got.z_nm == 0).all()


def test_thunderstorm_pixel_units_and_old_uncertainty_label(tmp_path) -> None:
    (tmp_path / "px.csv").write_text('"id","frame","x [px]","y [px]","intensity [photon]","uncertainty [nm]"\n'
                                     "1,1,10.5,3.25,900,12\n")
    with pytest.raises(DataError, match=r"px\.csv.*pixel size"):
        read_locs(tmp_path / "px.csv")
    got = read_locs(tmp_path / "px.csv", pixel_size_nm=PX)
    np.testing.assert_allclose([got.x_nm[0], got.y_nm[0], got.sigma_y_nm[0]], [10.5 * PX, 3.25 * PX, 12])
    (tmp_path / "adu.csv").write_text('"id","frame","x [nm]","y [nm]","intensity [ADU]"\n1,1,1,1,5\n')
    with pytest.raises(DataError, match="intensity"):
        read_locs(tmp_path / "adu.csv")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".csv", ".hdf5", ".h5"])
def test_round_trip_with_psf_and_mc_columns(tmp_path, table, suffix) -> None:
    back = read_locs(write_locs(table, tmp_path / f"r{suffix}", meta=META))
    cols = list(table.columns)
    if suffix == ".csv":
        cols = [c for c in cols if c not in ("sigma_x_nm", "sigma_y_nm")]  # one uncertainty_xy column
        np.testing.assert_allclose(back.sigma_x_nm, np.sqrt(0.5 * (table.sigma_x_nm ** 2 + table.sigma_y_nm ** 2)))
    np.testing.assert_allclose(back[cols].to_numpy(float), table[cols].to_numpy(float), rtol=1e-5)
    assert back.frame.dtype == np.int64


@pytest.mark.parametrize("suffix", [".csv", ".hdf5", ".h5"])
def test_empty_tables_round_trip(tmp_path, table, suffix) -> None:
    with LocWriter(tmp_path / f"e{suffix}", meta=META) as w:
        w.append(table.iloc[:0])
    back = read_locs(tmp_path / f"e{suffix}")
    assert len(back) == 0 and "x_nm" in back
