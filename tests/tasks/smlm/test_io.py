import numpy as np
import pandas as pd
import pytest

from neurotrain.errors import DataError
from neurotrain.tasks.smlm.io import TiffMovieWriter, TiffStack, read_locs, render, save_render, write_locs

META = {"pixel_size_nm": 100.0, "width": 64, "height": 64, "n_frames": 3}


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame({"frame": [0, 1, 1, 2], "x_nm": [100.0, 2000, 300, 6399], "y_nm": [5.0, 6, 7, 8],
                         "z_nm": [0.0, 10, -20, 30], "photons": [1000.0, 2000, 3000, 400], "bg": [10.0, 20, 30, 40],
                         "prob": [0.9, 0.8, 0.7, 0.6], "sigma_x_nm": [5.0, 6, 7, 8], "sigma_y_nm": [5.0, 6, 7, 8],
                         "sigma_z_nm": [20.0, 30, 40, 50], "sigma_photons": [100.0, 110, 120, 130]})


@pytest.mark.parametrize("suffix", [".csv", ".hdf5", ".h5"])
def test_table_round_trip(tmp_path, table, suffix) -> None:
    path = write_locs(table, tmp_path / f"locs{suffix}", meta=META)
    back = read_locs(path)
    cols = [c for c in table.columns if not (suffix == ".hdf5" and c == "sigma_photons")]  # Picasso has no such field
    np.testing.assert_allclose(back[cols].to_numpy(float), table[cols].to_numpy(float), rtol=1e-5)
    assert back["frame"].dtype == np.int64


def test_thunderstorm_names_and_one_based_frames(tmp_path, table) -> None:
    raw = pd.read_csv(write_locs(table, tmp_path / "a.csv", meta=META))
    assert {"id", "frame", "x [nm]", "y [nm]", "z [nm]", "intensity [photon]", "offset [photon]",
            "uncertainty_xy [nm]"} <= set(raw.columns)
    assert raw["frame"].tolist() == [1, 2, 2, 3]


def test_picasso_sidecar_and_pixels(tmp_path, table) -> None:
    import h5py
    import yaml

    p = write_locs(table, tmp_path / "a.hdf5", meta=META)
    info = list(yaml.safe_load_all((tmp_path / "a.yaml").read_text()))[0]
    assert info["Pixelsize"] == 100.0 and info["Width"] == 64 and info["Frames"] == 3
    with h5py.File(p) as f:
        locs = f["locs"][()]
    assert locs["x"][1] == pytest.approx(20.0) and locs["frame"].dtype == np.uint32


def test_ground_truth_csv_reads(tmp_path) -> None:
    pd.DataFrame({"frame": [0], "x_nm": [1.0], "y_nm": [2.0], "z_nm": [3.0], "photons": [4.0]}).to_csv(tmp_path / "t.csv", index=False)
    t = read_locs(tmp_path / "t.csv")
    assert t.loc[0, "x_nm"] == 1.0 and t.loc[0, "prob"] == 1.0


def test_bad_tables_raise_data_error(tmp_path) -> None:
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="bad.csv"):
        read_locs(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="missing.h5"):
        read_locs(tmp_path / "missing.h5")
    (tmp_path / "bad.txt").write_text("x")
    with pytest.raises(DataError, match="suffix"):
        read_locs(tmp_path / "bad.txt")


def test_tiff_movie_round_trip_memory_mapped(tmp_path) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 60000, (5, 8, 9)), rng.integers(0, 60000, (3, 8, 9))
    with TiffMovieWriter(tmp_path / "m.tif") as w:
        w.write(a)
        w.write(b)
    s = TiffStack(tmp_path / "m.tif")
    assert s.shape == (8, 8, 9) and s.memory_mapped
    np.testing.assert_array_equal(s[3:7], np.concatenate([a, b])[3:7])
    s.close()


def test_tiff_compressed_is_read_page_by_page(tmp_path) -> None:
    import tifffile

    data = np.arange(4 * 6 * 7, dtype=np.uint16).reshape(4, 6, 7)
    tifffile.imwrite(tmp_path / "c.tif", data, compression="zlib", photometric="minisblack")  # a camera stack, not RGBA
    s = TiffStack(tmp_path / "c.tif")
    assert not s.memory_mapped and len(s) == 4
    np.testing.assert_array_equal(s[1:3], data[1:3])


def test_bad_tiff_raises(tmp_path) -> None:
    (tmp_path / "x.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataError, match="x.tif"):
        TiffStack(tmp_path / "x.tif")


def test_render_counts_and_saves(tmp_path) -> None:
    img = render(np.array([15.0, 15.0, 95.0]), np.array([5.0, 5.0, 5.0]), 100.0, 20.0, px_nm=10.0, blur_px=0)
    assert img.shape == (2, 10) and img[0, 1] == 2 and img.sum() == 3
    assert save_render(img, tmp_path / "r.png").stat().st_size > 0
    assert save_render(img, tmp_path / "r.tif").stat().st_size > 0
