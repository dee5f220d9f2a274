"""The evaluation's scoring of one set of spectra, as fixed in docs/results/gamma.md ("Rules"): every row
(input, network, refined network, tuned Richardson-Lucy, tuned Gold, target) is scored against the simulator's
truth alone.

* found peaks: :func:`~neurotrain.tasks.gamma.postprocess.find_peaks` (4 sigma against the measured counts,
  Currie net-area and likelihood-ratio tests), physically impossible ones dropped and counted
  (:func:`~neurotrain.tasks.gamma.postprocess.physical_peaks`);
* a found peak within ``metrics.tolerance_kev`` of a truth line matches it; the rest are raw false peaks, then
  broken down by :func:`~neurotrain.tasks.gamma.peak_rules.classify_false_peaks` for the detector the row
  claims to be (:func:`claimed_detector`);
* truth lines measured by the window method (significance >= :data:`MIN_LINE_SIGNIFICANCE` against the
  measured counts); FWHM and area error on the lines that every compared row measured (:func:`paired`).

All spectra here are in counts per channel (B, N); energies in keV.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from neurotrain.tasks.gamma.peak_rules import EXEMPTION_RULES, classify_false_peaks, exemption_windows
from neurotrain.tasks.gamma.postprocess import compact_peaks, find_peaks, line_windows, measure_lines, physical_peaks
from neurotrain.tasks.gamma.simulate import channel_edges, hpge_coefficients, hpge_fwhm, scint_fwhm

#: net-area significance (sigma, against the measured counts) for a truth line to count as measured
MIN_LINE_SIGNIFICANCE = 3.0
#: a neighbour holding more than this share of a line's area within 2 input FWHM makes its FWHM unmeasurable
CROWD_FRACTION = 0.05
#: the rows compared on common lines, in table order (input is reported on its subset of those lines)
COMPARED = ("network", "network_refined", "rl_tuned", "gold_tuned", "target")
ROWS = ("input",) + COMPARED
#: the band where LYSO's Lu-176 produced false peaks (issue 20, part 4), keV
LU176_BAND_KEV = (600.0, 900.0)


def target_is_hpge(cfg: Any) -> bool:
    """Whether the simulator's target is a separate HPGe detector (``simulate.target``) rather than the
    scintillator's own deposits shown at HPGe resolution."""
    kind = str(getattr(cfg.simulate, "target", "resolution")).lower()
    return kind in ("hpge", "germanium", "hpge_detector")


def target_law(cfg: Any) -> tuple[float, float, float]:
    """(a, b, c) of the target detector's FWHM^2 = a + b E + c E^2: the germanium law of ``simulate.hpge`` with
    the HPGe target (``hpge.target_fwhm_coefficients``), else the ``hpge_fwhm_anchors`` fit."""
    try:
        from neurotrain.tasks.gamma.hpge import target_fwhm_coefficients
    except ImportError:  # a simulator without the separate HPGe detector
        return hpge_coefficients(cfg.simulate.hpge_fwhm_anchors)
    return target_fwhm_coefficients(cfg.simulate)


def claimed_detector(cfg: Any, crystal: str, row: str) -> tuple[str, bool]:
    """(detector, holds Lu-176) that a row's spectrum claims to be: the input crystal for the input row, else
    the target detector (HPGe, or the crystal's own deposits with the resolution-only target)."""
    if row == "input" or not target_is_hpge(cfg):
        return crystal, crystal == "LYSO"
    return "HPGe", False


def _law(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    fp = batch["fwhm_params"]
    return fp[:, :1], fp[:, 1:2]


def found_peaks(cfg: Any, spec: Tensor, batch: dict[str, Tensor], measured_domain: bool) -> dict[str, Tensor]:
    """The peak list of ``spec`` (B, N counts): ``energy``, ``keep`` (physical, found) and ``dropped`` (found
    but physically impossible), each (B, K)."""
    mc = cfg.metrics
    edges = channel_edges(cfg.simulate, spec.device)
    centres = 0.5 * (edges[1:] + edges[:-1])
    r662, power = _law(batch)
    res = scint_fwhm(centres.unsqueeze(0), r662, power)
    peaks, energy = find_peaks(
        spec, batch["counts"].float(), edges, mc.detect_threshold, resolution_kev=res, measured_domain=measured_domain,
        merge_reach_fwhm=mc.merge_reach_fwhm, continuum_width_fwhm=mc.continuum_width_fwhm,
    )
    e, valid = compact_peaks(peaks, energy)
    keep, _ = physical_peaks(spec, edges, e, valid, scint_fwhm(e, r662, power), mc.window_fwhm, mc.tolerance_kev)
    return {"energy": e, "keep": keep, "dropped": valid & ~keep}


def peak_counts(cfg: Any, crystal: str, row: str, found: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per spectrum (B,): detectable lines and those a kept peak matches, raw false peaks, each exemption
    rule's share of them, ``unexplained``, ``dropped`` and raw false peaks in :data:`LU176_BAND_KEV`."""
    tol = cfg.metrics.tolerance_kev
    e, keep = found["energy"], found["keep"]
    le, lm = batch["line_energy"], batch["line_mask"].bool()
    det = batch["line_detectable"].bool() & lm
    near = ((e.unsqueeze(2) - le.unsqueeze(1)).abs() <= tol) & lm.unsqueeze(1) & keep.unsqueeze(2)  # (B, K, L)
    false = keep & ~near.any(2)
    detector, lu = claimed_detector(cfg, crystal, row)
    if row == "input":
        r662, power = _law(batch)
        width = lambda x: scint_fwhm(x, r662, power)  # noqa: E731
    else:
        coeffs = target_law(cfg)
        width = lambda x: hpge_fwhm(x, coeffs)  # noqa: E731
    windows = exemption_windows(batch, detector, cfg.simulate.detector.slab_material, tol, width, lu)
    kinds = classify_false_peaks(e, false, windows)
    out = {
        "lines": det.sum(1).float(), "lines_found": (near.any(1) & det).sum(1).float(),
        "raw_false": false.sum(1).float(), "dropped": found["dropped"].sum(1).float(),
        "false_600_900": (false & (e >= LU176_BAND_KEV[0]) & (e <= LU176_BAND_KEV[1])).sum(1).float(),
    }
    out.update({k: v.sum(1).float() for k, v in kinds.items()})
    return out


def measure_truth(cfg: Any, spec: Tensor, batch: dict[str, Tensor], truth_area: Tensor) -> dict[str, Tensor]:
    """Window measurements of every truth line on ``spec`` (B, N counts), each (B, L): ``measured`` (valid,
    net area >= :data:`MIN_LINE_SIGNIFICANCE` sigma against the measured counts), ``area_err_pct`` against
    ``truth_area`` (counts), and ``fwhm`` with ``fwhm_ok`` (measured on an un-narrowed ROI of an isolated
    line)."""
    mc = cfg.metrics
    edges = channel_edges(cfg.simulate, spec.device)
    width = float(edges[1] - edges[0])
    le, lm, la = batch["line_energy"], batch["line_mask"].bool(), batch["line_area"]
    r662, power = _law(batch)
    fw_in = scint_fwhm(le, r662, power)
    noise = batch["counts"].float().clamp_min(1.0)
    hw = line_windows(le, lm, fw_in, mc.window_fwhm, 2.5 * width, line_area=la)
    m = measure_lines(spec, edges, le, hw, mc.tolerance_kev, noise_var=noise, min_significance=MIN_LINE_SIGNIFICANCE)
    measured = m["valid"] & (m["area"] > 0)
    d = (le.unsqueeze(2) - le.unsqueeze(1)).abs()
    strong = lm.unsqueeze(1) & (la.unsqueeze(1) > CROWD_FRACTION * la.unsqueeze(2))
    crowded = (strong & (d > 0.01) & (d < 2 * fw_in.unsqueeze(2))).any(2)
    mf = measure_lines(spec, edges, le, mc.window_fwhm * fw_in, mc.tolerance_kev, noise_var=noise,
                       min_significance=MIN_LINE_SIGNIFICANCE)
    return {
        "measured": measured, "area_err_pct": 100 * (m["area"] - truth_area).abs() / truth_area.clamp_min(1e-9),
        "fwhm": mf["fwhm"], "fwhm_ok": mf["valid"] & (mf["area"] > 0) & ~crowded,
    }


def score_rows(cfg: Any, crystal: str, spectra: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, dict[str, Any]]:
    """Score every row of ``spectra`` (name -> (B, N) counts) on ``batch``'s truth: a table row per name
    (per-spectrum rates, recall, miss rate, paired FWHM / area error)."""
    scale = batch["scale"].view(-1, 1)
    det = batch["line_detectable"].bool() & batch["line_mask"].bool()
    truth_t = batch["line_area"] * scale
    # the input's own expected peak areas (counts; the input detector's efficiency), where the simulator gives them
    truth_in = batch["line_area_input"] if "line_area_input" in batch else truth_t
    counts, lines = {}, {}
    for name, spec in spectra.items():
        found = found_peaks(cfg, spec, batch, measured_domain=name == "input")
        counts[name] = peak_counts(cfg, crystal, name, found, batch)
        lines[name] = measure_truth(cfg, spec, batch, truth_in if name == "input" else truth_t)
    return paired(counts, lines, det)


def paired(counts: dict[str, dict[str, Tensor]], lines: dict[str, dict[str, Tensor]], det: Tensor) -> dict[str, dict[str, Any]]:
    """Table rows from per-spectrum peak counts and truth-line measurements: FWHM and area error averaged over
    the lines that every row of :data:`COMPARED` present measured (the input over its subset of them)."""
    present = [r for r in COMPARED if r in lines]
    common_a, common_f = det.clone(), det.clone()
    for r in present:
        common_a &= lines[r]["measured"]
        common_f &= lines[r]["fwhm_ok"]
    rows: dict[str, dict[str, Any]] = {}
    n_det = max(1, int(det.sum()))
    for name, c in counts.items():
        ln = lines[name]
        sel_a = common_a & ln["measured"] if name == "input" else common_a
        sel_f = common_f & ln["fwhm_ok"] if name == "input" else common_f
        n_spec = max(1, c["raw_false"].shape[0])
        row: dict[str, Any] = {
            "fwhm_kev": _mean(ln["fwhm"][sel_f]), "fwhm_lines": int(sel_f.sum()),
            "area_err_pct": _mean(ln["area_err_pct"][sel_a]), "area_lines": int(sel_a.sum()),
            "miss_rate": round(float((det & ~ln["measured"]).sum()) / n_det, 4),
            "recall": round(float(c["lines_found"].sum() / c["lines"].sum().clamp_min(1)), 4),
        }
        for k in ("raw_false",) + EXEMPTION_RULES + ("unexplained", "dropped", "false_600_900"):
            row[k] = round(float(c[k].sum()) / n_spec, 4)
        rows[name] = row
    return rows


def _mean(x: Tensor) -> float | None:
    return round(float(x.double().mean()), 4) if x.numel() else None
