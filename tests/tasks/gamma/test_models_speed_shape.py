"""FastSpectralUNet1D: the output contract (shape, positivity, batch independence, counts conserved through
predict), the lossless stem/head re-arrangements, a graph torch.compile takes whole, and its compute at the
train.yaml size against the seed network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from neurotrain.config import load_config
from neurotrain.errors import ConfigError
from neurotrain.registry import MODELS
from neurotrain.tasks.gamma import models
from neurotrain.tasks.gamma.config import GammaConfig

REPO = Path(__file__).resolve().parents[3]
LAWS = torch.tensor([[0.1, 0.5], [0.07, 0.55], [0.12, 0.6]])


def _fast(n: int = 512, **model: object) -> torch.nn.Module:
    m = {"name": "FastSpectralUNet1D", "base_channels": 16, "depth": 2, "stem_stride": 8, **model}
    return models.build_model(GammaConfig(simulate={"n_channels": n}, model=m))


def _macs(m: torch.nn.Module, n: int) -> float:
    m.eval()
    with FlopCounterMode(display=False) as f, torch.no_grad():
        m(torch.rand(1, 3, n), LAWS[:1])
    return f.get_total_flops() / 2


def test_unshuffle_is_lossless_and_keeps_neighbours_together() -> None:
    x = torch.arange(2 * 3 * 32, dtype=torch.float32).view(2, 3, 32)
    u = models.pixel_unshuffle_1d(x, 4)
    assert u.shape == (2, 12, 8)
    # channel c * 4 + j at position p is sample p * 4 + j of channel c
    assert u[1, 2 * 4 + 3, 5] == x[1, 2, 5 * 4 + 3]
    assert torch.equal(models.pixel_shuffle_1d(u, 4), x)


def test_output_shape_positive_and_gradients_reach_the_stem() -> None:
    m = _fast()
    torch.nn.init.normal_(m.full_out[-1].weight, std=0.5)  # as after a first step (it starts at zero)
    y = m(torch.rand(3, 3, 512), LAWS)
    assert y.shape == (3, 1, 512)
    assert torch.all(y >= 0) and torch.isfinite(y).all()
    y.mean().backward()
    assert m.full_in[0].weight.grad is not None and m.full_in[0].weight.grad.abs().sum() > 0
    assert m.stem[0].in_channels == 16 * 8  # full-resolution features folded by the stem stride


def test_without_the_full_resolution_level() -> None:
    m = _fast(full_channels=0)
    assert m.stem[0].in_channels == 3 * 8 and isinstance(m.full_out, torch.nn.Identity)
    y = m(torch.rand(2, 3, 512), LAWS[:2])
    assert y.shape == (2, 1, 512) and torch.all(y >= 0)


def test_each_spectrum_is_independent_of_its_batch() -> None:
    torch.manual_seed(0)
    m = _fast().eval()
    x = torch.rand(3, 3, 512)
    with torch.no_grad():
        whole = m(x, LAWS)
        alone = torch.cat([m(x[i : i + 1], LAWS[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, alone, rtol=1e-4, atol=1e-6)


def test_every_output_channel_can_differ_within_a_stem_block() -> None:
    """Depth-to-space must give full channel resolution: a narrow input line moves the output within a block."""
    torch.manual_seed(0)
    m = _fast().eval()
    for p in m.parameters():  # random weights everywhere (FiLM and heads start at zero)
        torch.nn.init.normal_(p, std=0.2)
    x = torch.zeros(1, 3, 512)
    x[0, 0, 259] = 5.0
    with torch.no_grad():
        y = m(x, LAWS[:1])[0, 0, 256:264]
    assert y.unique().numel() == 8


def test_starts_from_a_flat_spectrum() -> None:
    """Zero output layer: softplus(0) everywhere, whatever the input (see FastSpectralUNet1D.__init__)."""
    y = _fast()(torch.rand(2, 3, 512) * 50, LAWS[:2])
    torch.testing.assert_close(y, torch.full_like(y, float(torch.nn.functional.softplus(torch.tensor(0.0)))))


def test_conditioning_changes_the_output() -> None:
    m = _fast().eval()
    torch.nn.init.normal_(m.film.net[-1].weight, std=0.5)
    torch.nn.init.normal_(m.full_out[-1].weight, std=0.5)
    x = torch.rand(1, 3, 512)
    assert not torch.allclose(m(x, LAWS[:1]), m(x, LAWS[1:2]))
    # no law given: LYSO's (r662 0.10, power 0.5)
    torch.testing.assert_close(m(x), m(x, LAWS[:1]))


def test_widths_are_multiples_of_eight() -> None:
    m = _fast(base_channels=12, depth=3)
    convs = [c for c in m.modules() if isinstance(c, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    widths = {c.out_channels for c in convs if c is not m.full_out[-1]}  # all but the 1-channel output
    assert widths and all(w % 8 == 0 for w in widths)


def test_the_forward_is_one_graph_for_torch_compile() -> None:
    m = _fast().eval()
    compiled = torch.compile(m, backend="eager", fullgraph=True, dynamic=False)
    x = torch.rand(2, 3, 512)
    torch.testing.assert_close(compiled(x, LAWS[:2]), m(x, LAWS[:2]))


def test_length_must_fit_stem_and_depth() -> None:
    with pytest.raises(ConfigError, match=r"simulate.n_channels: .*stem_stride \* 2\*\*model.depth = 32"):
        _fast(n=80)
    with pytest.raises(ValueError, match="not divisible"):
        _fast()(torch.rand(1, 3, 520))


def test_default_is_fast_and_seed_names_still_build_and_load() -> None:
    assert GammaConfig().model.name == "FastSpectralUNet1D"
    for name in ("SpectralResNet1D", "ImprovedSpectralResNet1D"):
        cfg = GammaConfig(simulate={"n_channels": 256}, model={"name": name, "base_channels": 8, "depth": 3})
        a, b = models.build_model(cfg), models.build_model(cfg)
        b.load_state_dict(a.state_dict())  # a checkpoint of the seed network loads by its name
        assert type(a).__name__ == name
        assert MODELS.get(f"gamma:{name}") is type(a)


def test_counts_are_conserved_through_predict(tmp_path: Path) -> None:
    from neurotrain.tasks.gamma.predict import enhance

    cfg = GammaConfig(simulate={"n_channels": 512, "cache_dir": str(tmp_path)},
                      model={"base_channels": 16, "depth": 2}, inference={"device": "cpu"})
    m = models.build_model(cfg)
    counts = np.random.default_rng(0).poisson(50.0, 512).astype(float)
    covered = np.ones(512, bool)
    covered[:10] = False
    out = enhance(cfg, m, counts, 0.1, 0.5, conserve=True, covered=covered)
    assert out.shape == (512,) and np.all(out >= 0) and np.all(out[:10] == 0)
    assert out.sum() == pytest.approx(counts.sum(), rel=1e-9)


def test_train_size_costs_a_fifth_of_the_seed_network() -> None:
    """At train.yaml's size (4096 channels) the new network needs <= 1/5 of the seed network's multiply-adds
    (measured: 0.33 vs 2.36 GMAC per spectrum) at about its parameter count (6.28 vs 6.36 M)."""
    cfg = load_config(REPO / "configs" / "gamma" / "train.yaml", [])
    assert cfg.model.name == "FastSpectralUNet1D" and cfg.simulate.n_channels == 4096
    fast = models.build_model(cfg)
    seed = models.ImprovedSpectralResNet1D(base_channels=32, depth=5, max_channels=256, bottleneck_blocks=2)
    assert _macs(fast, 4096) <= _macs(seed, 4096) / 5
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 0.8 < n_params(fast) / n_params(seed) < 1.2
