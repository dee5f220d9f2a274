"""Real Prophesee recordings (expelliarmus test files) through the full predict path."""

from pathlib import Path

import h5py
import numpy as np
import pytest

import neurotrain.tasks  # noqa: F401
from neurotrain.registry import TASKS
from neurotrain.tasks.deflare.io import inspect_events, read_events

from .conftest import small_cfg

REALDATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "realdata"
EVT3_NPY = REALDATA / "events" / "evt3_sample.npy"


@pytest.fixture
def evt3_h5(tmp_path) -> Path:
    if not EVT3_NPY.is_file():
        pytest.skip(f"{EVT3_NPY} is absent (real data lives only in the project workspace)")
    a = np.load(EVT3_NPY)
    f = tmp_path / "evt3_sample.h5"
    with h5py.File(f, "w") as h:
        g = h.create_group("events")
        g["t"], g["x"], g["y"], g["p"] = a["t"], a["x"], a["y"], a["p"]
        h.attrs["sensor_size"] = [720, 1280]
    return f


def _check_real_predict(tmp_path: Path, evt3_h5: Path, method: str) -> None:
    # sensor_size in the config is deliberately wrong: the file's attribute must win
    cfg = small_cfg(tmp_path)
    task = TASKS.get("deflare")
    model = task.build_model(cfg)
    out = tmp_path / "out" / "evt3_sample.h5"
    assert task.predict(cfg, model, [evt3_h5], out, method=method) == [out]
    a, b = inspect_events(evt3_h5), inspect_events(out)
    assert b.sensor_size == (720, 1280) and b.dtypes == a.dtypes
    ev_in, ev_out = read_events(evt3_h5), read_events(out, sensor_size=(720, 1280))
    assert len(ev_in) == 219_596
    # identity network, exact output (postprocess.mode=mask): every event kept, t, x, y, p untouched
    for k in ("t", "x", "y", "p"):
        assert np.array_equal(getattr(ev_in, k), getattr(ev_out, k)), k


def test_real_evt3_recording_through_the_codec_path_at_1280x720(tmp_path, evt3_h5):
    """read -> encode -> decode -> write at the real sensor size (no network: fast)."""
    _check_real_predict(tmp_path, evt3_h5, "codec")


@pytest.mark.slow
def test_real_evt3_recording_through_the_network_at_1280x720(tmp_path, evt3_h5):
    """The full predict path with the (untrained, identity) network; ~1 min on 2 CPU cores."""
    _check_real_predict(tmp_path, evt3_h5, "network")
