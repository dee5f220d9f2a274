from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def smlm_cfg():
    from neurotrain.tasks.smlm.config import SMLMConfig

    return SMLMConfig(
        simulate={"frame_size": (16, 16), "density_per_um2": 1.0},
        model={"name": "SigmaMUNet", "depth_shared": 1, "depth_union": 1, "initial_features": 8, "inter_features": 8},
        evaluate={"n_frames": 12},
        inference={"device": "cpu", "max_memory_gb": 0.5},
        data={"batch_size": 8},
        predict={"render": False},
    )


@pytest.fixture(scope="module")
def good_movie(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A valid 6-frame 16x16 uint16 movie as our writer makes it (contiguous BigTIFF)."""
    from neurotrain.tasks.smlm.io import TiffMovieWriter

    p = tmp_path_factory.mktemp("movie") / "m.tif"
    rng = np.random.default_rng(0)
    with TiffMovieWriter(p) as w:
        w.write(100 + rng.poisson(20, (6, 16, 16)))
    return p.read_bytes()
