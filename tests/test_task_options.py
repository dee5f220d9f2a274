"""Evaluate and simulate --opt schemas of stellar, gamma, deflare and vision: typed values, unknown keys refused."""

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


def test_deflare_simulate_options_and_optionless_evaluate() -> None:
    from neurotrain.tasks.deflare.task import DeflareTask
    from neurotrain.tasks.vision.task import VisionTask

    assert check_options(DeflareTask(), "simulate", {"n_test": "2"}) == {"n_test": 2}
    with pytest.raises(ConfigError, match="ntest: unknown option"):
        check_options(DeflareTask(), "simulate", {"ntest": "2"})
    for task in (DeflareTask(), VisionTask()):
        assert check_options(task, "evaluate", {}) == {}
        with pytest.raises(ConfigError, match="known: none"):
            check_options(task, "evaluate", {"baseline": "true"})


def test_test_and_analyze_options_are_refused_unless_declared() -> None:
    from neurotrain.tasks.smlm.task import SMLMTask

    with pytest.raises(ConfigError, match="known: none"):
        check_options(SMLMTask(), "test", {"treshold": "0.3"})
    assert check_options(StellarTask(), "analyze", {"snr": "20", "labels": "FE_H,MG_FE"}) == {
        "snr": 20.0, "labels": ["FE_H", "MG_FE"]}
    with pytest.raises(ConfigError, match="sn: unknown option"):
        check_options(StellarTask(), "analyze", {"sn": "20"})
