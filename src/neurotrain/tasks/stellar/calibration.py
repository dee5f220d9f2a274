"""Post-hoc calibration of the network's predicted sigma, one factor per label.

The heteroscedastic head learns sigma with the beta-NLL loss, whose variance gradient is damped by
sigma^(2 beta): while the mean keeps improving, the variance lags behind, and a trained head's sigma comes
out too wide (1-sigma coverage 0.76-0.94 instead of 0.683 on the H200 run; docs/results/stellar.md). The
standard remedy is recalibration on data the network did not train on (Kuleshov, Fenner & Ermon 2018,
ICML; Levi et al. 2022, "sigma scaling"): each label's sigma is multiplied by

    s_l = Q_p( |mu_l - y_l| / sigma_l ),   p = 0.6827,

the p-quantile of the normalised absolute error on a calibration set, so that a fraction p of it lies
inside +-1 sigma. The factor lives in the model (``SpectralResCNN.sigma_scale``), so it travels with
every checkpoint and export. MC-dropout and ensemble spread are added on top of the calibrated aleatoric
sigma (``postprocess.predict_labels``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from neurotrain.tasks.stellar.config import StellarConfig
from neurotrain.tasks.stellar.postprocess import predict_labels


def sigma_scale_factors(
    model: nn.Module, inputs: Tensor, target: Tensor, mask: Tensor, coverage: float, batch_size: int = 1024
) -> Tensor:
    """(L,) factors s_l that make ``coverage`` of the set fall inside +-s_l sigma_l (sigma uncalibrated).

    Args:
        model: a heteroscedastic ``SpectralResCNN``; its ``sigma_scale`` is ignored (treated as 1) here.
        inputs: (B, C, M) network input on the model's device.
        target: (B, L) true labels, physical units.
        mask: (B, L) bool, which labels count (spectra the pipeline dropped are False).
        coverage: fraction in (0, 1), 0.6827 for Gaussian 1 sigma.
    """
    saved = model.sigma_scale.clone()
    model.sigma_scale.fill_(1.0)
    try:
        pred = predict_labels(model, inputs, batch_size=batch_size)
    finally:
        model.sigma_scale.copy_(saved)
    z = (pred["mean"] - target.float()).abs() / pred["sigma"].clamp_min(torch.finfo(torch.float32).tiny)
    z = torch.where(mask, z, torch.nan)
    scale = torch.nanquantile(z, coverage, dim=0)
    # a label with no usable spectrum keeps its sigma unchanged
    return torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))


def calibration_set(cfg: StellarConfig, device: torch.device) -> dict[str, Tensor]:
    """``calibration.n_spectra`` generator spectra over the training label prior and S/N range, from the
    calibration's own seed (disjoint from training batches, validation pools and ``evaluate``)."""
    from neurotrain.tasks.stellar.task import draw_batch

    c = cfg.calibration
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed * 1_000_003 + c.seed_offset)
    parts = [draw_batch(cfg, min(c.chunk, c.n_spectra - s), gen, device) for s in range(0, c.n_spectra, c.chunk)]
    return {k: torch.cat([p[k] for p in parts]) for k in ("input", "target", "target_mask")}


def calibrate_model(cfg: StellarConfig, model: nn.Module, data: dict[str, Tensor] | None = None) -> Tensor:
    """Fit and set ``model.sigma_scale`` on the calibration set (drawn when ``data`` is None), with the
    network run at ``inference.precision``; returns the factors."""
    from neurotrain.engine.inference import autocast

    device = next(model.parameters()).device
    data = calibration_set(cfg, device) if data is None else data
    # the factors are fitted in the arithmetic that evaluate and predict use (``inference.precision``):
    # bf16 rounding adds error that the sigma must cover
    with autocast(device, cfg.inference.precision):
        scale = sigma_scale_factors(
            model, data["input"], data["target"], data["target_mask"], cfg.calibration.coverage, cfg.calibration.chunk
        )
    model.sigma_scale.copy_(scale.to(model.sigma_scale))
    return scale


class SigmaCalibration(L.Callback):
    """Refits ``sigma_scale`` after every validation epoch, before the checkpoint of that epoch is written
    (Lightning runs callbacks' ``on_validation_epoch_end`` before ``ModelCheckpoint.on_validation_end``)."""

    def __init__(self, cfg: StellarConfig) -> None:
        self.cfg = cfg
        self._data: dict[str, Tensor] | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        model: Any = pl_module.model
        if not getattr(model, "heteroscedastic", False):
            return
        device = next(model.parameters()).device
        if self._data is None or self._data["input"].device != device:
            self._data = calibration_set(self.cfg, device)
        with torch.inference_mode(False), torch.no_grad():
            scale = calibrate_model(self.cfg, model, self._data)
        names = self.cfg.labels.names
        pl_module.log_dict({f"val/sigma_scale/{n}": float(v) for n, v in zip(names, scale.tolist())}, sync_dist=False)
