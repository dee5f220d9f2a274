"""Figures of the vision report: sample predictions with masks or boxes overlaid, confusion matrix, ROC and
precision-recall curves, per-class bars, training curves from the run's CSV log. Each is written atomically
as PNG (matplotlib, Agg)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotrain.io.atomic import atomic_path


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _show_image(ax: Any, image: torch.Tensor) -> None:
    img = image.detach().float().cpu()
    if img.ndim == 4:  # volume: the middle slice
        img = img[:, img.shape[1] // 2]
    ax.imshow(img[0] if img.shape[0] != 3 else img.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def _mid(mask: torch.Tensor) -> np.ndarray:
    m = mask.detach().cpu()
    return (m[m.shape[0] // 2] if m.ndim == 3 else m).numpy()


def segmentation_examples(images: torch.Tensor, truth: torch.Tensor, columns: dict[str, torch.Tensor], path: Path,
                          num_classes: int) -> Path:
    """One row per image: the image, then the truth and each named prediction as a colour overlay."""
    plt = _plt()
    n = images.shape[0]
    cols = 2 + len(columns)
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.2 * n), squeeze=False)
    cmap = plt.get_cmap("tab10", max(num_classes, 2))
    for i in range(n):
        _show_image(axes[i, 0], images[i])
        for j, (name, m) in enumerate([("truth", truth)] + list(columns.items()), start=1):
            _show_image(axes[i, j], images[i])
            arr = np.ma.masked_equal(_mid(m[i]), 0)
            axes[i, j].imshow(arr, cmap=cmap, vmin=0, vmax=max(num_classes - 1, 1), alpha=0.5, interpolation="nearest")
            if i == 0:
                axes[i, j].set_title(name)
    axes[0, 0].set_title("image")
    return _save(fig, path)


def classification_examples(images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, names: Sequence[str],
                            path: Path) -> Path:
    """A grid of images titled ``truth -> predicted (score)``, red when wrong."""
    plt = _plt()
    n = images.shape[0]
    cols = min(n, 6)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        _show_image(ax, images[i])
        k = int(probs[i].argmax())
        ok = k == int(labels[i])
        ax.set_title(f"{names[int(labels[i])]} -> {names[k]} ({float(probs[i, k]):.2f})", fontsize=8,
                     color="black" if ok else "red")
    return _save(fig, path)


def detection_examples(images: Sequence[torch.Tensor], truth: Sequence[torch.Tensor], pred: Sequence[torch.Tensor],
                       path: Path) -> Path:
    """Images with true boxes (green) and predicted boxes (red)."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3), squeeze=False)
    for ax, img, t, p in zip(axes[0], images, truth, pred):
        _show_image(ax, img)
        for boxes, colour in ((t, "lime"), (p, "red")):
            for x0, y0, x1, y1 in boxes.detach().cpu().tolist():
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, lw=1))
    return _save(fig, path)


def confusion_matrix(cm: torch.Tensor, names: Sequence[str], path: Path, title: str = "confusion matrix") -> Path:
    """Counts with rows = truth, columns = prediction; cells annotated, colour by row fraction."""
    plt = _plt()
    c = cm.detach().cpu().double()
    frac = c / c.sum(1, keepdim=True).clamp_min(1)
    k = len(names)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * k, 1 + 0.6 * k))
    ax.imshow(frac.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(c[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def roc_pr_curves(probs: torch.Tensor, labels: torch.Tensor, names: Sequence[str], path: Path) -> Path:
    """One-vs-rest ROC and precision-recall curves per class (torchmetrics)."""
    import torchmetrics.functional.classification as FC

    plt = _plt()
    k = len(names)
    fpr, tpr, _ = FC.multiclass_roc(probs, labels, k)
    prec, rec, _ = FC.multiclass_precision_recall_curve(probs, labels, k)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    for i, name in enumerate(names):
        a.plot(fpr[i].numpy(), tpr[i].numpy(), label=name)
        b.plot(rec[i].numpy(), prec[i].numpy(), label=name)
    a.plot([0, 1], [0, 1], "k:", lw=0.8)
    a.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one vs rest)")
    b.set(xlabel="recall", ylabel="precision", title="precision-recall")
    a.legend(fontsize=7)
    return _save(fig, path)


def per_class_bars(table: dict[str, list[float]], names: Sequence[str], keys: Sequence[str], path: Path) -> Path:
    """Grouped bars of the per-class numbers ``keys`` (e.g. Dice and IoU)."""
    plt = _plt()
    x = np.arange(len(names))
    w = 0.8 / max(len(keys), 1)
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3))
    for j, key in enumerate(keys):
        ax.bar(x + j * w, np.nan_to_num(np.asarray(table[key], float)), w, label=key)
    ax.set_xticks(x + w * (len(keys) - 1) / 2, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.legend()
    return _save(fig, path)


def read_csv_log(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged series of the run's CSV logs (``csv/metrics.csv``; older runs ``csv/version_*/``): name -> [(step, value)]."""
    series: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(Path(run_dir).glob("csv/**/metrics.csv")):
        with open(f, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                step = int(float(row.get("step") or 0))
                for k, v in row.items():
                    if k in ("step", "epoch") or v in ("", None):
                        continue
                    series.setdefault(k, []).append((step, float(v)))
    return series


def training_curves(run_dir: Path, path: Path) -> Path | None:
    """Loss (train per epoch, val) and the validation metrics against the step; None without a CSV log."""
    s = read_csv_log(run_dir)
    if not s:
        return None
    plt = _plt()
    losses = [k for k in ("train/loss_epoch", "val/loss") if k in s]
    metrics = [k for k in s if k.startswith("val/") and k != "val/loss"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for k in losses:
        a.plot(*zip(*s[k]), marker=".", label=k)
    a.set(xlabel="step", ylabel="loss", title="loss")
    a.legend(fontsize=7)
    for k in metrics:
        b.plot(*zip(*s[k]), marker=".", label=k)
    b.set(xlabel="step", title="validation metrics")
    if metrics:
        b.legend(fontsize=7)
    return _save(fig, path)
