"""HDF5 store: round trip, resume after a crash, workers, corrupt files, splits."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from neurotrain.errors import ConfigError, DataError
import json

from neurotrain.io.hdf5 import ROWS_ATTR, H5Dataset, H5Writer, dataset_length, part_path, split_indices


def _batch(rng: np.random.Generator, n: int, start: int = 0) -> dict[str, np.ndarray]:
    return {
        "input": rng.normal(size=(n, 2, 16)).astype(np.float32),
        "target": np.arange(start, start + n, dtype=np.int64),
        "mask": rng.random((n, 4, 4)) > 0.5,
    }


def test_round_trip_values_dtypes_compression_chunks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "sub" / "store.h5"
    parts = [_batch(rng, n, s) for n, s in ((5, 0), (7, 5), (1, 12))]
    with H5Writer(path, chunk_rows=4, attrs={"task": "gamma", "version": 2}) as w:
        for p in parts:
            w.append(**p)
        # torch tensors work too
        w.append(input=torch.zeros(2, 2, 16), target=torch.tensor([13, 14]), mask=torch.ones(2, 4, 4, dtype=torch.bool))
        assert w.n_rows == 15
        assert not path.exists() and part_path(path).exists()
    assert path.exists() and not part_path(path).exists()

    with h5py.File(path, "r") as f:
        assert f.attrs["task"] == "gamma" and f.attrs["version"] == 2
        assert int(f.attrs[ROWS_ATTR]) == 15
        x = f["input"]
        assert x.dtype == np.float32 and x.shape == (15, 2, 16)
        assert x.compression == "gzip" and x.compression_opts == 4
        assert x.chunks == (4, 2, 16) and x.maxshape == (None, 2, 16)
        assert f["target"].dtype == np.int64 and f["mask"].dtype == bool
        np.testing.assert_array_equal(x[:13], np.concatenate([p["input"] for p in parts]))
        np.testing.assert_array_equal(x[13:], 0)
        np.testing.assert_array_equal(f["target"][:], np.arange(15))
        np.testing.assert_array_equal(f["mask"][:13], np.concatenate([p["mask"] for p in parts]))

    ds = H5Dataset(path, {"x": "input", "y": "target"})
    assert len(ds) == 15
    item = ds[6]
    assert set(item) == {"x", "y"}
    assert item["x"].dtype == torch.float32 and item["x"].shape == (2, 16)
    torch.testing.assert_close(item["x"], torch.from_numpy(parts[1]["input"][1]))
    assert int(item["y"]) == 6
    assert int(ds[-1]["y"]) == 14


def test_default_chunks_shared_about_64_kib_and_dividing_the_append(tmp_path: Path) -> None:
    path = tmp_path / "big.h5"
    with H5Writer(path, compression=None) as w:
        w.append(a=np.zeros((32, 1024), np.float32), y=np.zeros(32, np.int64))  # 4 KiB rows
        assert w.chunk_rows_used == 16 and w.n_durable == 32  # 32 = 2 x 16
    with h5py.File(path, "r") as f:
        assert f["a"].chunks == (16, 1024) and f["a"].compression is None
        assert f["y"].chunks == (16,)  # one row count for every dataset
    with H5Writer(path) as w:
        w.append(a=np.zeros((24, 1024), np.float32))  # 24 = 12 x 2: chunks of 12 rows
        assert w.chunk_rows_used == 12
    with H5Writer(path) as w:
        w.append(b=np.zeros((3, 200, 200), np.float32))  # rows above 64 KiB: one row per chunk
        assert w.chunk_rows_used == 1
    with H5Writer(path) as w:
        w.append(t=np.zeros(1))  # a first append of one 8-byte row: not 8-byte chunks
        assert w.chunk_rows_used == 8192
    with H5Writer(path) as w:
        w.append(a=np.zeros((5, 1024), np.float32))  # 5 rows: chunks of 15 = 3 appends
        assert w.chunk_rows_used == 15
    with H5Writer(path) as w:
        w.append(a=np.zeros((127, 1024), np.float32))  # prime length: full 16-row chunks
        assert w.chunk_rows_used == 16 and w.n_durable == 112


def test_only_whole_chunks_are_written_and_close_writes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "buf.h5"
    with H5Writer(path, chunk_rows=8) as w:
        for n in (5, 5, 7):
            w.append(v=np.arange(w.n_rows, w.n_rows + n))
            assert w._file is not None
            on_disk = int(w._file.attrs[ROWS_ATTR])
            assert w._file["v"].shape[0] == on_disk
            assert on_disk == w.n_durable == (w.n_rows // 8) * 8
        assert (w.n_rows, w.n_durable) == (17, 16)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["v"][:], np.arange(17))
        assert int(f.attrs[ROWS_ATTR]) == 17


class _Crash(RuntimeError):
    pass


def test_resume_after_interrupted_write(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "resume.h5"
    parts = [_batch(rng, 3 + i, 10 * i) for i in range(6)]

    with pytest.raises(_Crash):
        with H5Writer(path, chunk_rows=2) as w:
            for p in parts[:3]:
                w.append(**p)
            raise _Crash("simulated crash")
    assert not path.exists() and part_path(path).exists()

    # a crash in the middle of an append: datasets grown, count not updated
    with h5py.File(part_path(path), "r+") as f:
        assert int(f.attrs[ROWS_ATTR]) == 3 + 4 + 5
        for k in ("input", "target", "mask"):
            f[k].resize(f[k].shape[0] + 2, axis=0)
        f["input"][-2:] = 99.0

    with H5Writer(path, resume=True) as w:
        assert w.n_rows == 12
        for p in parts[3:]:
            w.append(**p)
    with h5py.File(path, "r") as f:
        for k in ("input", "target", "mask"):
            np.testing.assert_array_equal(f[k][:], np.concatenate([p[k] for p in parts]))
        assert int(f.attrs[ROWS_ATTR]) == sum(len(p["target"]) for p in parts)


def test_resume_without_part_starts_fresh_and_attr_mismatch_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with H5Writer(path) as w:
        w.append(a=np.arange(3))
    with H5Writer(path, resume=True) as w:  # no .part: a fresh file replaces the old one
        assert w.n_rows == 0
        w.append(a=np.arange(2))
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["a"][:], np.arange(2))

    with pytest.raises(_Crash):
        with H5Writer(path, chunk_rows=2, attrs={"seed": 1, "task": "gamma", "cfg": {"x": 1}}) as w:
            w.append(a=np.arange(4))
            raise _Crash()
    with pytest.raises(DataError, match=r"s\.h5\.part: attribute seed: .* 1, this run has 2"):
        H5Writer(path, resume=True, attrs={"seed": 2, "task": "gamma"}).open()
    with pytest.raises(DataError, match=r"attribute cfg"):
        H5Writer(path, resume=True, attrs={"cfg": {"x": 2}}).open()
    with H5Writer(path, resume=True, attrs={"seed": 1, "task": "gamma", "cfg": {"x": 1}}) as w:
        assert w.n_rows == 4
        w.append(a=np.arange(4, 6))
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["a"][:], np.arange(6))


def test_inconsistent_appends_raise_data_error_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.h5"
    with H5Writer(path) as w:
        w.append(x=np.zeros((2, 3), np.float32), y=np.zeros(2, np.int32))
        with pytest.raises(DataError, match=r"bad\.h5\.part: x: expected rows of shape \(3,\) \(got \(4,\)\)"):
            w.append(x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.int32))
        with pytest.raises(DataError, match=r"bad\.h5\.part: x: expected dtype float32 \(got float64\)"):
            w.append(x=np.zeros((2, 3), np.float64), y=np.zeros(2, np.int32))
        with pytest.raises(DataError, match=r"y: missing"):
            w.append(x=np.zeros((2, 3), np.float32))
        with pytest.raises(DataError, match=r"z: not in the store"):
            w.append(x=np.zeros((2, 3), np.float32), y=np.zeros(2, np.int32), z=np.zeros(2))
        with pytest.raises(DataError, match="leading length"):
            w.append(x=np.zeros((2, 3), np.float32), y=np.zeros(3, np.int32))
        # a safe cast is accepted
        w.append(x=np.zeros((1, 3), np.float16), y=np.zeros(1, np.int8))
        assert w.n_rows == 3


def test_concurrent_readers_in_workers(tmp_path: Path) -> None:
    path = tmp_path / "w.h5"
    n = 64
    with H5Writer(path, chunk_rows=8) as w:
        w.append(input=np.arange(n * 3, dtype=np.float32).reshape(n, 3), idx=np.arange(n))
    ds = H5Dataset(path, ["input", "idx"])
    _ = ds[0]  # parent opens a handle before fork: workers must not reuse it
    loader = DataLoader(ds, batch_size=5, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0))
    seen = []
    for batch in loader:
        assert batch["input"].shape[1:] == (3,)
        torch.testing.assert_close(batch["input"][:, 0], batch["idx"].float() * 3)
        seen.append(batch["idx"])
    assert sorted(torch.cat(seen).tolist()) == list(range(n))


def test_getitems_matches_getitem_with_subset(tmp_path: Path) -> None:
    path = tmp_path / "g.h5"
    with H5Writer(path, chunk_rows=3) as w:
        w.append(v=np.arange(20, dtype=np.float64) ** 2)
    ds = H5Dataset(path, {"value": "v"}, indices=[19, 2, 5, 6, 7, 0])
    many = ds.__getitems__([3, 0, 3, 1, 5])
    assert [float(m["value"]) for m in many] == [36.0, 361.0, 36.0, 4.0, 0.0]
    assert [float(ds[i]["value"]) for i in (3, 0, 3, 1, 5)] == [36.0, 361.0, 36.0, 4.0, 0.0]
    assert ds.__getitems__([2, 3, 4]) == [{"value": torch.tensor(v)} for v in (25.0, 36.0, 49.0)]
    with pytest.raises(IndexError):
        ds[6]


def test_bad_files_and_keys_raise_one_line_data_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.h5"
    with pytest.raises(DataError, match=r"nope\.h5: file not found"):
        H5Dataset(missing, ["x"])

    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"this is not an HDF5 file" * 10)
    with pytest.raises(DataError, match=r"corrupt\.h5: not a readable HDF5 file") as info:
        H5Dataset(corrupt, ["x"])
    assert "\n" not in str(info.value)

    good = tmp_path / "good.h5"
    with H5Writer(good) as w:
        w.append(x=np.zeros((4, 2)))
    with pytest.raises(DataError, match=r"good\.h5: target: dataset not found \(the file holds \['x'\]\)"):
        H5Dataset(good, {"input": "x", "target": "target"})
    with pytest.raises(DataError, match="indices"):
        H5Dataset(good, ["x"], indices=[0, 4])

    truncated = tmp_path / "trunc.h5"
    truncated.write_bytes(good.read_bytes()[:600])
    with pytest.raises(DataError, match=r"trunc\.h5"):
        ds = H5Dataset(truncated, ["x"])
        ds[0]


def test_unequal_lengths_rejected(tmp_path: Path) -> None:
    path = tmp_path / "u.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.zeros(3)
        f["b"] = np.zeros(4)
    with pytest.raises(DataError, match="equal row counts"):
        H5Dataset(path, ["a", "b"])


def test_split_indices_deterministic_and_complete() -> None:
    a = split_indices(103, (0.8, 0.1, 0.1), seed=7)
    b = split_indices(103, [0.8, 0.1, 0.1], seed=7)
    c = split_indices(103, (0.8, 0.1, 0.1), seed=8)
    assert [len(p) for p in a] == [83, 10, 10]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))
    allidx = np.concatenate(a)
    assert sorted(allidx.tolist()) == list(range(103))
    assert [len(p) for p in split_indices(10, (1 / 3, 1 / 3, 1 / 3), 0)] == [4, 3, 3]
    assert [len(p) for p in split_indices(0, (0.5, 0.5), 0)] == [0, 0]
    with pytest.raises(ConfigError, match="sum to 1"):
        split_indices(10, (0.5, 0.6), 0)
    with pytest.raises(ConfigError):
        split_indices(10, (1.2, -0.2), 0)


def test_dataset_length_and_nested_attrs(tmp_path: Path) -> None:
    path = tmp_path / "len.h5"
    with H5Writer(path, attrs={"config": {"a": 1, "b": [1, 2]}, "energies_keV": [59.5, 661.7], "none": None}) as w:
        w.append(x=np.zeros((7, 2)), y=np.ones(7))
    assert dataset_length(path, "x") == 7
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["config"]) == {"a": 1, "b": [1, 2]}
        np.testing.assert_allclose(f.attrs["energies_keV"], [59.5, 661.7])
        assert json.loads(f.attrs["none"]) is None
    with pytest.raises(DataError, match=r"len\.h5: z: dataset not found"):
        dataset_length(path, "z")
    with pytest.raises(DataError, match=r"missing\.h5: file not found"):
        dataset_length(tmp_path / "missing.h5", "x")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match=r"bad\.h5: not a readable HDF5 file"):
        dataset_length(bad, "x")


def test_resume_after_crash_inside_first_append(tmp_path: Path) -> None:
    path = tmp_path / "first.h5"
    with pytest.raises(_Crash):
        with H5Writer(path) as w:
            w.append(a=np.arange(3), b=np.ones(3))
            raise _Crash()
    # simulate dying while the first append created its datasets: only "a" exists, count 0
    with h5py.File(part_path(path), "r+") as f:
        del f["b"]
        f.attrs[ROWS_ATTR] = 0
    with H5Writer(path, resume=True) as w:
        assert w.n_rows == 0
        w.append(a=np.arange(2), b=np.zeros(2))
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["a"][:], np.arange(2))
        np.testing.assert_array_equal(f["b"][:], np.zeros(2))


def test_dataset_pickles_without_its_handle(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "p.h5"
    with H5Writer(path) as w:
        w.append(x=np.arange(10.0).reshape(5, 2))
    ds = H5Dataset(path, {"input": "x"}, indices=[4, 0])
    assert float(ds[0]["input"][0]) == 8.0  # opens a handle in this process
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker receives
    assert clone._file is None and len(clone) == 2
    torch.testing.assert_close(clone[1]["input"], torch.tensor([0.0, 1.0], dtype=torch.float64))
    clone.close()
    ds.close()


_WRITER_SCRIPT = r"""
import sys
import numpy as np
from neurotrain.io.hdf5 import H5Writer

path, total = sys.argv[1], int(sys.argv[2])
with H5Writer(path, chunk_rows=25, resume=True) as w:
    assert w.n_rows % 50 == 0, w.n_rows
    i = w.n_rows // 50
    while i < total:
        w.append(x=np.full((50, 128), i, np.float32), i=np.full(50, i))
        i += 1
        if i == 20:
            print("ready", flush=True)
"""


def test_resume_after_sigkill_of_the_writing_process(tmp_path: Path) -> None:
    """A real crash: the writer process is killed with SIGKILL in the middle of its append
    loop; a second process resumes and the result is exactly what one run would write."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "killed.h5"
    total = 100_000  # far more than it can write before the kill
    proc = subprocess.Popen([sys.executable, "-c", _WRITER_SCRIPT, str(path), str(total)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not path.exists() and part_path(path).exists()
    with h5py.File(part_path(path), "r") as f:
        done = int(f.attrs[ROWS_ATTR])
    assert done >= 20 * 50
    total = done // 50 + 30  # finish 30 more appends after the resume point
    run = subprocess.run([sys.executable, "-c", _WRITER_SCRIPT, str(path), str(total)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    with h5py.File(path, "r") as f:
        i = f["i"][:]
        np.testing.assert_array_equal(i, np.repeat(np.arange(total), 50))
        np.testing.assert_array_equal(f["x"][:, 0], i.astype(np.float32))
        np.testing.assert_array_equal(f["x"][:, -1], i.astype(np.float32))
