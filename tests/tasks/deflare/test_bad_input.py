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


def test_truncated_evt_file_warns_and_decodes_the_whole_words(tmp_path):
    f = tmp_path / "cut.raw"
    words = np.array([0x8000 | 1, 0x0000 | 5, 0x2000 | (1 << 11) | 7], "<u2")  # time high, y=5, one ON event x=7
    f.write_bytes(b"% evt 3.0\n% end\n" + words.tobytes() + b"\x01")
    with pytest.warns(UserWarning, match="cut.raw: truncated EVT 3.0 stream: 1 trailing byte"):
        ev, _ = read_raw(f)
    assert ev.x.tolist() == [7] and ev.y.tolist() == [5]
    h = tmp_path / "noheader.raw"
    h.write_bytes(words.tobytes())
    with pytest.raises(DataError, match="noheader.raw: header"):
        read_raw(h)
