"""``poisson_nll``, the loss of the shipped gamma configs since the 2026-12-03 GPU run (docs/results/gamma.md,
"GPU run 2026-12-03: dead network"): per-spectrum Poisson deviance per measured count. It must weigh a spectrum
alike at every count level, pull hard on a missed sharp (HPGe) line, and keep a spectrum whose target is almost
empty from dominating a batch."""

from __future__ import annotations

import pytest
import torch

from neurotrain.tasks.gamma import losses as L
from neurotrain.tasks.gamma.config import GammaConfig

N = 1024


def _line_on_continuum(height: float = 200.0, centre: int = 400) -> torch.Tensor:
    """(1, 1, N) normalised HPGe-like target: a 2-channel line on a continuum of 0.5 per channel."""
    t = torch.full((1, 1, N), 0.5)
    t[..., centre : centre + 2] += height
    return t


def _loss(pred: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    return L.build_loss(GammaConfig(loss={"name": "poisson_nll"}))(
        pred, {"target": target, "scale": torch.full((pred.shape[0], 1), scale)}
    )["loss"]


def test_built_by_name_with_the_schema_offset() -> None:
    loss = L.build_loss(GammaConfig(loss={"name": "poisson_nll", "deviance_offset_counts": 0.5}))
    assert isinstance(loss, L.PoissonNLLLoss) and loss.offset == 0.5


def test_the_same_relative_error_costs_the_same_at_1e5_and_1e8_counts() -> None:
    """Counts per channel 100 vs 1e5 (1e5 vs 1e8 counts at 1024 channels): the old scale problem suspected
    of the GPU run would make the second 1e3 x dearer."""
    t = _line_on_continuum()
    pred = 1.3 * t.roll(3, -1) + 0.2
    low, high = _loss(pred, t, 100.0), _loss(pred, t, 1e5)
    assert float(high) == pytest.approx(float(low), rel=0.02)


def test_a_missed_sharp_line_pulls_much_harder_than_the_continuum() -> None:
    t = _line_on_continuum()
    pred = torch.full_like(t, 0.5).requires_grad_(True)  # the flat output, line missing
    _loss(pred, t, 100.0).backward()
    g = pred.grad[0, 0]
    line = g[400:402]
    rest = torch.cat([g[:390], g[412:]])
    assert (line < 0).all()  # raise the output at the line
    assert float(line.abs().min()) > 100 * float(rest.abs().max() + 1e-12)


def test_an_almost_empty_target_does_not_dominate_the_batch() -> None:
    """A LYSO spectrum whose counts are mostly Lu-176 has an HPGe target of ~0.4 % of its measured counts. A
    flat output over it is wrong by ~250 x its target's area, yet per measured count it costs about what a
    normal spectrum does that is wrong by its whole area (normalised by the target counts instead it cost
    ~100 x more and drove the batch)."""
    normal = _line_on_continuum()
    empty = _line_on_continuum(height=1.0) * 0.004
    flat = torch.full((1, 1, N), 1.0)
    per_empty = float(_loss(flat, empty, 100.0))
    per_normal = float(_loss(torch.zeros_like(normal), normal, 100.0))
    assert per_empty < 5 * per_normal


def test_zero_at_the_target_and_finite_gradient_at_a_zero_prediction() -> None:
    t = _line_on_continuum()
    assert float(_loss(t.clone(), t, 100.0)) == pytest.approx(0.0, abs=1e-5)
    pred = torch.zeros_like(t).requires_grad_(True)
    _loss(pred, t, 100.0).backward()
    assert torch.isfinite(pred.grad).all()


def test_missing_scale_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="scale"):
        L.PoissonNLLLoss()(torch.ones(1, 1, 8), {"target": torch.ones(1, 1, 8)})
