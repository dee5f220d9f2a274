"""Losses, networks and the shared residual blocks they use."""

from __future__ import annotations

import pytest
import torch

from neurotrain.errors import ConfigError
from neurotrain.tasks.gamma import losses as L
from neurotrain.tasks.gamma import models
from neurotrain.tasks.gamma.config import GammaConfig


def _spectra() -> torch.Tensor:
    x = torch.arange(256, dtype=torch.float32)
    t = 1.0 + 50 * torch.exp(-0.5 * ((x - 100) / 2) ** 2) + 20 * torch.exp(-0.5 * ((x - 180) / 2) ** 2)
    return t.view(1, 1, -1).repeat(2, 1, 1)


def test_peak_mask_marks_peaks_only() -> None:
    t = _spectra()
    m = L.peak_mask(t, sigma=2.0, threshold=0.05)
    assert m[0, 0, 100] == 1 and m[0, 0, 180] == 1
    assert m[0, 0, 20] == 0 and m[0, 0, 240] == 0


@pytest.mark.parametrize("name", ["peak_weighted", "adaptive_peak_weighted", "poisson_nll", "mse"])
def test_losses_zero_at_target_positive_elsewhere(name: str) -> None:
    cfg = GammaConfig(loss={"name": name})
    loss = L.build_loss(cfg)
    t = _spectra()
    batch = {"target": t, "scale": torch.full((2, 1), 10.0)}
    at = loss(t.clone(), batch)
    off = loss(t * 1.3 + 0.5, batch)
    at = at["loss"] if isinstance(at, dict) else at
    off = off["loss"] if isinstance(off, dict) else off
    assert at.item() == pytest.approx(0.0, abs=1e-5)
    assert off.item() > 1e-3


def test_peak_weighting_penalises_peak_errors_more() -> None:
    loss = L.PeakWeightedLoss(peak_weight=10.0, log_weight=0.0, area_weight=0.0)
    t = _spectra()
    in_peak = t.clone()
    in_peak[..., 100] += 5.0
    off_peak = t.clone()
    off_peak[..., 30] += 5.0
    assert loss(in_peak, {"target": t})["loss"] > 5 * loss(off_peak, {"target": t})["loss"]


def test_adaptive_loss_tracks_peak_error_ratio() -> None:
    loss = L.AdaptivePeakWeightedLoss(peak_weight=2.0)
    loss.train()
    t = _spectra()
    bad_peaks = t.clone()
    bad_peaks[..., 95:106] = 0.0
    for _ in range(50):
        loss(bad_peaks, {"target": t})
    assert loss.ratio.item() > 2.0


@pytest.mark.parametrize("name", ["SpectralResNet1D", "ImprovedSpectralResNet1D"])
def test_models_shape_and_positivity(name: str) -> None:
    cfg = GammaConfig(simulate={"n_channels": 256}, model={"name": name, "base_channels": 8, "depth": 3})
    m = models.build_model(cfg)
    x = torch.rand(2, 3, 256)
    y = m(x, torch.tensor([[0.1, 0.5], [0.07, 0.5]]))
    assert y.shape == (2, 1, 256)
    assert torch.all(y >= 0)
    y.mean().backward()
    assert m.stem[0].weight.grad is not None and m.stem[0].weight.grad.abs().sum() > 0


def test_improved_model_has_se_and_progressive_head() -> None:
    from neurotrain.nn.blocks import SEBlock

    cfg = GammaConfig(simulate={"n_channels": 256}, model={"name": "ImprovedSpectralResNet1D", "base_channels": 8, "depth": 3})
    m = models.build_model(cfg)
    assert any(isinstance(s, SEBlock) for s in m.modules())
    assert len([c for c in m.head if isinstance(c, torch.nn.Conv1d)]) == 3
    plain = models.build_model(GammaConfig(simulate={"n_channels": 256}, model={"name": "SpectralResNet1D", "base_channels": 8, "depth": 3}))
    assert not any(isinstance(s, SEBlock) for s in plain.modules())


def test_conditioning_changes_output_once_trained() -> None:
    cfg = GammaConfig(simulate={"n_channels": 128}, model={"base_channels": 8, "depth": 2})
    m = models.build_model(cfg)
    torch.nn.init.normal_(m.film.net[-1].weight, std=0.5)
    torch.nn.init.normal_(m.full_out[-1].weight, std=0.5)  # the default network starts flat (zero output layer)
    m.eval()
    x = torch.rand(1, 3, 128)
    a = m(x, torch.tensor([[0.08, 0.5]]))
    b = m(x, torch.tensor([[0.12, 0.6]]))
    assert not torch.allclose(a, b)


def test_channel_count_must_fit_depth() -> None:
    cfg = GammaConfig(simulate={"n_channels": 100}, model={"depth": 3})
    with pytest.raises(ConfigError, match="n_channels"):
        models.build_model(cfg)


def test_max_channels_caps_the_deep_stages_only() -> None:
    def build(cap: int | None) -> torch.nn.Module:
        m = {"name": "ImprovedSpectralResNet1D", "base_channels": 8, "depth": 4, "max_channels": cap}
        return models.build_model(GammaConfig(simulate={"n_channels": 256}, model=m))

    full, capped = build(None), build(32)
    conv_out = lambda m: [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv1d)]  # noqa: E731
    assert max(conv_out(full)) == 128 and max(conv_out(capped)) == 32
    # the shallow stages, which see the spectrum at full resolution, keep their widths
    assert capped.stem[0].out_channels == full.stem[0].out_channels == 8
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(capped) < n_params(full) / 4
    y = capped(torch.rand(2, 3, 256), torch.tensor([[0.1, 0.5], [0.07, 0.5]]))
    assert y.shape == (2, 1, 256) and torch.all(y >= 0)
