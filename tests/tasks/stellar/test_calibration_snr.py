"""S/N-dependent sigma calibration: a head whose sigma grows too little with the noise is fixed in every S/N
bin (a global factor is not), the factor interpolates in log S/N between knots, too-small bins keep the
global factor, old checkpoints load unchanged, and a loaded model is refitted without retraining."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from neurotrain.config import validate_config
from neurotrain.engine.checkpoint import check_weights
from neurotrain.tasks.stellar import calibration as cal
from neurotrain.tasks.stellar.models import SpectralResCNN, build_model
from neurotrain.tasks.stellar.postprocess import predict_labels

ONE_SIGMA = math.erf(1 / math.sqrt(2))
KNOTS = [5.0, 10.0, 20.0, 50.0, 100.0, 150.0]
#: fresh-set S/N bins the coverage is checked in (log-uniform S/N 5-150, as the training prior)
BINS = [(5, 10), (10, 20), (20, 50), (50, 100), (100, 150)]


class _Oracle(SpectralResCNN):
    """A SpectralResCNN whose input holds the answer: channel 0 = (normalised mean, log variance) per label,
    channel 1 pixel 0 = the spectrum's S/N (what ``input_snr`` reads). Everything after the forward pass
    (to_physical, the calibration buffers, predict_labels) is the real code."""

    def __init__(self, n_labels: int, knots: list[float]) -> None:
        super().__init__(in_channels=2, n_labels=n_labels, base_channels=4, blocks_per_group=1, hidden=8,
                         pool_size=1, dropout=0.0, snr_knots=knots)

    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0, : 2 * self.n_labels] + 0 * self.label_mean.sum()

    def input_snr(self, x: Tensor) -> Tensor:
        return x[:, 1, 0]


def _draw(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A head whose error grows faster with the noise (true sigma 0.5 snr^-0.75) than its sigma (claimed
    0.3 snr^-0.5): true/claimed = (5/3) snr^-0.25, over-confident at S/N 5 (1.11), under-confident at S/N 150
    (0.48)."""
    g = torch.Generator().manual_seed(seed)
    snr = torch.exp(torch.empty(n).uniform_(math.log(5), math.log(150), generator=g))
    true_sigma = (0.5 * snr ** -0.75)[:, None].expand(n, 2)
    claimed = (0.3 / snr.sqrt())[:, None].expand(n, 2)
    target = torch.randn(n, 2, generator=g)
    mean = target + true_sigma * torch.randn(n, 2, generator=g)
    x = torch.zeros(n, 2, 4)
    x[:, 0, :2] = mean
    x[:, 0, 2:] = torch.log(claimed**2)
    x[:, 1, 0] = snr
    return x, target, torch.ones_like(target, dtype=torch.bool), snr


def _binned_coverage(model: SpectralResCNN, x: Tensor, target: Tensor, snr: Tensor) -> Tensor:
    """(len(BINS), L) fraction of |error| <= sigma per S/N bin, through predict_labels (S/N measured by the model)."""
    p = predict_labels(model, x)
    inside = ((p["mean"] - target).abs() <= p["sigma"]).float()
    return torch.stack([inside[(snr >= lo) & (snr < hi)].mean(0) for lo, hi in BINS])


def test_snr_table_restores_68_percent_in_every_snr_bin_where_a_global_factor_misses() -> None:
    model = _Oracle(2, KNOTS)
    x, t, m, _ = _draw(40000, seed=0)
    fit = cal.fit_sigma_calibration(model, x, t, m, ONE_SIGMA, torch.tensor(KNOTS), min_per_bin=100)
    assert torch.equal(model.sigma_scale_snr, torch.ones(6, 2))  # fitting alone changes nothing
    x2, t2, _, s2 = _draw(40000, seed=1)

    model.sigma_scale.copy_(fit["scale"])  # global factor alone (the table stays ones)
    glob = _binned_coverage(model, x2, t2, s2)
    assert (glob[0] < ONE_SIGMA - 0.1).all() and (glob[-1] > ONE_SIGMA + 0.1).all(), glob

    model.set_snr_table(torch.tensor(KNOTS), fit["relative"], fitted=True)
    cond = _binned_coverage(model, x2, t2, s2)
    assert ((cond - ONE_SIGMA).abs() < 0.03).all(), cond
    # the absolute factor at each knot follows the constructed true/claimed ratio (1.11 at S/N 5, 0.48 at 150)
    ratio = 5 / 3 * torch.tensor(KNOTS) ** -0.25
    assert torch.allclose(fit["factors"][:, 0], ratio, rtol=0.06), (fit["factors"][:, 0], ratio)


def test_factor_is_linear_in_log_snr_between_knots_and_constant_outside() -> None:
    net = SpectralResCNN(n_labels=2, base_channels=4, hidden=8, snr_knots=[10.0, 100.0])
    net.set_snr_table(torch.tensor([10.0, 100.0]), torch.tensor([[1.0, 2.0], [3.0, 0.5]]), fitted=True)
    snr = torch.tensor([10.0, 100.0, math.sqrt(1000.0), 10 ** 1.25, 2.0, 1000.0, 0.0, float("nan")])
    want = torch.tensor([[1.0, 2.0], [3.0, 0.5], [2.0, 1.25], [1.5, 1.625], [1.0, 2.0], [3.0, 0.5],
                         [1.0, 2.0], [1.0, 2.0]])
    assert torch.allclose(net.snr_factor(snr), want, atol=1e-5)
    # to_physical: sigma = sqrt(exp(0) + min_sigma^2) x label_std x sigma_scale x factor
    net.sigma_scale.copy_(torch.tensor([2.0, 1.0]))
    _, sigma = net.to_physical(torch.zeros(8, 4), snr)
    assert torch.allclose(sigma, want * torch.tensor([2.0, 1.0]) * math.sqrt(1 + 1e-6), atol=1e-5)
    _, global_only = net.to_physical(torch.zeros(8, 4))
    assert torch.allclose(global_only, torch.tensor([2.0, 1.0]).expand(8, 2) * math.sqrt(1 + 1e-6))


def test_input_snr_is_the_median_flux_times_inverse_error_over_good_pixels() -> None:
    net = SpectralResCNN(n_labels=1, base_channels=4, hidden=8, snr_pixel_scale=100.0)
    x = torch.ones(2, 2, 5)
    x[0, 1] = torch.tensor([0.2, 0.3, 0.5, 0.0, 0.0])  # two pixels without data are left out
    x[0, 0] = torch.tensor([1.0, 0.5, 1.0, 9.0, 9.0])
    x[1, 1] = 0.0  # no good pixel at all
    assert torch.allclose(net.input_snr(x), torch.tensor([20.0, 0.0]))
    assert SpectralResCNN(in_channels=1, n_labels=1, base_channels=4, hidden=8).input_snr(x[:, :1]) is None


def test_an_empty_or_small_bin_keeps_the_global_factor() -> None:
    g = torch.Generator().manual_seed(3)
    snr = torch.cat([torch.full((3000,), 10.0), torch.full((20,), 50.0)])  # knot 20 empty, knot 50 small
    z = (torch.randn(3020, 2, generator=g) * torch.tensor([2.0, 0.5])).abs()
    z[:100, 1] = torch.nan  # masked labels do not count
    fallback = torch.tensor([7.0, 8.0])
    factors, counts = cal.binned_factors(z, snr, torch.tensor([10.0, 20.0, 50.0]), ONE_SIGMA, 100, fallback)
    assert counts.tolist() == [[3000, 2900], [0, 0], [20, 20]]
    assert torch.allclose(factors[0], torch.tensor([2.0, 0.5]), rtol=0.06)
    assert torch.equal(factors[1:], fallback.expand(2, 2))


def test_an_old_checkpoint_loads_with_its_global_factor_and_asks_for_a_refit() -> None:
    kw = dict(n_labels=3, base_channels=4, hidden=8)
    old = SpectralResCNN(**kw)
    old.sigma_scale.copy_(torch.tensor([1.5, 0.5, 2.0]))
    state = {k: v for k, v in old.state_dict().items() if k not in ("snr_knots", "sigma_scale_snr", "snr_calibrated")}
    fresh = SpectralResCNN(**kw, snr_knots=KNOTS)
    fresh.sigma_scale_snr.fill_(3.0)
    fresh.snr_calibrated.fill_(True)
    check_weights(fresh, state, "old.ckpt")
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.sigma_scale_snr, torch.ones(6, 3)) and not bool(fresh.snr_calibrated)
    x = torch.randn(4, 2, 64)
    torch.manual_seed(0)
    old.eval()
    with torch.no_grad():
        _, want = old.to_physical(old(x))
    assert torch.allclose(predict_labels(fresh, x)["sigma"], want)  # behaves as before
    cfg = validate_config({"task": "stellar"})
    assert "no S/N-dependent" in str(cal.needs_refit(cfg, fresh))
    # a table fitted on other knots loads too (the checkpoint's knots win)
    other = SpectralResCNN(**kw, snr_knots=[10.0, 50.0])
    other.sigma_scale_snr.copy_(torch.tensor([[2.0] * 3, [0.5] * 3]))
    fresh.load_state_dict(other.state_dict())
    assert fresh.snr_knots.tolist() == [10.0, 50.0] and fresh.sigma_scale_snr.shape == (2, 3)


def _tiny_cfg(**calibration: object) -> object:
    return validate_config({
        "task": "stellar", "seed": 2, "labels": {"names": ["TEFF", "FE_H"]},
        "preprocess": {"grid_min_aa": 4000.0, "grid_max_aa": 6800.0, "grid_step_log10": 4e-4},
        "model": {"base_channels": 4, "hidden": 8, "pool_size": 2},
        "inference": {"device": "cpu"},
        "calibration": {"n_spectra": 96, "chunk": 96, "min_per_bin": 8, **calibration},
    })


def test_recalibrate_fits_a_loaded_model_once_and_the_report_says_so(tmp_path: Path) -> None:
    cfg = _tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    info = cal.recalibrate(cfg, model)
    assert info is not None and info["refit"] and "no S/N-dependent" in info["reason"]
    assert bool(model.snr_calibrated) and model.snr_knots.tolist() == KNOTS
    assert not torch.equal(model.sigma_scale_snr, torch.ones(6, 2))  # populated knots got their own factor
    assert sum(info["spectra_per_knot"]) == 96 and len(info["at_knots"]["FE_H"]) == 6
    assert cal.recalibrate(cfg, model) is None  # fitted now: not again
    assert cal.recalibrate(_tiny_cfg(refit_on_load=True), model) is not None
    report = tmp_path / "report.md"
    report.write_text("# stellar evaluation\n")
    cal.append_to_report(report, info)
    assert "Sigma calibration refitted" in report.read_text() and "S/N 150" in report.read_text()
    assert "Sigma calibration refitted" in (tmp_path / "report.html").read_text()


def test_predict_recalibrates_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from neurotrain.tasks.stellar import predict as pr
    from neurotrain.tasks.stellar.task import StellarTask

    seen: dict[str, object] = {}
    monkeypatch.setattr(pr, "predict_files", lambda cfg, model, inputs, output, **o: seen.update(o) or [])
    cfg = _tiny_cfg()
    model = build_model(cfg)
    StellarTask().predict(cfg, model, [], tmp_path / "l.csv")
    assert not bool(model.snr_calibrated)  # not asked: the checkpoint's factors are used as they are
    StellarTask().predict(cfg, model, [], tmp_path / "l.csv", recalibrate=True, mc_samples=0)
    assert bool(model.snr_calibrated) and seen == {"mc_samples": 0}
