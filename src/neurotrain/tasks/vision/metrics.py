"""Vision metrics as torchmetrics ``Metric``s (stateful, DDP-safe), computed by torchmetrics and MONAI.

* classification: accuracy (micro), macro precision / recall / F1, macro one-vs-rest AUROC, top-k accuracy
  (torchmetrics ``Multiclass*``);
* segmentation: Dice and IoU over foreground classes (torchmetrics ``DiceScore`` / ``MeanIoU``, pixels pooled
  over the whole set), HD95 and normalised surface Dice (MONAI ``compute_hausdorff_distance`` with
  percentile 95 and ``compute_surface_dice``, Nikolov et al. 2021, per image then averaged);
* instances (label images or boxes): F1 at IoU thresholds after one-to-one matching of predicted and true
  instances by ``scipy.optimize.linear_sum_assignment`` on the IoU matrix (the StarDist / cell-tracking
  convention, Schmidt et al. 2018), and their mean mF1; COCO mAP of boxes and masks through torchmetrics
  ``MeanAveragePrecision`` (pycocotools).

Class indices are 0..C-1 with 0 the background in segmentation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection

from neurotrain.errors import ConfigError

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "auroc", "top_k")
SEGMENTATION_METRICS = ("dice", "iou", "hd95", "nsd")
DETECTION_METRICS = ("map", "mf1")


# --------------------------------------------------------------------------- distances (MONAI)


class SurfaceDistance(Metric):
    """HD95 (pixels; MONAI ``compute_hausdorff_distance``, percentile 95, symmetric) or normalised surface Dice
    (MONAI ``compute_surface_dice`` at ``tolerance`` pixels) of index masks, per image and foreground class,
    then averaged over the finite values (an image where a class is absent from truth or prediction gives
    NaN/inf in MONAI and is left out; ``compute`` returns NaN if nothing is left).

    ``compute`` returns the mean over classes; :meth:`per_class` the per-class means.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, which: str, num_classes: int, tolerance: float = 1.0, spacing: Sequence[float] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if which not in ("hd95", "nsd"):
            raise ValueError(f"which: expected hd95 or nsd (got {which!r})")
        self.which, self.num_classes, self.tolerance = which, num_classes, tolerance
        self.spacing = list(spacing) if spacing is not None else None
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        from monai.metrics import compute_hausdorff_distance, compute_surface_dice

        p = F.one_hot(pred.long(), self.num_classes).movedim(-1, 1).float()
        t = F.one_hot(target.long(), self.num_classes).movedim(-1, 1).float()
        with warnings.catch_warnings():  # an empty class is expected (left out below); MONAI warns per image
            warnings.simplefilter("ignore")
            if self.which == "hd95":
                v = compute_hausdorff_distance(p, t, include_background=False, percentile=95, spacing=self.spacing)
            else:
                tol = [self.tolerance] * (self.num_classes - 1)
                v = compute_surface_dice(p, t, tol, include_background=False, spacing=self.spacing)
        self.values.append(v.to(self.device, torch.float32))

    def per_class(self) -> torch.Tensor:
        v = self.values if isinstance(self.values, torch.Tensor) else (
            torch.cat(self.values) if self.values else torch.empty(0, self.num_classes - 1, device=self.device))
        ok = torch.isfinite(v)
        return torch.where(ok, v, 0).sum(0) / ok.sum(0)  # 0/0 -> NaN for a class never scored

    def compute(self) -> torch.Tensor:
        return self.per_class().nanmean()


# --------------------------------------------------------------------------- instances


def label_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``(n_pred, n_true)`` of two instance label images (0 = background, any positive ids), from one
    ``bincount`` over pixel pairs: no loop over instances."""
    p_ids, p = torch.unique(pred.reshape(-1), return_inverse=True)
    t_ids, t = torch.unique(target.reshape(-1), return_inverse=True)
    # shift so that index 0 is background whether or not the image has any
    p = p + (0 if (p_ids[:1] == 0).all() and len(p_ids) else 1)
    t = t + (0 if (t_ids[:1] == 0).all() and len(t_ids) else 1)
    n_p = int(p.max()) + 1 if p.numel() else 1
    n_t = int(t.max()) + 1 if t.numel() else 1
    joint = torch.bincount(p * n_t + t, minlength=n_p * n_t).reshape(n_p, n_t).double()
    inter = joint[1:, 1:]
    area_p = joint.sum(1)[1:, None]
    area_t = joint.sum(0)[None, 1:]
    return inter / (area_p + area_t - inter).clamp_min(1)


def match_counts(iou: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """``(len(thresholds), 3)`` counts (TP, FP, FN) after the one-to-one matching that maximises the summed IoU
    (``linear_sum_assignment``); a matched pair counts as TP at threshold ``t`` when its IoU >= ``t``."""
    from scipy.optimize import linear_sum_assignment

    n_p, n_t = iou.shape
    thr = torch.as_tensor(list(thresholds), dtype=torch.float64)
    if n_p == 0 or n_t == 0:
        tp = torch.zeros_like(thr)
    else:
        m = iou.detach().cpu().double().numpy()
        rows, cols = linear_sum_assignment(m, maximize=True)
        matched = torch.from_numpy(m[rows, cols])
        tp = (matched[None, :] >= thr[:, None]).sum(1).double()
    return torch.stack([tp, n_p - tp, n_t - tp], dim=1)


class InstanceF1(Metric):
    """F1 of instance detection at IoU thresholds, summed over images (TP, FP, FN per threshold), and mF1 their
    mean. ``update(pred, target)`` takes instance label images ``(B, *spatial)`` or, for boxes, two lists of
    ``(K, 4)`` xyxy tensors (IoU by ``torchvision.ops.box_iou``). ``compute`` returns
    ``{"mf1": ..., "f1@0.50": ..., ...}``."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, thresholds: Sequence[float] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thresholds = [float(t) for t in thresholds]
        self.add_state("counts", default=torch.zeros(len(self.thresholds), 3, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Any, target: Any) -> None:
        from torchvision.ops import box_iou

        for p, t in zip(pred, target):
            iou = box_iou(p.float(), t.float()) if p.ndim == 2 and p.shape[-1] == 4 and t.ndim == 2 else label_iou(p, t)
            self.counts += match_counts(iou, self.thresholds).to(self.counts)

    def f1(self) -> torch.Tensor:
        tp, fp, fn = self.counts.unbind(1)
        return (2 * tp / (2 * tp + fp + fn).clamp_min(1)).float()

    def compute(self) -> dict[str, torch.Tensor]:
        f1 = self.f1()
        out = {"mf1": f1.mean()}
        out.update({f"f1@{t:.2f}": v for t, v in zip(self.thresholds, f1)})
        return out


def instance_map(pred_labels: torch.Tensor, scores: torch.Tensor | None, target_labels: torch.Tensor) -> dict[str, float]:
    """COCO mask mAP (torchmetrics ``MeanAveragePrecision(iou_type="segm")``) of instance label images
    ``(B, H, W)``; ``scores`` ``(B, H, W)`` foreground probabilities give each instance its mean score (1 when
    ``None``). One class. Returns ``{"map", "map_50", "map_75"}``."""
    from torchmetrics.detection import MeanAveragePrecision

    m = MeanAveragePrecision(iou_type="segm")
    preds, targets = [], []
    for i in range(pred_labels.shape[0]):
        pm = _masks_of(pred_labels[i])
        tm = _masks_of(target_labels[i])
        s = torch.ones(len(pm))
        if scores is not None and len(pm):
            s = (pm.float() * scores[i]).flatten(1).sum(1) / pm.flatten(1).sum(1).clamp_min(1)
        preds.append({"masks": pm, "scores": s.float(), "labels": torch.zeros(len(pm), dtype=torch.long)})
        targets.append({"masks": tm, "labels": torch.zeros(len(tm), dtype=torch.long)})
    m.update(preds, targets)
    r = m.compute()
    return {k: float(r[k]) for k in ("map", "map_50", "map_75")}


def _masks_of(labels: torch.Tensor) -> torch.Tensor:
    ids = torch.unique(labels)
    ids = ids[ids > 0]
    return labels[None] == ids.view(-1, *([1] * labels.ndim))


# --------------------------------------------------------------------------- collections


def _jaccard_base() -> type:
    from torchmetrics.classification import MulticlassJaccardIndex

    return MulticlassJaccardIndex


class ForegroundJaccard(_jaccard_base()):  # type: ignore[misc]
    """IoU (Jaccard index) per class with pixels pooled over the whole set (torchmetrics
    ``MulticlassJaccardIndex``), averaged over the foreground classes 1..C-1 (as the Dice)."""

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(num_classes, average="none", **kwargs)

    def compute(self) -> torch.Tensor:
        return super().compute()[1:].mean()


def build_metrics(kind: str, num_classes: int, names: Sequence[str], *, top_k: int = 3, nsd_tolerance: float = 1.0,
                  iou_thresholds: Sequence[float] = (0.5, 0.75)) -> MetricCollection:
    """The validation/test metrics ``names`` of a ``kind`` task (see the module docstring for each)."""
    import torchmetrics.classification as C
    from torchmetrics.segmentation import DiceScore

    allowed = {"classification": CLASSIFICATION_METRICS, "segmentation": SEGMENTATION_METRICS,
               "detection": DETECTION_METRICS}[kind]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ConfigError(f"config error: metrics.names: expected names from {list(allowed)} for {kind} (got {bad})")
    m: dict[str, Metric] = {}
    for n in names:
        if kind == "classification":
            if n == "accuracy":
                m[n] = C.MulticlassAccuracy(num_classes, average="micro")
            elif n in ("precision", "recall", "f1"):
                cls = {"precision": C.MulticlassPrecision, "recall": C.MulticlassRecall, "f1": C.MulticlassF1Score}[n]
                m[n] = cls(num_classes, average="macro")
            elif n == "auroc":
                m[n] = C.MulticlassAUROC(num_classes, average="macro")
            elif n == "top_k" and top_k < num_classes:
                m[f"top{top_k}"] = C.MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
        elif kind == "segmentation":
            if n == "dice":
                m[n] = DiceScore(num_classes, include_background=False, average="macro", input_format="index",
                                 aggregation_level="global")
            elif n == "iou":
                m[n] = ForegroundJaccard(num_classes)
            else:
                m[n] = SurfaceDistance(n, num_classes, tolerance=nsd_tolerance)
        else:
            if n == "map":
                from torchmetrics.detection import MeanAveragePrecision

                m[n] = MeanAveragePrecision(iou_type="bbox")
            else:
                m[n] = InstanceF1(iou_thresholds)
    return MetricCollection(m, compute_groups=False)


def update_metrics(kind: str, metrics: MetricCollection, pred: Any, batch: dict[str, Any]) -> None:
    """Feed one batch: logits for classification/segmentation, torchvision detections for detection."""
    for name, metric in metrics.items():
        if kind == "classification":
            probs = pred.float().softmax(1)
            metric.update(probs, batch["label"])
        elif kind == "segmentation":
            metric.update(pred.argmax(1), batch["mask"])
        elif name == "map":
            metric.update(_detached(pred), [{"boxes": b, "labels": lab} for b, lab in zip(batch["boxes"], batch["labels"])])
        else:
            metric.update([p["boxes"] for p in pred], list(batch["boxes"]))


def _detached(pred: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach() for k, v in p.items()} for p in pred]


def per_class_table(kind: str, num_classes: int, pred: torch.Tensor, target: torch.Tensor) -> dict[str, list[float]]:
    """Per-class numbers for the test report: classification ``pred`` probabilities ``(N, C)`` -> precision,
    recall, F1, AUROC, support; segmentation ``pred`` class indices -> Dice, IoU, support (pixels)."""
    import torchmetrics.functional.classification as FC
    from torchmetrics.functional.segmentation import dice_score

    if kind == "classification":
        kw = dict(num_classes=num_classes, average="none")
        out = {
            "precision": FC.multiclass_precision(pred, target, **kw),
            "recall": FC.multiclass_recall(pred, target, **kw),
            "f1": FC.multiclass_f1_score(pred, target, **kw),
            "auroc": FC.multiclass_auroc(pred, target, **kw) if len(target) > 1 else torch.full((num_classes,), float("nan")),
            "support": torch.bincount(target, minlength=num_classes),
        }
    else:
        out = {
            "dice": dice_score(pred, target, num_classes, include_background=True, average="none",
                               input_format="index", aggregation_level="global"),
            "iou": FC.multiclass_jaccard_index(pred, target, num_classes, average="none"),
            "support": torch.bincount(target.reshape(-1), minlength=num_classes),
        }
    return {k: [float(x) for x in np.asarray(v.detach().cpu(), dtype=np.float64).reshape(-1)] for k, v in out.items()}
