"""Evaluate and simulate --opt schemas of stellar and gamma: typed values, unknown keys refused."""

from __future__ import annotations

import pytest

from neurotrain.errors import ConfigError
from neurotrain.task import check_options
from neurotrain.tasks.gamma.task import GammaTask
from neurotrain.tasks.stellar.task import StellarTask


def test_evaluate_and_simulate_options_are_a_schema() -> None:
    assert check_options(StellarTask(), "evaluate", {"methods": "lightgbm", "figures": "false"}) == {
        "methods": ["lightgbm"], "figures": False}
    with pytest.raises(ConfigError, match="metods: unknown option"):
        check_options(StellarTask(), "evaluate", {"metods": "xgboost"})
    with pytest.raises(ConfigError, match="methods"):
        check_options(StellarTask(), "evaluate", {"methods": "randomforest"})
    assert check_options(StellarTask(), "simulate", {"seed": "3"}) == {"seed": 3}
    with pytest.raises(ConfigError, match="sed: unknown option"):
        check_options(GammaTask(), "evaluate", {"sed": "3"})
