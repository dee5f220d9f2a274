from __future__ import annotations

from pathlib import Path

import pytest

from neurotrain.tasks.deflare.config import DeflareConfig


def small_cfg(tmp_path: Path | None = None, **over) -> DeflareConfig:
    data = {
        "voxel": {"sensor_size": [24, 32]},
        "model": {"f_maps": [4, 8], "num_levels": 2, "num_groups": 2, "dropout_prob": 0.0},
        "simulate": {"file_duration_us": 50_000, "dt_us": 500, "texture_components": 3, "num_shapes": 2},
        "inference": {"device": "cpu"},
        "evaluate": {"num_batches": 1, "batch_size": 2},
    }
    if tmp_path is not None:
        data["pipeline"] = {"debug_dir": str(tmp_path / "debug_output")}
        data["run"] = {"output_dir": str(tmp_path / "runs")}
    for k, v in over.items():
        data.setdefault(k, {}).update(v)
    return DeflareConfig.model_validate(data)


@pytest.fixture
def cfg(tmp_path: Path) -> DeflareConfig:
    return small_cfg(tmp_path)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The deflare tests use tiny tensors: one intra-op thread is faster than several on a
    shared 2-core CI machine (thread start-up and contention dominate); restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
