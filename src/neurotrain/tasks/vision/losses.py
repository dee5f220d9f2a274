"""Vision losses: cross-entropy, BCE-with-logits, Dice (MONAI ``DiceLoss``), focal (MONAI ``FocalLoss``, Lin et al.
2017) and weighted sums of them, built from the ``loss`` config section.

``loss.name`` picks one (``dice_ce`` = Dice + CE and ``dice_focal`` = Dice + focal, each weight 1, as in
nnU-Net's default); ``loss.terms`` (e.g. ``{dice: 1.0, ce: 0.5}``) gives any weighted combination instead.

Predictions are logits: ``(B, C, *spatial)`` for segmentation with ``target = batch["mask"]`` (class indices),
``(B, C)`` for classification with ``target = batch["label"]``. Detection networks compute their own losses in
training mode (torchvision returns a dict of them), so :class:`DetectionLoss` only sums that dict.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neurotrain.errors import ConfigError

TERMS = ("ce", "bce", "dice", "focal")
PRESETS: dict[str, dict[str, float]] = {
    "ce": {"ce": 1.0}, "bce": {"bce": 1.0}, "dice": {"dice": 1.0}, "focal": {"focal": 1.0},
    "dice_ce": {"dice": 1.0, "ce": 1.0}, "dice_focal": {"dice": 1.0, "focal": 1.0},
}


class VisionLoss(nn.Module):
    """Weighted sum of loss terms on logits; returns ``{"loss": total, <term>: value, ...}``.

    Args:
        kind: ``segmentation`` or ``classification``.
        terms: term name -> weight (names from :data:`TERMS`).
        num_classes: output channels of the network.
        class_weights: per-class weights for CE, BCE, Dice and focal (``None``: equal).
        label_smoothing: CE label smoothing.
        focal_gamma, focal_alpha: focusing exponent and optional class balance of the focal term.
        dice_include_background: let class 0 count in the Dice term (False: foreground classes only, the
            usual choice when background dominates the pixels).
    """

    def __init__(self, kind: str, terms: dict[str, float], num_classes: int, *, class_weights: list[float] | None = None,
                 label_smoothing: float = 0.0, focal_gamma: float = 2.0, focal_alpha: float | None = None,
                 dice_include_background: bool = False, dice_smooth: float = 1e-5) -> None:
        super().__init__()
        from monai.losses import DiceLoss, FocalLoss

        bad = sorted(set(terms) - set(TERMS))
        if bad:
            raise ConfigError(f"config error: loss.terms: expected names from {list(TERMS)} (got {bad})")
        if not terms or all(w == 0 for w in terms.values()):
            raise ConfigError("config error: loss.terms: expected at least one term with a non-zero weight")
        if kind not in ("segmentation", "classification"):
            raise ConfigError(f"config error: loss: {kind} has no pixel/class loss (detection uses the network's own)")
        if "dice" in terms and kind != "segmentation":
            raise ConfigError(f"config error: loss: dice needs kind segmentation (got {kind})")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ConfigError(
                f"config error: loss.class_weights: expected {num_classes} values (got {len(class_weights)})"
            )
        self.kind, self.terms, self.num_classes = kind, dict(terms), num_classes
        self.label_smoothing = label_smoothing
        w = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", w, persistent=False)
        dice_w = None
        if class_weights is not None:
            dice_w = class_weights if dice_include_background else class_weights[1:]
        self.dice = DiceLoss(include_background=dice_include_background, to_onehot_y=True, softmax=True,
                             smooth_nr=dice_smooth, smooth_dr=dice_smooth, weight=dice_w) if "dice" in terms else None
        self.focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=focal_gamma, alpha=focal_alpha,
                               weight=class_weights) if "focal" in terms else None

    def _target(self, batch: dict[str, Any]) -> torch.Tensor:
        return batch["mask"] if self.kind == "segmentation" else batch["label"]

    def forward(self, pred: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        target = self._target(batch).long()
        pred = pred.float()  # the loss in fp32 under bf16/fp16 autocast
        out: dict[str, torch.Tensor] = {}
        if "ce" in self.terms:
            out["ce"] = F.cross_entropy(pred, target, weight=self.class_weights, label_smoothing=self.label_smoothing)
        if "bce" in self.terms:
            onehot = F.one_hot(target, self.num_classes).movedim(-1, 1).to(pred.dtype)
            bce = F.binary_cross_entropy_with_logits(pred, onehot, reduction="none")
            if self.class_weights is not None:
                bce = bce * self.class_weights.view(1, -1, *([1] * (pred.ndim - 2)))
            out["bce"] = bce.mean()
        if self.dice is not None:
            out["dice"] = self.dice(pred, target.unsqueeze(1))
        if self.focal is not None:
            out["focal"] = self.focal(pred, target.unsqueeze(1))
        out["loss"] = sum(self.terms[k] * out[k] for k in self.terms)  # type: ignore[assignment]
        return out


class DetectionLoss(nn.Module):
    """Sum of the loss dict a torchvision detector returns in training mode (classification + box regression,
    plus objectness / RPN terms for Faster R-CNN). In eval mode a detector returns detections, not losses, so
    the validation loss is 0 and checkpoints should monitor ``val/map``."""

    def forward(self, pred: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if isinstance(pred, dict) and pred and all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in pred.values()):
            out = {k: v for k, v in pred.items()}
            out["loss"] = sum(pred.values())  # type: ignore[assignment]
            return out
        ref = batch["image"][0] if isinstance(batch["image"], (list, tuple)) else batch["image"]
        return {"loss": torch.zeros((), device=ref.device)}


def build_loss(kind: str, section: Any, num_classes: int) -> nn.Module:
    """The loss the config's ``loss`` section describes, for a task of ``kind``."""
    if kind == "detection":
        return DetectionLoss()
    terms = dict(section.terms) if section.terms else dict(PRESETS[section.name])
    return VisionLoss(kind, terms, num_classes, class_weights=section.class_weights,
                      label_smoothing=section.label_smoothing, focal_gamma=section.focal_gamma,
                      focal_alpha=section.focal_alpha, dice_include_background=section.dice_include_background,
                      dice_smooth=section.dice_smooth)
