"""The gamma evaluation's report: ``report.md`` (+ ``report.html``), ``table.json`` and figures, from the
``metrics`` dict of :func:`neurotrain.tasks.gamma.evaluate.evaluate`. Every number printed is one of that
dict; the rules behind them are docs/results/gamma.md ("Rules")."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any


from neurotrain.io.atomic import atomic_path
from neurotrain.tasks.gamma.eval_score import ROWS
from neurotrain.tasks.gamma.peak_rules import EXEMPTION_RULES

#: table columns: (metrics key, header); FWHM and area carry their number of paired lines
COLUMNS = [("recall", "recall"), ("miss_rate", "miss rate"), ("raw_false", "raw false / spectrum")] + [
    (r, r.replace("_", " ")) for r in EXEMPTION_RULES
] + [("unexplained", "unexplained"), ("dropped", "dropped (impossible)"), ("false_600_900", "false in 600-900 keV")]


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def rows_md(rows: dict[str, dict[str, Any]]) -> list[str]:
    """One markdown table: a line per row of :data:`eval_score.ROWS` present."""
    head = ["row", "FWHM keV [lines]", "area error % [lines]"] + [h for _, h in COLUMNS]
    md = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for name in [r for r in ROWS if r in rows]:
        r = rows[name]
        cells = [f"{_fmt(r['fwhm_kev'])} [{r['fwhm_lines']}]", f"{_fmt(r['area_err_pct'])} [{r['area_lines']}]"]
        cells += [_fmt(r[k]) for k, _ in COLUMNS]
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    return md


def summary_md(metrics: dict[str, Any]) -> list[str]:
    """The headline table: per crystal and count level, paired FWHM / area error, miss rate and unexplained
    false peaks per spectrum of each row, as ``FWHM / area % / miss / false``."""
    names = [r for r in ROWS if any(r in rows for lv in metrics["table"].values() for rows in lv.values())]
    md = ["| crystal | counts | lines (FWHM / area) | " + " | ".join(names) + " |", "| --- | --- | --- |" + " --- |" * len(names)]
    for crystal, levels in metrics["table"].items():
        for level, rows in levels.items():
            any_row = next(iter(rows.values()))
            cells = []
            for n in names:
                r = rows.get(n)
                cells.append("—" if r is None else f"{_fmt(r['fwhm_kev'])} / {_fmt(r['area_err_pct'])} / {_fmt(r['miss_rate'])} / {_fmt(r['unexplained'])} ({_fmt(r['raw_false'])})")
            md.append(f"| {crystal} | {level} | {any_row['fwhm_lines']} / {any_row['area_lines']} | " + " | ".join(cells) + " |")
    return md


def write_report(cfg: Any, out: Path, metrics: dict[str, Any], figures: list[Path], write_html: bool) -> Path:
    """``report.md``, ``table.json`` and (``write_html``) ``report.html`` under ``out``; returns report.md."""
    ev = cfg.evaluate
    md = [
        "# gamma evaluation",
        "",
        f"Rules: docs/results/gamma.md. Evaluation responses: seed {ev.response_seed}, {ev.response_photons} photons per "
        f"incident energy (training: seed {cfg.simulate.response_seed}, {cfg.simulate.response_photons}). "
        f"{cfg.simulate.n_channels} channels, {cfg.simulate.e_min_kev:g}-{cfg.simulate.e_max_kev:g} keV; "
        f"{ev.spectra_per_level} test spectra per crystal and level, {ev.validation_spectra} validation spectra for tuning.",
        "",
        f"**Headline** — {metrics['headline'].get('name')}: "
        + ", ".join(f"{k} {v}" for k, v in metrics["headline"].items() if k != "name"),
        "",
        "## Summary",
        "",
        "Cells: paired FWHM keV / paired area error % / miss rate / unexplained false peaks per spectrum (raw false "
        "peaks per spectrum). FWHM and area over the lines every compared row measured (input: its subset).",
        "",
    ] + summary_md(metrics) + [""]
    if metrics.get("mc_noise"):
        md += ["## Monte Carlo noise check", "",
               "R = sqrt(sum (T1 - T2)^2 / 2 / sum T1) between two evaluation responses of different seeds; passes below 1.", "",
               "| counts | photons | R target | R input | passed |", "| --- | ---: | ---: | ---: | --- |"]
        md += [f"| {k} | {v['photons']} | {v['r_target']} | {v['r_input']} | {'yes' if v['passed'] else '**NO**'} |" for k, v in metrics["mc_noise"].items()]
        md.append("")
    for crystal, levels in metrics["table"].items():
        for level, rows in levels.items():
            t = metrics["tuning"][crystal][level]
            budget = "configured" if t["budget"] is None else f"{t['budget']:.3g} unexplained false peaks / spectrum"
            md += [f"## {crystal}, {level} counts", "", f"Tuned on validation scenes (budget {budget}): {t['rl']}; {t['gold']}.", ""]
            md += rows_md(rows) + [""]
    for name, entry in metrics["sets"].items():
        md += [f"## {name} ({entry['level']} counts; {entry['settings']['rl']}, {entry['settings']['gold']})", ""]
        if "fwhm_662_true" in entry:
            md += [f"Input FWHM law {entry['fwhm_662_true']:.1%} at 662 keV, the methods told {entry['fwhm_662_told']:.1%}.", ""]
        if "peak_to_valley" in entry:
            md += ["356.0 / 383.8 keV peak-to-valley (issue: >= 3 for the network): "
                   + ", ".join(f"{k} {_fmt(v)}" for k, v in entry["peak_to_valley"].items()), ""]
        md += rows_md(entry["rows"]) + [""]
    md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(md), encoding="utf-8")
    with atomic_path(out / "table.json") as tmp:
        tmp.write_text(json.dumps({k: metrics[k] for k in ("table", "sets", "mc_noise", "headline")}, indent=1), encoding="utf-8")
    if write_html:
        with atomic_path(out / "report.html") as tmp:
            tmp.write_text(markdown_to_html(md, "gamma evaluation"), encoding="utf-8")
    return path


def markdown_to_html(md: list[str], title: str) -> str:
    """The report's small markdown subset (headings, tables, images, bold, paragraphs) as one HTML page."""
    body: list[str] = []
    in_table = False
    for line in md:
        is_row = line.startswith("| ")
        if in_table and not is_row:
            body.append("</table>")
            in_table = False
        if line.startswith("| ---"):
            continue
        if is_row:
            cells = [html.escape(c.strip()) for c in line.strip().strip("|").split("|")]
            tag = "td" if in_table else "th"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            body.append(f'<img src="{html.escape(line[line.index("(") + 1 : -1])}" style="max-width:100%">')
        elif line:
            body.append("<p>" + re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(line)) + "</p>")
    if in_table:
        body.append("</table>")
    style = "td,th{padding:2px 8px;border:1px solid #ccc}table{border-collapse:collapse}"
    return f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>\n" + "\n".join(body)


def figures(cfg: Any, out: Path, examples: dict[str, Any], metrics: dict[str, Any]) -> list[Path]:
    """Spectra (first spectrum of each example set, every row) and the tuning sweeps."""
    from neurotrain.tasks.gamma import plots
    from neurotrain.tasks.gamma.simulate import channel_centers

    energy = channel_centers(cfg.simulate).numpy()
    paths = []
    zoom = {"doublet_ba133": (300, 420), "lu176_600_900": (500, 1000)}
    for name, (batch, spectra) in examples.items():
        curves = {k: v[0].detach().float().cpu().numpy() for k, v in spectra.items()}
        lines = batch["line_energy"][0][batch["line_detectable"][0].bool()].cpu().tolist()
        paths.append(plots.plot_spectra(out / f"spectra_{name}.png", energy, curves, lines, title=name))
        if name in zoom:
            paths.append(plots.plot_spectra(out / f"spectra_{name}_zoom.png", energy, curves, lines, title=f"{name} (zoom)",
                                            xlim=zoom[name], log=False))
    for crystal, levels in metrics["tuning"].items():
        sweeps = {lv: t["sweep"] for lv, t in levels.items() if t["sweep"]}
        if sweeps:
            budgets = {lv: t["budget"] for lv, t in levels.items()}
            paths.append(plots.plot_tuning(out / f"tuning_{crystal}.png", sweeps, budgets, title=f"baseline tuning, {crystal}"))
    return paths


__all__ = ["write_report", "figures", "rows_md", "summary_md", "markdown_to_html"]
