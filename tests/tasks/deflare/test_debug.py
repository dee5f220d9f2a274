"""``--debug`` folders as the seed names them (``debug_output/epoch_000_iter_000/``) and what
``debug_summary.txt`` says."""

from pathlib import Path

import pytest
import torch

import neurotrain.tasks  # noqa: F401  (registers deflare)
from neurotrain.registry import TASKS

TASK = TASKS.get("deflare")
SEED_FOLDERS = {"1_input_events", "3_input_voxel", "4_target_events", "6_target_voxel", "7_output_events",
                "8_residual_voxel", "9_output_voxel"}


def _batch(cfg):
    return TASK.simulate_batch(cfg, 2, torch.Generator().manual_seed(0), torch.device("cpu"))


def test_train_debug_folder_is_named_by_epoch_and_step(tmp_path, cfg):
    batch = _batch(cfg)
    with torch.no_grad():
        pred = TASK.build_model(cfg)(batch["input"])
    TASK.debug_outputs(cfg, batch, pred, tmp_path, step=7, epoch=2)
    (d,) = tmp_path.iterdir()
    assert d.name == "epoch_002_iter_007"
    assert {p.name for p in d.iterdir() if p.is_dir()} == SEED_FOLDERS  # identity at init: no residual events
    assert sorted(p.name for p in (d / "8_residual_voxel").iterdir()) == ["residual_voxel_temporal_bins.png"]
    n_in = int(batch["input"][0, 0].abs().sum())
    n_tg = int(batch["target"][0, 0].abs().sum())
    assert n_in > 0 and n_tg > 0
    lines = (d / "debug_summary.txt").read_text().splitlines()
    assert lines[0] == "training epoch 2, step 7"
    assert "identity check: output == input + residual: True" in lines
    assert "residual is zero (network still the identity): True" in lines
    assert f"events: input {n_in}, output {n_in}, ratio 1.000" in lines
    assert f"events: target {n_tg}" in lines
    assert any(s.startswith("residual mean +0.0000  std 0.0000") for s in lines)


def test_nonzero_residual_gets_the_residual_events_folder(tmp_path, cfg):
    batch = _batch(cfg)
    pred = batch["input"].clone()
    pred[0, 0, 0, 0, 0] += 2  # two events added, one removed
    pred[0, 0, 3, 5, 7] -= 1
    TASK.debug_outputs(cfg, batch, pred, tmp_path, step=0)
    d = tmp_path / "epoch_000_iter_000"
    assert {p.name for p in d.iterdir() if p.is_dir()} == SEED_FOLDERS | {"8_residual_events"}
    assert len(list((d / "8_residual_events").glob("*.png"))) == 2
    text = (d / "debug_summary.txt").read_text()
    assert "events: residual 3" in text and "residual is zero (network still the identity): False" in text


class _LegacyTask:
    """deflare with a debug_outputs that predates ``epoch`` (as smlm's signature)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __getattr__(self, name: str):
        return getattr(TASK, name)

    def debug_outputs(self, cfg, batch, pred, out_dir: Path, step: int) -> None:
        self.calls.append({"step": step})


@pytest.mark.parametrize("legacy", [False, True])
def test_engine_passes_the_epoch_to_tasks_that_take_it(tmp_path, cfg, monkeypatch, legacy):
    from neurotrain.config import config_to_dict
    from neurotrain.engine.module import TaskModule

    module = TaskModule(config_to_dict(cfg))
    monkeypatch.setattr(TaskModule, "current_epoch", property(lambda self: 4))
    module.debug_dir, module._debug_steps_left = tmp_path, 1
    if legacy:
        module.task = _LegacyTask()
    module.training_step(_batch(cfg), 0)
    module.training_step(_batch(cfg), 1)  # past the debug steps: nothing more is written
    if legacy:
        assert module.task.calls == [{"step": 0}]
    else:
        assert [p.name for p in tmp_path.iterdir()] == ["epoch_004_iter_000"]
