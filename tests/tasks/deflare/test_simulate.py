import h5py
import numpy as np
import torch

from neurotrain.tasks.deflare.io import inspect_events, read_column, read_events
from neurotrain.tasks.deflare.metrics import FLARE_LABELS, LABELS
from neurotrain.tasks.deflare.simulate import Scenes, simulate_events, simulate_voxel_pairs

from .conftest import small_cfg

CPU = torch.device("cpu")
QUIET = {"leak_rate_hz": (0.0, 0.0), "shot_noise_rate_hz": (0.0, 0.0), "hot_pixel_fraction": 0.0}


def test_simulate_batch_shapes_and_reproducibility(cfg):
    g1 = torch.Generator().manual_seed(5)
    b1 = simulate_voxel_pairs(cfg.simulate, cfg.voxel, 3, g1, CPU)
    assert b1["input"].shape == (3, 1, 8, 24, 32) == b1["target"].shape
    assert b1["light_mask"].shape == (3, 1, 1, 24, 32)
    g2 = torch.Generator().manual_seed(5)
    b2 = simulate_voxel_pairs(cfg.simulate, cfg.voxel, 3, g2, CPU)
    assert torch.equal(b1["input"], b2["input"]) and torch.equal(b1["target"], b2["target"])
    assert torch.equal(b1["input"], b1["input"].round())  # integer voxels: event counts


def _static_lamp(**over):
    sim = {"ego_speed_px_s": (0.0, 0.0), "shape_speed_px_s": (0.0, 0.0), "fast_shape_fraction": 0.0, "flicker_probability": 1.0,
           "flicker_depth": (1.0, 1.0), "light_contrast": (1000.0, 1000.0), **QUIET, **over}
    return small_cfg(voxel={"sensor_size": [32, 48]}, simulate=sim)


def test_static_scene_with_flickering_lamp_has_flare_events_only_where_the_flare_is():
    cfg = _static_lamp(flare_probability=1.0)
    g = torch.Generator().manual_seed(3)
    ev = simulate_events(cfg.simulate, 3, (32, 48), 20_000, g, CPU)
    sc: Scenes = ev["scenes"]
    lab = ev["label"].long()
    counts = torch.bincount(lab, minlength=len(LABELS))
    assert counts[LABELS["scene"]] == 0  # nothing in the scene moves or changes
    assert counts[[LABELS["noise"], LABELS["hot_pixel"]]].sum() == 0
    flare = torch.isin(lab, torch.tensor(FLARE_LABELS))
    assert flare.sum() > 100 and counts[LABELS["light"]] > 0
    # every flare event sits where the flare is: no flare event where it is under 0.1% of the
    # pixel's radiance, and most of them where it is a sizeable part (a pixel's memorised level
    # starts at a random phase, so a faint flare can tip a pixel over once)
    bg = sc.background(0.0)
    fl = sc.flare_profile(0.0)
    share = fl / (bg + sc.light_profile(0.0) + fl)
    b, y, x = ev["b"][flare], ev["y"][flare], ev["x"][flare]
    assert share[b, y, x].min() > 1e-3
    assert (share[b, y, x] > 0.05).float().mean() > 0.9
    # and light-source events sit on the source
    lm = lab == LABELS["light"]
    lp = sc.light_profile(0.0)
    assert (lp[ev["b"][lm], ev["y"][lm], ev["x"][lm]] / bg[ev["b"][lm], ev["y"][lm], ev["x"][lm]]).min() > 0.05
    # the same scenes without flare: no flare event at all
    g = torch.Generator().manual_seed(3)
    ev0 = simulate_events(_static_lamp(flare_probability=0.0).simulate, 3, (32, 48), 20_000, g, CPU)
    assert not torch.isin(ev0["label"].long(), torch.tensor(FLARE_LABELS)).any()


def test_flare_follows_the_moving_source_within_the_segment():
    cfg = _static_lamp(flare_probability=1.0, ego_speed_px_s=(600.0, 600.0), texture_components=0, num_shapes=0)
    g = torch.Generator().manual_seed(1)
    ev = simulate_events(cfg.simulate, 1, (32, 48), 20_000, g, CPU)
    sc: Scenes = ev["scenes"]
    flare = torch.isin(ev["label"].long(), torch.tensor(FLARE_LABELS))
    t, x, y = ev["t"][flare].double(), ev["x"][flare].double(), ev["y"][flare].double()
    early, late = t < 5_000, t >= 15_000
    shift = torch.stack([x[late].mean() - x[early].mean(), y[late].mean() - y[early].mean()])
    expect = sc.ego_v[0].double() * 0.0125  # 600 px/s over the 12.5 ms between the windows' centres
    assert torch.linalg.vector_norm(shift - expect) < 0.5 * torch.linalg.vector_norm(expect)


def test_noise_sources_have_their_rates_and_labels():
    # no light source, static scene: every event is sensor noise
    cfg = _static_lamp(flare_probability=0.0, light_contrast=(1e-6, 1e-6), hot_pixel_fraction=0.01,
                       hot_pixel_rate_hz=(1000.0, 1000.0), leak_rate_hz=(40.0, 40.0), leak_jitter_fraction=0.0)
    g = torch.Generator().manual_seed(2)
    ev = simulate_events(cfg.simulate, 4, (32, 48), 20_000, g, CPU)
    lab = ev["label"].long()
    hot = lab == LABELS["hot_pixel"]
    n_hot = int(ev["scenes"].n) and int(hot.sum())
    # leak: ON events at ~40 Hz per pixel (less the refractory losses); hot pixels: ~1000 Hz x 1% of pixels
    leak = lab == LABELS["noise"]
    px = 4 * 32 * 48
    assert 0.7 * 40 * 0.02 * px < int(leak.sum()) < 1.2 * 40 * 0.02 * px
    assert (ev["p"][leak] == 1).all() and (ev["p"][hot] == 1).all()
    assert 0.4 * 1000 * 0.02 * 0.01 * px < n_hot < 2.0 * 1000 * 0.02 * 0.01 * px
    assert set(lab.unique().tolist()) <= {LABELS["noise"], LABELS["hot_pixel"]}


def test_simulate_writes_the_seed_directory_layout_with_labels(tmp_path, cfg):
    import neurotrain.tasks  # noqa: F401
    from neurotrain.registry import TASKS

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
    c = tmp_path / "background_with_light_events" / "composed_00000_bg_light.h5"
    info = inspect_events(f)
    assert info.sensor_size == (24, 32) and info.layout == "seed"
    ev = read_events(f, sensor_size=(24, 32))
    assert len(ev) > 0 and ev.t.min() >= 0 and ev.t.max() < 50_000
    lab = read_column(f, "label")
    assert lab is not None and lab.shape == (len(ev),)
    # the clean file is the flare file minus its flare events, event for event
    keep = ~np.isin(lab, FLARE_LABELS)
    evc = read_events(c)
    assert np.array_equal(evc.t, ev.t[keep]) and np.array_equal(evc.x, ev.x[keep]) and np.array_equal(evc.p, ev.p[keep])
    with h5py.File(f) as h:
        assert h["events/t"].dtype == np.int64 and h["events/p"].dtype == np.int8 and h["events/label"].dtype == np.uint8
        assert "light_x" in h.attrs
