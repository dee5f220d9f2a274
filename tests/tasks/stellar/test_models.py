"""SpectralResCNN: shapes, size, normalisation buffers, physical conversion, ONNX export."""

from __future__ import annotations

import math

import pytest
import torch

from neurotrain.errors import ConfigError
from neurotrain.tasks.stellar.config import StellarConfig
from neurotrain.tasks.stellar.models import SegmentPool, SpectralResCNN, build_model, count_parameters, label_stats


def test_default_size_and_shapes() -> None:
    cfg = StellarConfig()
    m = build_model(cfg)
    n = count_parameters(m)
    # the reference net has 0.43 M parameters; ours is that size, not 10x bigger or smaller
    assert 0.3e6 < n < 0.5e6, n
    L = len(cfg.labels.names)
    out = m(torch.randn(3, 2, 1000))
    assert out.shape == (3, 2 * L)
    cfg1 = StellarConfig.model_validate({"model": {"heteroscedastic": False, "in_channels": 1}})
    assert build_model(cfg1)(torch.randn(2, 1, 1000)).shape == (2, L)


def test_label_stats_from_prior_and_config() -> None:
    cfg = StellarConfig.model_validate({"labels": {"names": ["TEFF", "FE_H"]}})
    mean, std = label_stats(cfg)
    assert mean == [5400.0, -0.75]
    assert std[0] == pytest.approx(3200.0 / math.sqrt(12.0))
    cfg2 = StellarConfig.model_validate({"labels": {"names": ["TEFF", "FE_H"], "mean": [5000, 0], "std": [500, 0.3]}})
    m = build_model(cfg2)
    assert m.label_mean.tolist() == [5000.0, 0.0]
    bad = StellarConfig.model_validate({"labels": {"names": ["TEFF", "FE_H"], "mean": [5000], "std": [500]}})
    with pytest.raises(ConfigError, match="labels.mean/std"):
        build_model(bad)
    unknown = StellarConfig.model_validate({"labels": {"names": ["TEFF", "O_FE"]}})
    with pytest.raises(ConfigError, match="O_FE"):
        label_stats(unknown)


def test_untrained_predicts_prior_and_to_physical() -> None:
    m = SpectralResCNN(n_labels=2, label_mean=[5000.0, -0.5], label_std=[500.0, 0.2], base_channels=8).eval()
    mean, sigma = m.to_physical(m(torch.randn(4, 2, 512)))
    torch.testing.assert_close(mean, torch.tensor([[5000.0, -0.5]]).expand(4, 2))
    torch.testing.assert_close(sigma, torch.tensor([[500.0, 0.2]]).expand(4, 2), rtol=1e-5, atol=1e-6)
    # hand case: mu 1, log var log(4) -> mean 5500 K, sigma 2 x 500 = 1000 K; extreme log var stays finite
    out = torch.tensor([[1.0, 0.0, math.log(4.0), 1e9]])
    mean, sigma = m.to_physical(out)
    assert mean[0, 0].item() == pytest.approx(5500.0)
    assert sigma[0, 0].item() == pytest.approx(1000.0, rel=1e-5)
    assert torch.isfinite(sigma).all()
    m1 = SpectralResCNN(n_labels=2, heteroscedastic=False, base_channels=8)
    assert m1.to_physical(torch.zeros(1, 2))[1].abs().sum() == 0


def test_segment_pool_matches_padded_average() -> None:
    x = torch.arange(10.0).view(1, 1, 10)
    y = SegmentPool(4)(x)  # ceil(10/4) = 3 per segment, two zeros padded on the right
    torch.testing.assert_close(y, torch.tensor([[[1.0, 4.0, 7.0, 9.0 / 3.0]]]))
    torch.testing.assert_close(SegmentPool(1)(x), x.mean(-1, keepdim=True))


def test_dropout_is_the_only_randomness_in_train_mode() -> None:
    torch.manual_seed(0)
    m = SpectralResCNN(n_labels=2, base_channels=8, dropout=0.5)
    torch.nn.init.normal_(m.head[-1].weight, std=0.1)
    x = torch.randn(2, 2, 256)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    m.head.train()  # dropout on, batch norm still in eval
    assert not torch.allclose(m(x), m(x))


def test_onnx_export_matches_torch(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from neurotrain.export import export_onnx

    torch.manual_seed(1)
    m = SpectralResCNN(n_labels=3, base_channels=8, hidden=32, pool_size=8).eval()
    torch.nn.init.normal_(m.head[-1].weight, std=0.1)
    report = export_onnx(m, torch.randn(2, 2, 700), tmp_path / "m.onnx", exporter="torchscript")
    assert (tmp_path / "m.onnx").is_file()
    assert report.max_abs_error is not None and report.max_abs_error < 1e-4
    assert report.max_abs_error_other_batch is not None and report.max_abs_error_other_batch < 1e-4


class _Const(torch.nn.Module):
    """A 'network' predicting a fixed normalised mean and log variance for every spectrum."""

    def __init__(self, mu: float, logvar: float) -> None:
        super().__init__()
        self.out = torch.tensor([mu, logvar])

    def forward(self, x):
        return self.out.expand(x.shape[0], 2)

    def to_physical(self, out):
        return out[:, :1] * 10.0 + 100.0, torch.exp(0.5 * out[:, 1:]) * 10.0


def test_predict_labels_total_variance_of_an_ensemble() -> None:
    from neurotrain.tasks.stellar.postprocess import predict_labels

    x = torch.zeros(5, 1, 8)
    res = predict_labels(_Const(-1.0, 0.0), x, ensemble=[_Const(1.0, 0.0)], batch_size=2)
    # member means 90 and 110 (sigma 10 each): mean 100, aleatoric 10, epistemic 10, total 10 sqrt 2
    torch.testing.assert_close(res["mean"], torch.full((5, 1), 100.0))
    torch.testing.assert_close(res["sigma_aleatoric"], torch.full((5, 1), 10.0))
    torch.testing.assert_close(res["sigma_epistemic"], torch.full((5, 1), 10.0))
    torch.testing.assert_close(res["sigma"], torch.full((5, 1), 10.0 * math.sqrt(2.0)))


def test_predict_labels_mc_dropout_restores_modes() -> None:
    from neurotrain.tasks.stellar.postprocess import predict_labels

    torch.manual_seed(0)
    m = SpectralResCNN(n_labels=2, base_channels=8, hidden=32, pool_size=4, dropout=0.3,
                       label_mean=[5000.0, 0.0], label_std=[500.0, 0.3])
    torch.nn.init.normal_(m.head[-1].weight, std=0.3)
    m.train()
    bn = m.stem[1]
    running = bn.running_mean.clone()
    x = torch.randn(6, 2, 256)
    det = predict_labels(m, x)
    assert torch.all(det["sigma_epistemic"] == 0)
    mc = predict_labels(m, x, mc_samples=16, batch_size=32)
    assert torch.all(mc["sigma_epistemic"] > 0)
    assert torch.all(mc["sigma"] >= mc["sigma_aleatoric"])
    torch.testing.assert_close(bn.running_mean, running)  # batch norm never ran in training mode
    assert m.training and m.head[1].training  # modes restored
    m.eval()
    torch.testing.assert_close(det["mean"], m.to_physical(m(x))[0])
