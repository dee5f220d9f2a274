"""Fuzz: malformed localisation tables (ThunderSTORM/ours CSV, ours HDF5, Picasso HDF5) -> one DataError line
naming the file and the column/row, never a score computed on NaN or text."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurotrain.errors import DataError, NeurotrainError
from neurotrain.tasks.smlm.io import read_locs, write_locs

from ._util import assert_one_line, raises_one_line, seeded_bytes

GOOD = pd.DataFrame({"frame": [0, 0, 1, 2], "x_nm": [100.0, 350.0, 800.0, 1200.0], "y_nm": [90.0, 400.0, 700.0, 50.0],
                     "z_nm": [0.0, 10.0, -20.0, 5.0], "photons": [1000.0, 2000.0, 1500.0, 900.0]})
TS_HEADER = '"id","frame","x [nm]","y [nm]","z [nm]","intensity [photon]"'


def _ts_csv(rows: list[str]) -> str:
    return TS_HEADER + "\n" + "\n".join(rows) + "\n"


GOOD_TS = ["1,1,100,90,0,1000", "2,1,350,400,10,2000", "3,2,800,700,-20,1500"]

CSV_CASES = {
    "text_in_x": _ts_csv(["1,1,abc,90,0,1000"] + GOOD_TS[1:]),
    "text_in_frame": _ts_csv(GOOD_TS[:2] + ["3,two,800,700,-20,1500"]),
    "text_in_intensity": _ts_csv(GOOD_TS[:1] + ["2,1,350,400,10,lots"]),
    "nan_x": _ts_csv(GOOD_TS[:2] + ["3,2,NaN,700,-20,1500"]),
    "nan_y": _ts_csv(["1,1,100,,0,1000"] + GOOD_TS[1:]),
    "inf_z": _ts_csv(GOOD_TS[:2] + ["3,2,800,700,inf,1500"]),
    "frame_zero_1based": _ts_csv(["1,0,100,90,0,1000"]),
    "frame_fraction": _ts_csv(["1,1.5,100,90,0,1000"]),
    "frame_negative": _ts_csv(["1,-3,100,90,0,1000"]),
    "px_without_pixel_size": '"frame","x [px]","y [px]"\n1,1,2\n',
    "unknown_unit": '"frame","x [furlong]","y [furlong]"\n1,1,2\n',
    "no_columns": "a,b,c\n1,2,3\n",
    "ours_text": "frame,x_nm,y_nm\n0,1,2\n1,x,3\n",
    "ours_nan_frame": "frame,x_nm,y_nm\n0,1,2\n,5,3\n",
    "ours_missing_y": "frame,x_nm\n0,1\n",
    "ours_bytes_literal": "frame,x_nm,y_nm\n0,b'1',2\n",
    "short_row": _ts_csv(GOOD_TS[:2] + ["3,2"]),
    "only_newlines": "\n\n\n",
    "empty": "",
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_csv(tmp_path: Path, case: str) -> None:
    p = tmp_path / f"{case}.csv"
    p.write_text(CSV_CASES[case], encoding="utf-8")
    raises_one_line(lambda: read_locs(p), p, DataError)


def test_binary_csv(tmp_path: Path) -> None:
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00" + seeded_bytes(3, 300))
    raises_one_line(lambda: read_locs(p), p, DataError)


@pytest.mark.parametrize("cut", [3, 10, 18, 27])  # all before "y [nm]" is complete
def test_truncated_ts_header(tmp_path: Path, cut: int) -> None:
    p = tmp_path / "cut.csv"
    p.write_text(_ts_csv(GOOD_TS)[:cut], encoding="utf-8")
    raises_one_line(lambda: read_locs(p), p, DataError)


def test_truncated_inside_a_row(tmp_path: Path) -> None:
    text = _ts_csv(GOOD_TS)
    last = text.rstrip("\n").rfind("\n") + 1
    for k in (2, 4):  # cut after the frame field / inside x: the row has no position
        p = tmp_path / f"row{k}.csv"
        p.write_text(text[:last + k], encoding="utf-8")
        raises_one_line(lambda: read_locs(p), p, DataError)


def test_header_only_is_an_empty_table(tmp_path: Path) -> None:
    p = tmp_path / "head.csv"
    p.write_text(TS_HEADER + "\n", encoding="utf-8")
    d = read_locs(p)
    assert len(d) == 0 and d["x_nm"].dtype == np.float64


def _h5(tmp_path: Path, name: str, **cols) -> Path:
    p = tmp_path / name
    with h5py.File(p, "w") as f:
        for k, v in cols.items():
            if v is None:
                f.create_group(k)
            else:
                f[k] = v
    return p


H5_CASES = {
    "string_x": dict(frame=np.arange(3), x_nm=np.array([b"a", b"b", b"c"]), y_nm=np.ones(3)),
    "nan_x": dict(frame=np.arange(3), x_nm=np.array([1.0, np.nan, 2.0]), y_nm=np.ones(3)),
    "inf_y": dict(frame=np.arange(3), x_nm=np.ones(3), y_nm=np.array([1.0, 2.0, -np.inf])),
    "two_d": dict(frame=np.arange(3), x_nm=np.ones((3, 2)), y_nm=np.ones(3)),
    "lengths": dict(frame=np.arange(3), x_nm=np.ones(4), y_nm=np.ones(3)),
    "group": dict(frame=np.arange(3), x_nm=None, y_nm=np.ones(3)),
    "missing": dict(frame=np.arange(3), x_nm=np.ones(3)),
    "negative_frame": dict(frame=np.array([0, -1, 2]), x_nm=np.ones(3), y_nm=np.ones(3)),
    "scalar": dict(frame=np.int64(3), x_nm=np.float64(1), y_nm=np.float64(1)),
}


@pytest.mark.parametrize("case", sorted(H5_CASES))
def test_bad_h5(tmp_path: Path, case: str) -> None:
    p = _h5(tmp_path, f"{case}.h5", **H5_CASES[case])
    raises_one_line(lambda: read_locs(p), p, DataError)


@pytest.mark.parametrize("case", ["not_compound", "no_x", "text_field", "nan_y", "no_pixel_size", "bad_pixel_size"])
def test_bad_picasso(tmp_path: Path, case: str) -> None:
    p = tmp_path / f"{case}.hdf5"
    fields = [("frame", "u4"), ("x", "f4"), ("y", "f4")]
    if case == "no_x":
        fields = [("frame", "u4"), ("y", "f4")]
    if case == "text_field":
        fields = [("frame", "u4"), ("x", "S4"), ("y", "f4")]
    rec = np.zeros(3, dtype=fields)
    if case == "nan_y":
        rec["y"][1] = np.nan
    with h5py.File(p, "w") as f:
        f["locs"] = np.ones(3) if case == "not_compound" else rec
    if case != "no_pixel_size":
        p.with_suffix(".yaml").write_text("Pixelsize: %s\n" % ("-5" if case == "bad_pixel_size" else "100"))
    raises_one_line(lambda: read_locs(p), p, DataError)


@pytest.mark.parametrize("fmt,suffix", [("h5", ".h5"), ("picasso", ".hdf5")])
def test_truncated_h5(tmp_path: Path, fmt: str, suffix: str) -> None:
    good = write_locs(GOOD, tmp_path / f"good{suffix}", meta={"pixel_size_nm": 100.0})
    data = good.read_bytes()
    for cut in (0, 8, 100, 512, len(data) // 2, len(data) - 16):
        p = tmp_path / f"cut{cut}{suffix}"
        p.write_bytes(data[:cut])
        if fmt == "picasso":
            p.with_suffix(".yaml").write_text("Pixelsize: 100\n")
        raises_one_line(lambda: read_locs(p), p, DataError)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list('0123456789,.-eNaInf"x[]nm \n')), max_size=120))
def test_random_csv_never_crashes(tmp_path: Path, text: str) -> None:
    """Any text either reads as a table of finite frames and positions or is one DataError line."""
    p = tmp_path / "rand.csv"
    p.write_text("frame,x_nm,y_nm\n" + text, encoding="utf-8")
    try:
        d = read_locs(p)
    except NeurotrainError as exc:
        assert_one_line(exc, p)
        return
    assert np.isfinite(d[["frame", "x_nm", "y_nm"]].to_numpy(np.float64)).all()
