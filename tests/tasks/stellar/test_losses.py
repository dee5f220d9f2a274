"""Gaussian NLL and masked MSE: hand-computed values, masking of unknown / NaN labels, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from neurotrain.tasks.stellar.config import StellarConfig
from neurotrain.tasks.stellar.losses import GaussianNLL, MaskedMSE, build_loss


def _batch(target, mask=None):
    b = {"target": torch.tensor(target, dtype=torch.float32)}
    if mask is not None:
        b["target_mask"] = torch.tensor(mask)
    return b


def test_nll_hand_value() -> None:
    loss = GaussianNLL(["TEFF", "FE_H"], [5000.0, 0.0], [500.0, 0.5], min_sigma=1e-6, beta=0.0)
    # normalised targets: (5500-5000)/500 = 1, (0.25-0)/0.5 = 0.5; means 0, 0.5; log var log 4, 0
    pred = torch.tensor([[0.0, 0.5, math.log(4.0), 0.0]])
    out = loss(pred, _batch([[5500.0, 0.25]]))
    nll_t = 0.5 * (math.log(4.0) + 1.0 / 4.0)
    nll_f = 0.0
    assert out["nll_TEFF"].item() == pytest.approx(nll_t, rel=1e-5)
    assert out["nll_FE_H"].item() == pytest.approx(nll_f, abs=1e-6)
    assert out["loss"].item() == pytest.approx((nll_t + nll_f) / 2, rel=1e-5)


def test_missing_labels_are_ignored_and_gradients_finite() -> None:
    loss = GaussianNLL(["A", "B"], [0.0, 0.0], [1.0, 1.0], beta=0.5)
    pred = torch.zeros(3, 4, requires_grad=True)
    # B unknown for star 0 (mask) and star 1 (NaN target); star 2 knows both
    batch = _batch([[1.0, 100.0], [2.0, float("nan")], [0.0, 1.0]], [[True, False], [True, True], [True, True]])
    out = loss(pred, batch)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.isfinite(pred.grad).all()
    # the masked and NaN entries receive exactly no gradient
    assert pred.grad[0, 1] == 0 and pred.grad[1, 1] == 0 and pred.grad[0, 3] == 0
    # equals the loss of the known entries alone: A for all three, B for star 2 (sigma 1: 0.5 t^2)
    expect = 0.5 * (1.0 + 4.0 + 0.0 + 1.0) / 4
    assert out["loss"].item() == pytest.approx(expect, rel=1e-4)


def test_sigma_floor_keeps_nll_finite() -> None:
    loss = GaussianNLL(["A"], [0.0], [1.0], min_sigma=1e-2, beta=0.0)
    pred = torch.tensor([[0.0, -1e4]])  # log var far below the floor
    out = loss(pred, _batch([[0.0]]))
    assert out["loss"].item() == pytest.approx(0.5 * math.log(1e-4 + math.exp(-20.0)), rel=1e-4)


def test_mse_and_builder() -> None:
    mse = MaskedMSE(["A", "B"], [1.0, 0.0], [2.0, 1.0])
    pred = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    out = mse(pred, _batch([[3.0, 1.0], [1.0, 0.0]], [[True, False], [True, True]]))
    # known: A star0 (t 1, p 0) -> 1; A star1 (t 0, p 1) -> 1; B star1 (t 0, p 1) -> 1
    assert out["loss"].item() == pytest.approx(1.0)
    assert out["mse_A"].item() == pytest.approx(1.0) and out["mse_B"].item() == pytest.approx(1.0)
    cfg = StellarConfig()
    assert isinstance(build_loss(cfg), GaussianNLL)
    assert isinstance(build_loss(StellarConfig.model_validate({"model": {"heteroscedastic": False}})), MaskedMSE)
    assert isinstance(build_loss(StellarConfig.model_validate({"loss": {"name": "mse"}})), MaskedMSE)


def test_nll_learns_the_noise_level() -> None:
    """Fitting a constant mean and log variance to N(2, 0.5^2) data recovers both."""
    torch.manual_seed(0)
    y = 2.0 + 0.5 * torch.randn(4000, 1)
    theta = torch.zeros(1, 2, requires_grad=True)
    loss = GaussianNLL(["A"], [0.0], [1.0], beta=0.5)
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        loss(theta.expand(len(y), 2), {"target": y})["loss"].backward()
        opt.step()
    assert theta[0, 0].item() == pytest.approx(2.0, abs=0.03)
    assert math.exp(0.5 * theta[0, 1].item()) == pytest.approx(0.5, rel=0.05)
