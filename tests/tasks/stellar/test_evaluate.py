"""evaluate: the held-out set, every method, metrics per S/N and group, report and figures.

The first tests swap the generator for a toy linear one (fast, exact bookkeeping); the last runs the real
generator, preprocessing and CRLB at tiny sizes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from neurotrain.tasks.stellar import evaluate as ev
from neurotrain.tasks.stellar.config import GENERATOR_LABELS, StellarConfig
from neurotrain.tasks.stellar.models import build_model

M = 64
NAMES = ["TEFF", "LOGG", "FE_H", "MG_FE"]
CRLB = torch.tensor([50.0, 0.1, 0.05, 0.04])


def _toy_draw(cfg, n, seed, device, snr=None, chunk=512):
    g = torch.Generator().manual_seed(int(seed))
    rng = torch.tensor([cfg.simulate.label_ranges[k] for k in GENERATOR_LABELS])
    lab = rng[:, 0] + (rng[:, 1] - rng[:, 0]) * torch.rand(n, 8, generator=g)
    s = (lab - rng.mean(1)) / (rng[:, 1] - rng[:, 0])
    w = torch.randn(8, M, generator=torch.Generator().manual_seed(0))
    snr_t = torch.full((n,), float(snr)) if snr is not None else 5 + 145 * torch.rand(n, generator=g)
    flux = 1.0 + 0.2 * s @ w + torch.randn(n, M, generator=g) / snr_t[:, None]
    ivar = (snr_t[:, None] ** 2).expand(n, M).clone()
    keep = torch.ones(n, dtype=torch.bool)
    keep[-1] = False  # one spectrum rejected by "preprocessing"
    out = {"labels_all": lab, "flux": flux, "ivar": ivar, "input": torch.stack([flux, ivar.sqrt() / 100], 1),
           "snr": snr_t, "keep": keep}
    out["target"] = lab[:, [GENERATOR_LABELS.index(k) for k in cfg.labels.names]]
    return out


def _cfg(**evaluate) -> StellarConfig:
    return StellarConfig.model_validate({
        "labels": {"names": NAMES},
        "model": {"base_channels": 4, "hidden": 16, "pool_size": 4, "blocks_per_group": 1},
        "evaluate": {"snr_bins": [20, 50], "spectra_per_snr": 40, "baseline_train_size": 200, "crlb_spectra": 10,
                     "max_points": 50, **evaluate},
        "baseline": {"n_estimators": 30, "early_stopping_rounds": 5, "n_jobs": 1, "tree_device": "cpu",
                     "cannon_max_steps": 15},
        "uncertainty": {"mc_samples": 3},
        "inference": {"device": "cpu"},
    })


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(ev, "draw_set", _toy_draw)
    monkeypatch.setattr(ev, "crlb_for", lambda cfg, labels_all, snr: CRLB.expand(len(labels_all), 4) * 50 / snr)


def test_evaluate_network_and_baselines(tmp_path: Path, toy) -> None:
    cfg = _cfg()
    torch.manual_seed(0)
    res = ev.evaluate(cfg, build_model(cfg), tmp_path)
    m = res.metrics
    assert m["methods"] == ["network", "xgboost", "lightgbm", "cannon"]
    assert m["dropped_by_preprocessing"] == {"20": 1, "50": 1}
    at = m["snr"]["50"]
    for meth in m["methods"]:
        groups = at[meth]
        assert groups["all"]["n"] == 39 == groups["dwarf"]["n"] + groups["giant"]["n"]
        for stat in ("bias", "scatter", "mae", "rmse", "r2", "rmse_crlb"):
            assert set(groups["all"][stat]) == set(NAMES)
    # RMSE/CRLB is the RMSE over the (constant) bound of that S/N
    for lab, c in zip(NAMES, CRLB.tolist(), strict=True):
        assert at["xgboost"]["all"]["rmse_crlb"][lab] == pytest.approx(at["xgboost"]["all"]["rmse"][lab] / c, rel=1e-4)
    assert m["crlb_rms"]["20"]["TEFF"] == pytest.approx(125.0)
    # the trees have no sigma; the network and The Cannon do
    assert at["xgboost"]["all"]["coverage"]["FE_H"] is None
    assert at["network"]["all"]["coverage"]["FE_H"] is not None
    # on linear spectra the trees learn something, The Cannon (quadratic model, exact here) more
    assert at["cannon"]["all"]["scatter"]["FE_H"] < at["xgboost"]["all"]["scatter"]["FE_H"] < 0.7
    # headline: the network against the better tree
    trees = [at[t]["all"]["scatter"]["FE_H"] for t in ("xgboost", "lightgbm")]
    assert res.headline_baseline == pytest.approx(min(trees))
    assert res.headline_network == pytest.approx(at["network"]["all"]["scatter"]["FE_H"])
    assert res.headline_name == "[Fe/H] robust scatter at S/N 50 (dex)"
    checks = {c["check"]: c for c in m["targets"]}
    assert "FE_H scatter / better tree's" in checks and "TEFF scatter / better tree's" not in checks
    rep = tmp_path / "report"
    assert res.report_path == rep / "report.md"
    text = (rep / "report.md").read_text()
    assert "Dwarfs vs giants" in text and "Targets at S/N 50" in text
    for fig in ("pred_vs_true", "scatter_vs_snr", "rmse_crlb_vs_snr", "residuals_vs_teff", "qq", "kiel"):
        assert (rep / f"{fig}.png").stat().st_size > 1000, fig
        assert f"{fig}.png" in text
    page = (rep / "report.html").read_text()
    assert page.count("<table>") >= 5 and "<img" in page
    assert not list(rep.glob("*.tmp*"))


def test_evaluate_baseline_only_without_figures(tmp_path: Path, toy) -> None:
    cfg = _cfg(figures=False, crlb_spectra=0)
    res = ev.evaluate(cfg, None, tmp_path, methods=["lightgbm"])
    assert res.metrics["methods"] == ["lightgbm"]
    assert res.headline_network is None and res.headline_baseline is not None and math.isfinite(res.headline_baseline)
    assert res.metrics["crlb_rms"] == {} and res.metrics["targets"] == []
    assert not list((tmp_path / "report").glob("*.png"))
    assert (tmp_path / "report" / "report.html").is_file()


def test_end_to_end_with_the_generator(tmp_path: Path) -> None:
    """Real generator, preprocessing and CRLB at tiny sizes: every number finite where defined."""
    for mod, attr in (("simulate", "simulate_raw"), ("preprocess", "preprocess_batch"), ("crlb", "crlb_at_snr")):
        pytest.importorskip(f"neurotrain.tasks.stellar.{mod}").__dict__.get(attr) or pytest.skip(f"{mod}.{attr}")
    cfg = StellarConfig.model_validate({
        "labels": {"names": ["TEFF", "LOGG", "FE_H"]},
        "model": {"base_channels": 4, "hidden": 16, "pool_size": 4, "blocks_per_group": 1},
        "evaluate": {"snr_bins": [50], "spectra_per_snr": 8, "baseline_train_size": 24, "crlb_spectra": 1,
                     "figures": False},
        "baseline": {"methods": ["lightgbm", "cannon"], "n_estimators": 5, "n_jobs": 1, "cannon_max_steps": 5,
                     "early_stopping_rounds": 2, "val_fraction": 0.25},
        "inference": {"device": "cpu"},
    })
    res = ev.evaluate(cfg, build_model(cfg), tmp_path)
    at = res.metrics["snr"]["50"]
    assert set(at) == {"network", "lightgbm", "cannon"}
    assert all(math.isfinite(v) for v in at["cannon"]["all"]["rmse"].values())
    assert all(v is not None and v > 0 for v in res.metrics["crlb_rms"]["50"].values())
    assert (tmp_path / "report" / "report.md").is_file()
