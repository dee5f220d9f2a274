import h5py
import numpy as np
import torch

from neurotrain.tasks.deflare.io import inspect_events, read_events
from neurotrain.tasks.deflare.simulate import Scenes, simulate_counts, simulate_voxel_pairs

from .conftest import small_cfg


def test_simulate_batch_shapes_and_reproducibility(cfg):
    g1 = torch.Generator().manual_seed(5)
    b1 = simulate_voxel_pairs(cfg.simulate, cfg.voxel, 3, g1, torch.device("cpu"))
    assert b1["input"].shape == (3, 1, 8, 24, 32) == b1["target"].shape
    assert b1["light_mask"].shape == (3, 1, 1, 24, 32)
    g2 = torch.Generator().manual_seed(5)
    b2 = simulate_voxel_pairs(cfg.simulate, cfg.voxel, 3, g2, torch.device("cpu"))
    assert torch.equal(b1["input"], b2["input"]) and torch.equal(b1["target"], b2["target"])
    # integer voxels: they are event counts
    assert torch.equal(b1["input"], b1["input"].round())


def test_flare_adds_flickering_events_around_the_light():
    cfg = small_cfg(simulate={"flare_probability": 1.0, "flicker_probability": 1.0, "flicker_depth": (0.9, 1.0),
                              "halo_amplitude": (2.0, 3.0), "noise_rate_hz": 0.0})
    g = torch.Generator().manual_seed(0)
    b = simulate_voxel_pairs(cfg.simulate, cfg.voxel, 4, g, torch.device("cpu"))
    n_in = b["input"].abs().sum().item()
    n_tg = b["target"].abs().sum().item()
    assert n_in > 1.2 * n_tg
    # flicker: both polarities appear in the flare-only difference
    diff = b["input"] - b["target"]
    assert (diff > 0).any() and (diff < 0).any()


def test_light_source_flickers_at_mains_frequency():
    cfg = small_cfg(simulate={"flicker_probability": 1.0, "flicker_depth": (1.0, 1.0), "flicker_hz": [100.0]})
    g = torch.Generator().manual_seed(0)
    sc = Scenes(cfg.simulate, 2, (24, 32), g, torch.device("cpu"))
    t = torch.linspace(0, 0.02, 2001)
    lf = torch.stack([sc.flicker(float(ti)) for ti in t])  # (T, n)
    spec = torch.fft.rfft(lf[:-1, 0] - lf[:-1, 0].mean()).abs()
    freqs = torch.fft.rfftfreq(2000, d=0.02 / 2000)
    assert abs(freqs[spec.argmax()].item() - 100.0) < 1.0


def test_noise_and_threshold_map_are_shared_between_streams():
    cfg = small_cfg(simulate={"flare_probability": 0.0, "noise_rate_hz": 50.0})
    g = torch.Generator().manual_seed(1)
    r = simulate_counts(cfg.simulate, 2, (24, 32), 20_000, g, torch.device("cpu"))
    # without flare both streams are the same scene seen by the same sensor
    assert torch.equal(r["with_flare"], r["without_flare"])


def test_simulate_writes_the_seed_directory_layout(tmp_path, cfg):
    from neurotrain.registry import TASKS
    import neurotrain.tasks  # noqa: F401

    TASKS.get("deflare").simulate(cfg, tmp_path, 3)
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.h5"))
    assert names == [
        "background_with_flare_events/composed_00000_bg_flare.h5",
        "background_with_flare_events/composed_00001_bg_flare.h5",
        "background_with_flare_events_test/composed_00002_bg_flare.h5",
        "background_with_light_events/composed_00000_bg_light.h5",
        "background_with_light_events/composed_00001_bg_light.h5",
        "background_with_light_events_test/composed_00002_bg_light.h5",
    ]
    f = tmp_path / "background_with_flare_events" / "composed_00000_bg_flare.h5"
    info = inspect_events(f)
    assert info.sensor_size == (24, 32) and info.layout == "seed"
    ev = read_events(f, sensor_size=(24, 32))
    assert len(ev) > 0 and ev.t.min() >= 0 and ev.t.max() < 50_000
    assert set(np.unique(ev.p).tolist()) <= {-1, 1}
    with h5py.File(f) as h:
        assert h["events/t"].dtype == np.int64 and h["events/p"].dtype == np.int8
        assert "light_x" in h.attrs
