"""The counting-noise (Anscombe) term of the gamma loss: it must punish ringing beside a sharp peak and a
floor over an empty region, stay finite at zero counts, and leave the seed loss unchanged at weight 0."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neurotrain.config import load_config
from neurotrain.tasks.gamma import losses as L
from neurotrain.tasks.gamma.config import GammaConfig

N = 256
CENTRE = 128
AREA = 200.0  # normalised counts in the line
BACKGROUND = 2.0  # normalised counts per channel
SCALE = 100.0  # counts per normalised unit: 2e2 counts/channel background, 2e4 counts in the line


def _gauss(sigma: float, area: float = AREA, centre: float = CENTRE) -> torch.Tensor:
    x = torch.arange(N, dtype=torch.float64)
    g = torch.exp(-0.5 * ((x - centre) / sigma) ** 2)
    return area * g / g.sum()


def _target() -> torch.Tensor:
    """HPGe-like line (sigma 0.6 channel) on a flat continuum, (1, 1, N)."""
    return (BACKGROUND + _gauss(0.6)).float().view(1, 1, -1)


def _smooth(sigma: float = 1.0) -> torch.Tensor:
    """The same line broadened to ``sigma`` channels (1 channel: FWHM ~7 keV at 2.9 keV/channel), same area."""
    return (BACKGROUND + _gauss(sigma)).float().view(1, 1, -1)


def _ringing() -> torch.Tensor:
    """The exact line with the network's ringing as seen at 1e6 counts (issue 3): dips to zero at 3-8 channels
    and overshoot lobes at 9-16 channels (~+-50 keV at 2.9 keV/channel) on both sides, holding exactly the
    counts taken out by the dips (same total area)."""
    y = (BACKGROUND + _gauss(0.6)).clone()
    for side in (-1, 1):
        dip = [CENTRE + side * d for d in range(3, 9)]
        lobe = [CENTRE + side * d for d in range(9, 17)]
        removed = y[dip].sum()
        y[dip] = 0.0
        y[lobe] += removed / len(lobe)
    return y.float().view(1, 1, -1)


def _batch(target: torch.Tensor, scale: float = SCALE) -> dict[str, torch.Tensor]:
    return {"target": target, "scale": torch.full((target.shape[0], 1), scale)}


def test_fixtures_have_equal_area() -> None:
    assert _ringing().sum().item() == pytest.approx(_smooth().sum().item(), rel=1e-5)
    assert _ringing().sum().item() == pytest.approx(_target().sum().item(), rel=1e-5)


def test_anscombe_term_penalises_ringing_more_than_smooth_broadening() -> None:
    t = _target()
    ring = L.anscombe_chi2(_ringing(), t, torch.full((1, 1), SCALE))
    smooth = L.anscombe_chi2(_smooth(), t, torch.full((1, 1), SCALE))
    assert ring > 1.2 * smooth
    loss = L.CountingPeakWeightedLoss(anscombe_weight=1.0)
    assert loss(_ringing(), _batch(t))["loss"] > loss(_smooth(), _batch(t))["loss"]
    # the seed loss alone prefers the ringing (its peak mask ends ~4 channels from the line, and errors at
    # the continuum level are divided by the peak height): the reason for the counting term
    seed = L.PeakWeightedLoss()
    assert seed(_ringing(), _batch(t))["loss"] < 0.1 * seed(_smooth(), _batch(t))["loss"]


def test_anscombe_term_shifts_the_balance_against_ringing_by_a_large_factor() -> None:
    """Against a broadening as wide as the quickstart network's (sigma 1.5 channels) the counting term still
    prefers the ringing (both are significant misfits of an HPGe line), but it prices the ringing relative to
    the broadening > 30x higher than the seed loss does."""
    t, s = _target(), torch.full((1, 1), SCALE)
    wide = _smooth(1.5)
    counting = (L.anscombe_chi2(_ringing(), t, s) / L.anscombe_chi2(wide, t, s)).item()
    seed = L.PeakWeightedLoss()
    seed_ratio = (seed(_ringing(), _batch(t))["loss"] / seed(wide, _batch(t))["loss"]).item()
    assert counting > 30 * seed_ratio


def test_anscombe_term_is_a_chi2_against_counting_noise() -> None:
    """A 1-sigma excess in every channel costs ~1 per channel at any count level; a fixed relative error costs
    in proportion to the counts (its statistical significance)."""
    t = torch.full((1, 1, N), 50.0)
    for scale in (10.0, 1000.0):
        counts = t * scale
        one_sigma = (counts + counts.sqrt()) / scale
        assert L.anscombe_chi2(one_sigma, t, torch.full((1, 1), scale)).item() == pytest.approx(1.0, rel=0.05)
    low = L.anscombe_chi2(t * 1.1, t, torch.full((1, 1), 10.0))
    high = L.anscombe_chi2(t * 1.1, t, torch.full((1, 1), 1000.0))
    assert high.item() == pytest.approx(100 * low.item(), rel=0.02)


def test_floor_over_an_empty_region_is_expensive_at_high_counts() -> None:
    """The spurious flat floor above ~1200 keV: 0.1 of the mean channel where the target is empty. The seed's
    log-L1 term prices it the same at any count level; against counting noise it is ~100 sigma^2 per channel
    at 1e3 counts per mean channel."""
    t = torch.zeros(1, 1, N)
    t[..., :64] = 4.0
    floor = t.clone()
    floor[..., 64:] = 0.1
    assert L.anscombe_chi2(floor, t, torch.full((1, 1), 1000.0)).item() > 50.0
    assert L.anscombe_chi2(floor, t, torch.full((1, 1), 10.0)).item() < 1.0


def test_gradients_finite_at_zero_counts() -> None:
    t = _target()
    t[..., :40] = 0.0
    pred = torch.zeros_like(t, requires_grad=True)
    out = L.CountingPeakWeightedLoss(anscombe_weight=1.0)(pred, _batch(t))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert torch.isfinite(pred.grad).all()
    # a dip to zero under counts is pushed up, a zero over zero counts is left alone by this term
    chi_pred = torch.zeros_like(t, requires_grad=True)
    L.anscombe_chi2(chi_pred, t, torch.full((1, 1), SCALE)).backward()
    assert (chi_pred.grad[..., 100:] < 0).all()
    assert (chi_pred.grad[..., :40] == 0).all()
    # a negative prediction (head without a positive link) is read as zero counts, gradient still upward
    neg = torch.full_like(t, -0.5, requires_grad=True)
    L.anscombe_chi2(neg, t, torch.full((1, 1), SCALE)).backward()
    assert torch.isfinite(neg.grad).all() and (neg.grad[..., 100:] < 0).all()


def test_reduces_to_the_seed_loss_at_weight_zero() -> None:
    t = _target().repeat(2, 1, 1)
    pred = torch.cat([_ringing(), _smooth()])
    batch = {"target": t, "scale": torch.tensor([[10.0], [1000.0]])}
    seed = L.PeakWeightedLoss()(pred, batch)["loss"]
    cfg = GammaConfig(loss={"name": "counting_peak_weighted", "anscombe_weight": 0.0})
    new = L.build_loss(cfg)(pred, batch)["loss"]
    assert new.item() == pytest.approx(seed.item(), rel=1e-6)
    with_term = L.build_loss(GammaConfig(loss={"name": "counting_peak_weighted"}))(pred, batch)["loss"]
    assert with_term.item() > seed.item()


def test_seed_loss_stays_available_by_name() -> None:
    assert type(L.build_loss(GammaConfig(loss={"name": "peak_weighted"}))) is L.PeakWeightedLoss


def test_missing_scale_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="scale"):
        L.CountingPeakWeightedLoss()(_target(), {"target": _target()})


def test_shipped_configs_share_one_loss() -> None:
    """quickstart.yaml differs from train.yaml only in sizes: the same loss and weights."""
    folder = Path(__file__).resolve().parents[3] / "configs" / "gamma"
    quick, full = (load_config(folder / n) for n in ("quickstart.yaml", "train.yaml"))
    assert quick.loss == full.loss
    # and the same backgrounds: source rates and the surroundings' scatter
    assert quick.simulate.source_rate_cps == full.simulate.source_rate_cps
    assert quick.simulate.room_return_fraction == full.simulate.room_return_fraction
    assert L.build_loss(full).__class__ is L.build_loss(quick).__class__


def test_deviance_is_unbiased_where_the_square_root_domain_is_not() -> None:
    """A channel whose true content is 0 or 100 counts with equal odds: the deviance is minimised at the mean
    (50), the Anscombe chi^2 below it (the low areas of the Anscombe-trained network)."""
    s = torch.ones(2, 1)
    t = torch.tensor([0.0, 100.0]).view(2, 1, 1)
    grid = torch.linspace(1.0, 99.0, 981)

    def best(fn: object) -> float:
        costs = torch.stack([fn(torch.full((2, 1, 1), float(g)), t, s) for g in grid])  # type: ignore[operator]
        return float(grid[costs.argmin()])

    assert best(L.poisson_deviance) == pytest.approx(50.0, abs=0.2)
    assert best(L.anscombe_chi2) < 40.0


def test_deviance_zero_at_target_finite_gradient_at_zero() -> None:
    t = _target()
    t[..., :40] = 0.0
    s = torch.full((1, 1), SCALE)
    assert L.poisson_deviance(t, t, s).item() == pytest.approx(0.0, abs=1e-3)
    pred = torch.zeros_like(t, requires_grad=True)
    L.poisson_deviance(pred, t, s).backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[..., 100:] < 0).all()

