"""``neurotrain evaluate`` for gamma: input scintillator spectrum, network, classical baseline and target side
by side on held-out simulated sets, written as ``metrics.json`` content, a markdown + HTML report and figures.

Sets (seeded, disjoint from training seeds):

* one per total-count level (``evaluate.count_levels``, default 1e4 / 1e5 / 1e6): random library mixtures;
* ``doublet_ba133`` (356.0 / 383.8 keV) and ``doublet_eu152`` (1085.8 / 1112.1 keV), 1e6 counts;
* ``negative_control``: Ra-226 (186.2 keV) + U-235 (185.7 keV), closer than HPGe resolves: the number of
  peaks found within 180-192 keV must stay at one;
* ``unknown_lines``: lines at energies in no library: their centroids must not move;
* ``crystal_<name>``: random mixtures seen by another crystal of ``simulate.train_crystals`` at its typical
  resolution (one model for LYSO, NaI and CsI).
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neurotrain.task import EvalResult
from neurotrain.tasks.gamma import baseline as bl
from neurotrain.tasks.gamma.metrics import (
    FALSE_PEAK_KINDS, NetAreaError, build_metrics, detection_tradeoff, false_peak_kinds, false_rate_at_recall,
    paired_area_error, peak_detection,
)
from neurotrain.tasks.gamma.postprocess import measure_lines, refine_to_counts
from neurotrain.tasks.gamma.simulate import (
    Scene, channel_centers, channel_edges, hpge_coefficients, hpge_fwhm, measured_energy, scint_fwhm, simulate_batch,
)

UNKNOWN_LINES = [157.3, 421.7, 733.9, 1247.3, 1893.6, 2291.2]  # keV, >= 2.5 keV from every library line
NEGATIVE_WINDOW = (180.0, 192.0)
HEADLINE_LEVEL_INDEX = 1
#: net-area significance (sigma, against the measured counts) below which a named line counts as not there
MIN_LINE_SIGNIFICANCE = 3.0
#: neighbours with less than this share of a line's area do not shorten its ROI
NEIGHBOUR_FRACTION = 0.05


def _device(cfg: Any) -> torch.device:
    name = cfg.inference.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def run_network(model: nn.Module, batch: dict[str, torch.Tensor], chunk: int = 64) -> torch.Tensor:
    """Network output (B, N) in the target normalisation, in chunks."""
    model.eval()
    outs = []
    for s in range(0, batch["input"].shape[0], chunk):
        outs.append(model(batch["input"][s : s + chunk], batch["fwhm_params"][s : s + chunk])[:, 0])
    return torch.cat(outs, 0)


def _scene_batch(cfg: Any, n: int, seed: int, scene: Scene, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return simulate_batch(cfg, n, gen, device, scene)


def _outputs(cfg: Any, model: nn.Module | None, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"input": batch["input"][:, 0]}
    r662, power = (float(v) for v in batch["fwhm_params"][0])
    if model is not None:
        out["network"] = run_network(model, batch)
        if cfg.refine.iterations > 0:
            scale = batch["scale"].view(-1, 1)
            edges = channel_edges(cfg.simulate, out["network"].device)
            refined = refine_to_counts(out["network"] * scale, batch["counts"].float(), edges, r662, power, cfg.refine.iterations)
            out["network_refined"] = refined / scale
    out["baseline"] = bl.run_baseline(cfg, batch["input"][:, 0], r662, power)
    out["target"] = batch["target"][:, 0]
    return out


def _score(cfg: Any, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    res: dict[str, dict[str, float]] = {}
    for name, pred in outputs.items():
        mc = build_metrics(cfg, measured_domain=name == "input").to(pred.device)
        mc.update(pred, batch)
        res[name] = {k: _f(v) for k, v in mc.compute().items()}
    return res


def _f(v: Any) -> float | None:
    x = float(v)
    return None if not math.isfinite(x) else round(x, 4)


TRADEOFF_METHODS = ("network", "network_refined", "baseline")


def _tradeoff(cfg: Any, outs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Operating curves of the peak search for the network(s) and the baseline, and each one's false peaks per
    spectrum at the recall that the baseline reaches at ``metrics.detect_threshold``."""
    curves = {m: detection_tradeoff(cfg, outs[m], batch, cfg.evaluate.detect_thresholds) for m in TRADEOFF_METHODS if m in outs}
    ref = scores["baseline"].get("det_recall")
    at: dict[str, Any] = {}
    if ref is not None:
        for m, c in curves.items():
            value, rel = false_rate_at_recall(c, ref)
            at[m] = {"false_rate": None if value is None else round(value, 4), "relation": rel}
    return {"curves": curves, "baseline_recall": ref, "false_rate_at_baseline_recall": at}


def _peaks_in_window(
    cfg: Any, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], lo: float, hi: float,
) -> tuple[dict[str, float], dict[str, float]]:
    """Per method, found peaks in ``lo``-``hi`` keV per spectrum, and the share of spectra with two or more
    there."""
    mean, split = {}, {}
    for name, pred in outputs.items():
        peaks, energy = peak_detection(cfg, measured_domain=name == "input").to(pred.device).find(pred, batch)
        n_inside = (peaks & (energy >= lo) & (energy <= hi)).sum(1)
        mean[name] = round(float(n_inside.float().mean()), 3)
        split[name] = round(float((n_inside >= 2).float().mean()), 3)
    return mean, split


def _line_shift(cfg: Any, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], energies: list[float]) -> dict[str, dict[str, float | None]]:
    edges = channel_edges(cfg.simulate, batch["input"].device)
    # where the spectrum's calibration puts the lines: a method that keeps them there has not moved them
    le = measured_energy(torch.tensor(energies, device=edges.device), batch)
    fw = scint_fwhm(le, torch.tensor(cfg.evaluate.fwhm_662), torch.tensor(cfg.evaluate.power))
    res: dict[str, dict[str, float | None]] = {}
    scale = batch["scale"].view(-1, 1)
    for name, pred in outputs.items():
        m = measure_lines(
            pred * scale, edges, le, 1.0 * fw, cfg.metrics.tolerance_kev, noise_var=batch["counts"],
            min_significance=MIN_LINE_SIGNIFICANCE,
        )
        shift = (m["centroid"] - le).abs()
        ok = m["valid"]
        res[name] = {
            "mean_abs_shift_kev": _f(shift[ok].mean()) if bool(ok.any()) else None,
            "moved_fraction": _f(((shift > cfg.metrics.tolerance_kev) | ~ok).float().mean()),
        }
    return res


#: named lines reported one by one (FWHM, centroid, net area) in the single-source sets
PER_LINE = {
    "doublet_ba133": [80.9979, 302.8508, 356.0129, 383.8485],
    "doublet_eu152": [121.7817, 344.2785, 778.9045, 964.057, 1085.837, 1112.076, 1408.013],
    "negative_control": [185.72, 351.932, 609.312],
}


def _per_line(cfg: Any, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], energies: list[float]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Mean FWHM, centroid and net area (counts) of each named line, per method, over the spectra where the
    method shows the line (valid window measurement, net area significant against the measured counts), and
    the share of spectra where it does (``found_fraction``). A line that is not there has no FWHM or area."""
    edges = channel_edges(cfg.simulate, batch["input"].device)
    le = measured_energy(torch.tensor(energies, device=edges.device), batch)
    fw = scint_fwhm(le, batch["fwhm_params"][:, :1], batch["fwhm_params"][:, 1:2])
    # ROIs end half-way to the nearest other true line holding > 5 % of the named line's area (a 4 keV-away
    # Pb-214 351.9 keV environment line must not shrink the Ba-133 356 keV ROI to a few channels of noise)
    tl, ta = batch["line_energy"], batch["line_area"]
    own = torch.where(((tl.unsqueeze(1) - le.unsqueeze(2)).abs() < 0.5) & batch["line_mask"].bool().unsqueeze(1),
                      ta.unsqueeze(1), torch.zeros_like(ta.unsqueeze(1))).amax(2)
    d = (le.unsqueeze(2) - tl.unsqueeze(1)).abs()
    strong = batch["line_mask"].bool().unsqueeze(1) & (ta.unsqueeze(1) > NEIGHBOUR_FRACTION * own.unsqueeze(2))
    d = torch.where(strong & (d > 0.5), d, torch.full_like(d, 1e9))
    hw = torch.minimum(cfg.metrics.window_fwhm * fw, 0.5 * d.amin(2)).clamp_min(2.5 * float(edges[1] - edges[0]))
    scale = batch["scale"].view(-1, 1)
    res: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, pred in outputs.items():
        m = measure_lines(
            pred * scale, edges, le, hw, cfg.metrics.tolerance_kev, noise_var=batch["counts"],
            min_significance=MIN_LINE_SIGNIFICANCE,
        )
        per: dict[str, dict[str, float | None]] = {}
        for i, e in enumerate(energies):
            ok = m["valid"][:, i] & (m["area"][:, i] > 0)
            any_ok = bool(ok.any())
            per[f"{e:g}"] = {
                "fwhm_kev": _f(m["fwhm"][ok, i].mean()) if any_ok else None,
                "centroid_kev": _f(m["centroid"][ok, i].mean()) if any_ok else None,
                "net_area_counts": _f(m["area"][ok, i].mean()) if any_ok else None,
                "found_fraction": _f(ok.float().mean()),
            }
        res[name] = per
    return res


def _fwhm_points(cfg: Any, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    edges = channel_edges(cfg.simulate, batch["input"].device)
    le, lm = batch["line_energy"], batch["line_detectable"].bool()
    fw_in = scint_fwhm(le, batch["fwhm_params"][:, :1], batch["fwhm_params"][:, 1:2])
    pts = {}
    scale = batch["scale"].view(-1, 1)
    for name, pred in outputs.items():
        m = measure_lines(
            pred * scale, edges, le, cfg.metrics.window_fwhm * fw_in, cfg.metrics.tolerance_kev,
            noise_var=batch["counts"], min_significance=MIN_LINE_SIGNIFICANCE,
        )
        ok = lm & m["valid"]
        pts[name] = (le[ok].cpu().numpy(), m["fwhm"][ok].cpu().numpy())
    return pts


def evaluate(cfg: Any, model: nn.Module | None, run_dir: Path, **options: Any) -> EvalResult:
    """Run every evaluation set; write the report; return the headline (mean FWHM at the middle level)."""
    ev = cfg.evaluate
    device = _device(cfg)
    if model is not None:
        model = model.to(device)
    run_dir = Path(run_dir)
    report_dir = run_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    n = int(options.get("n", ev.spectra_per_level))
    base_seed = 900_000_007 + 7 * int(cfg.seed)
    metrics: dict[str, Any] = {"levels": {}, "sets": {}}
    fwhm_pts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    examples: dict[str, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
    for i, level in enumerate(ev.count_levels):
        # the configured crystal: a scene without named sources would otherwise draw one from train_crystals
        scene = Scene(counts=level, fwhm_662=ev.fwhm_662, power=ev.power, crystal=cfg.simulate.detector.crystal)
        batch = _scene_batch(cfg, n, base_seed + i, scene, device)
        outs = _outputs(cfg, model, batch)
        metrics["levels"][f"{level:.0e}"] = _score(cfg, outs, batch)
        metrics.setdefault("false_peaks", {})[f"{level:.0e}"] = {
            name: false_peak_kinds(peak_detection(cfg, name == "input").to(pred.device), pred, batch)
            for name, pred in outs.items() if name != "target"
        }
        if "network" in outs:
            area = NetAreaError(channel_edges(cfg.simulate), cfg.metrics.window_fwhm, cfg.metrics.tolerance_kev)
            pair = paired_area_error(area, {k: v for k, v in outs.items() if k not in ("input", "target")}, batch)
            metrics.setdefault("paired_area_err_pct", {})[f"{level:.0e}"] = {k: _f(v) for k, v in pair.items()}
        if ev.detect_thresholds:
            metrics.setdefault("detection_tradeoff", {})[f"{level:.0e}"] = _tradeoff(cfg, outs, batch, metrics["levels"][f"{level:.0e}"])
        for k, v in _fwhm_points(cfg, outs, batch).items():
            fwhm_pts.setdefault(k, []).append(v)
        examples[f"mixture_{level:.0e}"] = (batch, outs)
    special = {
        "doublet_ba133": Scene(sources=["Ba-133"], counts=1e6, fwhm_662=ev.fwhm_662, power=ev.power, random_lines=0),
        "doublet_eu152": Scene(sources=["Eu-152"], counts=1e6, fwhm_662=ev.fwhm_662, power=ev.power, random_lines=0),
        "negative_control": Scene(sources=["Ra-226", "U-235"], counts=1e6, fwhm_662=ev.fwhm_662, power=ev.power, random_lines=0),
        "unknown_lines": Scene(sources=[], counts=1e6, fwhm_662=ev.fwhm_662, power=ev.power, random_line_energies=UNKNOWN_LINES),
    }
    from neurotrain.tasks.gamma.config import CRYSTAL_RESOLUTION

    for crystal in cfg.simulate.train_crystals:
        if crystal != cfg.simulate.detector.crystal:
            r, pw = CRYSTAL_RESOLUTION[crystal]
            special[f"crystal_{crystal}"] = Scene(crystal=crystal, counts=1e5, fwhm_662=r, power=pw)
    n_special = max(2, min(n, 16))
    for j, (name, scene) in enumerate(special.items()):
        batch = _scene_batch(cfg, n_special, base_seed + 100 + j, scene, device)
        outs = _outputs(cfg, model, batch)
        entry: dict[str, Any] = {"metrics": _score(cfg, outs, batch)}
        if name == "negative_control":
            entry["peaks_in_180_192_kev"], entry["split_share_180_192_kev"] = _peaks_in_window(cfg, outs, batch, *NEGATIVE_WINDOW)
        if name == "unknown_lines":
            entry["unknown_line_shift"] = _line_shift(cfg, outs, batch, UNKNOWN_LINES)
        if name in PER_LINE:
            entry["per_line"] = _per_line(cfg, outs, batch, PER_LINE[name])
        metrics["sets"][name] = entry
        examples[name] = (batch, outs)
    mid = list(metrics["levels"])[min(HEADLINE_LEVEL_INDEX, len(metrics["levels"]) - 1)]
    head_net = metrics["levels"][mid].get("network", {}).get("fwhm_kev")
    head_base = metrics["levels"][mid]["baseline"].get("fwhm_kev")
    metrics["headline"] = {
        "name": f"mean FWHM of detectable isolated lines at {mid} counts (keV)",
        "input": metrics["levels"][mid]["input"].get("fwhm_kev"),
        "network": head_net,
        "baseline": head_base,
        "target": metrics["levels"][mid]["target"].get("fwhm_kev"),
    }
    figures: list[Path] = []
    if ev.figures:
        figures = _figures(cfg, report_dir, examples, fwhm_pts, metrics)
    report = _write_report(cfg, report_dir, metrics, figures, ev.html)
    return EvalResult(
        metrics=metrics,
        headline_name=metrics["headline"]["name"],
        headline_network=head_net,
        headline_baseline=head_base,
        report_path=report,
        lower_is_better=True,
        extra={"input": metrics["headline"]["input"], "target": metrics["headline"]["target"]},
    )


def _figures(cfg: Any, out: Path, examples: dict[str, Any], fwhm_pts: dict[str, list[Any]], metrics: dict[str, Any]) -> list[Path]:
    from neurotrain.tasks.gamma import plots

    energy = channel_centers(cfg.simulate).numpy()
    paths = []
    zoom = {"doublet_ba133": (300, 420), "doublet_eu152": (1040, 1150), "negative_control": (150, 260)}
    for name, (batch, outs) in examples.items():
        scale = batch["scale"][0].item()
        curves = {k: (v[0] * scale).detach().float().cpu().numpy() for k, v in outs.items()}
        lines = batch["line_energy"][0][batch["line_detectable"][0].bool()].cpu().tolist()
        if name == "unknown_lines":
            lines = UNKNOWN_LINES
        paths.append(plots.plot_spectra(out / f"spectra_{name}.png", energy, curves, lines, title=name))
        if name in zoom:
            paths.append(
                plots.plot_spectra(out / f"spectra_{name}_zoom.png", energy, curves, lines, title=f"{name} (zoom)", xlim=zoom[name], log=False)
            )
    pts = {k: (np.concatenate([p[0] for p in v]), np.concatenate([p[1] for p in v])) for k, v in fwhm_pts.items()}
    e = np.linspace(max(30.0, cfg.simulate.e_min_kev), cfg.simulate.e_max_kev, 200)
    et = torch.tensor(e)
    laws = {
        f"scintillator law ({cfg.evaluate.fwhm_662:.0%} at 662 keV)": (e, scint_fwhm(et, torch.tensor(cfg.evaluate.fwhm_662), torch.tensor(cfg.evaluate.power)).numpy()),
        "HPGe law (target)": (e, hpge_fwhm(et, hpge_coefficients(cfg.simulate.hpge_fwhm_anchors)).numpy()),
        "channel width": (e, np.full_like(e, (cfg.simulate.e_max_kev - cfg.simulate.e_min_kev) / cfg.simulate.n_channels)),
    }
    paths.append(plots.plot_fwhm_curves(out / "fwhm_vs_energy.png", pts, laws))
    if metrics.get("detection_tradeoff"):
        paths.append(plots.plot_detection_tradeoff(out / "detection_tradeoff.png", metrics["detection_tradeoff"]))
    paths.append(plots.plot_level_bars(out / "count_levels.png", metrics["levels"], ["fwhm_kev", "area_err_pct", "det_false_rate", "det_recall"]))
    return paths


def _table_md(rows: dict[str, dict[str, float | None]], keys: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
    for m, vals in rows.items():
        lines.append(f"| {m} | " + " | ".join("—" if vals.get(k) is None else f"{vals[k]:.4g}" for k in keys) + " |")
    return lines


KEYS = ["fwhm_kev", "centroid_err_kev", "area_err_pct", "area_miss_rate", "peak_to_valley", "det_precision", "det_recall", "det_false_rate", "spectrum_err"]


def _tradeoff_md(tradeoff: dict[str, Any], default: float) -> list[str]:
    md = ["## Peak search at equal recall", "",
          "A method that finds more true lines may also find more false ones. Each row sweeps the detection "
          "threshold (sigma); cells give recall / false peaks per spectrum (± Poisson standard error). The last "
          f"column reads each curve at the recall the baseline reaches at the default threshold ({default:g} sigma), "
          "linear between thresholds (≤: the curve's highest threshold already finds more lines, so the value is an "
          "upper bound; —: the method never reaches that recall).", ""]
    for level, t in tradeoff.items():
        curves = t["curves"]
        if not curves:
            continue
        ths = next(iter(curves.values()))["threshold"]
        md += [f"**{level} counts** (baseline recall {t['baseline_recall']})", "",
               "| method | " + " | ".join(f"{x:g} sigma" for x in ths) + " | false / spectrum at the baseline's recall |",
               "| --- |" + " --- |" * (len(ths) + 1)]
        for m, c in curves.items():
            cells = [f"{r:.2f} / {f:.2f} ± {e:.2f}" for r, f, e in zip(c["recall"], c["false_rate"], c["false_rate_err"], strict=True)]
            at = t["false_rate_at_baseline_recall"].get(m, {})
            v = at.get("false_rate")
            rel = at.get("relation", "")
            cells.append("—" if v is None else (f"≤ {v:.2f}" if rel == "<=" else f"{v:.2f}"))
            md.append(f"| {m} | " + " | ".join(cells) + " |")
        md.append("")
    return md


def _write_report(cfg: Any, out: Path, metrics: dict[str, Any], figures: list[Path], write_html: bool) -> Path:
    from neurotrain.io.atomic import atomic_path

    md = [
        "# gamma evaluation: scintillator -> HPGe-like enhancement",
        "",
        f"Crystal {cfg.simulate.detector.crystal}, input resolution {cfg.evaluate.fwhm_662:.1%} at 662 keV "
        f"(power {cfg.evaluate.power}), {cfg.simulate.n_channels} channels, {cfg.simulate.e_min_kev:g}-{cfg.simulate.e_max_kev:g} keV. "
        f"Baseline: {cfg.baseline.method} ({cfg.baseline.iterations} iterations).",
        "",
        "Metrics: FWHM (keV, isolated detectable lines), centroid error (keV), net-area error (% vs the same "
        "window measurement on the target, over the lines found) and the share of lines missed (no significant "
        "positive net area), doublet peak-to-valley (saturates at 100, 1 = no dip), peak-search precision / "
        f"recall (tolerance {cfg.metrics.tolerance_kev} keV), false peaks per spectrum (the same rule for every "
        "row: a found peak that is neither a true line or its escape / x-ray / backscatter feature, nor the top of "
        "a step (below a Compton edge, above a Lu-176 onset"
        + (f", within {cfg.metrics.step_reach_fwhm} input FWHM" if cfg.metrics.step_reach_fwhm > 0 else "")
        + "), nor a peak of the target, so the target row is 0 by construction; a found peak needs a significant "
        "net area against the measured counts"
        + (f" and, within {cfg.metrics.merge_reach_fwhm} input FWHM of a larger peak, a Poisson likelihood ratio "
           "that prefers it to the two merged (not for the input row, which is the measurement itself)"
           if cfg.metrics.merge_reach_fwhm is not None else "")
        + "), whole-spectrum relative L1 error.",
        "",
        f"**Headline** — {metrics['headline']['name']}: input {metrics['headline']['input']}, network "
        f"{metrics['headline']['network']}, baseline {metrics['headline']['baseline']}, target {metrics['headline']['target']}.",
        "",
    ]
    for level, rows in metrics["levels"].items():
        md += [f"## {level} counts (random mixtures)", ""] + _table_md(rows, KEYS) + [""]
        pair = metrics.get("paired_area_err_pct", {}).get(level)
        if pair:
            methods = [k for k in pair if k != "lines"]
            md += [f"Net-area error (%) over the {pair['lines']:.0f} lines that {', '.join(methods)} all show: "
                   + ", ".join(f"{k} {pair[k]}" for k in methods) + ".", ""]
        kinds = metrics.get("false_peaks", {}).get(level)
        if kinds:
            md += ["False peaks per spectrum by where they lie (within half an input FWHM of a detectable line, its "
                   "Compton edge or a Lu-176 onset; the first that applies), "
                   "and the 50 keV bins that hold most of them:", "",
                   "| method | " + " | ".join(k.replace("_", " ") for k in FALSE_PEAK_KINDS) + " | most frequent bins (keV: count) |",
                   "| --- |" + " ---: |" * len(FALSE_PEAK_KINDS) + " --- |"]
            for m, v in kinds.items():
                top = ", ".join(f"{b:g}: {c}" for b, c in v["energies"][:5])
                md.append(f"| {m} | " + " | ".join(f"{v[k]:.2f}" for k in FALSE_PEAK_KINDS) + f" | {top} |")
            md.append("")
    if metrics.get("detection_tradeoff"):
        md += _tradeoff_md(metrics["detection_tradeoff"], cfg.metrics.detect_threshold)
    for name, entry in metrics["sets"].items():
        md += [f"## {name}", ""] + _table_md(entry["metrics"], KEYS) + [""]
        if "peaks_in_180_192_kev" in entry:
            md += ["Peaks found in 180-192 keV per spectrum (one is right: 185.7 and 186.2 keV are unresolvable):", ""]
            split = entry.get("split_share_180_192_kev", {})
            md += [f"- {k}: {v} (share of spectra with two or more: {split.get(k, '—')})" for k, v in entry["peaks_in_180_192_kev"].items()] + [""]
        if "per_line" in entry:
            methods = list(entry["per_line"])
            md += ["Per line: FWHM keV / centroid keV / net area counts / share of spectra where the line is found "
                   "(— = not found in any)", "",
                   "| line (keV) | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
            for e in entry["per_line"][methods[0]]:
                cells = []
                for m in methods:
                    v = entry["per_line"][m][e]
                    cells.append(" / ".join("—" if v[k] is None else f"{v[k]:.4g}" for k in ("fwhm_kev", "centroid_kev", "net_area_counts", "found_fraction")))
                md.append(f"| {e} | " + " | ".join(cells) + " |")
            md.append("")
        if "unknown_line_shift" in entry:
            md += [f"Lines in no library ({', '.join(f'{e:g}' for e in UNKNOWN_LINES)} keV): centroid shift", ""]
            md += [f"- {k}: mean |shift| {v['mean_abs_shift_kev']} keV, moved fraction {v['moved_fraction']}" for k, v in entry["unknown_line_shift"].items()] + [""]
    md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    text = "\n".join(md)
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    if write_html:
        body = []
        for line in md:
            if line.startswith("# "):
                body.append(f"<h1>{html.escape(line[2:])}</h1>")
            elif line.startswith("## "):
                body.append(f"<h2>{html.escape(line[3:])}</h2>")
            elif line.startswith("| ---"):
                continue
            elif line.startswith("| "):
                cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
                tag = "th" if cells and cells[0] in ("method", "line (keV)") else "td"
                body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            elif line.startswith("!["):
                name = line[line.index("(") + 1 : -1]
                body.append(f'<img src="{html.escape(name)}" style="max-width:100%">')
            elif line:
                body.append("<p>" + re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(line)) + "</p>")
        doc = "<!doctype html><meta charset='utf-8'><title>gamma evaluation</title><style>td,th{padding:2px 8px;border:1px solid #ccc}table{border-collapse:collapse}</style>"
        joined = "\n".join(body).replace("</p>\n<tr>", "</p>\n<table><tr>")
        # wrap consecutive table rows in <table>
        out_lines, in_table = [], False
        for ln in joined.split("\n"):
            if ln.startswith("<tr>") and not in_table:
                out_lines.append("<table>")
                in_table = True
            if not ln.startswith("<tr>") and in_table:
                out_lines.append("</table>")
                in_table = False
            out_lines.append(ln.replace("<table><tr>", "<tr>"))
        if in_table:
            out_lines.append("</table>")
        with atomic_path(out / "report.html") as tmp:
            tmp.write_text(doc + "\n".join(out_lines), encoding="utf-8")
    return path
