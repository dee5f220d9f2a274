import copy

import pytest
import torch

from neurotrain.errors import ConfigError
from neurotrain.tasks.smlm.config import SMLMConfig
from neurotrain.tasks.smlm.losses import GaussianMMLoss, PPXYZBLoss, UnifiedLoss, build_loss
from neurotrain.tasks.smlm.metrics import SMLMMetrics
from neurotrain.tasks.smlm.models import SigmaMUNetWithUncertainty, build_model
from neurotrain.tasks.smlm.simulate import simulate_batch
from neurotrain.tasks.smlm.task import SMLMTask

NAMES = ["SimpleSMLMNet", "EnhancedSimpleSMLMNet", "DoubleMUnet", "SigmaMUNet", "SigmaMUNetWithUncertainty"]


@pytest.mark.parametrize("name", NAMES)
def test_models_output_ranges(tiny_cfg, name) -> None:
    cfg = tiny_cfg.model_copy(update={"model": tiny_cfg.model.model_copy(update={"name": name, "mode": "5ch"})})
    out = build_model(cfg)(torch.randn(2, 3, 16, 16))
    assert out.shape[1] == (10 if name.startswith("Sigma") else 5)
    assert out[:, 0].min() >= 0 and out[:, 0].max() <= 1 and out[:, 2:5].abs().max() <= 1
    assert out[:, 0].mean() < 0.05  # p head starts near DECODE's prior (bias -6)


def test_double_unet_cached_features_equal_forward(tiny_cfg) -> None:
    torch.manual_seed(0)
    m = build_model(tiny_cfg).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(m.from_features(m.frame_features(x)), m(x), atol=1e-6)


def test_fused_heads_equal_the_four_heads() -> None:
    from neurotrain.tasks.smlm.models import SigmaMUNet

    torch.manual_seed(0)
    m = SigmaMUNet(3, 1, 1, 8, 8)
    for h in (m.p_head, m.phot_xyz_mu_head, m.phot_xyz_sig_head, m.bg_head):
        torch.nn.init.normal_(h[2].weight)  # distinct, non-trivial 1x1 weights per head
    u = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        separate = torch.cat([m.p_head(u), m.phot_xyz_mu_head(u), m.phot_xyz_sig_head(u), m.bg_head(u)], 1)
        fused = m._fused_heads(u)
    assert torch.allclose(separate, fused, atol=1e-5)


def test_mc_dropout_gives_spread(tiny_cfg) -> None:
    torch.manual_seed(0)
    m = SigmaMUNetWithUncertainty(3, 1, 1, 8, 8, dropout=0.3, mc_samples=4).eval()
    mean, std = m.mc_predict(torch.randn(1, 3, 16, 16))
    assert mean.shape == std.shape == (1, 10, 16, 16) and std.mean() > 0 and not m.training


def test_losses_finite_and_gmm_decreases_on_a_batch(tiny_cfg) -> None:
    torch.manual_seed(0)
    batch = simulate_batch(tiny_cfg, 4, torch.Generator().manual_seed(0), "cpu")
    model = build_model(tiny_cfg)
    loss = GaussianMMLoss(tiny_cfg.model.photon_scale, 1.0)
    assert torch.isfinite(PPXYZBLoss()(model(batch["input"]), batch)["loss"])
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    values = []
    for _ in range(25):
        out = loss(model(batch["input"]), batch)
        assert torch.isfinite(out["loss"])
        values.append(out["loss"].item())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert min(values[-5:]) < 0.6 * values[0]


def test_gmm_needs_sigma_model(tiny_cfg) -> None:
    cfg = tiny_cfg.model_copy(update={"model": tiny_cfg.model.model_copy(update={"name": "SimpleSMLMNet"})})
    with pytest.raises(ConfigError, match="GaussianMMLoss"):
        build_loss(cfg)


def test_unified_loss_warmup_and_terms(tiny_cfg) -> None:
    cfg = SMLMConfig.model_validate({**tiny_cfg.model_dump(), "loss": {
        "name": "UnifiedLoss", "dynamic_weighting": True,
        "terms": [{"type": "GaussianMMLoss", "weight": 1.0}, {"type": "PPXYZBLoss", "weight": 2.0, "warmup_epochs": 1}]},
        "data": {"batch_size": 4, "sim_train_size": 8}})
    loss = build_loss(cfg)
    assert isinstance(loss, UnifiedLoss) and loss.steps_per_epoch == 2
    batch = simulate_batch(cfg, 4, torch.Generator().manual_seed(0), "cpu")
    pred = build_model(cfg)(batch["input"])
    out = loss(pred, batch)
    assert out["PPXYZBLoss_weight"].item() == pytest.approx(1.0)  # epoch 0 of a 1-epoch warm-up: half weight
    assert {"GaussianMMLoss_loss", "gmm_gmm", "ppxyzb_p"} <= set(out)
    loss(pred, batch)
    out = loss(pred, batch)
    assert out["PPXYZBLoss_weight"].item() == pytest.approx(2.0)
    assert out["loss"].item() == pytest.approx(3.0, rel=0.3)  # each term normalised to ~its weight


def test_dynamic_weights_are_held_after_the_first_epoch() -> None:
    """A term that crosses zero (a negative log-likelihood as the sigmas shrink) must not get an
    unbounded weight: the normaliser follows the first epoch's magnitudes, then stays."""
    class Scripted(torch.nn.Module):
        def __init__(self, values: list[float]) -> None:
            super().__init__()
            self.values = iter(values)

        def forward(self, pred: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
            return {"loss": pred.sum() * 0 + next(self.values)}

    nll = [40.0, 20.0, 5.0, 1e-4, -3.0]
    mse = [1.0, 1.0, 1.0, 1.0, 1.0]
    loss = UnifiedLoss([("nll", Scripted(nll), 1.0, 0), ("mse", Scripted(mse), 1.0, 0)], steps_per_epoch=2,
                       dynamic_weighting=True, ema=0.5)
    pred = torch.zeros(1, requires_grad=True)
    totals = [loss(pred, {})["loss"].item() for _ in nll]
    held = loss.running.clone()
    assert held[0].item() == pytest.approx(0.5 * 40.0 + 0.5 * 20.0)  # EMA over the first epoch only
    assert totals[3] == pytest.approx(1e-4 / 30.0 + 1.0)  # near zero: a small term, not a huge weight
    assert totals[4] == pytest.approx(-3.0 / 30.0 + 1.0)
    # a term that is near zero when the first epoch ends keeps a normaliser of floor x its largest magnitude
    quick = UnifiedLoss([("nll", Scripted([40.0, 1e-3, 1e-4]), 1.0, 0)], steps_per_epoch=2, dynamic_weighting=True,
                        ema=0.0, floor=0.1)
    quick.set_steps_per_epoch(2)
    [quick(pred, {}) for _ in range(3)]
    assert quick.running[0].item() == pytest.approx(4.0)


def test_engine_tells_the_loss_its_real_epoch_length(tiny_cfg) -> None:
    from types import SimpleNamespace

    from neurotrain.config import config_to_dict
    from neurotrain.engine.module import TaskModule

    cfg = SMLMConfig.model_validate({**tiny_cfg.model_dump(), "loss": {
        "name": "UnifiedLoss", "dynamic_weighting": True, "terms": [{"type": "GaussianMMLoss", "weight": 1.0}]},
        "data": {"batch_size": 4, "sim_train_size": 400}})
    module = TaskModule(config_to_dict(cfg))
    assert module.loss_fn.steps_per_epoch == 100
    module._trainer = SimpleNamespace(num_training_batches=7)  # e.g. one DDP rank with limit_train_batches
    module.on_train_start()
    assert module.loss_fn.steps_per_epoch == 7


def _ji(task, cfg, model, batches) -> float:
    met = task.build_metrics(cfg)
    model.eval()
    with torch.no_grad():
        for b in batches:
            task.update_metrics(met, model(b["input"]), b)
    return met.compute()["jaccard"]


def test_short_training_beats_untrained(tiny_cfg) -> None:
    torch.manual_seed(0)
    cfg = SMLMConfig.model_validate({**tiny_cfg.model_dump(), "loss": {"name": "PPXYZBLoss", "pos_weight": 5.0},
                                     "model": {"name": "SimpleSMLMNet", "depth": 2, "initial_features": 16}})
    task = SMLMTask()
    model, loss = task.build_model(cfg), task.build_loss(cfg)
    val = [simulate_batch(cfg, 8, torch.Generator().manual_seed(100 + i), "cpu") for i in range(3)]
    before = _ji(task, cfg, model, val)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        b = simulate_batch(cfg, 8, g, "cpu")
        out = loss(model(b["input"]), b)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    after = _ji(task, cfg, model, val)
    assert after > before + 20.0, (before, after)


def test_metric_collection_update_from_batch(tiny_cfg) -> None:
    task = SMLMTask()
    met = task.build_metrics(tiny_cfg)
    batch = simulate_batch(tiny_cfg, 3, torch.Generator().manual_seed(0), "cpu")
    perfect = torch.zeros(3, 10, 16, 16)
    perfect[:, 0] = batch["target"][:, 0]
    perfect[:, 1:5] = batch["target"][:, 1:5]
    task.update_metrics(met, perfect, batch)
    r = met.compute()
    assert r["recall"] > 0.9 and r["precision"] == pytest.approx(1.0) and r["rmse_lat_nm"] < 1.0
    assert isinstance(met["smlm"], SMLMMetrics) and r["crlb_lat_nm"] > 0


def test_compiled_for_inference_wraps_each_unet_once() -> None:
    from neurotrain.tasks.smlm.infer import compiled_for_inference
    from neurotrain.tasks.smlm.models import SigmaMUNet

    plain = SigmaMUNet(3, 1, 1, 8, 8)
    keys = list(plain.state_dict())
    m = compiled_for_inference(plain)
    first = (m.shared_unet, m.union_unet)
    assert all(hasattr(u, "_orig_mod") for u in first)
    # the caller's model is not changed: its state dict loads into a fresh model (bench/smlm.py does this)
    assert list(plain.state_dict()) == keys and not hasattr(plain.shared_unet, "_orig_mod")
    SigmaMUNet(3, 1, 1, 8, 8).load_state_dict(plain.state_dict())
    assert m.shared_unet._orig_mod.enc[0][0].weight is plain.shared_unet.enc[0][0].weight  # weights shared
    # evaluate localises several times with one model: the same compiled copy each time
    assert compiled_for_inference(plain) is m and compiled_for_inference(m) is m
    copy.deepcopy(plain)  # nothing compiled hangs on the model itself
