import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import neurotrain.tasks  # noqa: F401
from neurotrain.errors import DataError
from neurotrain.registry import TASKS
from neurotrain.tasks.deflare.io import inspect_events, read_events

from .conftest import small_cfg

TASK = TASKS.get("deflare")


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_simu") / "physics_method"
    TASK.simulate(small_cfg(), root, 3)
    return root


def _cfg(tmp_path, root):
    return small_cfg(tmp_path, paths={
        "val_noisy_dir": str(root / "background_with_flare_events_test"),
        "val_clean_dir": str(root / "background_with_light_events_test"),
    })


def test_test_mode_baseline_writes_sibling_dir_with_same_names(tmp_path, sim_root):
    cfg = _cfg(tmp_path, sim_root)
    res = TASK.test(cfg, None, baseline=True)
    out = sim_root / "background_with_flare_events_testbaseline"
    assert Path(res["output_dir"]) == out
    assert sorted(p.name for p in out.glob("*.h5")) == ["composed_00002_bg_flare.h5"]
    src = sim_root / "background_with_flare_events_test" / "composed_00002_bg_flare.h5"
    a, b = inspect_events(src), inspect_events(out / src.name)
    assert a.dtypes == b.dtypes and b.layout == "seed"
    # the codec removes nothing but events that cancel inside a cell
    assert res["flare_removal_rate"] < 0.05 and res["background_removal_rate"] < 0.05
    ea, eb = read_events(src), read_events(out / src.name)
    assert eb.t.min() >= ea.t.min() and eb.t.max() <= ea.t.max()
    assert json.loads((out / "metrics.json").read_text())["mode"] == "baseline"


def test_test_mode_network_at_init_equals_codec_and_debug_figures(tmp_path, sim_root):
    cfg = _cfg(tmp_path, sim_root)
    model = TASK.build_model(cfg)
    res = TASK.test(cfg, model, debug=True)
    assert Path(res["output_dir"]).name == "background_with_flare_events_testoutput"
    base = TASK.test(cfg, None, baseline=True)
    assert res["events_out_total"] == base["events_out_total"]  # identity at init
    dbg = sorted((tmp_path / "debug_output").iterdir())
    # the seed's names, for the first pipeline.debug_iterations batches of the whole run
    assert 1 <= len(dbg) <= cfg.pipeline.debug_iterations
    assert [d.name for d in dbg] == [f"test_optimized_iter_{i:03d}" for i in range(len(dbg))]
    summary = (dbg[0] / "debug_summary.txt").read_text()
    assert "composed_00002_bg_flare" in summary  # which file and segment the figures show
    assert "identity check: output == input + residual: True" in summary
    for folder in ("1_input_events", "3_input_voxel", "7_output_events", "8_residual_voxel", "9_output_voxel"):
        assert any((dbg[0] / folder).glob("*.png")), folder


def test_predict_file_and_directory(tmp_path, sim_root):
    cfg = small_cfg(tmp_path)
    model = TASK.build_model(cfg)
    src_dir = sim_root / "background_with_flare_events"
    one = src_dir / "composed_00000_bg_flare.h5"
    out_file = tmp_path / "deflared.h5"
    assert TASK.predict(cfg, model, [one], out_file) == [out_file]
    assert inspect_events(out_file).num_events > 0
    outs = TASK.predict(cfg, model, [src_dir], tmp_path / "outdir")
    assert sorted(p.name for p in outs) == ["composed_00000_bg_flare.h5", "composed_00001_bg_flare.h5"]
    with pytest.raises(DataError, match="overwrite the input"):
        TASK.predict(cfg, model, [one], one)
    with pytest.raises(DataError, match="not found"):
        TASK.predict(cfg, model, [tmp_path / "nope.h5"], tmp_path / "x.h5")


def test_predict_corrupt_file_gives_one_line_and_no_output(tmp_path, sim_root):
    cfg = small_cfg(tmp_path)
    src = sim_root / "background_with_flare_events" / "composed_00001_bg_flare.h5"
    bad = tmp_path / "bad.h5"
    data = src.read_bytes()
    bad.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "out.h5"
    with pytest.raises(DataError) as exc:
        TASK.predict(cfg, TASK.build_model(cfg), [bad], out)
    assert "bad.h5" in str(exc.value) and "\n" not in str(exc.value)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".h5") == ["bad.h5"]


def test_dsec_file_keeps_its_layout_through_predict(tmp_path):
    cfg = small_cfg(tmp_path)
    f = tmp_path / "dsec.h5"
    r = np.random.default_rng(0)
    n = 3000
    with h5py.File(f, "w") as h:
        g = h.create_group("events")
        g["t"] = np.sort(r.integers(0, 45_000, n)).astype(np.uint32)
        g["x"] = r.integers(0, 32, n).astype(np.uint16)
        g["y"] = r.integers(0, 24, n).astype(np.uint16)
        g["p"] = r.integers(0, 2, n).astype(np.uint8)
        h["ms_to_idx"] = np.zeros(45, np.uint64)
        h["t_offset"] = np.int64(77)
    out = tmp_path / "o.h5"
    TASK.predict(cfg, TASK.build_model(cfg), [f], out)
    with h5py.File(out) as h:
        assert int(h["t_offset"][()]) == 77 and "ms_to_idx" in h
        t = h["events/t"][:]
        m2i = h["ms_to_idx"][:]
        assert h["events/t"].dtype == np.uint32
        for ms in range(len(m2i)):
            i = int(m2i[ms])
            assert i == len(t) or t[i] >= ms * 1000
            assert i == 0 or t[i - 1] < ms * 1000


def test_evaluate_tunes_on_validation_and_reports_per_event_on_test(tmp_path):
    cfg = small_cfg(tmp_path, evaluate={"num_batches": 1, "batch_size": 2, "duration_us": 40_000})
    res = TASK.evaluate(cfg, TASK.build_model(cfg), tmp_path / "run")
    assert res.headline_name == "flare_f1" and not res.lower_is_better
    m = res.metrics
    assert set(m["methods"]) == {"network", "identity", "ba_filter", "stcf", "afk"}
    assert m["validation_seed"] != m["test_seed"]
    # the untrained network is the identity: it keeps every event and removes no flare
    net = m["methods"]["network"]
    assert net["kept_fraction"] == 1 and net["flare_recall"] == 0 and res.headline_network == 0
    assert m["methods"]["identity"]["kept_fraction"] == 1
    assert set(m["params"]["stcf"]) == {"tau_us", "k"} and "keep_threshold" in m["params"]["network"]
    assert res.report_path.is_file() and (tmp_path / "run" / "report" / "comparison.png").is_file()
    assert "| afk |" in res.report_path.read_text()


def test_train_debug_outputs(tmp_path, cfg):
    g = torch.Generator().manual_seed(0)
    batch = TASK.simulate_batch(cfg, 2, g, torch.device("cpu"))
    model = TASK.build_model(cfg)
    TASK.debug_outputs(cfg, batch, model(batch["input"]), tmp_path / "dbg", step=0)
    d = tmp_path / "dbg" / "epoch_000_iter_000"
    assert (d / "4_target_events").is_dir() and (d / "6_target_voxel").is_dir()
    assert "residual is zero (network still the identity): True" in (d / "debug_summary.txt").read_text()


def test_seed_directories_feed_the_voxel_dataset(tmp_path, sim_root):
    from neurotrain.tasks.deflare.dataset import EventVoxelDataset, pair_files

    cfg = small_cfg(tmp_path, paths={
        "train_noisy_dir": str(sim_root / "background_with_flare_events"),
        "train_clean_dir": str(sim_root / "background_with_light_events"),
        "val_noisy_dir": str(sim_root / "background_with_flare_events_test"),
        "val_clean_dir": str(sim_root / "background_with_light_events_test"),
    })
    pairs = pair_files(sim_root / "background_with_flare_events", sim_root / "background_with_light_events")
    assert [(a.name, b.name) for a, b in pairs] == [
        ("composed_00000_bg_flare.h5", "composed_00000_bg_light.h5"),
        ("composed_00001_bg_flare.h5", "composed_00001_bg_light.h5"),
    ]
    ds = TASK.datasets(cfg)
    assert set(ds) == {"train", "val"}  # no test folder given: no test set (never test = val)
    train = ds["train"]
    assert isinstance(train, EventVoxelDataset)
    assert len(train) == 2 * 3  # 50 ms files -> segments 0-20, 20-40 and the partial 40-50 ms
    item = train[1]
    assert item["input"].shape == (1, 8, 24, 32) == item["target"].shape
    assert item["light_mask"].shape == (1, 1, 24, 32) and item["light_mask"].sum() > 0
    # the dataset's voxels are what the file holds: re-encode the segment by hand
    from neurotrain.tasks.deflare.io import read_events
    from neurotrain.tasks.deflare.voxel import events_to_voxel

    ev = read_events(pairs[0][0]).to_torch()
    v = events_to_voxel(ev["t"], ev["x"], ev["y"], ev["p"], num_bins=8, sensor_size=(24, 32), duration_us=20_000, t_start=20_000)
    assert torch.equal(item["input"][0], v)
