"""Figures a microscopist looks at: precision-recall curve, localisation errors vs the CRLB, render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from neurotrain.io.atomic import atomic_path


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> Path:
    """Precision vs recall per method; ``curves[name] = (precision, recall, AP)``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, (prec, rec, ap) in curves.items():
        ax.plot(rec, prec, label=f"{name} (AP {ap:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")
    ax.set_title("detection: precision-recall")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def plot_errors_vs_crlb(errors: dict[str, dict[str, np.ndarray]], crlb: dict[str, dict[str, float]], path: Path) -> Path:
    """Histograms of matched errors (dx, dy, dz in nm) per method, each with the normal density of
    its own matched emitters' RMS Cramér-Rao bound (``crlb[method][axis]``, nm) dashed."""
    plt = _plt()
    axes_names = [a for a in ("dx", "dy", "dz") if any(np.isfinite(e.get(a, np.array([np.nan]))).any()
                                                        and np.abs(e.get(a, np.zeros(1))).max() > 0 for e in errors.values())]
    axes_names = axes_names or ["dx", "dy"]
    fig, axs = plt.subplots(1, len(axes_names), figsize=(4 * len(axes_names), 3.4), squeeze=False)
    for ax, a in zip(axs[0], axes_names):
        lim = 150.0 if a != "dz" else 400.0
        bins = np.linspace(-lim, lim, 61)
        for k, (name, e) in enumerate(errors.items()):
            if a not in e or not len(e[a]):
                continue
            color = f"C{k}"
            ax.hist(np.clip(e[a], -lim, lim), bins=bins, histtype="step", density=True, label=name, color=color)
            c = crlb.get(name, {}).get(a)
            if c is not None and np.isfinite(c) and c > 0:
                xs = np.linspace(-lim, lim, 400)
                ax.plot(xs, np.exp(-0.5 * (xs / c) ** 2) / (c * np.sqrt(2 * np.pi)), "--", color=color, lw=1,
                        label=f"{name} CRLB ({c:.1f} nm)")
        ax.set_xlabel(f"{a} (nm)")
        ax.legend(fontsize=7)
    fig.suptitle("localisation error of matched emitters vs the Cramér-Rao bound")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path
