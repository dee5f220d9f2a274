"""SMLM losses: PPXYZBLoss, DECODE's GaussianMMLoss and UnifiedLoss (weighted sub-losses).

All take ``(pred, batch)``: ``pred`` the activated network output (see :mod:`models`),
``batch`` the simulator's dict (``target`` pixel maps, ``em``/``em_mask`` emitter set).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neurotrain.errors import ConfigError

SIGMA_SCALE, SIGMA_MIN = 3.0, 0.01  # DECODE's sigma mapping: 3 * sigmoid + 0.01 (normalised units)


def bg_channel(pred: torch.Tensor) -> int | None:
    """Index of the background channel of a 5/6/10-channel output (None for 5ch)."""
    return {5: None, 6: 5, 10: 9}[pred.shape[1]]


class PPXYZBLoss(nn.Module):
    """Pixel-wise loss: BCE on p; MSE on photons, x, y, z where an emitter is; MSE on background.

    ``channel_weights`` weigh (p, photons, x, y, z, bg); ``pos_weight`` up-weighs emitter pixels in
    the BCE (emitters occupy ~1 % of pixels).
    """

    def __init__(self, channel_weights: tuple[float, ...] = (1, 1, 1, 1, 1, 1), pos_weight: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("w", torch.tensor(channel_weights, dtype=torch.float32), persistent=False)
        self.pos_weight = pos_weight

    def forward(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tgt = batch["target"]
        p = pred[:, 0].clamp(1e-6, 1 - 1e-6)
        pt = tgt[:, 0]
        wpix = 1 + (self.pos_weight - 1) * pt
        bce = (F.binary_cross_entropy(p, pt, reduction="none") * wpix).mean()
        m = pt[:, None]
        n = m.sum().clamp(min=1)
        reg = (((pred[:, 1:5] - tgt[:, 1:5]) ** 2) * m).sum((0, 2, 3)) / n
        terms = {"p": bce, "photons": reg[0], "x": reg[1], "y": reg[2], "z": reg[3]}
        bc = bg_channel(pred)
        terms["bg"] = F.mse_loss(pred[:, bc], tgt[:, 5]) if bc is not None else pred.new_zeros(())
        total = sum(self.w[i] * v for i, v in enumerate(terms.values()))
        return {"loss": total, **{f"ppxyzb_{k}": v.detach() for k, v in terms.items()}}


class GaussianMMLoss(nn.Module):
    """DECODE's Gaussian-mixture negative log-likelihood (Speiser et al., Nat. Methods 18:1082, 2021).

    Every pixel k is a mixture component with weight p_k / sum p and a diagonal Gaussian over
    (photons, x, y, z) with the predicted means and sigmas; the loss per image is
    ``-(n log N(n | sum p, sum p(1-p)) + sum_emitters log sum_k w_k N(e | mu_k, sigma_k))``
    (the emitter count modelled as the Gaussian approximation of a Poisson-binomial), plus
    ``bg_weight`` x the background squared error summed over pixels. Requires the 10-channel
    output of SigmaMUNet.
    """

    def __init__(self, photon_scale: float, z_scale: float, bg_weight: float = 1.0) -> None:
        super().__init__()
        self.photon_scale, self.z_scale, self.bg_weight = photon_scale, z_scale, bg_weight

    def forward(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if pred.shape[1] != 10:
            raise ConfigError(f"config error: loss.name: GaussianMMLoss needs a 10-channel model (SigmaMUNet), got {pred.shape[1]} channels")
        b, _, h, w = pred.shape
        p = pred[:, 0]
        em, mask = batch["em"], batch["em_mask"].to(pred.dtype)
        n = mask.sum(1)
        p_sum = p.sum((1, 2))
        p_var = (p - p * p).sum((1, 2)).clamp(min=1e-6)
        count_ll = -0.5 * (n - p_sum) ** 2 / p_var - 0.5 * torch.log(2 * math.pi * p_var)
        yy, xx = torch.meshgrid(torch.arange(h, device=pred.device, dtype=pred.dtype) + 0.5,
                                torch.arange(w, device=pred.device, dtype=pred.dtype) + 0.5, indexing="ij")
        mu = torch.stack([pred[:, 1], pred[:, 2] + xx, pred[:, 3] + yy, pred[:, 4]], 1).flatten(2)  # [B,4,HW]
        sig = (pred[:, 5:9] * SIGMA_SCALE + SIGMA_MIN).flatten(2)
        tgt = torch.stack([em[..., 3] / self.photon_scale, em[..., 0], em[..., 1], em[..., 2] / self.z_scale], -1)
        logw = torch.log((p / p_sum.clamp(min=1e-6)[:, None, None]).flatten(1).clamp(min=1e-12))  # [B,HW]
        d = (tgt[:, :, :, None] - mu[:, None]) / sig[:, None]  # [B,K,4,HW]
        comp = (-0.5 * d * d - torch.log(sig[:, None]) - 0.5 * math.log(2 * math.pi)).sum(2)  # [B,K,HW]
        gmm_ll = (torch.logsumexp(comp + logw[:, None], -1) * mask).sum(1)
        nll = -(count_ll * n + gmm_ll)
        out = {"gmm": nll.mean()}
        bc = bg_channel(pred)
        out["bg"] = ((pred[:, bc] - batch["target"][:, 5]) ** 2).sum((1, 2)).mean()
        total = out["gmm"] + self.bg_weight * out["bg"]
        return {"loss": total, **{f"gmm_{k}": v.detach() for k, v in out.items()}}


class UnifiedLoss(nn.Module):
    """Weighted sum of sub-losses with linear warm-up and optional dynamic weighting.

    Each term ``i`` has weight ``w_i``, ramped linearly from 0 over ``warmup_epochs`` (epochs counted
    from training steps and ``steps_per_epoch``). With ``dynamic_weighting`` each term is divided
    by an exponential moving average of its own magnitude over the first epoch, then held, so every
    term contributes ~``w_i`` whatever its scale (loss balancing). Held, because a negative
    log-likelihood such as :class:`GaussianMMLoss` passes through zero as the predicted sigmas
    shrink: a normaliser that kept following it would give that term an unbounded weight (on the
    H200 a 2,000-step SigmaMUNet trained that way detected nothing). For the same reason the
    normaliser never drops below ``floor`` x the largest magnitude the term had so far. The engine
    sets ``steps_per_epoch`` to the trainer's real batches per epoch (:meth:`set_steps_per_epoch`;
    DDP ranks and ``limit_train_batches`` change it). Every term is returned for logging.
    """

    def __init__(self, terms: list[tuple[str, nn.Module, float, int]], steps_per_epoch: int,
                 dynamic_weighting: bool = False, ema: float = 0.98, floor: float = 0.1) -> None:
        super().__init__()
        self.names = [t[0] for t in terms]
        self.losses = nn.ModuleList([t[1] for t in terms])
        self.weights = [t[2] for t in terms]
        self.warmup = [t[3] for t in terms]
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.dynamic, self.ema, self.floor = dynamic_weighting, ema, floor
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("running", torch.ones(len(terms)))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        # only needed while the normaliser still moves (first epoch); the floor is then part of `running`
        self.register_buffer("largest", torch.zeros(len(terms)), persistent=False)

    def set_steps_per_epoch(self, n: int) -> None:
        """Training batches per epoch, as the trainer counts them (per rank)."""
        self.steps_per_epoch = max(1, int(n))

    def term_weight(self, i: int) -> float:
        epoch = float(self.step) / self.steps_per_epoch
        ramp = 1.0 if self.warmup[i] == 0 else min(1.0, (epoch + 1) / (self.warmup[i] + 1))
        return self.weights[i] * ramp

    def forward(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        outs = [loss(pred, batch) for loss in self.losses]
        vals = torch.stack([o["loss"] for o in outs])
        if self.dynamic and self.training and int(self.step) < self.steps_per_epoch:
            with torch.no_grad():
                mag = vals.detach().abs().clamp(min=1e-8)
                self.largest.copy_(torch.maximum(self.largest, mag))
                ema = torch.where(self.seen, self.ema * self.running + (1 - self.ema) * mag, mag)
                self.running.copy_(torch.maximum(ema, self.floor * self.largest))
                self.seen.fill_(True)
        scale = 1.0 / self.running.clamp(min=1e-8) if self.dynamic else torch.ones_like(vals)
        w = torch.tensor([self.term_weight(i) for i in range(len(outs))], device=vals.device, dtype=vals.dtype)
        total = (w * scale * vals).sum()
        if self.training:
            self.step += 1
        log: dict[str, Any] = {"loss": total}
        for i, (name, o) in enumerate(zip(self.names, outs)):
            log[f"{name}_loss"] = o["loss"].detach()
            log[f"{name}_weight"] = w[i].detach()
            log.update({k: v for k, v in o.items() if k != "loss"})
        return log


def build_loss(cfg: Any) -> nn.Module:
    """The loss named by ``cfg.loss.name`` with scales from the model/simulation config."""
    from neurotrain.tasks.smlm.simulate import z_scale

    lc = cfg.loss

    def one(name: str) -> nn.Module:
        if name == "GaussianMMLoss":
            if not cfg.model.name.startswith("SigmaMUNet"):
                raise ConfigError(f"config error: loss: GaussianMMLoss needs model.name SigmaMUNet or SigmaMUNetWithUncertainty (got {cfg.model.name!r})")
            return GaussianMMLoss(cfg.model.photon_scale, z_scale(cfg), lc.bg_weight)
        return PPXYZBLoss(lc.channel_weights, lc.pos_weight)

    if lc.name != "UnifiedLoss":
        return one(lc.name)
    if not lc.terms:
        raise ConfigError("config error: loss.terms: UnifiedLoss needs at least one term (got [])")
    spe = math.ceil(cfg.data.sim_train_size / cfg.data.batch_size)
    return UnifiedLoss([(t.type, one(t.type), t.weight, t.warmup_epochs) for t in lc.terms], spe,
                       lc.dynamic_weighting, lc.ema, lc.dynamic_floor)
