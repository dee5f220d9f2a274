from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from neurotrain.cli import app

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("train", "test", "predict", "simulate", "evaluate", "tune", "export", "demo", "config"):
        assert cmd in result.output
    for cmd in ("train", "test", "predict", "simulate", "evaluate", "tune", "export", "demo"):
        assert runner.invoke(app, [cmd, "--help"]).exit_code == 0


def test_config_show_prints_resolved_config(toy_cfg_file: Path) -> None:
    result = runner.invoke(app, ["config", "show", str(toy_cfg_file), "optim.lr=0.5"])
    assert result.exit_code == 0, result.output
    assert "lr: 0.5" in result.output and "batch_size: 32" in result.output


def test_bad_value_is_one_line_exit_2_no_traceback(toy_cfg_file: Path) -> None:
    result = runner.invoke(app, ["config", "show", str(toy_cfg_file), "trainer.max_epochs=ten"])
    assert result.exit_code == 2
    text = result.output.strip()
    assert text.count("\n") == 0, text
    assert text.startswith(f"error: config error in {toy_cfg_file}: trainer.max_epochs: Input should be a valid integer")
    assert "(got 'ten')" in text and "Traceback" not in text


def test_missing_checkpoint_exits_nonzero(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", str(tmp_path / "none.ckpt"), str(tmp_path / "x.npy")])
    assert result.exit_code == 1
    assert "checkpoint not found" in result.output


def test_train_predict_through_the_cli(toy_cfg_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(toy_cfg_file), "trainer.max_epochs=1"])
    assert result.exit_code == 0, result.output
    ckpt = tmp_path / "runs" / "toy" / "t" / "checkpoints" / "best.ckpt"
    assert ckpt.is_file()
    np.save(tmp_path / "x.npy", np.zeros((3, 8), np.float32))
    result = runner.invoke(app, ["predict", str(ckpt), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "y.npy").shape == (3, 2)


def test_not_available_is_a_clean_message() -> None:
    from neurotrain.task import Task

    class Bare(Task):
        name = "bare"

    with pytest.raises(Exception, match="tune is not available for task 'bare'"):
        Bare().search_space(None)  # type: ignore[arg-type]


def test_demo_runs_quickstart_and_summarises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "configs" / "toy").mkdir(parents=True)
    (tmp_path / "configs" / "toy" / "quickstart.yaml").write_text(
        "task: toy\nrun: {name: quick}\ntrainer: {max_epochs: 2, accelerator: cpu, devices: 1, progress_bar: false}\n"
        "data: {sim_train_size: 128, sim_val_size: 32}\noptim: {lr: 0.02}\n"
    )
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "toy"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "neurotrain demo" in result.output and "mse" in result.output
    metrics = json.loads((tmp_path / "runs" / "toy" / "quick" / "metrics.json").read_text())
    net, base = metrics["evaluate"]["network"]["mse"], metrics["evaluate"]["baseline"]["mse"]
    assert net < base


def test_simulate_writes_h5(tmp_path: Path) -> None:
    import h5py

    out = tmp_path / "sim.h5"
    result = runner.invoke(app, ["simulate", "toy", "data.batch_size=16", "--out", str(out), "-n", "40"])
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        assert f["input"].shape == (40, 8) and f["target"].shape == (40, 2)


def test_tune_runs_trials_into_sqlite(toy_cfg_file: Path, tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = runner.invoke(app, ["tune", str(toy_cfg_file), "trainer.max_epochs=1", "--trials", "2",
                                 "--storage", storage, "--study-name", "s"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(study.trials) == 2 and all(t.value is not None for t in study.trials)
    assert (tmp_path / "runs" / "toy" / "t" / "trial_0001" / "checkpoints" / "last.ckpt").is_file()


def test_console_script_error_has_no_traceback(toy_cfg_file: Path) -> None:
    import subprocess
    import sys

    code = "import sys; sys.path.insert(0, 'tests'); import toy_task; from neurotrain.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, "config", "show", str(toy_cfg_file), "optim.name=rmsprop"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "optim.name: Input should be 'adam', 'adamw' or 'sgd'" in lines[0]
