"""Whole-array CSV formatting (``table_csv.py``) is byte for byte pandas' ``to_csv(float_format="%.6g")``,
and the background ``TableWriter`` never leaves a half-written table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neurotrain.tasks.stellar.table_csv import TableWriter, float_column, format_rows

EDGES = [0.0, -0.0, np.nan, np.inf, -np.inf, 999999.5, 999999.4, 9999995.0, 0.000099999995, 0.0001, 99999.95,
         0.5, 1.5, 2.5, 100000.5, 1e300, -1e-300, 5e-324, 1234.5625, 1e-5, 123456.0, 1e6, 0.1, 0.30000000000000004]


def _pandas(columns: dict) -> bytes:
    return pd.DataFrame(columns).to_csv(index=False, float_format="%.6g").encode()


def test_floats_match_percent_g_everywhere() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.normal(5000, 800, 3000), rng.normal(0, 0.3, 3000),  # Teff, abundances
        10 ** rng.uniform(-9, 9, 3000) * rng.choice([-1, 1], 3000),  # every exponent, fixed and scientific
        rng.normal(0, 1, 3000).astype(np.float32).astype(np.float64),  # float32 network outputs
        np.round(rng.normal(0, 100, 3000), 3), np.arange(1, 4000) / 8.0,  # exact binary fractions, ties
        EDGES,
    ])
    got = format_rows({"a": x, "b": x[::-1].copy()}, header=True)
    assert got == _pandas({"a": x, "b": x[::-1]})
    cell = float_column(np.array([np.nan, -0.0, 12.5]))
    assert [bytes(r[r != 0]) for r in cell] == [b"", b"-0", b"12.5"]


def test_text_columns_quote_like_pandas() -> None:
    cols = {"id": ["a", 'b,"x"', "c\nd", "é"], "obsid": [1, None, "x", 2], "flag": ["", "low_snr", "", ""],
            "v": np.array([1.5, np.nan, 3e-7, -2.0])}
    assert format_rows(cols, header=True) == _pandas(cols)
    assert format_rows({}) == b""
    with pytest.raises(ValueError, match="different lengths"):
        format_rows({"a": np.ones(2), "b": np.ones(3)})


def test_writer_appends_batches_in_order_then_renames(tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    w = TableWriter(out, "csv", keep=["v"])
    parts = [{"id": [f"s{i}", f"s{i}b"], "v": np.array([i, i + 0.5])} for i in range(5)]
    for p in parts:
        w.put(p)
    assert not out.exists()  # nothing under the final name before close()
    assert w.close() == out
    want = pd.concat([pd.DataFrame(p) for p in parts], ignore_index=True)
    assert out.read_bytes() == _pandas({c: want[c] for c in want.columns})
    assert np.concatenate(w.kept["v"]).tolist() == want["v"].tolist() and w.rows == 10
    assert list(tmp_path.iterdir()) == [out]


def test_writer_error_and_abort_leave_the_old_file_alone(tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    out.write_text("good old table\n")

    def boom(item: dict) -> dict:
        if item["id"][0] == "bad":
            raise RuntimeError("formatting failed")
        return item

    w = TableWriter(out, "csv", prepare=boom, queue_size=1)
    w.put({"id": ["ok"], "v": np.ones(1)})
    w.put({"id": ["bad"], "v": np.ones(1)})
    with pytest.raises(RuntimeError, match="formatting failed"):
        for _ in range(50):  # the error surfaces at a later put or at close
            w.put({"id": ["ok"], "v": np.ones(1)})
        w.close()
    w.abort()
    assert out.read_text() == "good old table\n" and list(tmp_path.iterdir()) == [out]
    w = TableWriter(out, "csv")
    w.put({"id": ["x"], "v": np.ones(1)})
    w.abort()
    assert out.read_text() == "good old table\n" and list(tmp_path.iterdir()) == [out]


def test_writer_h5(tmp_path: Path) -> None:
    import h5py

    w = TableWriter(tmp_path / "t.h5", "h5")
    w.put({"id": ["a", "b"], "v": np.array([1.0, 2.0])})
    w.put({"id": ["c"], "v": np.array([3.0])})
    w.close()
    with h5py.File(tmp_path / "t.h5") as f:
        assert [x.decode() for x in f["id"][()]] == ["a", "b", "c"] and f["v"][()].tolist() == [1.0, 2.0, 3.0]
