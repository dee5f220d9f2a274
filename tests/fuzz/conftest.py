from __future__ import annotations

import numpy as np
import pytest
from tiny_configs import tiny_smlm_config


@pytest.fixture(scope="module")
def smlm_cfg():
    return tiny_smlm_config(predict={"render": False})


@pytest.fixture(scope="module")
def good_movie(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A valid 6-frame 16x16 uint16 movie as our writer makes it (contiguous BigTIFF)."""
    from neurotrain.tasks.smlm.io import TiffMovieWriter

    p = tmp_path_factory.mktemp("movie") / "m.tif"
    rng = np.random.default_rng(0)
    with TiffMovieWriter(p) as w:
        w.write(100 + rng.poisson(20, (6, 16, 16)))
    return p.read_bytes()
