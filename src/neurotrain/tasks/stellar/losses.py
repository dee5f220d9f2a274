"""Losses of the stellar task, in normalised label units, with missing labels masked.

A reference catalogue rarely has every label for every star (GALAH gives [Na/Fe] where APOGEE does not,
[C/Fe] is missing for hot stars), so each (spectrum, label) pair counts only where ``batch["target_mask"]``
is True *and* the target is finite; a NaN target never reaches the gradient (it is replaced before any
arithmetic, since ``NaN * 0`` is still NaN).

* :class:`GaussianNLL` - heteroscedastic Gaussian negative log-likelihood,
  ``0.5 (log var + (y - mu)^2 / var)`` with ``var = exp(log_var) + min_sigma^2`` (a smooth floor that keeps
  the NLL finite and its gradient alive), optionally beta-weighted (Seitzer et al. 2022, "On the Pitfalls of
  Heteroscedastic Uncertainty Estimation with Probabilistic Neural Networks", ICLR): each term times
  ``stop_grad(var) ** beta``.
* :class:`MaskedMSE` - mean squared error of the means.

Both average over the known (spectrum, label) pairs of the batch, so a label known for few stars weighs
per star as much as a common one, and report one term per label (``nll_TEFF``, ``mse_FE_H``...) that the
engine logs as ``train/<term>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor, nn

from neurotrain.tasks.stellar.models import LOGVAR_CLAMP

if TYPE_CHECKING:
    from neurotrain.tasks.stellar.config import StellarConfig


def known_mask(batch: dict[str, Tensor]) -> Tensor:
    """(B, L) bool: the label is known (``target_mask`` where present) and finite."""
    target = batch["target"]
    ok = torch.isfinite(target)
    if "target_mask" in batch:
        ok = ok & batch["target_mask"].bool()
    return ok


class _LabelLoss(nn.Module):
    """Shared parts: label normalisation buffers, target normalisation with masking, per-label reduction."""

    term: str = "loss"

    def __init__(self, names: Sequence[str], label_mean: Sequence[float], label_std: Sequence[float]) -> None:
        super().__init__()
        self.names = list(names)
        self.register_buffer("label_mean", torch.as_tensor(label_mean, dtype=torch.float32))
        self.register_buffer("label_std", torch.as_tensor(label_std, dtype=torch.float32))

    def _targets(self, pred: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Normalised targets (NaN-free; 0 where unknown) and the float weight mask, both (B, L)."""
        ok = known_mask(batch)
        target = batch["target"].to(pred.dtype)
        t = torch.where(ok, target, self.label_mean.to(pred.dtype))
        t = (t - self.label_mean.to(pred.dtype)) / self.label_std.to(pred.dtype)
        return t, ok.to(pred.dtype)

    def _reduce(self, per: Tensor, w: Tensor) -> dict[str, Tensor]:
        """Mean over the known pairs, plus one mean per label (0 for a label unknown in the whole batch)."""
        per = per * w  # unknown pairs are exactly 0 (per is finite everywhere by construction)
        n_lab = w.sum(0)
        out = {"loss": per.sum() / w.sum().clamp_min(1.0)}
        per_label = per.sum(0) / n_lab.clamp_min(1.0)
        for i, name in enumerate(self.names):
            out[f"{self.term}_{name}"] = per_label[i].detach()
        return out


class GaussianNLL(_LabelLoss):
    """Heteroscedastic Gaussian NLL on (B, 2L) output [normalised means, log variances].

    Args:
        names: label names (for the per-label terms).
        label_mean, label_std: physical normalisation (the model's buffers).
        min_sigma: sigma floor in normalised units, added in quadrature.
        beta: beta-NLL exponent (0 = plain NLL).
    """

    term = "nll"

    def __init__(
        self, names: Sequence[str], label_mean: Sequence[float], label_std: Sequence[float],
        min_sigma: float = 1e-3, beta: float = 0.0,
    ) -> None:
        super().__init__(names, label_mean, label_std)
        self.min_sigma = float(min_sigma)
        self.beta = float(beta)

    def forward(self, pred: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        L = len(self.names)
        if pred.shape[1] != 2 * L:
            raise ValueError(f"gaussian_nll: expected (B, {2 * L}) means and log variances (got {tuple(pred.shape)})")
        pred = pred.float()
        t, w = self._targets(pred, batch)
        mu = pred[:, :L]
        var = torch.exp(pred[:, L:].clamp(*LOGVAR_CLAMP)) + self.min_sigma**2
        per = 0.5 * (torch.log(var) + (t - mu) ** 2 / var)
        if self.beta > 0:
            per = per * var.detach() ** self.beta
        out = self._reduce(per, w)
        # the squared error of the means alone, for a loss curve comparable to the MSE loss
        out["mse"] = (((t - mu) ** 2) * w).sum().detach() / w.sum().clamp_min(1.0)
        return out


class MaskedMSE(_LabelLoss):
    """Mean squared error of the normalised means; takes (B, L) or the first L columns of (B, 2L)."""

    term = "mse"

    def forward(self, pred: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        L = len(self.names)
        pred = pred.float()
        t, w = self._targets(pred, batch)
        return self._reduce((t - pred[:, :L]) ** 2, w)


def build_loss(
    cfg: StellarConfig, label_mean: Sequence[float] | None = None, label_std: Sequence[float] | None = None
) -> nn.Module:
    """The loss of ``cfg.loss`` for ``cfg.labels.names``; a mean-only model always gets the MSE."""
    from neurotrain.tasks.stellar.models import label_stats

    if label_mean is None or label_std is None:
        dm, ds = label_stats(cfg)
        label_mean = dm if label_mean is None else label_mean
        label_std = ds if label_std is None else label_std
    names = cfg.labels.names
    if cfg.loss.name == "gaussian_nll" and cfg.model.heteroscedastic:
        return GaussianNLL(names, label_mean, label_std, cfg.loss.min_sigma, cfg.loss.beta)
    return MaskedMSE(names, label_mean, label_std)
