"""The exact output (postprocess.mode=mask): a subset of the input events, in order, untouched."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import neurotrain.tasks  # noqa: F401
from neurotrain.registry import TASKS
from neurotrain.tasks.deflare.evt import raw_to_h5
from neurotrain.tasks.deflare.postprocess import identity_fn, process_file
from neurotrain.tasks.deflare.voxel import event_cells, events_to_voxel, keep_fraction

from .conftest import small_cfg

EVENTS = Path(__file__).resolve().parents[3] / ".." / "shared" / "realdata" / "events"


def _raw_columns(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as h:
        return {k: h[f"events/{k}"][:] for k in "txyp"}


def _write(path: Path, p_values=(0, 1), p_dtype="uint8", n=30_000, seed=0) -> Path:
    r = np.random.default_rng(seed)
    with h5py.File(path, "w") as h:
        g = h.create_group("events")
        g["t"] = np.sort(r.integers(3_000, 97_000, n)).astype(np.uint32)
        g["x"] = r.integers(0, 32, n).astype(np.uint16)
        g["y"] = r.integers(0, 24, n).astype(np.uint16)
        g["p"] = r.choice(np.array(p_values), n).astype(p_dtype)
        h.attrs["sensor_size"] = [24, 32]
    return path


def _left_half_is_flare(v: torch.Tensor) -> torch.Tensor:
    """A 'network' that calls every cell with x < 16 pure flare and keeps the rest."""
    out = v.clone()
    out[..., :16] = 0
    return out


@pytest.mark.parametrize("p_values,p_dtype", [((0, 1), "uint8"), ((-1, 1), "int8"), ((0, 1, 2), "int16")])
@pytest.mark.parametrize("method", ["count", "bilinear"])
def test_output_is_the_exact_subset_of_input_rows_in_order(tmp_path, p_values, p_dtype, method):
    src = _write(tmp_path / "in.h5", p_values, p_dtype)
    cfg = small_cfg(tmp_path, voxel={"method": method}, pipeline={"chunk_events": 4096, "batch_segments": 2})
    out = tmp_path / "out.h5"
    r = process_file(src, out, _left_half_is_flare, cfg)
    a, b = _raw_columns(src), _raw_columns(out)
    # expected: the right half, plus left-half pixels whose every cell of the segment cancels
    # to 0 (no evidence either way: kept, see voxel.keep_fraction)
    t, x, y = a["t"].astype(np.int64), a["x"].astype(np.int64), a["y"].astype(np.int64)
    sign = torch.from_numpy(np.where(a["p"] == 1, 1, -1))
    seg = t // 20_000
    vin = events_to_voxel(torch.from_numpy(t), torch.from_numpy(x), torch.from_numpy(y), sign, num_bins=8,
                          sensor_size=(24, 32), duration_us=20_000, t_start=torch.arange(5) * 20_000,
                          segment=torch.from_numpy(seg), num_segments=5, method=method)
    silent = (vin.abs() <= 1e-6).all(1).numpy()  # (segment, y, x)
    keep = (x >= 16) | silent[seg, y, x]
    assert silent[seg, y, x].mean() < 0.01
    for k in "txyp":
        assert b[k].dtype == a[k].dtype, k
        assert np.array_equal(b[k], a[k][keep]), k  # same rows, same order, stored values untouched
    assert r.events_out == int(keep.sum()) and r.events_in == len(keep)


def test_identity_keeps_every_event_and_threshold_one_is_still_all(tmp_path):
    src = _write(tmp_path / "in.h5", n=10_000)
    for thr in (0.5, 1.0):
        cfg = small_cfg(tmp_path, postprocess={"keep_threshold": thr}, voxel={"method": "bilinear"})
        out = tmp_path / f"o{thr}.h5"
        process_file(src, out, identity_fn, cfg)
        a, b = _raw_columns(src), _raw_columns(out)
        assert all(np.array_equal(a[k], b[k]) for k in "txyp")


def test_keep_fraction_is_out_over_in_of_the_events_own_cell():
    # one pixel, 4 bins of 5 µs: bin 0 holds +3 (network keeps +1), bin 1 holds +1/-1 (cancels),
    # bin 2 holds -2 (network keeps -2), bin 3 holds +1 (network flips it to -1)
    t = torch.tensor([0, 1, 2, 5, 6, 10, 11, 15])
    p = torch.tensor([1, 1, 1, 1, -1, -1, -1, 1])
    z = torch.zeros_like(t)
    kw = dict(num_bins=4, sensor_size=(1, 1), duration_us=20)
    vin = events_to_voxel(t, z, z, p, **kw)
    assert vin.flatten().tolist() == [3, 0, -2, 1]
    vout = torch.tensor([1.0, 0.0, -2.0, -1.0]).view(4, 1, 1)
    i0, i1, w1, _ = event_cells(t, z, z, **kw)
    f = keep_fraction(vin, vout, i0, i1, w1)
    # cancelled bin 1 takes the pixel's fraction: (1*1 + 0 + (-1)(-2) + 1*(-1)) / (3 + 2 + 1) = 2/6
    assert f.tolist() == pytest.approx([1 / 3] * 3 + [1 / 3] * 2 + [1.0, 1.0, 0.0])


def _real_raw(name: str) -> Path:
    p = EVENTS / name
    if not p.is_file():
        pytest.skip(f"{p} is absent (real data lives only in the project workspace)")
    return p


@pytest.mark.parametrize("name,size", [("evt2_sample.raw", (480, 640)), ("evt3_sample.raw", (720, 1280))])
def test_identity_network_keeps_all_events_of_real_recordings(tmp_path, name, size):
    """Issue 18: on real flare-free recordings the output events are identical in t, x, y, p to
    the kept input events; a network that returns its input keeps 100% of them."""
    raw = _real_raw(name)
    h5 = raw_to_h5(raw, tmp_path / "in.h5")
    cfg = small_cfg(tmp_path)
    task = TASKS.get("deflare")
    out = tmp_path / "out.h5"
    assert task.predict(cfg, None, [raw], out, method="codec") == [out]
    a, b = _raw_columns(h5), _raw_columns(out)
    assert len(a["t"]) > 200_000
    for k in "txyp":
        assert b[k].dtype == a[k].dtype and np.array_equal(a[k], b[k]), k
    with h5py.File(out) as f:
        assert list(f.attrs["sensor_size"]) == list(size)
