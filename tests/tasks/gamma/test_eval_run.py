"""``evaluate`` end to end on a tiny configuration with an untrained network: the table of every crystal and
level, the tuning, the Monte Carlo noise check, the named sets and the report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neurotrain.errors import ConfigError
from neurotrain.tasks.gamma.eval_score import ROWS
from neurotrain.tasks.gamma.evaluate import evaluate, mc_noise_check
from neurotrain.tasks.gamma.models import build_model
from neurotrain.tasks.gamma.peak_rules import EXEMPTION_RULES
from neurotrain.tasks.gamma.simulate import Scene


def _cfg(make_small_config, cache: Path, **ev: object):
    cfg = make_small_config(cache, n_channels=256, max_lines=32)
    evaluate_ = {"response_photons": 300, "crystals": ["LYSO", "CsI"], "validation_spectra": 2, "spectra_per_set": 2,
                 "spectra_per_level": 3, "count_levels": [1e4, 1e6], "figures": True, "html": True}
    evaluate_.update(ev)
    return cfg.model_copy(update={
        "evaluate": cfg.evaluate.model_copy(update=evaluate_),
        "baseline": cfg.baseline.model_copy(update={"rl_iterations": [5, 30], "gold_iterations": [10], "gold_repetitions": 2}),
        "refine": cfg.refine.model_copy(update={"iterations": 3}),
    })


def test_evaluate_writes_the_table(tmp_path: Path, gamma_cache: Path, make_small_config) -> None:
    cfg = _cfg(make_small_config, gamma_cache)
    torch.manual_seed(0)
    res = evaluate(cfg, build_model(cfg), tmp_path)
    m = res.metrics
    assert set(m["table"]) == {"LYSO", "CsI"} and set(m["table"]["CsI"]) == {"1e+04", "1e+06"}
    for levels in m["table"].values():
        for rows in levels.values():
            assert list(rows) == list(ROWS)
            for r in rows.values():
                assert r["raw_false"] == pytest.approx(sum(r[k] for k in EXEMPTION_RULES) + r["unexplained"], abs=1e-3)
            # the compared rows share their lines; the input reports on a subset
            assert len({r["area_lines"] for n, r in rows.items() if n != "input"}) == 1
            assert rows["input"]["area_lines"] <= rows["target"]["area_lines"]
    t = m["tuning"]["LYSO"]["1e+04"]
    assert t["budget"] is not None and {s["label"] for s in t["sweep"]["rl"]} == {"RL 5", "RL 30"}
    assert len(t["sweep"]["gold"]) == 2 and t["rl"] in {"RL 5", "RL 30"}
    assert set(m["mc_noise"]) == {"1e+04", "1e+06"}  # the configured crystal, each level
    # the check scales as it should: more counts, relatively less Poisson noise, a larger ratio
    assert m["mc_noise"]["1e+06"]["r_target"] > m["mc_noise"]["1e+04"]["r_target"]
    sets = m["sets"]
    assert sets["fwhm_law_plus20"]["fwhm_662_true"] == pytest.approx(1.2 * sets["fwhm_law_plus20"]["fwhm_662_told"])
    assert sets["doublet_ba133"]["peak_to_valley"]["input"] == pytest.approx(1.0)  # LYSO cannot split 356 / 384
    assert "false_600_900" in sets["lu176_600_900"]["rows"]["network"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Summary" in report and "## CsI, 1e+06 counts" in report and "Monte Carlo noise check" in report
    table = json.loads((tmp_path / "report" / "table.json").read_text())
    assert table["table"]["LYSO"]["1e+06"]["target"] == m["table"]["LYSO"]["1e+06"]["target"]
    assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "report" / "tuning_LYSO.png").is_file()


def test_evaluation_response_is_not_the_training_one(tmp_path: Path, gamma_cache: Path, make_small_config) -> None:
    cfg = _cfg(make_small_config, gamma_cache)
    bad = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"response_seed": cfg.simulate.response_seed})})
    with pytest.raises(ConfigError, match="evaluate.response_seed"):
        evaluate(bad, None, tmp_path)


def test_mc_noise_falls_with_photons(gamma_cache: Path, make_small_config) -> None:
    scene = Scene(counts=1e6, fwhm_662=0.1, power=0.5)
    few = mc_noise_check(_cfg(make_small_config, gamma_cache, response_photons=100), 3, 7, scene, torch.device("cpu"))
    many = mc_noise_check(_cfg(make_small_config, gamma_cache, response_photons=900), 3, 7, scene, torch.device("cpu"))
    # MC variance ~ 1 / photons: R ~ 1 / sqrt(photons), a factor 3 for 9x the photons
    assert many["r_target"] == pytest.approx(few["r_target"] / 3, rel=0.35)
    assert many["r_input"] < few["r_input"]
