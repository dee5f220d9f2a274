from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neurotrain.tasks.gamma.config import GammaConfig

REALDATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "realdata" / "gamma"


def small_config(cache: Path, **sim: object) -> GammaConfig:
    """A small, fast configuration: 512 channels over 20-2000 keV, few Monte Carlo photons."""
    base = {
        "n_channels": 512, "e_min_kev": 20.0, "e_max_kev": 2000.0, "response_photons": 400,
        "lu176_events": 20000, "cache_dir": str(cache), "max_lines": 48,
    }
    base.update(sim)
    return GammaConfig(
        simulate=base,
        model={"base_channels": 8, "depth": 3, "bottleneck_blocks": 1, "kernel_size": 5},
        baseline={"iterations": 30},
        evaluate={"count_levels": [1e5], "spectra_per_level": 2, "figures": False},
        inference={"device": "cpu"},
    )


@pytest.fixture(scope="session")
def gamma_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gamma_cache")


@pytest.fixture(scope="session")
def lyso_cfg(gamma_cache: Path) -> GammaConfig:
    return small_config(gamma_cache)


@pytest.fixture(scope="session")
def nai_cfg(gamma_cache: Path) -> GammaConfig:
    return small_config(gamma_cache, detector={"crystal": "NaI", "radius_cm": 2.54, "height_cm": 5.08})


@pytest.fixture
def gen() -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(1234)
    return g


@pytest.fixture
def realdata() -> Path:
    if not REALDATA.resolve().is_dir():
        pytest.skip(f"real data folder {REALDATA.resolve()} is absent (only present in the project workspace)")
    return REALDATA.resolve()


@pytest.fixture(scope="session")
def make_small_config():
    """The :func:`small_config` factory, for tests that build their own variant."""
    return small_config
