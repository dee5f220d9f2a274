"""Companion configs (the demo's classifier next to its U-Net): retrained by default; an existing checkpoint is
reused only when asked and only when it was made from the same config, and the result says which happened."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neurotrain.engine import api
from neurotrain.tasks.vision.evaluate import run_companions


def _write_cfg(path: Path, tmp: Path, lr: float) -> Path:
    path.write_text(yaml.safe_dump({
        "task": "vision", "kind": "classification", "seed": 0,
        "run": {"name": "companion", "output_dir": str(tmp / "runs")},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "progress_bar": False},
        "logging": {"tensorboard": False},
        "optim": {"lr": lr},
        "data": {"batch_size": 8},
        "data_source": {"name": "synthetic_shapes", "root": str(tmp / "cls"), "channels": 1,
                        "split_fractions": [0.5, 0.25, 0.25],
                        "synthetic": {"kind": "classification", "n": 8, "size": 16, "seed": 0}},
        "model": {"name": "simplenet", "kwargs": {"width": 4, "depth": 2}},
        "loss": {"name": "ce"},
        "metrics": {"top_k": 2},
        "evaluate": {"figures": False},
        "inference": {"device": "cpu"},
    }))
    return path


def test_companion_retrained_unless_reuse_of_the_same_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _write_cfg(tmp_path / "cls.yaml", tmp_path, lr=0.01)
    trains: list[str] = []
    real_train = api.train
    monkeypatch.setattr(api, "train", lambda c, **kw: trains.append(c.run.name) or real_train(c, **kw))

    first = run_companions([cfg], "reuse")[str(cfg)]  # no checkpoint yet: trained
    assert trains == ["companion"] and first["reused"] is False and first["checkpoint"].endswith(".ckpt")
    again = run_companions([cfg], "reuse")[str(cfg)]  # same config: its checkpoint is scored as it is
    assert trains == ["companion"] and again["reused"] is True and again["network"] == first["network"]
    run_companions([cfg], "retrain")  # the default policy never reuses
    assert len(trains) == 2
    _write_cfg(cfg, tmp_path, lr=0.02)  # the config changed: its old checkpoint is not reused
    changed = run_companions([cfg], "reuse")[str(cfg)]
    assert len(trains) == 3 and changed["reused"] is False
