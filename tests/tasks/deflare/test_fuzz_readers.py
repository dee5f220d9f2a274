"""Fuzz suite for the event readers (issue 21): event HDF5, Prophesee EVT 2.0 and EVT 3.0.

Every malformed input is generated here (truncation at many offsets, garbage, wrong dtypes,
NaN/inf, empty files, huge declared sizes, values outside the sensor) and goes through the
user's path, ``predict`` with the encode -> decode method (no network needed). Each must stop
with a :class:`DataError` of one line that names the file, and leave no output behind: no
file, no temporary file, no empty output folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import neurotrain.tasks  # noqa: F401
from neurotrain.errors import DataError
from neurotrain.registry import TASKS
from neurotrain.tasks.deflare.evt import read_raw

from .conftest import small_cfg

H, W = 24, 32  # the sensor of small_cfg and of every generated file
N = 64  # events in the valid files the malformed ones are made from


def _valid_columns() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "t": np.sort(rng.integers(0, 40_000, N)).astype(np.int64),
        "x": rng.integers(0, W, N).astype(np.uint16),
        "y": rng.integers(0, H, N).astype(np.uint16),
        "p": rng.integers(0, 2, N).astype(np.int8),
    }


def _h5(path: Path, cols: dict[str, np.ndarray] | None = None, attrs: dict | None = None, drop: str | None = None) -> Path:
    cols = _valid_columns() if cols is None else cols
    with h5py.File(path, "w") as f:
        g = f.create_group("events")
        for k, v in cols.items():
            if k != drop:
                g[k] = v
        for k, v in ({"sensor_size": [H, W]} if attrs is None else attrs).items():
            f.attrs[k] = v
    return path


def _with(**over: np.ndarray) -> Callable[[Path], Path]:
    return lambda p: _h5(p, {**_valid_columns(), **over})


def _truncated_h5(frac: float) -> Callable[[Path], Path]:
    def make(p: Path) -> Path:
        full = _h5(p.with_name("full_" + p.name)).read_bytes()
        p.write_bytes(full[: int(len(full) * frac)])
        return p

    return make


def _bytes(data: bytes) -> Callable[[Path], Path]:
    def make(p: Path) -> Path:
        p.write_bytes(data)
        return p

    return make


def _dsec_bad_offset(p: Path) -> Path:
    _h5(p)
    with h5py.File(p, "a") as f:
        f["ms_to_idx"] = np.zeros(3, np.uint64)
        f["t_offset"] = np.bytes_(b"later")
    return p


def _events_is_dataset(p: Path) -> Path:
    with h5py.File(p, "w") as f:
        f["events"] = np.arange(5)
    return p


def _no_group(p: Path) -> Path:
    with h5py.File(p, "w") as f:
        f["t"] = np.arange(5)
    return p


def _t_2d(p: Path) -> Path:
    c = _valid_columns()
    c["t"] = c["t"].reshape(8, 8)
    return _h5(p, c)


def _unequal(p: Path) -> Path:
    c = _valid_columns()
    c["x"] = c["x"][:-3]
    return _h5(p, c)


def _scalar_t(p: Path) -> Path:
    c = _valid_columns()
    c["t"] = np.int64(5)
    return _h5(p, c)


_C = _valid_columns()
_NAN_T = _C["t"].astype(np.float64)
_NAN_T[5] = np.nan
_INF_T = _C["t"].astype(np.float64)
_INF_T[-1] = np.inf
_UNSORTED = _C["t"].copy()
_UNSORTED[[3, 40]] = _UNSORTED[[40, 3]] + np.array([0, 1])
_NEG_T = _C["t"] - 1_000
_FAR_X = _C["x"].copy()
_FAR_X[7] = W
_NEG_Y = _C["y"].astype(np.int16)
_NEG_Y[9] = -1

H5_CASES: dict[str, Callable[[Path], Path]] = {
    **{f"truncated_{int(f * 1000):03d}": _truncated_h5(f) for f in (0.0, 0.002, 0.01, 0.05, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.99, 0.999)},
    "garbage": _bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes()),
    "hdf5_signature_then_garbage": _bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8),
    "text_file": _bytes(b"t,x,y,p\n1,2,3,1\n"),
    "t_float": _with(t=_C["t"].astype(np.float64) + 0.5),
    "t_nan": _with(t=_NAN_T),
    "t_inf": _with(t=_INF_T),
    "t_bool": _with(t=np.ones(N, bool)),
    "x_float": _with(x=_C["x"].astype(np.float32)),
    "x_bytes": _with(x=np.array([str(v).encode() for v in _C["x"]])),
    "y_strings": _with(y=np.array([str(v) for v in _C["y"]], dtype=h5py.string_dtype())),
    "p_float": _with(p=_C["p"].astype(np.float64)),
    "p_complex": _with(p=_C["p"].astype(np.complex64)),
    "t_negative": _with(t=_NEG_T),
    "t_unsorted": _with(t=_UNSORTED),
    "x_outside": _with(x=_FAR_X),
    "y_negative": _with(y=_NEG_Y),
    "empty_events": lambda p: _h5(p, {k: v[:0] for k, v in _valid_columns().items()}),
    "missing_p": lambda p: _h5(p, drop="p"),
    "no_events_group": _no_group,
    "events_is_a_dataset": _events_is_dataset,
    "t_two_dimensional": _t_2d,
    "unequal_lengths": _unequal,
    "t_scalar": _scalar_t,
    "sensor_size_text": lambda p: _h5(p, attrs={"sensor_size": "abc"}),
    "sensor_size_zero": lambda p: _h5(p, attrs={"sensor_size": [0, 0]}),
    "sensor_size_huge": lambda p: _h5(p, attrs={"sensor_size": [1_000_000, 1_000_000]}),
    "sensor_size_three": lambda p: _h5(p, attrs={"sensor_size": [H, W, 3]}),
    "sensor_size_fraction": lambda p: _h5(p, attrs={"sensor_size": [24.5, 32.0]}),
    "sensor_size_nan": lambda p: _h5(p, attrs={"sensor_size": [np.nan, 32.0]}),
    "dsec_t_offset_text": _dsec_bad_offset,
}


# ----------------------------------------------------------------------------- EVT 2.0
EVT2_HEADER = f"% evt 2.0\n% geometry {W}x{H}\n% end\n".encode()


def _evt2_words(n: int = N, seed: int = 0) -> np.ndarray:
    """A time-high word, then ``n`` CD events inside the sensor (t = 64 * 10 + lsb µs)."""
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, W, n), rng.integers(0, H, n)
    typ = rng.integers(0, 2, n)  # CD_OFF / CD_ON
    lsb = np.sort(rng.integers(0, 64, n))
    cd = (typ << 28) | (lsb << 22) | (x << 11) | y
    return np.concatenate([[0x8 << 28 | 10], cd]).astype("<u4")


EVT2_VALID = EVT2_HEADER + _evt2_words().tobytes()


def _evt2_cd(x: int, y: int) -> np.ndarray:
    return np.array([0x8 << 28 | 10, (1 << 28) | (x << 11) | y], "<u4")


EVT2_CASES: dict[str, bytes] = {
    **{f"cut_word_{k}_{r}": EVT2_VALID[: len(EVT2_HEADER) + 4 * k + r] for k, r in
       ((0, 1), (0, 3), (1, 1), (1, 2), (2, 3), (10, 1), (30, 2), (50, 3), (N, 1), (N, 2))},
    **{f"cut_header_{i}": EVT2_VALID[:i] for i in (0, 5, 8, 12, 20, len(EVT2_HEADER) - 1, len(EVT2_HEADER))},
    **{f"garbage_{s}": EVT2_HEADER + np.random.default_rng(100 + s).integers(0, 2**32, 1 + 37 * s, dtype=np.uint32).astype("<u4").tobytes()
       for s in range(8)},
    "no_header": _evt2_words().tobytes(),
    "version_9": EVT2_VALID.replace(b"% evt 2.0", b"% evt 9.9"),
    "version_2_1": EVT2_VALID.replace(b"% evt 2.0", b"% evt 2.1"),
    "geometry_text": EVT2_VALID.replace(f"{W}x{H}".encode(), b"widexhigh"),
    "geometry_huge": EVT2_VALID.replace(f"{W}x{H}".encode(), b"100000x100000"),
    "geometry_zero": EVT2_VALID.replace(f"{W}x{H}".encode(), b"0x0"),
    "geometry_half": EVT2_VALID.replace(f"{W}x{H}".encode(), f"{W}x".encode()),
    "x_outside": EVT2_HEADER + _evt2_cd(W, 3).tobytes(),
    "y_outside": EVT2_HEADER + _evt2_cd(3, H + 100).tobytes(),
    "events_before_any_time": EVT2_HEADER + _evt2_words()[1:].tobytes(),
    "only_time_words": EVT2_HEADER + np.full(20, 0x8 << 28 | 5, "<u4").tobytes(),
    "only_triggers": EVT2_HEADER + np.array([0x8 << 28, 0xA << 28, 0xE << 28, 0xF << 28], "<u4").tobytes(),
}


# ----------------------------------------------------------------------------- EVT 3.0
EVT3_HEADER = f"% evt 3.0\n% format EVT3;height={H};width={W}\n% end\n".encode()


def _evt3_words(n: int = N, seed: int = 0) -> np.ndarray:
    """TIME_HIGH, TIME_LOW, then ``n`` (ADDR_Y, ADDR_X) pairs inside the sensor."""
    rng = np.random.default_rng(seed)
    ys, xs, ps = rng.integers(0, H, n), rng.integers(0, W, n), rng.integers(0, 2, n)
    pairs = np.stack([ys, (0x2 << 12) | (ps << 11) | xs], 1).ravel()
    return np.concatenate([[0x8 << 12 | 1, 0x6 << 12 | 7], pairs]).astype("<u2")


EVT3_VALID = EVT3_HEADER + _evt3_words().tobytes()
_T3 = [0x8 << 12 | 1, 0x6 << 12 | 7]

EVT3_CASES: dict[str, bytes] = {
    **{f"cut_word_{k}": EVT3_VALID[: len(EVT3_HEADER) + 2 * k + 1] for k in (0, 1, 2, 3, 7, 20, 50, 100, 2 * N, 2 * N + 1)},
    **{f"cut_header_{i}": EVT3_VALID[:i] for i in (0, 4, 9, 15, 30, len(EVT3_HEADER) - 1, len(EVT3_HEADER))},
    **{f"garbage_{s}": EVT3_HEADER + np.random.default_rng(200 + s).integers(0, 2**16, 2 + 51 * s, dtype=np.uint16).astype("<u2").tobytes()
       for s in range(8)},
    "no_header": _evt3_words().tobytes(),
    "version_3_9_format_evt21": EVT3_VALID.replace(b"% evt 3.0", b"% evt 2.1"),
    "format_height_text": EVT3_VALID.replace(f"height={H}".encode(), b"height=tall"),
    "format_huge": EVT3_VALID.replace(f"height={H};width={W}".encode(), b"height=99999;width=99999"),
    "format_negative": EVT3_VALID.replace(f"height={H}".encode(), b"height=-24"),
    "x_outside": EVT3_HEADER + np.array(_T3 + [3, (0x2 << 12) | W], "<u2").tobytes(),
    "y_outside": EVT3_HEADER + np.array(_T3 + [H + 7, (0x2 << 12) | 3], "<u2").tobytes(),
    "vector_past_the_edge": EVT3_HEADER + np.array(_T3 + [3, (0x3 << 12) | (W - 4), (0x4 << 12) | 0xFFF], "<u2").tobytes(),
    "events_before_any_time": EVT3_HEADER + _evt3_words()[2:].tobytes(),
    "x_before_any_y": EVT3_HEADER + np.array(_T3 + [(0x2 << 12) | 3] * 5, "<u2").tobytes(),
    "vector_without_base": EVT3_HEADER + np.array(_T3 + [3, (0x5 << 12) | 0xFF], "<u2").tobytes(),
    "only_time_words": EVT3_HEADER + np.array(_T3 * 10, "<u2").tobytes(),
}


def _check_refused(path: Path, tmp_path: Path) -> None:
    """``predict`` on ``path`` -> one-line DataError naming it; nothing left under the output."""
    task = TASKS.get("deflare")
    out_root = tmp_path / "out"
    with pytest.raises(DataError) as e:
        task.predict(small_cfg(tmp_path), None, [path], out_root / "deflared", method="codec")
    msg = str(e.value)
    assert path.name in msg and "\n" not in msg, msg
    assert not out_root.exists(), sorted(out_root.rglob("*"))
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("case", sorted(H5_CASES))
def test_malformed_event_hdf5_is_refused_with_one_line_and_no_output(tmp_path, case):
    _check_refused(H5_CASES[case](tmp_path / f"{case}.h5"), tmp_path)


@pytest.mark.parametrize("case", sorted(EVT2_CASES))
def test_malformed_evt2_is_refused_with_one_line_and_no_output(tmp_path, case):
    f = tmp_path / f"{case}.raw"
    f.write_bytes(EVT2_CASES[case])
    _check_refused(f, tmp_path)


@pytest.mark.parametrize("case", sorted(EVT3_CASES))
def test_malformed_evt3_is_refused_with_one_line_and_no_output(tmp_path, case):
    f = tmp_path / f"{case}.raw"
    f.write_bytes(EVT3_CASES[case])
    _check_refused(f, tmp_path)


def test_at_least_30_malformed_inputs_per_reader():
    assert min(len(H5_CASES), len(EVT2_CASES), len(EVT3_CASES)) >= 30


def test_the_valid_files_the_cases_are_cut_from_are_accepted(tmp_path):
    """The control: the unmodified files go through, every event kept by the identity."""
    task = TASKS.get("deflare")
    for name, data in (("ok2.raw", EVT2_VALID), ("ok3.raw", EVT3_VALID)):
        (tmp_path / name).write_bytes(data)
        ev, size = read_raw(tmp_path / name)
        assert size == (H, W) and len(ev) == N
    ok = _h5(tmp_path / "ok.h5")
    outs = task.predict(small_cfg(tmp_path), None, [ok, tmp_path / "ok2.raw", tmp_path / "ok3.raw"], tmp_path / "o", method="codec")
    assert [p.name for p in outs] == ["ok.h5", "ok2.h5", "ok3.h5"] and all(p.is_file() for p in outs)


def test_a_bad_file_after_good_ones_keeps_their_outputs_and_removes_nothing_else(tmp_path):
    ok = _h5(tmp_path / "ok.h5")
    bad = H5_CASES["x_outside"](tmp_path / "bad.h5")
    with pytest.raises(DataError, match="bad.h5: events/x"):
        TASKS.get("deflare").predict(small_cfg(tmp_path), None, [ok, bad], tmp_path / "o", method="codec")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["ok.h5"]


def test_a_folder_without_event_files_is_refused(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="empty_dir: .*no .h5"):
        TASKS.get("deflare").predict(small_cfg(tmp_path), None, [tmp_path / "empty_dir"], tmp_path / "o", method="codec")
    assert not (tmp_path / "o").exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=1, max_value=len(EVT3_VALID) - 1).filter(lambda c: c < len(EVT3_HEADER) or (c - len(EVT3_HEADER)) % 2))
def test_evt3_cut_anywhere_but_a_word_boundary_is_refused(tmp_path, cut):
    f = tmp_path / "cut.raw"
    f.write_bytes(EVT3_VALID[:cut])
    with pytest.raises(DataError, match="cut.raw"):
        read_raw(f)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=64))
def test_evt2_random_words_decode_or_are_refused_never_crash(tmp_path, words):
    """Any word stream after a valid header: events inside the sensor, or a DataError."""
    f = tmp_path / "rand.raw"
    f.write_bytes(EVT2_HEADER + np.array(words, "<u4").tobytes())
    try:
        ev, size = read_raw(f)
    except DataError as e:
        assert "rand.raw" in str(e) and "\n" not in str(e)
        return
    assert len(ev) > 0 and ev.x.max() < W and ev.y.max() < H


@pytest.mark.parametrize("name,data", [("cut.raw", EVT2_CASES["cut_word_10_1"]), ("hdr.raw", EVT3_CASES["cut_header_49"])])
def test_header_level_problems_fail_before_the_network_is_built(tmp_path, name, data):
    """``neurotrain predict`` calls ``check_predict_inputs`` before loading the checkpoint's weights."""
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(DataError, match=name):
        TASKS.get("deflare").check_predict_inputs(small_cfg(tmp_path), [f], tmp_path / "o")
    empty = _h5(tmp_path / "none.h5", {k: v[:0] for k, v in _valid_columns().items()})
    with pytest.raises(DataError, match="none.h5: events: expected at least one event"):
        TASKS.get("deflare").check_predict_inputs(small_cfg(tmp_path), [empty], None)
    assert not (tmp_path / "o").exists()
