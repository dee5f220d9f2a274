import pytest

from neurotrain.tasks.smlm.config import SMLMConfig


@pytest.fixture
def tiny_cfg() -> SMLMConfig:
    """16x16 frames, tiny networks: every test stays well under a second of compute."""
    return SMLMConfig(
        simulate={"frame_size": (16, 16), "density_per_um2": 1.0},
        model={"name": "SigmaMUNet", "depth_shared": 1, "depth_union": 1, "initial_features": 8, "inter_features": 8},
        evaluate={"n_frames": 12},
        inference={"device": "cpu", "max_memory_gb": 0.5},
        data={"batch_size": 8},
    )
