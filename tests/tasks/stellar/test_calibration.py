"""Post-hoc sigma calibration: the fitted factor restores 68.3 % coverage on fresh data from the same
distribution, leaves a well-calibrated head alone, and old checkpoints without a factor still load."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from neurotrain.engine.checkpoint import check_weights
from neurotrain.tasks.stellar.calibration import sigma_scale_factors
from neurotrain.tasks.stellar.models import SpectralResCNN

ONE_SIGMA = math.erf(1 / math.sqrt(2))


class _Oracle(nn.Module):
    """A 'network' whose input already holds (mean, log variance) in normalised units: forward is the
    identity on them, and to_physical is SpectralResCNN's (borrowed), so the calibration sees a known head."""

    def __init__(self, n_labels: int) -> None:
        super().__init__()
        self.n_labels = n_labels
        self.heteroscedastic = True
        self.min_sigma = 1e-3
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("label_mean", torch.zeros(n_labels))
        self.register_buffer("label_std", torch.ones(n_labels))
        self.register_buffer("sigma_scale", torch.ones(n_labels))

    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0, :] + 0 * self.w

    to_physical = SpectralResCNN.to_physical


def _draw(n: int, true_sigma: Tensor, claimed: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(n, true_sigma.numel(), generator=g)
    mean = target + true_sigma * torch.randn(n, true_sigma.numel(), generator=g)
    x = torch.cat([mean, torch.log(claimed**2).expand(n, -1)], 1)[:, None, :]
    return x, target, torch.ones_like(target, dtype=torch.bool)


def _coverage(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    with torch.no_grad():
        mean, sigma = model.to_physical(model(x))
    return ((mean - target).abs() <= sigma).float().mean(0)


def test_too_wide_and_too_narrow_sigmas_are_rescaled_to_68_percent_on_fresh_data() -> None:
    true_sigma = torch.tensor([0.1, 0.2, 0.05])
    claimed = torch.tensor([0.2, 0.1, 0.05])  # 2x too wide, 2x too narrow, right
    model = _Oracle(3)
    x, t, m = _draw(20000, true_sigma, claimed, seed=0)
    before = _coverage(model, x, t)
    assert before[0] > 0.9 and before[1] < 0.45
    scale = sigma_scale_factors(model, x, t, m, ONE_SIGMA)
    assert torch.allclose(scale, true_sigma / claimed, rtol=0.04), scale
    assert torch.equal(model.sigma_scale, torch.ones(3))  # fitting alone leaves the model unchanged
    model.sigma_scale.copy_(scale)
    x2, t2, _ = _draw(20000, true_sigma, claimed, seed=1)
    assert torch.allclose(_coverage(model, x2, t2), torch.full((3,), ONE_SIGMA), atol=0.015)


def test_masked_labels_are_ignored_and_an_all_masked_label_keeps_factor_one() -> None:
    true_sigma = torch.tensor([0.1, 0.1])
    model = _Oracle(2)
    x, t, m = _draw(4000, true_sigma, torch.tensor([0.3, 0.3]), seed=2)
    m[:, 1] = False
    t[:2000, 0] += 100.0  # garbage targets, masked out
    m[:2000, 0] = False
    scale = sigma_scale_factors(model, x, t, m, ONE_SIGMA)
    assert abs(float(scale[0]) - 1 / 3) < 0.03 and float(scale[1]) == 1.0


def test_a_checkpoint_without_sigma_scale_loads_uncalibrated() -> None:
    net = SpectralResCNN(n_labels=3, base_channels=4, hidden=8)
    state = {k: v for k, v in net.state_dict().items() if k != "sigma_scale"}
    fresh = SpectralResCNN(n_labels=3, base_channels=4, hidden=8)
    fresh.sigma_scale.fill_(2.0)
    check_weights(fresh, state, "old.ckpt")  # the checkpoint loader's check accepts the missing factor
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.sigma_scale, torch.ones(3))
    out = torch.zeros(1, 6)
    fresh.sigma_scale.copy_(torch.tensor([1.0, 2.0, 3.0]))
    _, sigma = fresh.to_physical(out)
    assert torch.allclose(sigma[0] / sigma[0, 0], torch.tensor([1.0, 2.0, 3.0]))

