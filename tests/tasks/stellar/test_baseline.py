"""Baselines: The Cannon recovers labels of spectra made from a quadratic model; boosted trees beat the mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurotrain.tasks.stellar.baseline import BoostedTrees, Cannon, bin_flux, build_baseline, fit_predict
from neurotrain.tasks.stellar.config import StellarConfig

NAMES = ["TEFF", "LOGG", "FE_H"]
LO = torch.tensor([4000.0, 1.0, -2.0], dtype=torch.float64)
HI = torch.tensor([7000.0, 5.0, 0.5], dtype=torch.float64)


def _labels(n: int, gen: torch.Generator) -> torch.Tensor:
    return LO + (HI - LO) * torch.rand(n, 3, generator=gen, dtype=torch.float64)


def test_design_jacobian_matches_autograd() -> None:
    c = Cannon(NAMES)
    s = torch.randn(4, 3, dtype=torch.float64)
    jac = torch.func.vmap(torch.func.jacrev(lambda x: c.design(x[None])[0]))(s)
    torch.testing.assert_close(c.design_jacobian(s), jac)
    assert c.n_terms == 1 + 3 + 6


def test_cannon_recovers_quadratic_spectra_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    truth = Cannon(NAMES)
    lab = _labels(300, gen)
    truth.pivot, truth.scale = lab.mean(0), lab.std(0)
    M = 150
    # a quadratic model with strong linear terms (spectra respond monotonically near the middle of the box)
    theta = torch.randn(M, truth.n_terms, generator=gen, dtype=torch.float64) * 0.02
    theta[:, 0] = 1.0
    theta[:, 1:4] = torch.randn(M, 3, generator=gen, dtype=torch.float64) * 0.1
    truth.theta = theta
    flux = truth.model_flux(lab)
    ivar = torch.full_like(flux, 1e4)
    cannon = Cannon(NAMES, iterations=2, starts=2, max_steps=60).fit(flux, ivar, lab)
    assert cannon.scatter2 is not None and float(cannon.scatter2.max()) < 1e-12  # noise-free: no excess
    test = _labels(40, gen)
    pred, err = cannon.predict(truth.model_flux(test), torch.full((40, M), 1e4, dtype=torch.float64))
    # exact up to the float32 output: 1e-6 of each label's range
    assert float(((pred.double() - test).abs() / (HI - LO)).max()) < 1e-6
    assert torch.all(err > 0) and torch.isfinite(err).all()
    # noisier spectra get larger formal errors
    _, err_noisy = cannon.predict(truth.model_flux(test), torch.full((40, M), 1e2, dtype=torch.float64))
    assert torch.all(err_noisy > 5 * err)


def test_cannon_scatter_and_missing_labels() -> None:
    gen = torch.Generator().manual_seed(1)
    lab = _labels(200, gen)
    s = (lab - lab.mean(0)) / lab.std(0)
    M = 20
    flux = 1.0 + 0.1 * s @ torch.randn(3, M, generator=gen, dtype=torch.float64)
    flux = flux + 0.01 * torch.randn(flux.shape, generator=gen, dtype=torch.float64)  # intrinsic scatter 0.01
    ivar = torch.full_like(flux, 1e8)
    known = torch.ones(200, 3, dtype=torch.bool)
    known[:10, 2] = False  # left out of the fit
    lab_nan = lab.clone()
    lab_nan[10:20, 1] = float("nan")
    c = Cannon(NAMES).fit(flux, ivar, lab_nan, known)
    assert c.scatter2 is not None
    np.testing.assert_allclose(c.scatter2.sqrt().numpy(), 0.01, rtol=0.25)


def test_bin_flux_ignores_pixels_without_data() -> None:
    flux = torch.tensor([[1.0, 3.0, 5.0, 100.0, 7.0]])
    ivar = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0]])
    out = bin_flux(flux, 2, ivar)
    torch.testing.assert_close(out, torch.tensor([[2.0, 5.0, 7.0]]))
    assert torch.isnan(bin_flux(torch.ones(1, 2), 2, torch.zeros(1, 2))).all()


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_boosted_trees_beat_the_mean(kind: str) -> None:
    gen = torch.Generator().manual_seed(2)
    n, M = 500, 48
    lab = _labels(n, gen)
    s = ((lab - lab.mean(0)) / lab.std(0)).float()
    flux = 1.0 + 0.1 * s @ torch.randn(3, M, generator=gen) + 0.01 * torch.randn(n, M, generator=gen)
    tr, te = slice(0, 400), slice(400, n)
    known = torch.ones(n, 3, dtype=torch.bool)
    known[:50, 0] = False
    m = BoostedTrees(kind, NAMES, n_estimators=150, max_depth=4, learning_rate=0.1, early_stopping_rounds=10,
                     bin_pixels=2, n_jobs=1, device="cpu")
    m.fit(flux[tr], lab[tr].float(), known[tr])
    pred = m.predict(flux[te]).double()
    rmse = ((pred - lab[te]) ** 2).mean(0).sqrt()
    rmse_mean = ((lab[tr].mean(0) - lab[te]) ** 2).mean(0).sqrt()
    assert torch.all(rmse < 0.6 * rmse_mean), (rmse, rmse_mean)
    assert all(1 <= b <= 150 for b in m.best_iterations)


def test_build_from_config_and_fit_predict() -> None:
    cfg = StellarConfig.model_validate({"baseline": {"n_estimators": 20, "n_jobs": 1, "tree_device": "cpu"}})
    assert isinstance(build_baseline("cannon", cfg.baseline, NAMES), Cannon)
    xg = build_baseline("xgboost", cfg.baseline, NAMES)
    assert isinstance(xg, BoostedTrees) and xg.device == "cpu" and xg.params["n_estimators"] == 20
    gen = torch.Generator().manual_seed(3)
    lab = _labels(120, gen).float()
    flux = 1.0 + 0.05 * torch.randn(120, 40, generator=gen)
    ivar = torch.full_like(flux, 1e4)
    out = fit_predict(build_baseline("cannon", cfg.baseline, NAMES),
                      {"flux": flux[:100], "ivar": ivar[:100], "target": lab[:100]},
                      {"flux": flux[100:], "ivar": ivar[100:]})
    assert out["mean"].shape == (20, 3) and out["sigma"].shape == (20, 3)


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_max_bin_reaches_the_library(kind: str) -> None:
    """``baseline.max_bin`` is the histogram resolution of both libraries: with 2 bins each feature offers one split
    point, so 2 features cut the spectra into at most 4 cells whatever the rounds (at most 4 distinct predictions);
    with 256 bins the booster splits finer."""
    gen = torch.Generator().manual_seed(3)
    n, M = 400, 2
    lab = _labels(n, gen)
    flux = 1.0 + 0.1 * ((lab - lab.mean(0)) / lab.std(0))[:, :M].float()  # each label readable from one feature
    known = torch.ones(n, 3, dtype=torch.bool)
    distinct = {}
    for mb in (2, 256):
        m = BoostedTrees(kind, NAMES, n_estimators=20, max_depth=2, learning_rate=0.3, early_stopping_rounds=20,
                         bin_pixels=1, n_jobs=1, device="cpu", max_bin=mb)
        m.fit(flux, lab.float(), known)
        distinct[mb] = int(torch.unique(m.predict(flux)[:, 0]).numel())
    assert distinct[2] <= 4 < distinct[256], distinct
