"""deflare through the core: train from on-the-fly simulation, checkpoint, predict, test, plots."""

from pathlib import Path

import pytest

from neurotrain.config import load_config

REPO = Path(__file__).resolve().parents[3]


def _cfg(tmp_path: Path, steps: int, extra: list[str] | None = None):
    return load_config(
        REPO / "configs" / "deflare" / "quickstart.yaml",
        [
            f"run.output_dir={tmp_path / 'runs'}",
            f"trainer.max_steps={steps}",
            "voxel.sensor_size=[24, 32]",
            "model.f_maps=[4, 8]",
            "model.num_levels=2",
            "model.num_groups=2",
            "data.batch_size=2",
            "evaluate.num_batches=1",
            "evaluate.batch_size=2",
            f"pipeline.debug_dir={tmp_path / 'debug_output'}",
            *(extra or []),
        ],
    )


def test_train_checkpoint_predict_and_loss_curve(tmp_path):
    api = pytest.importorskip("neurotrain.engine.api")
    from neurotrain.engine.checkpoint import load_model
    from neurotrain.tasks.deflare.plots import plot_loss_curves

    cfg = _cfg(tmp_path, 4, ["logging.log_every_n_steps=1"])
    run_dir = api.train(cfg, debug=True)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cfg2, model = load_model(ckpt)
    assert cfg2.task == "deflare" and type(model).__name__ == "TrueResidualUNet3D"
    assert any((run_dir / "debug_output").rglob("debug_summary.txt"))
    png = plot_loss_curves(run_dir, tmp_path / "training_loss_curves.png", window=2)
    assert png.is_file()
    from neurotrain.tasks.deflare.plots import main as plots_main

    assert plots_main(["--log_dir", str(run_dir), "--output_dir", str(tmp_path / "dbg"), "--window", "2"]) == 0
    assert (tmp_path / "dbg" / "training_loss_curves.png").is_file()
    # predict with only the checkpoint
    from neurotrain.registry import TASKS

    TASKS.get("deflare").simulate(cfg2, tmp_path / "sim", 2)
    src = tmp_path / "sim" / "background_with_flare_events" / "composed_00000_bg_flare.h5"
    outs = api.predict(ckpt, [src], tmp_path / "out.h5")
    assert outs == [tmp_path / "out.h5"] and outs[0].is_file()
    res = api.evaluate(cfg, ckpt)
    assert res.headline_network is not None and res.report_path.is_file()


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """The quickstart model, trained once for the slow tests (~50 min on 2 busy CPU cores, ~2 min
    quiet). ``DEFLARE_QUICKSTART_RUN=<run dir>`` reuses a run trained with the same config (e.g. on
    a GPU) instead; its evaluation then writes into that run's ``report/``."""
    import os

    api = pytest.importorskip("neurotrain.engine.api")
    tmp = tmp_path_factory.mktemp("quickstart")
    given = os.environ.get("DEFLARE_QUICKSTART_RUN")
    if given:
        run = Path(given)
        cfg = load_config(REPO / "configs" / "deflare" / "quickstart.yaml", [f"run.output_dir={run.parent.parent}", f"run.name={run.name}"])
        return cfg, run, tmp
    cfg = load_config(REPO / "configs" / "deflare" / "quickstart.yaml", [f"run.output_dir={tmp / 'runs'}"])
    return cfg, api.train(cfg), tmp


@pytest.mark.slow
def test_quickstart_model_keeps_real_flare_free_recordings(quickstart_run):
    """Issue 18: on the real flare-free recordings (EVT 2.0 and 3.0) the trained quickstart model
    keeps >= 97% of the events, each identical to its input row, in order."""
    import h5py
    import numpy as np

    from neurotrain.engine import api
    from neurotrain.tasks.deflare.evt import raw_to_h5

    _, run_dir, tmp_path = quickstart_run
    events = REPO / ".." / "shared" / "realdata" / "events"
    for name in ("evt2_sample.raw", "evt3_sample.raw"):
        raw = events / name
        if not raw.is_file():
            continue
        out = api.predict(run_dir / "checkpoints" / "last.ckpt", [raw], tmp_path / f"{name}.h5")[0]
        src = raw_to_h5(raw, tmp_path / f"{name}.in.h5")
        with h5py.File(src) as a, h5py.File(out) as b:
            cin = {k: a[f"events/{k}"][:] for k in "txyp"}
            cout = {k: b[f"events/{k}"][:] for k in "txyp"}

        def key(c):
            return ((c["t"].astype(np.int64) * 2048 + c["y"]) * 2048 + c["x"]) * 2 + (c["p"] == 1)

        assert np.isin(key(cout), key(cin)).all() and np.all(np.diff(cout["t"].astype(np.int64)) >= 0)
        kept = len(cout["t"]) / len(cin["t"])
        print(f"{name}: kept {kept:.4f} of {len(cin['t'])} events")
        assert kept >= 0.97


@pytest.mark.slow
def test_quickstart_model_beats_tuned_filters(quickstart_run):
    """Issue 18's 'done when': the trained quickstart model beats every classical filter tuned on
    validation (per-event flare F1 on the disjoint test set). Not met on 2026-12-03 (see
    docs/results/deflare.md): kept as the target."""
    from neurotrain.engine import api

    cfg, _, _ = quickstart_run
    res = api.evaluate(cfg)
    print(res.extra["table_markdown"])
    table = res.metrics["methods"]
    best_filter = max(table[m]["flare_f1"] for m in ("ba_filter", "stcf", "afk"))
    assert table["network"]["flare_f1"] > best_filter
