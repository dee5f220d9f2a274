import h5py
import numpy as np
import pytest
import torch

from neurotrain.errors import DataError
from neurotrain.tasks.deflare.io import EventWriter, read_events
from neurotrain.tasks.deflare.postprocess import identity_fn, model_fn, process_file

from .conftest import small_cfg


def _file(path, n=20_000, seed=0):
    r = np.random.default_rng(seed)
    t = np.sort(r.integers(1_000, 93_000, n))
    with EventWriter(path, attrs={"sensor_size": [24, 32]}) as w:
        w.append(t, r.integers(0, 32, n), r.integers(0, 24, n), np.where(r.random(n) < 0.5, 1, -1))
    return path


def test_chunk_size_does_not_change_the_output(tmp_path):
    src = _file(tmp_path / "in.h5")
    outs = []
    for chunk in (1024, 1 << 20):
        cfg = small_cfg(tmp_path, pipeline={"chunk_events": chunk, "batch_segments": 2})
        out = tmp_path / f"out_{chunk}.h5"
        r = process_file(src, out, identity_fn, cfg)
        assert r.segments == 5 and r.events_in == 20_000
        assert set(r.seconds) == {"read", "encode", "network", "decode", "write"}
        outs.append(read_events(out))
    assert np.array_equal(outs[0].t, outs[1].t) and np.array_equal(outs[0].x, outs[1].x)
    # the codec keeps the recording's time range and never adds events
    ev_in = read_events(src)
    assert outs[0].t.min() >= ev_in.t.min() and outs[0].t.max() <= ev_in.t.max()
    assert len(outs[0]) <= len(ev_in)


def test_network_batches_split_on_out_of_memory(tmp_path):
    calls = []

    class Picky(torch.nn.Module):
        def forward(self, v):
            calls.append(v.shape[0])
            if v.shape[0] > 1:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return v * 0

    src = _file(tmp_path / "in.h5", n=5_000)
    cfg = small_cfg(tmp_path, pipeline={"batch_segments": 4})
    r = process_file(src, tmp_path / "o.h5", model_fn(Picky(), "cpu"), cfg)
    assert 4 in calls and calls.count(1) == 5
    # a network that outputs nothing drops every event (mask mode), except in pixels where every
    # cell of the segment cancels to 0 in the input: they carry no evidence and are kept
    ev = read_events(src)
    seg, b = ev.t // 20_000, (ev.t % 20_000) * 8 // 20_000
    cell = np.zeros((5, 8, 24, 32))
    np.add.at(cell, (seg, b, ev.y, ev.x), ev.p)
    silent = ~np.any(cell != 0, axis=1)  # (segment, y, x)
    assert r.events_out == int(silent[seg, ev.y, ev.x].sum())


def test_diverged_network_is_refused_not_written(tmp_path):
    src = _file(tmp_path / "in.h5", n=2_000)
    # the seed's decoder (postprocess.mode=decode) would have to invent events: refused
    cfg = small_cfg(tmp_path, pipeline={"max_events_factor": 2.0}, postprocess={"mode": "decode"})
    out = tmp_path / "o.h5"
    from neurotrain.errors import DataError

    with pytest.raises(DataError, match="max_events"):
        process_file(src, out, lambda v: v + 1000.0, cfg)
    assert not out.exists()


def test_empty_recording_is_refused_not_written_as_an_empty_file(tmp_path):
    """issue 21: an empty event file gave an empty output with no notice."""
    src = tmp_path / "empty.h5"
    with EventWriter(src, attrs={"sensor_size": [24, 32]}):
        pass
    out = tmp_path / "o.h5"
    with pytest.raises(DataError, match="empty.h5: events: expected at least one event"):
        process_file(src, out, identity_fn, small_cfg(tmp_path))
    assert not out.exists()
