"""A task's own loader options override the ``data`` section's worker settings without breaking the loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from neurotrain.config import load_config
from neurotrain.engine import api
from neurotrain.engine.data import TaskDataModule


class _OwnSetsNoWorkers:
    """The toy task with its own datasets, whose training loader asks for no workers (as vision's
    device-resident cache does) while the config asks for persistent workers."""

    def __init__(self, task: Any) -> None:
        self._task = task

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def datasets(self, cfg: Any) -> dict[str, TensorDataset]:
        x = torch.arange(24, dtype=torch.float32).reshape(12, 2)
        return {s: TensorDataset(x) for s in ("train", "val", "test")}

    def loader_options(self, cfg: Any, split: str, dataset: Any) -> dict[str, Any]:
        return {"num_workers": 0, "pin_memory": False} if split == "train" else {}


def test_task_zero_workers_override_turns_persistent_workers_off(toy_cfg_file: Path) -> None:
    cfg = load_config(toy_cfg_file, ["data.num_workers=2", "data.persistent_workers=true", "data.batch_size=4"])
    dm = TaskDataModule(cfg, _OwnSetsNoWorkers(api.get_task(cfg)))
    dm.setup("fit")
    train = dm.train_dataloader()  # DataLoader refuses persistent workers without workers: this used to raise
    assert train.num_workers == 0 and not train.persistent_workers
    assert sum(len(b[0]) for b in train) == 12
    val = dm.val_dataloader()  # the config's settings still hold where the task says nothing
    assert val.num_workers == 2 and val.persistent_workers
