import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from neurotrain.config import load_config
from neurotrain.errors import ConfigError
from neurotrain.registry import TASKS
from neurotrain.tasks.smlm.infer import WindowSource, localise_movie, network_fn
from neurotrain.tasks.smlm.io import TiffStack, read_locs

REPO = Path(__file__).resolve().parents[3]


def test_registered_and_configs_validate() -> None:
    import neurotrain.tasks  # noqa: F401

    task = TASKS.get("smlm")
    for name in ("quickstart.yaml", "train.yaml"):
        cfg = load_config(REPO / "configs" / "smlm" / name)
        assert isinstance(cfg, task.config_cls)
    assert task.example_input(cfg)[0].shape == (1, 3, *cfg.simulate.frame_size)


def test_typo_in_config_is_an_error(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("task: smlm\nsimulate: {densty_per_um2: 1}\n")
    with pytest.raises(ConfigError, match="densty_per_um2"):
        load_config(p)
    p.write_text("task: smlm\nsimulate: {window: 2}\n")
    with pytest.raises(ConfigError, match="window"):
        load_config(p)


def test_window_source_pads_with_edge_frames() -> None:
    frames = torch.arange(5.0)[:, None, None].expand(5, 2, 2)
    w = WindowSource(frames, 1)
    assert w[0:2][:, 0, 0].tolist() == [0.0, 0.0, 1.0, 2.0]
    assert w[3:5][:, 0, 0].tolist() == [2.0, 3.0, 4.0, 4.0]
    assert WindowSource(frames.numpy(), 1)[4:5][:, 0, 0].tolist() == [3.0, 4.0, 4.0]


def test_cached_window_inference_equals_direct_forward(tiny_cfg) -> None:
    torch.manual_seed(0)
    model = TASKS.get("smlm").build_model(tiny_cfg).eval()
    adu = 100 + 50 * torch.rand(6, 16, 16)
    locs_cached = network_fn(model, tiny_cfg, threshold=0.0)(WindowSource(adu, 1)[0:6])
    from neurotrain.tasks.smlm.camera import camera_backward
    from neurotrain.tasks.smlm.postprocess import localise

    x = camera_backward(adu, tiny_cfg.camera) / tiny_cfg.model.input_scale
    x = torch.cat([x[:1], x, x[-1:]])
    direct = localise(model(torch.stack([x[i:i + 3] for i in range(6)])), tiny_cfg, threshold=0.0)
    assert torch.allclose(locs_cached["x_nm"], direct["x_nm"], atol=1e-3)


def test_simulate_predict_evaluate_round_trip(tiny_cfg, tmp_path) -> None:
    task = TASKS.get("smlm")
    movie = task.simulate(tiny_cfg, tmp_path / "movie.tif", 10, device="cpu")
    truth_csv = tmp_path / "movie_truth.csv"
    assert movie.is_file() and truth_csv.is_file()
    stack = TiffStack(movie)
    assert stack.shape == (10, 16, 16) and stack.memory_mapped
    truth = pd.read_csv(truth_csv)
    assert list(truth.columns[:5]) == ["frame", "x_nm", "y_nm", "z_nm", "photons"] and truth.frame.max() <= 9
    torch.manual_seed(0)
    model = task.build_model(tiny_cfg)
    for fmt, suffix in (("h5", ".h5"), ("csv", ".csv"), ("picasso", ".hdf5")):
        out = task.predict(tiny_cfg, model, [movie], tmp_path / f"out{suffix}", format=fmt, threshold=0.0, progress=False)
        assert out[0] == tmp_path / f"out{suffix}" and all(p.is_file() for p in out)
        assert any(p.suffix == ".png" for p in out) and any(p.suffix == ".tif" for p in out)
        locs = read_locs(out[0])
        assert len(locs) > 0 and locs.frame.between(0, 9).all()
    # the truth table scored against itself is perfect
    res = task.evaluate(tiny_cfg, None, tmp_path / "run", pred=truth_csv, truth=truth_csv)
    assert res.headline_network == pytest.approx(100.0)
    metrics = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    assert metrics["prediction"]["rmse_lat_nm"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ConfigError):
        task.evaluate(tiny_cfg, None, tmp_path / "run", pred=truth_csv)


def test_evaluate_simulated_writes_report(tiny_cfg, tmp_path) -> None:
    task = TASKS.get("smlm")
    torch.manual_seed(0)
    res = task.evaluate(tiny_cfg, task.build_model(tiny_cfg), tmp_path)
    rep = tmp_path / "report"
    for name in ("metrics.json", "report.md", "pr_curve.png", "errors_vs_crlb.png", "render_truth.png", "render_baseline.png"):
        assert (rep / name).is_file(), name
    assert res.headline_baseline is not None and res.headline_baseline > 0 and not res.lower_is_better
    m = json.loads((rep / "metrics.json").read_text())
    assert {"network", "untrained", "baseline", "movie"} <= set(m)
    assert m["baseline"]["crlb_lat_nm"] > 0


def test_localise_movie_streams_with_small_batches(tiny_cfg) -> None:
    cfg = tiny_cfg.model_copy(update={"inference": tiny_cfg.inference.model_copy(update={"batch_size": 3})})
    model = TASKS.get("smlm").build_model(cfg)
    adu = 100 + 50 * torch.rand(7, 16, 16)
    whole = localise_movie(adu, tiny_cfg.model_copy(update={"inference": tiny_cfg.inference.model_copy(update={"batch_size": 7})}),
                           model, threshold=0.0)
    chunks: list[pd.DataFrame] = []
    assert localise_movie(adu, cfg, model, threshold=0.0, sink=chunks.append) is None
    streamed = pd.concat(chunks, ignore_index=True)
    np.testing.assert_allclose(np.sort(streamed.x_nm.to_numpy()), np.sort(whole.x_nm.to_numpy()), atol=1e-3)
