"""Losses on voxel grids.

* ``mse`` - the seed's loss (``MSELoss`` between output and clean voxel).
* ``l1`` - mean absolute error, less dominated by the few very bright cells at the light source.
* ``mse_count`` / ``l1_count`` - the above plus an event-count term: the relative error of
  the total number of events the output would decode to, ``| sum|out| - sum|target| | /
  max(sum|target|, 1)`` per sample, so the network is pushed to remove as many events as
  the flare contributed, not just to shrink them.

Every variant weighs the squared (absolute) error of a cell that holds signal - a flare-free
target ``!= 0``: scene, light-source or sensor-noise events - by ``signal_weight`` and every
other cell by 1. With MSE the network's output in a cell tends to the weighted mean of what
the cell may hold, so the keep fraction ``out / in`` of an uncertain signal cell rises from
``q`` (its chance of being signal) to ``w q / (w q + 1 - q)``: with flare outnumbering
signal ~2.5 : 1 in the simulator, the unweighted loss (the seed's) dropped half of the light
source's events (``docs/results/deflare.md``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LossName = Literal["mse", "l1", "mse_count", "l1_count"]


class VoxelLoss(nn.Module):
    """``loss(pred, batch)`` -> ``{"loss", "mse", "l1"[, "count"]}``; ``batch["target"]`` is the clean voxel."""

    def __init__(self, name: LossName = "mse", count_weight: float = 0.1, signal_weight: float = 1.0) -> None:
        super().__init__()
        if name not in ("mse", "l1", "mse_count", "l1_count"):
            raise ValueError(f"loss.name: expected mse, l1, mse_count or l1_count (got {name!r})")
        if not signal_weight > 0:
            raise ValueError(f"loss.signal_weight: expected > 0 (got {signal_weight})")
        self.name = name
        self.count_weight = count_weight
        self.signal_weight = signal_weight

    def forward(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pred = pred.float()  # bf16 autocast outputs: the loss itself in fp32
        target = batch["target"].float()
        if self.signal_weight == 1.0:
            mse = F.mse_loss(pred, target)
            l1 = F.l1_loss(pred, target)
        else:
            # mean over cells of w * error: the same scale as the unweighted loss when w = 1
            w = torch.where(target != 0, torch.full_like(target, self.signal_weight), torch.ones_like(target))
            d = pred - target
            mse = (w * d * d).mean()
            l1 = (w * d.abs()).mean()
        base = mse if self.name.startswith("mse") else l1
        out = {"mse": mse.detach(), "l1": l1.detach()}
        if self.name.endswith("_count"):
            dims = tuple(range(1, pred.ndim))
            n_out = pred.abs().sum(dims)
            n_tgt = target.abs().sum(dims)
            count = ((n_out - n_tgt).abs() / n_tgt.clamp_min(1.0)).mean()
            out["count"] = count.detach()
            base = base + self.count_weight * count
        out["loss"] = base
        return out
