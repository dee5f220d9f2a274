import pytest

from tiny_configs import tiny_smlm_config

from neurotrain.tasks.smlm.config import SMLMConfig


@pytest.fixture
def tiny_cfg() -> SMLMConfig:
    """16x16 frames, tiny networks: every test stays well under a second of compute."""
    return tiny_smlm_config()
