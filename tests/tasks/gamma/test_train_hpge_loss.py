"""Regression test of the 2026-12-03 GPU run (docs/results/gamma.md, "GPU run 2026-12-03: dead network"): the
shipped configs' network, loss and optimiser, trained a few steps on HPGe-target spectra of 1e3-1e7 counts
(a quarter of them at exactly 1e7), must leave the flat output they start from without collapsing.

With the former ``peak_weighted`` loss, in this very setting, both networks died within 40 steps: output 1e-13
(quickstart) and 0 (train.yaml) in every channel, the loss falling all the same (5.5 -> 0.24, 5.1 -> 0.41), which
is why the loss alone is not checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from neurotrain.config import load_config
from neurotrain.tasks.gamma.losses import build_loss
from neurotrain.tasks.gamma.models import build_model
from neurotrain.tasks.gamma.scene import Scene
from neurotrain.tasks.gamma.simulate import simulate_batch

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "gamma"
KEYS = ("input", "target", "fwhm_params", "scale")
STEPS = 40
BATCH = 16
N_TRAIN = 96
N_VAL = 32
#: the shipped simulator (HPGe target; train.yaml: LYSO / NaI / CsI) at 1024 channels, few Monte Carlo photons,
#: counts from 1e3 (train.yaml's lower end) to 1e7
SIM = {"n_channels": 1024, "response_photons": 400, "lu176_events": 20000, "counts_range": (1e3, 1e7)}


def _pool(cfg: object) -> dict[str, torch.Tensor]:
    """N_TRAIN + N_VAL spectra: 96 of log-uniform counts and 32 of exactly 1e7 counts, shuffled."""
    g = torch.Generator().manual_seed(7)
    dev = torch.device("cpu")
    parts = [simulate_batch(cfg, 96, g, dev), simulate_batch(cfg, 32, g, dev, Scene(counts=1e7))]
    pool = {k: torch.cat([p[k] for p in parts]) for k in KEYS}
    order = torch.randperm(N_TRAIN + N_VAL, generator=g)
    return {k: v[order] for k, v in pool.items()}


def _smoothed_error(pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> float:
    """Median of sum (S pred - S target)^2 / sum (S target)^2 (S: 9-channel running mean, so a line a few
    channels off still counts) over the spectra whose target holds >= 30 % of the measured counts (not the
    LYSO spectra of mostly Lu-176, whose HPGe target is nearly empty). 1 for a zero output."""
    t = batch["target"]
    k = torch.full((1, 1, 9), 1 / 9)
    sp, st = F.conv1d(pred, k, padding=4), F.conv1d(t, k, padding=4)
    err = ((sp - st) ** 2).sum((1, 2)) / (st**2).sum((1, 2))
    full = t.sum((1, 2)) >= 0.3 * batch["input"][:, 0].sum(1)
    return float(err[full].median())


@pytest.mark.parametrize("name", ["train.yaml", "quickstart.yaml"])
def test_shipped_network_and_loss_leave_the_flat_start_on_hpge_targets_up_to_1e7_counts(
    name: str, gamma_cache: Path
) -> None:
    shipped = load_config(CONFIGS / name)
    sim = shipped.simulate.model_copy(update={**SIM, "cache_dir": str(gamma_cache)})
    cfg = shipped.model_copy(update={"simulate": sim})
    assert cfg.simulate.target == "hpge"

    pool = _pool(cfg)
    val = {k: v[N_TRAIN:] for k, v in pool.items()}
    assert (val["input"][:, 0] * val["scale"]).sum(1).max() > 5e6  # 1e7-count spectra are in the checked set

    torch.manual_seed(0)
    model, loss_fn = build_model(cfg), build_loss(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))

    def check() -> tuple[float, float, float, float]:
        """Validation loss, input dependence (per-channel spread over spectra / mean), largest output,
        smoothed error - in eval mode, as evaluate and predict run the network."""
        model.eval()
        with torch.no_grad():
            out = model(val["input"], val["fwhm_params"])
        model.train()
        o = out[:, 0]
        dependence = float((o.std(0) / o.mean(0).clamp_min(1e-6)).mean())
        return float(loss_fn(out, val)["loss"]), dependence, float(o.max()), _smoothed_error(out, val)

    loss0, dep0, _, err0 = check()
    g = torch.Generator().manual_seed(3)
    for _ in range(STEPS):
        b = {k: v[torch.randint(0, N_TRAIN, (BATCH,), generator=g)] for k, v in pool.items()}
        loss = loss_fn(model(b["input"], b["fwhm_params"]), b)["loss"]
        assert torch.isfinite(loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), shipped.trainer.gradient_clip_val)
        opt.step()
        warm.step()
    loss1, dep1, top1, err1 = check()

    assert dep0 == pytest.approx(0.0, abs=1e-3)  # the zero output layer: a flat start
    assert top1 > 0.1, f"output collapsed to zero (largest value {top1:.3g})"
    assert dep1 > 0.02, f"output does not depend on the input: {dep1:.3g}"
    assert loss1 < 0.8 * loss0, f"validation loss {loss0:.3g} -> {loss1:.3g}"
    assert err1 < 0.95 * err0, f"smoothed relative error {err0:.3g} -> {err1:.3g}"
