from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from neurotrain.errors import DataError
from neurotrain.tasks.deflare.io import (
    EventWriter,
    inspect_events,
    iter_chunks,
    iter_segments,
    read_events,
    write_events,
)


def _write_seed(path: Path, t, x, y, p, p_dtype="int8", attrs=None):
    with h5py.File(path, "w") as f:
        g = f.create_group("events")
        g["t"] = np.asarray(t, np.int64)
        g["x"] = np.asarray(x, np.uint16)
        g["y"] = np.asarray(y, np.uint16)
        g["p"] = np.asarray(p, p_dtype)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v


def _random_events(n, seed=0, t_max=100_000, size=(20, 30)):
    r = np.random.default_rng(seed)
    t = np.sort(r.integers(0, t_max, n))
    return t, r.integers(0, size[1], n), r.integers(0, size[0], n), r.integers(0, 2, n)


def test_polarity_rule_one_is_positive_everything_else_negative(tmp_path):
    f = tmp_path / "a.h5"
    _write_seed(f, [0, 1, 2, 3], [0] * 4, [0] * 4, [1, 0, -1, 2])
    ev = read_events(f)
    assert ev.p.tolist() == [1, -1, -1, -1]
    info = inspect_events(f)
    assert info.neg_value == -1 and info.layout == "seed"
    out = tmp_path / "b.h5"
    write_events(out, ev, like=info)
    with h5py.File(out) as h:
        assert h["events/p"][:].tolist() == [1, -1, -1, -1]
        assert h["events/p"].dtype == np.int8 and h["events/x"].dtype == np.uint16
        assert h["events/t"].compression == "gzip"


def test_unsigned_polarity_writes_zero_for_negative(tmp_path):
    f = tmp_path / "a.h5"
    _write_seed(f, [0, 1], [0, 1], [0, 0], [1, 0], p_dtype="uint8")
    info = inspect_events(f)
    out = tmp_path / "b.h5"
    write_events(out, read_events(f), like=info)
    with h5py.File(out) as h:
        assert h["events/p"][:].tolist() == [1, 0] and h["events/p"].dtype == np.uint8


def test_chunked_reading_equals_whole_file_and_segments_map_back(tmp_path):
    f = tmp_path / "a.h5"
    t, x, y, p = _random_events(5_000, t_max=95_000)
    _write_seed(f, t, x, y, p)
    chunks = list(iter_chunks(f, chunk_events=1024))
    assert len(chunks) == 5 and max(len(c) for c in chunks) == 1024
    assert np.array_equal(np.concatenate([c.t for c in chunks]), t)
    segs = list(iter_segments(iter(chunks), 20_000))
    assert [s.index for s in segs] == [0, 1, 2, 3, 4]  # the last, partial 80-95 ms segment is kept
    assert [s.t_start for s in segs] == [0, 20_000, 40_000, 60_000, 80_000]
    assert sum(len(s.events) for s in segs) == 5_000
    for s in segs:
        assert s.events.t.min() >= s.t_start and s.events.t.max() < s.t_start + 20_000
    assert np.array_equal(np.concatenate([s.events.t for s in segs]), t)


def test_segments_skip_gaps_and_keep_absolute_time(tmp_path):
    f = tmp_path / "a.h5"
    _write_seed(f, [1_000_005, 1_000_006, 1_070_000], [0, 1, 2], [0, 0, 0], [1, 1, 0])
    segs = list(iter_segments(iter_chunks(f, chunk_events=1024), 20_000))
    assert [s.t_start for s in segs] == [1_000_000, 1_060_000]


def test_dsec_layout_round_trip_with_ms_to_idx(tmp_path):
    f = tmp_path / "dsec.h5"
    t = np.array([0, 500, 999, 1_000, 2_500, 4_000], np.uint32)
    with h5py.File(f, "w") as h:
        g = h.create_group("events")
        g["t"], g["x"], g["y"], g["p"] = t, np.arange(6, dtype=np.uint16), np.zeros(6, np.uint16), np.array([1, 0, 1, 0, 1, 1], np.uint8)
        h["ms_to_idx"] = np.array([0, 3, 4, 5, 5], np.uint64)
        h["t_offset"] = np.int64(123_456_789)
    info = inspect_events(f)
    assert info.layout == "dsec" and info.t_offset == 123_456_789
    out = tmp_path / "o.h5"
    ev = read_events(f)
    with EventWriter(out, like=info) as w:
        w.append(ev.t[:3], ev.x[:3], ev.y[:3], ev.p[:3])
        w.append(ev.t[3:], ev.x[3:], ev.y[3:], ev.p[3:])
    with h5py.File(out) as h:
        assert h["events/t"].dtype == np.uint32 and h["events/p"].dtype == np.uint8
        assert h["events/t"][:].tolist() == t.tolist()
        assert int(h["t_offset"][()]) == 123_456_789
        assert h["ms_to_idx"][:].tolist() == [0, 3, 4, 5, 5]


def test_truncated_file_is_one_clear_error_and_writes_nothing(tmp_path):
    good = tmp_path / "good.h5"
    t, x, y, p = _random_events(20_000)
    _write_seed(good, t, x, y, p)
    bad = tmp_path / "bad.h5"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as exc:
        list(iter_chunks(bad))
    msg = str(exc.value)
    assert "bad.h5" in msg and "\n" not in msg
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DataError, match="cannot open as HDF5"):
        inspect_events(garbage)


def test_missing_field_and_bad_coordinates_name_the_field(tmp_path):
    f = tmp_path / "a.h5"
    with h5py.File(f, "w") as h:
        g = h.create_group("events")
        g["t"] = np.arange(3)
        g["x"] = np.arange(3)
        g["y"] = np.arange(3)
    with pytest.raises(DataError, match="events/p"):
        inspect_events(f)
    f2 = tmp_path / "b.h5"
    _write_seed(f2, [0, 1], [0, 40], [0, 0], [1, 1])
    with pytest.raises(DataError, match=r"events/x: expected 0 <= x < 30"):
        list(iter_chunks(f2, sensor_size=(20, 30)))
    f3 = tmp_path / "c.h5"
    _write_seed(f3, [5, 1], [0, 0], [0, 0], [1, 1])
    with pytest.raises(DataError, match="non-decreasing"):
        list(iter_chunks(f3))


def test_writer_error_leaves_no_file_and_keeps_old_one(tmp_path):
    out = tmp_path / "o.h5"
    out.write_bytes(b"previous good content")
    with pytest.raises(RuntimeError):
        with EventWriter(out) as w:
            w.append(np.array([0, 1]), np.array([0, 1]), np.array([0, 0]), np.array([1, -1]))
            raise RuntimeError("boom")
    assert out.read_bytes() == b"previous good content"
    assert [p.name for p in tmp_path.iterdir()] == ["o.h5"]


def test_writer_accepts_torch_and_sensor_size_attr(tmp_path):
    out = tmp_path / "o.h5"
    with EventWriter(out, attrs={"sensor_size": [20, 30]}) as w:
        w.append(torch.tensor([0, 5]), torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([1, -1], dtype=torch.int8))
    info = inspect_events(out)
    assert info.sensor_size == (20, 30) and info.num_events == 2
    assert read_events(out).p.tolist() == [1, -1]


@pytest.mark.parametrize("shuffle", [True, False])
def test_parallel_gzip_chunks_are_standard_hdf5(tmp_path, shuffle):
    from neurotrain.tasks.deflare.h5chunks import read_rows

    t, x, y, p = _random_events(10_000, seed=3)
    sign = np.where(p == 1, 1, -1)
    out = tmp_path / "o.h5"
    with EventWriter(out, chunk_rows=1024, shuffle=shuffle) as w:
        for a in range(0, 10_000, 3_333):  # appends that do not align with chunks
            w.append(t[a : a + 3_333], x[a : a + 3_333], y[a : a + 3_333], sign[a : a + 3_333])
    with h5py.File(out) as h:  # plain h5py decodes what the thread pool compressed
        d = h["events/t"]
        assert d.compression == "gzip" and d.shuffle == shuffle and d.chunks == (1024,)
        assert np.array_equal(d[:], t) and np.array_equal(h["events/x"][:], x)
        assert h["events/p"][:].tolist() == np.where(p == 1, 1, 0).tolist()
        # and the parallel reader decodes any range of an h5py-made file
        for a, b in ((0, 10_000), (1_000, 1_001), (1_023, 5_000), (9_999, 10_000)):
            assert np.array_equal(read_rows(d, a, b), t[a:b])
    ref = tmp_path / "ref.h5"
    with h5py.File(ref, "w") as h:
        h.create_dataset("t", data=t, chunks=(700,), compression="gzip", shuffle=shuffle)
        h.create_dataset("lzf", data=t, chunks=(700,), compression="lzf")
    with h5py.File(ref) as h:
        assert np.array_equal(read_rows(h["t"], 650, 7_123), t[650:7_123])
        assert np.array_equal(read_rows(h["lzf"], 5, 17), t[5:17])  # other filters: plain h5py path
