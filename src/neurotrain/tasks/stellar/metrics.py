"""Per-label accuracy and calibration of stellar labels as torchmetrics ``Metric``s (DDP-safe states).

Every metric works on residuals ``r = predicted - true`` in physical units (K for Teff, dex otherwise), per
label, over the (spectrum, label) pairs whose label is known (``batch["target_mask"]`` where present, and a
finite target). Each ``compute()`` returns ``{"<stat>/<LABEL>": value}`` (NaN for a label never known):

* ``bias``       mean residual;
* ``scatter``    robust scatter, 1.4826 x median(|r - median(r)|) (the MAD scaled to a Gaussian sigma,
                 the usual survey-paper number: it ignores the few catastrophic outliers an RMSE chases);
* ``mae``        mean |r|;
* ``rmse``       sqrt(mean r^2);
* ``r2``         1 - sum r^2 / sum (y - mean y)^2;
* ``coverage``   fraction of pairs with |r| <= predicted sigma (ideal 0.683 for Gaussian errors);
* ``rmse_crlb``  sqrt(sum r^2 / sum CRLB^2) over pairs with a Cramér-Rao bound in ``batch["crlb"]``
                 (B, L): the RMSE over the RMS bound; 1 is the best an unbiased estimator can do (a biased
                 one, shrinking towards the prior at low S/N, can go below).

``update(pred, batch)``: ``pred`` is the network output (B, 2L) normalised means then log variances, or
(B, L) means; or a dict with physical ``"mean"`` (B, L) and optional ``"sigma"`` (B, L), which is how
baselines and post-processed predictions come in. Sums are kept in float64 states reduced by ``sum``; the
robust scatter keeps the residuals (``cat``), which the median needs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from neurotrain.tasks.stellar.models import LOGVAR_CLAMP

if TYPE_CHECKING:
    from neurotrain.tasks.stellar.config import StellarConfig

#: MAD -> Gaussian sigma: 1 / Phi^-1(3/4)
MAD_TO_SIGMA = 1.4826
#: probability mass of a Gaussian within +-1 sigma, the ideal ``coverage``
ONE_SIGMA = math.erf(1.0 / math.sqrt(2.0))


def physical_prediction(
    pred: Tensor | dict[str, Tensor], label_mean: Tensor, label_std: Tensor, min_sigma: float = 1e-3
) -> tuple[Tensor, Tensor | None]:
    """(mean (B, L), sigma (B, L) or None) in physical units from a network output or a prediction dict.

    The network output is converted as :meth:`models.SpectralResCNN.to_physical` does.
    """
    # metrics never backpropagate: detach so a state never holds on to an autograd graph
    if isinstance(pred, dict):
        mean = pred["mean"].detach().double()
        sigma = pred.get("sigma")
        return mean, None if sigma is None else sigma.detach().double()
    L = label_mean.numel()
    out = pred.detach().double()
    mean = out[:, :L] * label_std + label_mean
    if out.shape[1] >= 2 * L:
        var = torch.exp(out[:, L : 2 * L].clamp(*LOGVAR_CLAMP)) + min_sigma**2
        return mean, torch.sqrt(var) * label_std
    return mean, None


class _LabelMetric(Metric):
    """Shared parsing of (pred, batch) into physical residuals and the known-label mask."""

    full_state_update = False
    is_differentiable = False
    higher_is_better: bool | None = None
    stat: str = ""

    def __init__(
        self,
        names: Sequence[str],
        label_mean: Sequence[float] | None = None,
        label_std: Sequence[float] | None = None,
        min_sigma: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.names = list(names)
        L = len(self.names)
        self.min_sigma = float(min_sigma)
        mean = torch.zeros(L) if label_mean is None else torch.as_tensor(label_mean)
        std = torch.ones(L) if label_std is None else torch.as_tensor(label_std)
        self.register_buffer("label_mean", mean.double(), persistent=False)
        self.register_buffer("label_std", std.double(), persistent=False)

    def _zeros(self) -> Tensor:
        return torch.zeros(len(self.names), dtype=torch.float64)

    def _sum_state(self, *names: str) -> None:
        for n in names:
            self.add_state(n, default=self._zeros(), dist_reduce_fx="sum")

    def _prepare(self, pred: Tensor | dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor | None]:
        mean, sigma = physical_prediction(pred, self.label_mean, self.label_std, self.min_sigma)
        target = batch["target"].double()
        known = torch.isfinite(target) & torch.isfinite(mean)
        if "target_mask" in batch:
            known = known & batch["target_mask"].bool()
        resid = torch.where(known, mean - target, torch.zeros_like(mean))
        crlb = batch.get("crlb")
        return {
            "resid": resid, "known": known, "target": torch.where(known, target, self.label_mean),
            "sigma": sigma, "crlb": None if crlb is None else crlb.double(),
        }

    def _out(self, values: Tensor) -> dict[str, Tensor]:
        return {f"{self.stat}/{n}": values[i] for i, n in enumerate(self.names)}


class LabelBias(_LabelMetric):
    """Mean residual per label (physical units)."""

    stat = "bias"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sum_state("n", "sum_r")

    def update(self, pred: Tensor | dict[str, Tensor], batch: dict[str, Tensor]) -> None:  # type: ignore[override]
        p = self._prepare(pred, batch)
        self.n += p["known"].sum(0)
        self.sum_r += p["resid"].sum(0)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        return self._out(self.sum_r / self.n)


class LabelMAE(_LabelMetric):
    """Mean absolute residual per label."""

    stat = "mae"
    higher_is_better = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sum_state("n", "sum_abs")

    def update(self, pred: Tensor | dict[str, Tensor], batch: dict[str, Tensor]) -> None:  # type: ignore[override]
        p = self._prepare(pred, batch)
        self.n += p["known"].sum(0)
        self.sum_abs += p["resid"].abs().sum(0)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        return self._out(self.sum_abs / self.n)


class LabelRMSE(_LabelMetric):
    """Root-mean-square residual per label."""

    stat = "rmse"
    higher_is_better = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sum_state("n", "sum_r2")

    def update(self, pred: Tensor | dict[str, Tensor], batch: dict[str, Tensor]) -> None:  # type: ignore[override]
        p = self._prepare(pred, batch)
        self.n += p["known"].sum(0)
        self.sum_r2 += (p["resid"] ** 2).sum(0)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        return self._out(torch.sqrt(self.sum_r2 / self.n))


class LabelR2(_LabelMetric):
    """Coefficient of determination per label. Targets are accumulated shifted by ``label_mean`` so the
    total sum of squares does not cancel catastrophically for Teff (~5000 K with a ~900 K spread)."""

    stat = "r2"
    higher_is_better = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sum_state("n", "sum_r2", "sum_t", "sum_t2")

    def update(self, pred: Tensor | dict[str, Tensor], batch: dict[str, Tensor]) -> None:  # type: ignore[override]
        p = self._prepare(pred, batch)
        k = p["known"]
        t = torch.where(k, p["target"] - self.label_mean, torch.zeros_like(p["target"]))
        self.n += k.sum(0)
        self.sum_r2 += (p["resid"] ** 2).sum(0)
        self.sum_t += t.sum(0)
        self.sum_t2 += (t**2).sum(0)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        ss_tot = self.sum_t2 - self.sum_t**2 / self.n
        return self._out(1.0 - self.sum_r2 / ss_tot)


class LabelRobustScatter(_LabelMetric):
    """1.4826 x median absolute deviation of the residuals per label (keeps the residuals: ``cat`` state)."""

    stat = "scatter"
    higher_is_better = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_state("resid", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor | dict[str, Tensor], batch: dict[str, Tensor]) -> None:  # type: ignore[override]
        p = self._prepare(pred, batch)
        self.resid.append(torch.where(p["known"], p["resid"], torch.full_like(p["resid"], float("nan"))))

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        r = self.resid
        if isinstance(r, list):
            r = torch.cat(r, 0) if r else torch.zeros(0, len(self.names), dtype=torch.float64, device=self.device)
        return self._out(robust_scatter(r))


def robust_scatter(resid: Tensor) -> Tensor:
    """1.4826 x MAD along dim 0 of (N, L) residuals, NaN entries ignored (a column of NaN gives NaN).

    Medians interpolate between the two middle values for an even count (as NumPy's do).
    """
    if resid.shape[0] == 0:
        return torch.full((resid.shape[1],), float("nan"), dtype=torch.float64, device=resid.device)
    med = torch.nanquantile(resid, 0.5, dim=0)
    return MAD_TO_SIGMA * torch.nanquantile((resid - med).abs(), 0.5, dim=0)


class LabelCoverage(_LabelMetric):
    """Fraction of known pairs with |residual| <= predicted sigma (ideal :data:`ONE_SIGMA` = 0.683); pairs
    without a finite sigma do not count. NaN when the prediction carries no sigma at all."""

    stat = "coverage"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sum_state("n", "n_in")

    def update(self, pred: Tensor | dict[str, Tensor], batch: dict[str, Tensor]) -> None:  # type: ignore[override]
        p = self._prepare(pred, batch)
        sigma = p["sigma"]
        if sigma is None:
            return
        ok = p["known"] & torch.isfinite(sigma)
        self.n += ok.sum(0)
        self.n_in += (ok & (p["resid"].abs() <= sigma)).sum(0)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        return self._out(self.n_in / self.n)


class LabelRMSEOverCRLB(_LabelMetric):
    """sqrt(sum r^2 / sum CRLB^2) per label over known pairs with a finite, positive ``batch["crlb"]``."""

    stat = "rmse_crlb"
    higher_is_better = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sum_state("sum_r2", "sum_c2")

    def update(self, pred: Tensor | dict[str, Tensor], batch: dict[str, Tensor]) -> None:  # type: ignore[override]
        p = self._prepare(pred, batch)
        crlb = p["crlb"]
        if crlb is None:
            return
        ok = p["known"] & torch.isfinite(crlb) & (crlb > 0)
        self.sum_r2 += torch.where(ok, p["resid"] ** 2, torch.zeros_like(crlb)).sum(0)
        self.sum_c2 += torch.where(ok, crlb**2, torch.zeros_like(crlb)).sum(0)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        return self._out(torch.sqrt(self.sum_r2 / self.sum_c2))


ALL_METRICS: tuple[type[_LabelMetric], ...] = (
    LabelBias, LabelRobustScatter, LabelMAE, LabelRMSE, LabelR2, LabelCoverage, LabelRMSEOverCRLB,
)


def label_metrics(
    names: Sequence[str],
    label_mean: Sequence[float] | None = None,
    label_std: Sequence[float] | None = None,
    min_sigma: float = 1e-3,
    crlb: bool = True,
) -> MetricCollection:
    """All per-label metrics as one collection (``update(pred, batch)``; ``compute()`` -> flat dict)."""
    kinds = [k for k in ALL_METRICS if crlb or k is not LabelRMSEOverCRLB]
    return MetricCollection(
        {k.stat: k(names, label_mean, label_std, min_sigma) for k in kinds}, compute_groups=False
    )


def build_metrics(
    cfg: StellarConfig, label_mean: Sequence[float] | None = None, label_std: Sequence[float] | None = None
) -> MetricCollection:
    """Validation metrics for ``cfg.labels.names`` with the model's label normalisation (default
    :func:`models.label_stats`); the CRLB ratio is left out (training batches carry no bound)."""
    from neurotrain.tasks.stellar.models import label_stats

    if label_mean is None or label_std is None:
        dm, ds = label_stats(cfg)
        label_mean = dm if label_mean is None else label_mean
        label_std = ds if label_std is None else label_std
    return label_metrics(cfg.labels.names, label_mean, label_std, cfg.loss.min_sigma, crlb=False)


def update_collection(metrics: MetricCollection, pred: Tensor | dict[str, Tensor], batch: dict[str, Tensor]) -> None:
    """The engine's hook: every metric of the collection takes the network output and the whole batch."""
    metrics.update(pred, batch)


def to_floats(values: dict[str, Tensor]) -> dict[str, dict[str, float | None]]:
    """``{"stat/LABEL": tensor}`` -> ``{stat: {LABEL: float or None}}`` (None for NaN / inf), for JSON."""
    out: dict[str, dict[str, float | None]] = {}
    for key, v in values.items():
        stat, label = key.split("/", 1)
        x = float(v)
        out.setdefault(stat, {})[label] = x if math.isfinite(x) else None
    return out
