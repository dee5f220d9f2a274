"""Losses of the gamma task; all called as ``loss(pred, batch)`` with ``pred`` (B, 1, N) and
``batch["target"]`` (B, 1, N) in the same normalisation (counts / ``batch["scale"]``).

* :class:`PeakWeightedLoss` - the seed's ``OptimizedSpectralLoss``: peak regions of the target are found on
  the device by a Mexican-hat (Ricker) wavelet convolution (no scipy in the training step) and weighted
  ``1 + peak_weight`` in a squared error; plus a log-domain L1 term for the low-count tails and a total
  count (area) term.
* :class:`AdaptivePeakWeightedLoss` - the same, with the peak weight following a running ratio of the peak
  to the background error (the worse the peaks are fit relative to the rest, the more they weigh).
* :class:`CountingPeakWeightedLoss` - the seed loss plus a counting-noise term: squared error in the Anscombe
  domain 2 sqrt(counts + 3/8) of the spectra rescaled to counts, where every channel's error is measured in
  units of its own Poisson standard deviation (Anscombe, Biometrika 35 (1948) 246). Dips to zero beside a
  strong peak, overshoot lobes and a flat floor over an empty high-energy region cost what their
  significance against counting noise is - the quantity the peak search of the evaluation tests.
* :class:`PoissonNLLLoss` (``poisson_nll``) - Poisson deviance of the expected target counts under the
  predicted rates (both rescaled to counts, offset ``deviance_offset_counts``), divided per spectrum by its
  measured counts: each spectrum weighs alike at 1e3 and at 1e7 counts, and a channel where the prediction
  misses a line costs ~ t log(t / lambda), so sharp (2-channel) HPGe lines pull hard on the output. The loss
  of ``configs/gamma/train.yaml``: with ``peak_weighted`` that network never left a near-flat output on the
  HPGe target (docs/results/gamma.md, "GPU run 2026-12-03: dead network").
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _no_autocast(device: torch.device) -> Any:
    """Losses run in float32 even inside a bf16/fp16 autocast region (sums over thousands of channels)."""
    return torch.autocast(device_type=device.type, enabled=False)


def ricker_kernel(sigma: float, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Mexican-hat (Ricker) wavelet of width ``sigma`` channels, zero mean, over +-5 sigma: (1, 1, K)."""
    half = max(2, int(math.ceil(5 * sigma)))
    x = torch.arange(-half, half + 1, device=device, dtype=dtype)
    k = (1 - (x / sigma) ** 2) * torch.exp(-0.5 * (x / sigma) ** 2)
    k = k - k.mean()
    return (k / k.abs().sum()).view(1, 1, -1)


def peak_mask(spectrum: Tensor, sigma: float = 2.0, threshold: float = 0.05, dilate: int = 2) -> Tensor:
    """Peak regions of (B, 1, N) spectra: Ricker response above ``threshold`` x its per-spectrum maximum,
    dilated by ``dilate`` channels. Returns a float mask (B, 1, N)."""
    k = ricker_kernel(sigma, spectrum.device, spectrum.dtype)
    r = F.conv1d(spectrum, k, padding=k.shape[-1] // 2)
    peak = r.amax(dim=-1, keepdim=True).clamp_min(1e-12)
    m = (r > threshold * peak).to(spectrum.dtype)
    if dilate > 0:
        m = F.max_pool1d(m, 2 * dilate + 1, stride=1, padding=dilate)
    return m


class PeakWeightedLoss(nn.Module):
    """Peak-weighted squared error + log-L1 + area term (see module docstring)."""

    def __init__(
        self, peak_weight: float = 5.0, sigma: float = 2.0, threshold: float = 0.05, log_weight: float = 0.1,
        area_weight: float = 0.1,
    ) -> None:
        super().__init__()
        self.peak_weight = peak_weight
        self.sigma = sigma
        self.threshold = threshold
        self.log_weight = log_weight
        self.area_weight = area_weight

    def weights(self, target: Tensor) -> Tensor:
        return 1.0 + self.peak_weight * peak_mask(target, self.sigma, self.threshold)

    def forward(self, pred: Tensor, batch: dict[str, Tensor] | Tensor) -> dict[str, Tensor]:
        with _no_autocast(pred.device):
            return self._forward(pred.float(), (batch["target"] if isinstance(batch, dict) else batch).float())

    def _forward(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        w = self.weights(target)
        mse = (w * (pred - target) ** 2).sum(dim=(1, 2)) / w.sum(dim=(1, 2))
        # normalise by the per-spectrum peak height so strong and weak spectra weigh alike
        height = target.amax(dim=(1, 2)).clamp_min(1e-6)
        mse = (mse / height).mean()
        log_l1 = (torch.log1p(pred) - torch.log1p(target)).abs().mean()
        area = ((pred.sum(dim=(1, 2)) - target.sum(dim=(1, 2))).abs() / target.sum(dim=(1, 2)).clamp_min(1e-6)).mean()
        loss = mse + self.log_weight * log_l1 + self.area_weight * area
        return {"loss": loss, "weighted_mse": mse.detach(), "log_l1": log_l1.detach(), "area": area.detach()}


class AdaptivePeakWeightedLoss(PeakWeightedLoss):
    """:class:`PeakWeightedLoss` whose peak weight is ``peak_weight`` x the running (EMA 0.98) ratio of the
    per-channel error inside peaks to outside, clamped to [0.5, 4]."""

    def __init__(self, *args: Any, momentum: float = 0.98, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.momentum = momentum
        self.register_buffer("ratio", torch.ones(()))

    def _forward(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        m = peak_mask(target, self.sigma, self.threshold)
        err = ((pred - target) ** 2).detach()
        inside = (err * m).sum() / m.sum().clamp_min(1)
        outside = (err * (1 - m)).sum() / (1 - m).sum().clamp_min(1)
        if self.training:
            r = (inside / outside.clamp_min(1e-12)).clamp(0.5, 4.0)
            self.ratio.mul_(self.momentum).add_((1 - self.momentum) * r)
        base = self.peak_weight
        self.peak_weight = base * float(self.ratio)
        try:
            out = super()._forward(pred, target)
        finally:
            self.peak_weight = base
        out["peak_weight"] = torch.as_tensor(base * float(self.ratio))
        return out


#: Anscombe's variance-stabilising offset: 2 sqrt(x + 3/8) of a Poisson variable has variance ~1 for means >~ 1
ANSCOMBE_OFFSET = 3.0 / 8.0


def anscombe(counts: Tensor) -> Tensor:
    """Anscombe transform 2 sqrt(counts + 3/8) of (expected) counts; finite gradient at zero counts.

    Negative values (a head without a positive link) are read as zero counts, with the gradient of the
    unclamped value: a clamp would stop the gradient exactly at zero, where a dip beside a peak sits."""
    zeroed = counts + (counts.detach().clamp_min(0) - counts.detach())
    return 2.0 * torch.sqrt(zeroed + ANSCOMBE_OFFSET)


def anscombe_chi2(pred: Tensor, target: Tensor, scale: Tensor) -> Tensor:
    """Mean over channels and batch of the squared Anscombe-domain error of (B, 1, N) spectra given in units
    of ``scale`` (B, 1) counts: ~ (lambda - t)^2 / (t + 3/8) per channel, a chi^2 against the target's own
    counting noise. Its value grows with the count level of a spectrum as its statistical weight does."""
    s = scale.reshape(-1, 1, 1).to(pred.dtype)
    return ((anscombe(pred * s) - anscombe(target * s)) ** 2).mean()


def poisson_deviance(pred: Tensor, target: Tensor, scale: Tensor) -> Tensor:
    """Mean over channels and batch of the Poisson deviance 2[(l + c) - (t + c) + (t + c) log((t + c) / (l + c))]
    of (B, 1, N) spectra in units of ``scale`` (B, 1) counts, c = 3/8 counts. ~ (l - t)^2 / (t + c) near
    l = t like :func:`anscombe_chi2`, but its minimiser under an uncertain t is the mean of t (the square-root
    domain's is below it: areas come out low); the offset keeps the gradient finite at l = 0."""
    s = scale.reshape(-1, 1, 1).to(pred.dtype)
    lam = pred * s
    lam = lam + (lam.detach().clamp_min(0) - lam.detach()) + ANSCOMBE_OFFSET
    t = (target * s).clamp_min(0) + ANSCOMBE_OFFSET
    return (2.0 * (lam - t + t * torch.log(t / lam))).mean()


class CountingPeakWeightedLoss(PeakWeightedLoss):
    """:class:`PeakWeightedLoss` + ``anscombe_weight`` x :func:`anscombe_chi2` (module docstring). With
    ``anscombe_weight`` 0 it is the seed loss."""

    def __init__(self, *args: Any, anscombe_weight: float = 1.0, counting_term: str = "anscombe", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.anscombe_weight = anscombe_weight
        self.counting = {"anscombe": anscombe_chi2, "deviance": poisson_deviance}[counting_term]

    def forward(self, pred: Tensor, batch: dict[str, Tensor] | Tensor) -> dict[str, Tensor]:
        with _no_autocast(pred.device):
            pred = pred.float()
            target = (batch["target"] if isinstance(batch, dict) else batch).float()
            out = self._forward(pred, target)
            if self.anscombe_weight > 0:
                if not isinstance(batch, dict) or "scale" not in batch:
                    raise ValueError("the Anscombe term needs batch['scale'] (counts per normalised unit)")
                chi2 = self.counting(pred, target, batch["scale"].float())
                out["loss"] = out["loss"] + self.anscombe_weight * chi2
                out["anscombe_chi2"] = chi2.detach()
            return out


class PoissonNLLLoss(nn.Module):
    """Per-spectrum normalised Poisson deviance (module docstring).

    With lambda = pred x scale and t = target x scale in counts and c = ``offset`` counts, per spectrum
    ``sum 2[(lambda + c) - (t + c) + (t + c) log((t + c) / (lambda + c))] / N``, N the spectrum's measured
    counts (``scale`` x channels), mean over the batch. For
    c << t it does not depend on the count level at all (both sums scale with the counts), so a 1e7-count
    spectrum weighs what a 1e3-count one does; c (3/8, Anscombe's offset) keeps the gradient finite where the
    prediction is zero and softens channels whose expected counts are below one (their shape is not
    measurable). The minimiser under an uncertain target is its mean, and the minimum over a common factor
    has sum lambda = sum t, so it also fixes the area. Computed per channel (no difference of two large
    sums: float32 holds it at 1e7 counts)."""

    def __init__(self, offset: float = ANSCOMBE_OFFSET) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, pred: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        with _no_autocast(pred.device):
            return self._forward(pred.float(), batch)

    def _forward(self, pred: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "scale" not in batch:
            raise ValueError("poisson_nll needs batch['scale'] (counts per normalised unit)")
        s = batch["scale"].reshape(-1, 1, 1).float()
        t = (batch["target"].float() * s).clamp_min(0)
        lam = pred * s
        # a negative prediction (a head without a positive link) is read as zero counts, gradient kept
        lam = lam + (lam.detach().clamp_min(0) - lam.detach()) + self.offset
        tc = t + self.offset
        dev = (2.0 * (lam - tc + tc * torch.log(tc / lam))).sum(dim=(1, 2))
        # per measured count (scale = measured counts per channel): not per target count, whose total is ~0.4 %
        # of the measured one for a LYSO spectrum of mostly Lu-176 (the HPGe sees none): those spectra dominated
        measured = (s.reshape(-1) * pred.shape[-1]).clamp_min(1.0)
        loss = (dev / measured).mean()
        area = ((lam - self.offset).sum(dim=(1, 2)) - t.sum(dim=(1, 2))).abs() / t.sum(dim=(1, 2)).clamp_min(1.0)
        return {"loss": loss, "deviance": loss.detach(), "area": area.mean().detach()}


class MSELoss(nn.Module):
    def forward(self, pred: Tensor, batch: dict[str, Tensor]) -> Tensor:
        with _no_autocast(pred.device):
            return F.mse_loss(pred.float(), batch["target"].float())


def build_loss(cfg: Any) -> nn.Module:
    """The loss named by ``cfg.loss.name``."""
    c = cfg.loss
    kw = dict(
        peak_weight=c.peak_weight, sigma=c.wavelet_sigma_channels, threshold=c.peak_threshold,
        log_weight=c.log_weight, area_weight=c.area_weight,
    )
    if c.name == "peak_weighted":
        return PeakWeightedLoss(**kw)
    if c.name == "counting_peak_weighted":
        return CountingPeakWeightedLoss(**kw, anscombe_weight=c.anscombe_weight, counting_term=c.counting_term)
    if c.name == "adaptive_peak_weighted":
        return AdaptivePeakWeightedLoss(**kw)
    if c.name == "poisson_nll":
        return PoissonNLLLoss(offset=c.deviance_offset_counts)
    return MSELoss()
