"""Figures of the stellar task: preprocessing stages with the main lines marked, the S/N distribution,
the drop summary, and a Kiel diagram (Teff-log g coloured by [Fe/H]).

Every figure is drawn with matplotlib's Agg backend (no display needed) and saved atomically
(temporary name, then rename), so a figure on disk is never half written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neurotrain.io.atomic import atomic_path
from neurotrain.tasks.stellar.lines import MAIN_LINES, feature


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return path


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _mark_lines(ax: Any, lo: float, hi: float, scale: float = 1.0, labels: bool = True) -> None:
    """Vertical marks of ``lines.MAIN_LINES`` (vacuum rest wavelengths times ``scale``) within [lo, hi]."""
    for name in MAIN_LINES:
        f = feature(name)
        w = f.vacuum_aa * scale
        if lo <= w <= hi:
            ax.axvline(w, color="0.6", lw=0.6, ls=":", zorder=0)
            if labels:
                ax.text(w, 1.0, name, transform=ax.get_xaxis_transform(), rotation=90, fontsize=6,
                        va="top", ha="right", color="0.35")


def plot_stages(stages: Mapping[str, Any], ids: Sequence[str], path: str | Path, n: int = 4,
                rows: Sequence[int] | None = None) -> Path:
    """One row per spectrum (the first ``n``, or ``rows``), three panels: the observed spectrum
    (masked pixels removed), the rest-frame resampled spectrum with its fitted continuum, and the
    normalised spectrum; the main lines (``lines.MAIN_LINES``) are marked. ``stages`` is the
    ``"stages"`` dict of ``preprocess.preprocess_batch(..., return_stages=True)``."""
    plt = _plt()
    grid = _np(stages["grid"])
    ow, of = _np(stages["obs_wave"]), _np(stages["obs_flux"])
    rf, cont, nf = _np(stages["rest_flux"]), _np(stages["continuum"]), _np(stages["norm_flux"])
    z = _np(stages["z"]) if "z" in stages else np.zeros(len(ow))
    sel = list(rows) if rows is not None else list(range(min(n, len(ow))))
    fig, axes = plt.subplots(len(sel), 3, figsize=(16, 2.6 * len(sel)), squeeze=False)
    for r, i in enumerate(sel):
        a0, a1, a2 = axes[r]
        a0.plot(ow[i], of[i], lw=0.5, color="k")
        a0.set_ylabel(f"{ids[i]}\nflux", fontsize=8)
        _mark_lines(a0, float(np.nanmin(ow[i])), float(np.nanmax(ow[i])), scale=1.0 + float(z[i]), labels=r == 0)
        a1.plot(grid, rf[i], lw=0.5, color="k", label="rest frame, resampled")
        a1.plot(grid, cont[i], lw=1.2, color="tab:red", label="continuum")
        _mark_lines(a1, grid[0], grid[-1], labels=False)
        a2.plot(grid, nf[i], lw=0.5, color="k")
        a2.axhline(1.0, color="tab:red", lw=0.8)
        a2.set_ylim(0.0, 1.4)
        _mark_lines(a2, grid[0], grid[-1], labels=r == 0)
        if r == 0:
            a0.set_title("observed (masked pixels removed)", fontsize=9)
            a1.set_title("rest frame, log-lambda grid, continuum fit", fontsize=9)
            a2.set_title("normalised", fontsize=9)
            a1.legend(fontsize=7, loc="lower right")
    for a in axes[-1]:
        a.set_xlabel("vacuum wavelength [A]")
    fig.tight_layout()
    return _save(fig, path)


def plot_snr_hist(snr: Any, path: str | Path, min_snr: float | None = None) -> Path:
    """Histogram of the median S/N per pixel (log bins), the drop threshold marked."""
    plt = _plt()
    s = _np(snr).astype(float)
    s = s[np.isfinite(s) & (s > 0)]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if s.size:
        bins = np.geomspace(max(s.min(), 0.1), max(s.max(), 1.0) * 1.01, 30)
        ax.hist(s, bins=bins, color="tab:blue", alpha=0.8)
        ax.set_xscale("log")
    if min_snr:
        ax.axvline(min_snr, color="tab:red", ls="--", label=f"min_snr = {min_snr:g}")
        ax.legend(fontsize=8)
    ax.set_xlabel("median S/N per pixel")
    ax.set_ylabel("spectra")
    fig.tight_layout()
    return _save(fig, path)


def plot_drop_summary(counts: Mapping[str, int], path: str | Path) -> Path:
    """Bar chart: spectra kept and dropped, per reason."""
    plt = _plt()
    names = list(counts)
    vals = [int(counts[k]) for k in names]
    fig, ax = plt.subplots(figsize=(5.5, 0.45 * max(len(names), 2) + 1.2))
    colors = ["tab:green" if k == "kept" else "tab:red" for k in names]
    ax.barh(names, vals, color=colors)
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("spectra")
    fig.tight_layout()
    return _save(fig, path)


def plot_kiel(table: Any, path: str | Path, teff: str = "TEFF", logg: str = "LOGG", feh: str = "FE_H") -> Path:
    """Kiel diagram: log g against Teff (both axes reversed, as astronomers draw it), coloured by
    [Fe/H] when the table has it. ``table``: a DataFrame or mapping of columns."""
    plt = _plt()
    t = np.asarray(table[teff], dtype=float)
    g = np.asarray(table[logg], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 4))
    if feh in getattr(table, "columns", table):
        sc = ax.scatter(t, g, c=np.asarray(table[feh], dtype=float), s=8, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="[Fe/H] [dex]")
    else:
        ax.scatter(t, g, s=8, color="k")
    ax.invert_xaxis()
    ax.invert_yaxis()
    ax.set_xlabel("Teff [K]")
    ax.set_ylabel("log g [dex]")
    fig.tight_layout()
    return _save(fig, path)
