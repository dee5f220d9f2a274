"""Figures and the markdown / HTML report of the stellar evaluation (``evaluate.py``).

Figures (matplotlib Agg, written atomically): predicted vs true per label and method; robust scatter and
RMSE/CRLB vs S/N; residuals vs Teff; a QQ plot of the normalised residuals (residual / predicted sigma,
Gaussian if the uncertainties are honest); a Kiel diagram (Teff - log g coloured by [Fe/H]), true and
predicted. The HTML report is the markdown's tables and figures in one self-contained page.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotrain.io.atomic import atomic_path
from neurotrain.tasks.stellar.config import LABEL_UNITS, StellarConfig
from neurotrain.tasks.stellar.metrics import ONE_SIGMA

STATS = ("bias", "scatter", "mae", "rmse", "r2", "rmse_crlb", "coverage")
STAT_TITLES = {
    "bias": "bias", "scatter": "robust scatter (1.4826 MAD)", "mae": "MAE", "rmse": "RMSE", "r2": "R²",
    "rmse_crlb": "RMSE / CRLB", "coverage": "fraction inside the predicted 1σ",
}
COLORS = {"network": "C0", "xgboost": "C1", "lightgbm": "C2", "cannon": "C3"}


def _unit(label: str) -> str:
    return LABEL_UNITS.get(label, "dex")


def _fmt(v: float | None, label: str, stat: str) -> str:
    if v is None:
        return "—"
    if stat in ("r2", "rmse_crlb", "coverage", "ratio"):
        return f"{v:.2f}" if stat != "r2" else f"{v:.3f}"
    return f"{v:.0f}" if _unit(label) == "K" else f"{v:.3f}"


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def NullFormatter() -> Any:  # noqa: N802 (matplotlib's class, imported lazily)
    from matplotlib.ticker import NullFormatter as _Null

    return _Null()


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    _plt().close(fig)
    return path


def _pick(n: int, k: int) -> np.ndarray:
    return np.arange(n) if n <= k else np.random.default_rng(0).choice(n, k, replace=False)


def _grid(n: int, ncol: int = 4) -> tuple[int, int]:
    return (n + ncol - 1) // ncol, min(n, ncol)


def figures(
    cfg: StellarConfig, out: Path, metrics: dict[str, Any], test_h: dict[str, torch.Tensor],
    pred_h: dict[str, dict[str, torch.Tensor]], tests: list[dict[str, torch.Tensor]],
    preds: dict[str, list[dict[str, torch.Tensor]]],
) -> list[Path]:
    """Every figure of the report; ``*_h``: the headline S/N's test set and predictions."""
    plt = _plt()
    names = cfg.labels.names
    methods = list(pred_h)
    hkey = metrics["headline"]["name"].split("S/N ")[1].split(" ")[0]
    truth = _np(test_h["target"])
    sel = _pick(len(truth), cfg.evaluate.max_points)
    paths: list[Path] = []

    # predicted vs true, one row per method
    fig, axes = plt.subplots(len(methods), len(names), figsize=(2.4 * len(names), 2.4 * len(methods)), squeeze=False)
    for i, m in enumerate(methods):
        p = _np(pred_h[m]["mean"])
        for j, lab in enumerate(names):
            ax = axes[i, j]
            ax.scatter(truth[sel, j], p[sel, j], s=2, alpha=0.4, color=COLORS.get(m, "k"), rasterized=True)
            lo, hi = float(np.nanmin(truth[:, j])), float(np.nanmax(truth[:, j]))
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.6)
            sc = metrics["snr"][hkey][m]["all"]["scatter"][lab]
            ax.set_title(f"{m}: {lab}\nscatter {_fmt(sc, lab, 'scatter')} {_unit(lab)}", fontsize=7)
            ax.tick_params(labelsize=6)
            if i == len(methods) - 1:
                ax.set_xlabel(f"true {lab}", fontsize=7)
    fig.suptitle(f"predicted vs true, S/N {hkey}", fontsize=9)
    paths.append(_save(fig, out / "pred_vs_true.png"))

    # scatter and RMSE/CRLB vs S/N
    snrs = np.asarray(metrics["snr_bins"], float)
    keys = [f"{s:g}" for s in snrs]
    for stat, fname in (("scatter", "scatter_vs_snr.png"), ("rmse_crlb", "rmse_crlb_vs_snr.png")):
        r, c = _grid(len(names))
        fig, axes = plt.subplots(r, c, figsize=(3.0 * c, 2.5 * r), squeeze=False)
        drew = False
        for j, lab in enumerate(names):
            ax = axes.flat[j]
            for m in methods:
                y = [metrics["snr"][k][m]["all"].get(stat, {}).get(lab) for k in keys]
                y = np.array([np.nan if v is None else v for v in y], float)
                if np.isfinite(y).any():
                    ax.plot(snrs, y, "o-", ms=3, color=COLORS.get(m, "k"), label=m)
                    drew = True
            if stat == "scatter" and metrics["crlb_rms"]:
                cr = [metrics["crlb_rms"].get(k, {}).get(lab, np.nan) for k in keys]
                ax.plot(snrs, cr, "k--", lw=0.8, label="CRLB")
            if stat == "rmse_crlb":
                ax.axhline(1.0, color="k", lw=0.6)
                ax.axhline(1.3, color="0.5", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(snrs, [f"{x:g}" for x in snrs])
            ax.set_title(f"{lab} ({_unit(lab) if stat == 'scatter' else 'ratio'})", fontsize=8)
            ax.set_xlabel("S/N per pixel", fontsize=7)
            ax.tick_params(labelsize=6)
        for ax in axes.flat[len(names):]:
            ax.axis("off")
        if drew:
            axes.flat[0].legend(fontsize=6)
            fig.suptitle(STAT_TITLES[stat] + " vs S/N", fontsize=9, y=1.02)
            paths.append(_save(fig, out / fname))
        else:
            plt.close(fig)

    # residuals vs Teff
    teff = _np(test_h["labels_all"][:, 0])
    r, c = _grid(len(names))
    fig, axes = plt.subplots(r, c, figsize=(3.0 * c, 2.5 * r), squeeze=False)
    for j, lab in enumerate(names):
        ax = axes.flat[j]
        for m in methods:
            res = _np(pred_h[m]["mean"][:, j]) - truth[:, j]
            ax.scatter(teff[sel], res[sel], s=1.5, alpha=0.3, color=COLORS.get(m, "k"), label=m, rasterized=True)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(f"{lab} residual ({_unit(lab)})", fontsize=8)
        ax.set_xlabel("true Teff (K)", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, markerscale=4)
    fig.suptitle(f"residuals vs Teff, S/N {hkey}", fontsize=9)
    paths.append(_save(fig, out / "residuals_vs_teff.png"))

    # QQ plot of residual / sigma, all S/N bins
    with_sigma = [m for m in methods if "sigma" in pred_h[m]]
    if with_sigma:
        from scipy.stats import norm

        r, c = _grid(len(names))
        fig, axes = plt.subplots(r, c, figsize=(3.0 * c, 2.7 * r), squeeze=False)
        for j, lab in enumerate(names):
            ax = axes.flat[j]
            for m in with_sigma:
                z = np.concatenate([
                    (_np(p["mean"][:, j]) - _np(t["target"][:, j])) / np.maximum(_np(p["sigma"][:, j]), 1e-12)
                    for p, t in zip(preds[m], tests, strict=True)
                ])
                z = np.sort(z[np.isfinite(z)])
                if z.size < 2:
                    continue
                q = norm.ppf((np.arange(z.size) + 0.5) / z.size)
                k = _pick(z.size, 2000)
                k.sort()
                ax.plot(q[k], z[k], ".", ms=1.5, color=COLORS.get(m, "k"), label=m)
            ax.plot([-4, 4], [-4, 4], "k-", lw=0.6)
            ax.set_xlim(-4, 4)
            ax.set_ylim(-6, 6)
            ax.set_title(f"{lab}: residual / sigma", fontsize=8)
            ax.set_xlabel("Gaussian quantile", fontsize=7)
            ax.tick_params(labelsize=6)
        for ax in axes.flat[len(names):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=6, markerscale=4)
        fig.suptitle("QQ plot of normalised residuals (all S/N)", fontsize=9)
        paths.append(_save(fig, out / "qq.png"))

    # Kiel diagram coloured by [Fe/H]
    if all(n in names for n in ("TEFF", "LOGG", "FE_H")):
        it, ig, ife = (names.index(n) for n in ("TEFF", "LOGG", "FE_H"))
        panels = [("true", truth)] + [(m, _np(pred_h[m]["mean"])) for m in methods]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.0), squeeze=False,
                                 sharex=True, sharey=True)
        vmin, vmax = cfg.simulate.label_ranges.get("FE_H", (-2.0, 0.5))
        for ax, (title, v) in zip(axes[0], panels, strict=True):
            im = ax.scatter(v[sel, it], v[sel, ig], c=v[sel, ife], s=2, cmap="viridis", vmin=vmin, vmax=vmax,
                            rasterized=True)
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("Teff (K)", fontsize=7)
            ax.tick_params(labelsize=6)
        axes[0, 0].set_ylabel("log g (dex)", fontsize=7)
        # shared axes: the true stars' box, hot and low gravity to the upper left as astronomers draw it
        t_lo, t_hi = float(truth[:, it].min()), float(truth[:, it].max())
        g_lo, g_hi = float(truth[:, ig].min()), float(truth[:, ig].max())
        axes[0, 0].set_xlim(t_hi + 0.05 * (t_hi - t_lo), t_lo - 0.05 * (t_hi - t_lo))
        axes[0, 0].set_ylim(g_hi + 0.05 * (g_hi - g_lo), g_lo - 0.05 * (g_hi - g_lo))
        fig.colorbar(im, ax=axes[0, -1], label="[Fe/H]")
        fig.suptitle(f"Kiel diagram, S/N {hkey}", fontsize=9)
        paths.append(_save(fig, out / "kiel.png"))
    return paths


# --------------------------------------------------------------------------- report


def _table(rows: list[tuple[str, dict[str, float | None]]], names: list[str], stat: str, head: str) -> list[str]:
    lines = [f"| {head} | " + " | ".join(f"{n} ({_unit(n)})" if stat in ("bias", "scatter", "mae", "rmse") else n
                                         for n in names) + " |",
             "| --- |" + " ---: |" * len(names)]
    for key, vals in rows:
        lines.append(f"| {key} | " + " | ".join(_fmt(vals.get(n), n, stat) for n in names) + " |")
    return lines + [""]


def write_report(cfg: StellarConfig, out: Path, metrics: dict[str, Any], figures: list[Path]) -> Path:
    """``report.md`` and ``report.html`` in ``out``; returns the markdown's path."""
    names = cfg.labels.names
    ev, unc = cfg.evaluate, cfg.uncertainty
    methods = metrics["methods"]
    hd = metrics["headline"]
    hkey = hd["name"].split("S/N ")[1].split(" ")[0]

    def v(x: float | None) -> str:
        return "—" if x is None else f"{x:.4f}"

    md = [
        "# stellar evaluation: labels from LAMOST-like spectra",
        "",
        f"Held-out synthetic set: {ev.spectra_per_snr} spectra at each S/N per pixel of "
        f"{', '.join(f'{s:g}' for s in ev.snr_bins)} (generator seeds from {cfg.seed + ev.seed_offset}, "
        f"shared with no training batch); dropped by preprocessing: "
        + ", ".join(f"{k}: {n}" for k, n in metrics["dropped_by_preprocessing"].items())
        + f". Baselines trained on {metrics['n_baseline_train']} further spectra at S/N drawn from "
        f"{cfg.simulate.snr_range[0]:g}-{cfg.simulate.snr_range[1]:g} ({cfg.baseline.val_fraction:.0%} held out for "
        f"early stopping). Network uncertainty: heteroscedastic head"
        + (f" + MC dropout ({unc.mc_samples} samples)" if unc.mc_samples else "")
        + (f" + ensemble of {len(unc.ensemble) + 1}" if unc.ensemble else "")
        + f". Giants: true log g < {ev.giant_logg:g}. CRLB: RMS Cramér-Rao bound of the generator at each S/N "
        f"over {ev.crlb_spectra} spectra; RMSE/CRLB < 1 is possible for estimators that shrink towards the prior.",
        "",
        f"**Headline** — {hd['name']}: network {v(hd.get('network'))}, better boosted tree {v(hd.get('baseline'))}"
        + "".join(f", {m} {v(hd.get(m))}" for m in methods if m != "network")
        + ".",
        "",
    ]
    if metrics["targets"]:
        md += [f"## Targets at S/N {hkey}", "", "| check | target | value | met |", "| --- | --- | ---: | --- |"]
        for t in metrics["targets"]:
            val = "—" if t["value"] is None else f"{t['value']:.3f}"
            met = "—" if t["met"] is None else ("yes" if t["met"] else "**no**")
            md.append(f"| {t['check']} | {t['target']} | {val} | {met} |")
        md.append("")
    for stat in ("scatter", "rmse_crlb", "coverage"):
        rows = [(f"S/N {k} {m}", metrics["snr"][k][m]["all"].get(stat, {}))
                for k in metrics["snr"] for m in methods
                if any(x is not None for x in metrics["snr"][k][m]["all"].get(stat, {}).values())]
        if rows:
            md += [f"## {STAT_TITLES[stat]} per S/N", ""] + _table(rows, names, stat, "S/N, method")
    md += [f"## All metrics at S/N {hkey}", ""]
    for stat in ("bias", "mae", "rmse", "r2"):
        rows = [(m, metrics["snr"][hkey][m]["all"][stat]) for m in methods]
        md += [f"**{STAT_TITLES[stat]}**", ""] + _table(rows, names, stat, "method")
    md += [f"## Dwarfs vs giants at S/N {hkey} (robust scatter; RMSE/CRLB)", ""]
    for grp in ("dwarf", "giant"):
        rows = [(f"{grp} {m} (n={metrics['snr'][hkey][m][grp]['n']})", metrics["snr"][hkey][m][grp]["scatter"])
                for m in methods if grp in metrics["snr"][hkey][m]]
        md += _table(rows, names, "scatter", "group, method")
        rows = [(f"{grp} {m}", metrics["snr"][hkey][m][grp].get("rmse_crlb", {}))
                for m in methods if grp in metrics["snr"][hkey][m] and "rmse_crlb" in metrics["snr"][hkey][m][grp]]
        if rows:
            md += _table(rows, names, "rmse_crlb", "group, method")
    if metrics["crlb_rms"]:
        md += ["## Cramér-Rao bound (RMS over the CRLB spectra)", ""]
        md += _table([(f"S/N {k}", d) for k, d in metrics["crlb_rms"].items()], names, "rmse", "S/N")
    md += ["## Timing (s)", "", ", ".join(f"{k} {t}" for k, t in metrics["timing"].items()), ""]
    if figures:
        md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    md += [f"Ideal coverage is {ONE_SIGMA:.3f} (a Gaussian's mass within ±1σ).", ""]
    text = "\n".join(md)
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(markdown_to_html(text, "stellar evaluation"), encoding="utf-8")
    return path


def markdown_to_html(text: str, title: str) -> str:
    """The small markdown subset the reports use (headings, pipe tables, images, bold, paragraphs) -> HTML."""

    def inline(s: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(s))

    body: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table.clear()

    for line in text.split("\n"):
        if line.startswith("|"):
            if re.match(r"^\|\s*-", line):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            tag = "th" if not table else "td"
            table.append("<tr>" + "".join(f"<{tag}>{inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        flush()
        if line.startswith("## "):
            body.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : line.rindex(")")]
            body.append(f'<p><img src="{html.escape(src)}" style="max-width:100%"></p>')
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;margin:6px 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#eee}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
