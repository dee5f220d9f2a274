"""Flare-removal metrics, as torchmetrics ``Metric``s (device-side, DDP-safe).

Per-event metrics (the headline; :class:`EventMetrics`, :func:`event_structural_ratio`)
-----------------------------------------------------------------------------------
Against the simulator's per-event labels (:data:`LABELS`), for a keep/drop decision per
event (an event is *dropped* = called flare):

* ``flare_recall`` = flare events dropped / flare events; ``flare_precision`` = flare
  events dropped / (flare + scene + light-source events dropped); ``flare_f1`` their
  harmonic mean. Sensor-noise events (leak, shot, hot pixels) are neither flare nor signal
  for these three: removing them is not deflaring, and a denoiser is neither charged nor
  credited for it (they are reported as ``noise_removed``).
* ``scene_kept``, ``light_kept``, ``signal_kept`` (scene + light-source events kept: the
  "signal retained" of DND21 / PRE-Mamba), ``noise_removed`` (sensor-noise events dropped),
  ``kept_fraction`` (all events kept).
* ``flare_auroc``: ROC-AUC of the flare score ``1 - keep score`` over the keep threshold,
  flare vs signal events (torchmetrics ``BinaryAUROC`` with 201 fixed thresholds, so the
  state is flat in the number of events).
* :func:`event_structural_ratio`: E-MLB's no-reference event structural ratio (Ding et al.
  2023, "E-MLB: Multilevel benchmark for event-based camera denoising", IEEE TMM), for real
  recordings without labels: per packet of ``N`` consecutive events with ``n_i`` events at
  pixel ``i`` (``K`` pixels), ``NTSS = sum_i n_i (n_i - 1) / (N (N - 1))``,
  ``L_N = K - sum_i (1 - M/N)^{n_i}``, ``ESR = mean over packets of sqrt(NTSS L_N)``, with
  E-MLB's ``N = 30000``, ``M = 20000`` (its reference code ``calc_event_structural_ratio``).

Voxel metrics (secondary columns)
---------------------------------

All metrics take ``update(preds, target, input, light_mask=None)`` with voxels of shape
``(N, 1, B, H, W)`` (or any shape with the same number of elements), and work on the
*event counts* the voxels decode to: ``|round(v)|`` events per cell, polarity ``sign(v)``.

Per cell, with input ``a``, clean target ``t`` and output ``o`` (rounded):

* clean events present in the input ``S = min(|a|, |t|)`` if ``a`` and ``t`` agree in
  sign (else 0); flare events ``F = |a| - S``.
* events the method removed ``R = |a| - min(|o|, |a|)`` (output of the other sign counts as
  nothing kept); a cell's removals are shared between flare and clean events in
  proportion ``F : S`` (inside one cell the two are indistinguishable).
* ``flare_removal_rate = sum(R F/|a|) / sum(F)``; ``background_removal_rate =
  sum(R S/|a|) / sum(S)`` outside the light-source mask; ``light_preservation = 1 -`` the
  same ratio inside the mask (everything is background without a mask). The identity
  scores 0 / 0 / 1; a perfect deflare scores 1 / 0 / 1.
* ``event_count_ratio = sum|o| / sum|t|`` (1 is right).
* ``voxel_mse`` and ``voxel_psnr = 10 log10(peak^2 / mse)`` with ``peak = max|target|``.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection


def _counts(v: torch.Tensor) -> torch.Tensor:
    return torch.round(v.detach().float())


class VoxelError(Metric):
    """Voxel MSE and PSNR against the clean target."""

    full_state_update = False
    higher_is_better = None

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sse", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("peak", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="max")

    def update(self, preds: torch.Tensor, target: torch.Tensor, input: torch.Tensor | None = None, light_mask: torch.Tensor | None = None) -> None:  # noqa: A002
        d = preds.detach().double() - target.detach().double()
        self.sse += (d * d).sum()
        self.n += d.numel()
        self.peak = torch.maximum(self.peak, target.detach().abs().max().double())

    def compute(self) -> dict[str, torch.Tensor]:
        mse = self.sse / self.n.clamp_min(1)
        psnr = 10 * torch.log10(self.peak.clamp_min(1.0) ** 2 / mse.clamp_min(1e-12))
        return {"voxel_mse": mse.float(), "voxel_psnr": psnr.float()}


class EventCounts(Metric):
    """Flare removal, background/light preservation and event-count ratio (see module doc)."""

    full_state_update = False
    higher_is_better = None
    _keys = ("flare", "flare_removed", "bg", "bg_removed", "light", "light_removed", "out", "tgt", "inp")

    def __init__(self) -> None:
        super().__init__()
        for k in self._keys:
            self.add_state(k, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, input: torch.Tensor, light_mask: torch.Tensor | None = None) -> None:  # noqa: A002
        o, t, a = _counts(preds), _counts(target), _counts(input)
        A = a.abs()
        S = torch.where(torch.sign(a) == torch.sign(t), torch.minimum(A, t.abs()), torch.zeros_like(A))
        F = A - S
        kept = torch.where(torch.sign(o) == torch.sign(a), torch.minimum(o.abs(), A), torch.zeros_like(A))
        R = A - kept
        RF = torch.minimum(R, F)
        RS = R - RF
        lm = torch.zeros_like(A) if light_mask is None else light_mask.to(A.dtype).expand_as(A)
        self.flare += F.sum().double()
        self.flare_removed += RF.sum().double()
        self.bg += (S * (1 - lm)).sum().double()
        self.bg_removed += (RS * (1 - lm)).sum().double()
        self.light += (S * lm).sum().double()
        self.light_removed += (RS * lm).sum().double()
        self.out += o.abs().sum().double()
        self.tgt += t.abs().sum().double()
        self.inp += A.sum().double()

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.out.device)

        def ratio(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.where(y > 0, x / y.clamp_min(1e-12), nan)

        return {
            "flare_removal_rate": ratio(self.flare_removed, self.flare).float(),
            "background_removal_rate": ratio(self.bg_removed, self.bg).float(),
            "light_preservation": (1 - ratio(self.light_removed, self.light)).float(),
            "event_count_ratio": ratio(self.out, self.tgt).float(),
            "events_in": self.inp.float(),
            "events_out": self.out.float(),
            "events_target": self.tgt.float(),
        }


# per-event labels written by the simulator (events/label); flare = glare..flicker
LABELS = {"scene": 0, "light": 1, "glare": 2, "streak": 3, "ghost": 4, "flicker": 5, "noise": 6, "hot_pixel": 7}
FLARE_LABELS = (2, 3, 4, 5)
NOISE_LABELS = (6, 7)
NUM_LABELS = len(LABELS)


class EventMetrics(Metric):
    """Per-event flare P/R/F1, kept fractions and ROC-AUC (see module doc).

    ``update(score, label, threshold=0.5)``: ``score`` the per-event keep score (the
    flare-free fraction; 1 = surely not flare), ``label`` the per-event class; an event is
    kept when ``score >= threshold``. ``keep`` may be given instead of a threshold.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, auroc_thresholds: int = 201) -> None:
        super().__init__()
        from torchmetrics.classification import BinaryAUROC

        self.add_state("total", torch.zeros(NUM_LABELS, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("kept", torch.zeros(NUM_LABELS, dtype=torch.float64), dist_reduce_fx="sum")
        self.auroc = BinaryAUROC(thresholds=auroc_thresholds)
        self._auroc_used = False

    def update(self, score: torch.Tensor, label: torch.Tensor, threshold: float = 0.5, keep: torch.Tensor | None = None) -> None:  # type: ignore[override]
        score = score.detach().float().reshape(-1)
        label = label.detach().long().reshape(-1).to(score.device)
        keep = (score >= threshold) if keep is None else keep.reshape(-1).to(score.device).bool()
        self.total += torch.bincount(label, minlength=NUM_LABELS).double()
        self.kept += torch.bincount(label[keep], minlength=NUM_LABELS).double()
        flare = torch.zeros(NUM_LABELS, dtype=torch.bool, device=label.device)
        flare[list(FLARE_LABELS)] = True
        noise = torch.zeros_like(flare)
        noise[list(NOISE_LABELS)] = True
        judged = ~noise[label]
        if judged.any():
            self.auroc.update((1 - score[judged]).clamp(0, 1), flare[label[judged]].long())
            self._auroc_used = True

    def compute(self) -> dict[str, torch.Tensor]:
        tot, kept = self.total, self.kept
        dropped = tot - kept
        fl = list(FLARE_LABELS)
        sig = [LABELS["scene"], LABELS["light"]]
        nz = list(NOISE_LABELS)
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=tot.device)

        def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.where(b > 0, a / b.clamp_min(1e-12), nan)

        tp = dropped[fl].sum()
        recall = ratio(tp, tot[fl].sum())
        precision = ratio(tp, tp + dropped[sig].sum())
        f1 = torch.where((recall + precision) > 0, 2 * recall * precision / (recall + precision).clamp_min(1e-12), torch.zeros_like(recall))
        f1 = torch.where(torch.isnan(recall) | torch.isnan(precision), torch.where(torch.isnan(recall), nan, torch.zeros_like(recall)), f1)
        auroc = self.auroc.compute().double() if self._auroc_used else nan
        return {
            "flare_recall": recall.float(),
            "flare_precision": precision.float(),
            "flare_f1": f1.float(),
            "scene_kept": ratio(kept[0], tot[0]).float(),
            "light_kept": ratio(kept[1], tot[1]).float(),
            "signal_kept": ratio(kept[sig].sum(), tot[sig].sum()).float(),
            "noise_removed": ratio(dropped[nz].sum(), tot[nz].sum()).float(),
            "kept_fraction": ratio(kept.sum(), tot.sum()).float(),
            "flare_auroc": auroc.float(),
            "events_total": tot.sum().float(),
            "flare_events": tot[fl].sum().float(),
        }

    def reset(self) -> None:
        super().reset()
        self.auroc.reset()
        self._auroc_used = False


def event_structural_ratio(
    x: torch.Tensor, y: torch.Tensor, sensor_size: tuple[int, int], n: int = 30_000, m: int = 20_000
) -> float:
    """E-MLB's ESR of an event stream (see module doc), over its full packets of ``n`` events.

    The E-MLB reference code averages over ``floor(len / n) - 1`` packets (it leaves out
    the last full one); here every full packet counts. ``nan`` with fewer than ``n`` events.
    """
    h, w = sensor_size
    k = (x.shape[0] // n)
    if k < 1:
        return float("nan")
    pix = (y[: k * n].long() * w + x[: k * n].long())
    packet = torch.arange(k, device=pix.device).repeat_interleave(n)
    cnt = torch.bincount(packet * (h * w) + pix, minlength=k * h * w).view(k, h * w).double()
    ntss = (cnt * (cnt - 1)).sum(1) / (n * (n - 1))
    l_n = h * w - torch.pow(1 - m / n, cnt).sum(1)
    return float(torch.sqrt(ntss * l_n).mean())


def build_metrics() -> MetricCollection:
    return MetricCollection({"voxel": VoxelError(), "events": EventCounts()}, compute_groups=False)


def update_all(metrics: MetricCollection, preds: torch.Tensor, target: torch.Tensor, input: torch.Tensor, light_mask: torch.Tensor | None = None) -> None:  # noqa: A002
    """Update every metric of the collection with the same four arguments."""
    for m in metrics.values():
        m.update(preds, target, input, light_mask)


def compute_all(metrics: MetricCollection) -> dict[str, float]:
    """Every metric's values merged into one flat ``{name: float}`` dict."""
    out: dict[str, float] = {}
    for m in metrics.values():
        out.update({k: float(v) for k, v in m.compute().items()})
    return out
