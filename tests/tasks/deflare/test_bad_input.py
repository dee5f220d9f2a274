"""Bad input: one clear line naming the file, or a documented repair with a warning; never a half output."""

import h5py
import numpy as np
import pytest

from neurotrain.errors import DataError
from neurotrain.tasks.deflare.evt import read_raw
from neurotrain.tasks.deflare.io import read_events, sort_events_file
from neurotrain.tasks.deflare.postprocess import identity_fn, process_file

from .conftest import small_cfg


def _h5(path, t, x, y, p, dtypes=("int64", "uint16", "uint16", "int8"), sensor=(24, 32)):
    with h5py.File(path, "w") as h:
        g = h.create_group("events")
        for k, v, d in zip("txyp", (t, x, y, p), dtypes):
            g[k] = np.asarray(v).astype(d)
        h.attrs["sensor_size"] = list(sensor)
    return path


GOOD = ([10, 20, 30], [1, 2, 3], [1, 2, 3], [1, 0, 1])


@pytest.mark.parametrize("case,fix,match", [
    ("outside", lambda t, x, y, p: (t, [1, 40, 3], y, p), "events/x: expected 0 <= x < 32"),
    ("unsorted", lambda t, x, y, p: ([30, 10, 20], x, y, p), "events/t: expected non-decreasing"),
    ("negative", lambda t, x, y, p: ([-5, 10, 20], x, y, p), "events/t: expected timestamps >= 0"),
])
def test_bad_events_stop_with_one_line_and_no_output(tmp_path, case, fix, match):
    src = _h5(tmp_path / f"{case}.h5", *fix(*GOOD))
    out = tmp_path / "out.h5"
    with pytest.raises(DataError, match=match) as e:
        process_file(src, out, identity_fn, small_cfg(tmp_path))
    assert f"{case}.h5" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


def test_wrong_dtype_and_missing_group_and_empty_file(tmp_path):
    f = _h5(tmp_path / "float.h5", *GOOD, dtypes=("float64", "uint16", "uint16", "int8"))
    with pytest.raises(DataError, match="float.h5: events/t: expected an integer dtype"):
        read_events(f)
    g = tmp_path / "nogroup.h5"
    with h5py.File(g, "w") as h:
        h["t"] = np.arange(3)
    with pytest.raises(DataError, match="nogroup.h5: events: expected a group"):
        read_events(g)
    e = tmp_path / "empty.h5"
    e.write_bytes(b"")
    with pytest.raises(DataError, match="empty.h5: cannot open as HDF5"):
        process_file(e, tmp_path / "o.h5", identity_fn, small_cfg(tmp_path))
    assert not (tmp_path / "o.h5").exists()


def test_unsorted_file_has_a_documented_repair_with_a_warning(tmp_path):
    src = _h5(tmp_path / "u.h5", [30, 10, 20], [1, 2, 3], [1, 2, 3], [1, 0, 1])
    with pytest.warns(UserWarning, match="u.h5: events/t: 3 of 3 events out of time order"):
        fixed = sort_events_file(src, tmp_path / "sorted.h5")
    ev = read_events(fixed)
    assert ev.t.tolist() == [10, 20, 30] and ev.x.tolist() == [2, 3, 1]


def test_truncated_and_header_only_evt_files_are_refused(tmp_path):
    """issue 21: a cut recording or a header-only file is not processed as if whole."""
    f = tmp_path / "cut.raw"
    words = np.array([0x8000 | 1, 0x0000 | 5, 0x2000 | (1 << 11) | 7], "<u2")  # time high, y=5, one ON event x=7
    f.write_bytes(b"% evt 3.0\n% end\n" + words.tobytes() + b"\x01")
    with pytest.raises(DataError, match="cut.raw: EVT 3.0 data: expected whole 2-byte words .*truncated"):
        read_raw(f)
    f.write_bytes(b"% evt 3.0\n% end\n" + words.tobytes())
    ev, _ = read_raw(f)
    assert ev.x.tolist() == [7] and ev.y.tolist() == [5]
    only = tmp_path / "only_header.raw"
    only.write_bytes(b"% evt 2.0\n% geometry 64x48\n% end\n")
    with pytest.raises(DataError, match="only_header.raw: .*only its header"):
        read_raw(only)
    h = tmp_path / "noheader.raw"
    h.write_bytes(words.tobytes())
    with pytest.raises(DataError, match="noheader.raw: header"):
        read_raw(h)


def test_float_timestamps_and_byte_string_coordinates_are_refused_not_written_back(tmp_path):
    """issue 21: float t and byte-string x were accepted and written back as such."""
    import neurotrain.tasks  # noqa: F401
    from neurotrain.registry import TASKS

    f = _h5(tmp_path / "float_t.h5", [1.5, 2.5, 3.5], *GOOD[1:], dtypes=("float64", "uint16", "uint16", "int8"))
    b = _h5(tmp_path / "bytes_x.h5", GOOD[0], [b"1", b"2", b"3"], *GOOD[2:], dtypes=("int64", "S1", "uint16", "int8"))
    for src, match in ((f, "float_t.h5: events/t: expected an integer dtype"), (b, "bytes_x.h5: events/x: expected an integer dtype")):
        with pytest.raises(DataError, match=match):
            TASKS.get("deflare").predict(small_cfg(tmp_path), None, [src], tmp_path / "out", method="codec")
        assert not (tmp_path / "out").exists()


def test_empty_event_file_is_an_error_not_an_empty_output(tmp_path):
    e = _h5(tmp_path / "none.h5", [], [], [], [])
    with pytest.raises(DataError, match="none.h5: events: expected at least one event"):
        process_file(e, tmp_path / "o" / "none.h5", identity_fn, small_cfg(tmp_path))
    assert not (tmp_path / "o").exists()


def test_failed_validation_leaves_no_empty_output_folder_and_names_the_raw_file(tmp_path):
    """A .raw file is decoded to a temporary HDF5 first: its errors must still name the .raw
    file, and the output folders made for it must go when it fails."""
    import neurotrain.tasks  # noqa: F401
    from neurotrain.registry import TASKS

    raw = tmp_path / "nosize.raw"  # no sensor size in the header: the config's 24x32 applies
    raw.write_bytes(b"% evt 2.0\n% end\n" + np.array([0x8 << 28 | 1, (1 << 28) | (40 << 11) | 3], "<u4").tobytes())
    with pytest.raises(DataError, match=r"nosize.raw: events/x: expected 0 <= x < 32") as e:
        TASKS.get("deflare").predict(small_cfg(tmp_path), None, [raw], tmp_path / "a" / "b", method="codec")
    assert "tmp" not in str(e.value).replace(str(tmp_path), "")
    assert not (tmp_path / "a").exists()
