"""``neurotrain predict CKPT spectrum.spe ...`` for gamma: read, resample onto the model grid, enhance, find
peaks, write ``<stem>_enhanced.csv`` / ``.h5`` (energy axis included), ``<stem>_peaks.csv`` and a plot.

Options (CLI ``--option key=value`` or keyword arguments): ``calibration`` (polynomial keV coefficients, a
list or ``"c0,c1[,c2]"``), ``crystal`` (LYSO/NaI/CsI/LaBr3: sets the FWHM law from typical values),
``fwhm_662`` and ``power`` (the input detector's FWHM law, overriding the crystal), ``conserve_counts``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neurotrain.errors import ConfigError
from neurotrain.tasks.gamma import io as gio
from neurotrain.tasks.gamma.metrics import PEAK_SCALES, peak_origins, secondary_names
from neurotrain.tasks.gamma.postprocess import find_peaks, line_windows, measure_lines, refine_to_counts, resolution_counts
from neurotrain.tasks.gamma.simulate import channel_edges, scint_fwhm


def _parse_calibration(value: Any) -> list[float] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return [float(v) for v in value.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"config error in predict options: calibration: expected numbers like 0,0.73 (got {value!r})") from None
    return [float(v) for v in value]


def fwhm_law(cfg: Any, options: dict[str, Any]) -> tuple[float, float]:
    """The input detector's (r662, power): options > cfg.predict > crystal defaults > cfg.evaluate."""
    from neurotrain.tasks.gamma.config import CRYSTAL_RESOLUTION

    p = cfg.predict
    crystal = options.get("crystal") or p.crystal
    r, pw = (CRYSTAL_RESOLUTION[crystal] if crystal in CRYSTAL_RESOLUTION else (cfg.evaluate.fwhm_662, cfg.evaluate.power))
    if crystal is not None and crystal not in CRYSTAL_RESOLUTION:
        raise ConfigError(f"config error in predict options: crystal: expected one of {sorted(CRYSTAL_RESOLUTION)} (got {crystal!r})")
    r = float(options.get("fwhm_662") or p.fwhm_662 or r)
    pw = float(options.get("power") or p.power or pw)
    return r, pw


@torch.no_grad()
def enhance(cfg: Any, model: nn.Module, counts: np.ndarray, r662: float, power: float, conserve: bool = True,
            covered: np.ndarray | None = None) -> np.ndarray:
    """Enhance one spectrum already on the model grid (counts per channel) -> counts per channel, refined
    against the measured counts when ``refine.in_predict`` is set (:func:`postprocess.refine_to_counts`).
    ``covered`` (N,) bool: the channels the file covers (:func:`io.covered_channels`); the output is zero
    elsewhere - a network fills an unmeasured range with continuum, and that is no measurement."""
    device = next(model.parameters()).device
    n = counts.size
    scale = max(counts.sum() / n, 1e-6)
    x = torch.tensor(counts / scale, dtype=torch.float32, device=device)
    axis = (channel_edges(cfg.simulate, device)[:-1] + channel_edges(cfg.simulate, device)[1:]) / 2 / cfg.simulate.e_max_kev
    inp = torch.stack([x, torch.log1p(x), axis]).unsqueeze(0)
    cond = torch.tensor([[r662, power]], dtype=torch.float32, device=device)
    model.eval()
    out_t = model(inp, cond)[0].float() * scale
    if cfg.refine.in_predict and cfg.refine.iterations > 0:
        meas = torch.tensor(counts, dtype=torch.float32, device=device).unsqueeze(0)
        out_t = refine_to_counts(out_t, meas, channel_edges(cfg.simulate, device), r662, power, cfg.refine.iterations)
    out = out_t[0].double().cpu().numpy()
    if covered is not None:
        out = np.where(covered, out, 0.0)
    if conserve and out.sum() > 0:
        out = out * (counts.sum() / out.sum())
    return out


def list_peaks(cfg: Any, enhanced: np.ndarray, measured: np.ndarray, r662: float, power: float,
               covered: np.ndarray | None = None, crystal: str | None = None) -> list[dict[str, Any]]:
    """Peaks of the enhanced spectrum with energy (keV), FWHM (keV), net area (counts) and its significance
    (``significance_sigma``: net area / sqrt(measured counts within +-1 input FWHM), a Currie-type ratio against
    the counts the peak is built from), only in the ``covered`` channels (N,) bool when given
    (:func:`io.covered_channels`). With the ``crystal`` named, each
    peak also carries ``feature_of_kev`` and ``step_of_kev`` (:func:`metrics.peak_origins`: the larger peak
    whose escape / backscatter peak it could be, or the Compton edge / Lu-176 onset whose top it could be; NaN
    where none) and a readable ``note``.

    The search is the evaluation's (``metrics.PeakDetection``): a candidate needs a net area of at least
    ``metrics.detect_threshold`` x sqrt(measured counts within +-1 input FWHM), with the input detector's FWHM
    law (``r662``, ``power``), and the measured counts must prefer it as a peak of its own
    (``metrics.merge_reach_fwhm``) - so predict lists the peaks that evaluation would count."""
    edges = channel_edges(cfg.simulate)
    spec = torch.tensor(enhanced, dtype=torch.float32).unsqueeze(0)
    noise = torch.tensor(measured, dtype=torch.float32).unsqueeze(0)
    centres = 0.5 * (edges[1:] + edges[:-1])
    resolution = scint_fwhm(centres, torch.tensor(r662), torch.tensor(power)).unsqueeze(0)
    peaks, energy = find_peaks(spec, noise, edges, cfg.metrics.detect_threshold, resolution_kev=resolution,
                               merge_reach_fwhm=cfg.metrics.merge_reach_fwhm, continuum_width_fwhm=cfg.metrics.continuum_width_fwhm)
    if covered is not None:
        peaks = peaks & torch.as_tensor(covered, dtype=torch.bool).unsqueeze(0)
    e = energy[peaks].unsqueeze(0)
    if e.numel() == 0:
        return []
    fw = scint_fwhm(e, torch.tensor(r662), torch.tensor(power))
    hw = line_windows(e, torch.ones_like(e, dtype=torch.bool), fw, cfg.metrics.window_fwhm, 2.5 * float(edges[1] - edges[0]))
    m = measure_lines(spec, edges, e, hw, cfg.metrics.tolerance_kev)
    beneath = resolution_counts(noise, edges, resolution)[peaks]
    significance = m["area"][0] / beneath.clamp_min(1.0).sqrt()
    mc = cfg.metrics
    valid = m["valid"][0]
    # the energies the list reports, and no area where the window measurement is not valid
    origins = peak_origins(
        torch.where(valid, m["centroid"][0], e[0]), torch.where(valid, m["area"][0], float("nan")), r662, power,
        crystal, mc.tolerance_kev, PEAK_SCALES[-1] * float(edges[1] - edges[0]), mc.step_reach_fwhm,
    )
    names = secondary_names(crystal) if crystal is not None else []
    out: list[dict[str, Any]] = []
    for i in range(e.shape[1]):  # a handful of found peaks
        feat, step, kind = float(origins["feature_of_kev"][i]), float(origins["step_of_kev"][i]), int(origins["feature_kind"][i])
        note = []
        if kind >= 0:
            note.append(f"{names[kind]} of {feat:.1f} keV?")
        if int(origins["step_kind"][i]) == 0:
            note.append(f"below the Compton edge of {step:.1f} keV?")
        elif int(origins["step_kind"][i]) == 1:
            note.append(f"above the Lu-176 onset at {step:.1f} keV?")
        out.append({
            "energy_kev": round(float(m["centroid"][0, i]) if bool(m["valid"][0, i]) else float(e[0, i]), 3),
            "fwhm_kev": round(float(m["fwhm"][0, i]), 3) if bool(m["valid"][0, i]) else float("nan"),
            "net_area_counts": round(float(m["area"][0, i]), 1),
            "significance_sigma": round(float(significance[i]), 1),
            "feature_of_kev": round(feat, 3), "step_of_kev": round(step, 3), "note": "; ".join(note),
        })
    return out


def _print_peaks(path: Path, peaks: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{path.name}: {len(peaks)} peaks")
    for col in ("energy (keV)", "FWHM (keV)", "net area (counts)", "sigma"):
        table.add_column(col, justify="right")
    table.add_column("could be")
    for p in peaks:
        table.add_row(f"{p['energy_kev']:.2f}", f"{p['fwhm_kev']:.2f}", f"{p['net_area_counts']:.0f}", f"{p['significance_sigma']:.1f}", p.get("note", ""))
    Console(stderr=True).print(table)


def predict_files(cfg: Any, model: nn.Module, inputs: list[Path], output: Path | None, **options: Any) -> list[Path]:
    """Enhance each input file; returns the written paths."""
    calibration = _parse_calibration(options.get("calibration"))
    r662, power = fwhm_law(cfg, options)
    # peaks are labelled with a crystal's features only when the user names the crystal
    crystal = options.get("crystal") or cfg.predict.crystal
    conserve = bool(options.get("conserve_counts", cfg.predict.conserve_counts))
    plot = bool(options.get("plot", cfg.predict.plot))
    edges_dst = channel_edges(cfg.simulate).double().numpy()
    written: list[Path] = []
    for path in inputs:  # one file at a time: each is one small spectrum
        path = Path(path)
        spec = gio.read_spectrum(path, calibration)
        counts = gio.resample(spec.counts, spec.edges_kev, edges_dst)
        covered = gio.covered_channels(spec.edges_kev, edges_dst)
        enhanced = enhance(cfg, model, counts, r662, power, conserve, covered)
        peaks = list_peaks(cfg, enhanced, counts, r662, power, covered, crystal)
        out_dir = Path(output) if output is not None else path.parent / "enhanced"
        out_dir.mkdir(parents=True, exist_ok=True)
        centers = 0.5 * (edges_dst[1:] + edges_dst[:-1])
        note = f"neurotrain gamma predict of {path.name}; input FWHM law {r662:.3f} x 662 keV x (E/662)^{power:.2f}"
        written.append(gio.write_csv(out_dir / f"{path.stem}_enhanced.csv", {"energy_kev": centers, "input_counts": counts, "enhanced_counts": enhanced}, note))
        pk = {k: np.array([p[k] for p in peaks], dtype=np.float64)
              for k in ("energy_kev", "fwhm_kev", "net_area_counts", "significance_sigma", "feature_of_kev", "step_of_kev")}
        if crystal is not None:
            note += (f"; crystal {crystal}; feature_of_kev / step_of_kev: the larger peak (keV) whose escape or "
                     "backscatter peak this one could be / the line whose Compton edge, or the Lu-176 onset, this "
                     "one could be the top of")
        written.append(gio.write_csv(
            out_dir / f"{path.stem}_peaks.csv", pk,
            note + "; significance_sigma: net area / sqrt(measured counts within +-1 input FWHM)",
        ))
        written.append(gio.write_h5(
            out_dir / f"{path.stem}_enhanced.h5",
            {"energy_kev": centers, "bin_edges_kev": edges_dst, "input": counts, "enhanced": enhanced,
             "covered": covered, "peaks_energy_kev": pk["energy_kev"], "peaks_fwhm_kev": pk["fwhm_kev"], "peaks_net_area": pk["net_area_counts"],
             "peaks_significance_sigma": pk["significance_sigma"],
             "peaks_feature_of_kev": pk["feature_of_kev"], "peaks_step_of_kev": pk["step_of_kev"]},
            {"source": str(path), "fwhm_662": r662, "power": power, "livetime": spec.livetime_s or 0.0},
        ))
        if options.get("verbose", True):
            if not covered.all():
                lo, hi = float(spec.edges_kev[0]), float(spec.edges_kev[-1])
                print(f"{path.name}: measured {lo:.0f}-{hi:.0f} keV of the model's {edges_dst[0]:.0f}-{edges_dst[-1]:.0f} keV; "
                      "the enhanced spectrum is zero outside", file=sys.stderr)
            _print_peaks(path, peaks)
        if plot:
            from neurotrain.tasks.gamma.plots import plot_spectra

            written.append(plot_spectra(
                out_dir / f"{path.stem}_enhanced.png", centers, {"input": counts, "network": enhanced},
                [p["energy_kev"] for p in peaks], title=path.name,
            ))
    return written
