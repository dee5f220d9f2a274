"""Figures a spectroscopist looks at: spectra with true lines marked, FWHM(E) curves, per-count-level bars, and
the classical baselines' tuning sweeps (recall against unexplained false peaks per setting)."""

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


def plot_spectra(
    path: Path, energy: np.ndarray, curves: dict[str, np.ndarray], lines: list[float] | None = None,
    title: str = "", xlim: tuple[float, float] | None = None, log: bool = True,
) -> Path:
    """Overlay spectra (counts per channel vs keV), true line energies as dotted verticals."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    styles = {"input": ("0.55", 1.0), "network": ("C3", 1.1), "network_refined": ("C1", 0.9), "baseline": ("C2", 0.9),
              "rl_tuned": ("C2", 0.9), "gold_tuned": ("C4", 0.9), "target": ("k", 0.8)}
    for name, y in curves.items():
        color, lw = styles.get(name, (None, 1.0))
        ax.plot(energy, np.clip(y, 1e-3, None), label=name, color=color, lw=lw, drawstyle="steps-mid")
    for e in lines or []:
        ax.axvline(e, color="C0", ls=":", lw=0.7, alpha=0.7)
    if log:
        ax.set_yscale("log")
    if xlim:
        ax.set_xlim(*xlim)
    ax.set_xlabel("energy (keV)")
    ax.set_ylabel("counts / channel")
    ax.set_title(title)
    ax.legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def plot_fwhm_curves(path: Path, points: dict[str, tuple[np.ndarray, np.ndarray]], laws: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Measured FWHM (keV) of lines vs energy per method (points) and the resolution laws (lines)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"input": "0.5", "network": "C3", "baseline": "C2", "target": "k"}
    for name, (e, f) in points.items():
        ax.scatter(e, f, s=10, alpha=0.6, label=f"{name} (measured)", color=colors.get(name))
    for name, (e, f) in laws.items():
        ax.plot(e, f, ls="--", label=name)
    ax.set_xlabel("energy (keV)")
    ax.set_ylabel("FWHM (keV)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def plot_level_bars(path: Path, table: dict[str, dict[str, dict[str, float]]], keys: list[str]) -> Path:
    """One panel per metric key: bars per count level, one bar per method."""
    plt = _plt()
    levels = list(table)
    methods = list(next(iter(table.values())))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6))
    axes = np.atleast_1d(axes)
    width = 0.8 / max(1, len(methods))
    for ax, key in zip(axes, keys):
        for i, m in enumerate(methods):
            vals = [table[lv][m].get(key, float("nan")) for lv in levels]
            ax.bar(np.arange(len(levels)) + i * width, [v if v is not None else np.nan for v in vals], width, label=m)
        ax.set_xticks(np.arange(len(levels)) + width * (len(methods) - 1) / 2)
        ax.set_xticklabels(levels)
        ax.set_title(key)
        ax.set_xlabel("total counts")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def plot_detection_tradeoff(path: Path, tradeoff: dict[str, dict[str, Any]]) -> Path:
    """One panel per count level: false peaks per spectrum (with Poisson error bars) against recall, one curve
    per method across the detection thresholds; a dotted line marks the baseline's recall at the default one."""
    plt = _plt()
    levels = list(tradeoff)
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 3.6), squeeze=False)
    for ax, level in zip(axes[0], levels):
        for m, c in tradeoff[level]["curves"].items():
            ax.errorbar(c["recall"], c["false_rate"], yerr=c["false_rate_err"], marker="o", ms=3, capsize=2, label=m)
            for r, f, t in zip(c["recall"], c["false_rate"], c["threshold"]):
                ax.annotate(f"{t:g}", (r, f), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ref = tradeoff[level].get("baseline_recall")
        if ref is not None:
            ax.axvline(ref, color="grey", ls=":", lw=1)
        ax.set_title(f"{level} counts")
        ax.set_xlabel("recall of detectable lines")
        ax.set_ylabel("false peaks per spectrum")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def plot_tuning(path: Path, sweeps: dict[str, dict[str, list[dict[str, Any]]]], budgets: dict[str, float | None], title: str = "") -> Path:
    """One panel per count level: each baseline setting's validation recall against its unexplained false peaks
    per spectrum (Richardson-Lucy by iterations, Gold by iterations x repetitions); a dotted line marks the
    false-peak budget the tuning kept within."""
    plt = _plt()
    levels = list(sweeps)
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 3.6), squeeze=False)
    for ax, level in zip(axes[0], levels):
        for method, marker in (("rl", "o"), ("gold", "s")):
            pts = sweeps[level].get(method, [])
            if not pts:
                continue
            ax.plot([p["unexplained"] for p in pts], [p["recall"] for p in pts], marker=marker, ms=3, lw=0.8, label=method)
            for p in pts:
                tag = f"{p['iterations']}" if method == "rl" else f"{p['iterations']}x{p['repetitions']}"
                ax.annotate(tag, (p["unexplained"], p["recall"]), fontsize=6, xytext=(2, 2), textcoords="offset points")
        if budgets.get(level) is not None:
            ax.axvline(budgets[level], color="grey", ls=":", lw=1)
        ax.set_title(f"{level} counts")
        ax.set_xlabel("unexplained false peaks / spectrum")
        ax.set_ylabel("recall of detectable lines")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
