"""Flare-removal metrics on voxel grids, as torchmetrics ``Metric``s (device-side, DDP-safe).

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
