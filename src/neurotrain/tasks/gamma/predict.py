"""``neurotrain predict CKPT spectrum.spe ...`` for gamma: read, check the detector, resample onto the model
grid, enhance, find peaks, write ``<stem>_enhanced.csv`` / ``.h5`` / ``.n42`` (N42-2012 with its energy
calibration: InterSpec opens it beside the input), ``<stem>_peaks.csv`` and a plot. ``-o x.n42`` (one input):
the enhanced spectrum goes to ``x.n42``, the other files beside it as ``x_peaks.csv`` ...

Options (CLI ``--opt key=value`` or keyword arguments; an unknown key is an error): ``calibration``
(polynomial keV coefficients, a list or ``"c0,c1[,c2]"``), ``verbose``, ``debug``, and every key of the config's
``predict`` section (:class:`~neurotrain.tasks.gamma.config.PredictSection`): ``crystal`` (LYSO/NaI/CsI/LaBr3:
sets the FWHM law from typical values), ``fwhm_662`` and ``power`` (the input detector's FWHM law, overriding
the crystal), ``conserve_counts``, ``plot``, ``detector_check`` (refuse/warn/off: a file from another kind of
detector than the model's input, e.g. HPGe for a LYSO model), ``min_peak_sigma``.

Every input is read and checked before anything is written; every file is written atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neurotrain.errors import ConfigError, DataError
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


#: a scintillator file whose peaks' FWHM differs from the law in use by more than this factor gets a notice
#: (2: the peak-width estimate of detector_check reads broad scintillator peaks 20-40 % narrow)
RESOLUTION_NOTICE_RATIO = 2.0
#: options that are not keys of the predict config section
EXTRA_OPTIONS = ("calibration", "verbose", "debug")


def predict_options(cfg: Any, options: dict[str, Any]) -> Any:
    """The config's ``predict`` section with ``options`` applied and validated; an unknown key or a bad value
    is one :class:`ConfigError` line naming it (``crystl=CsI`` must not run with the default detector)."""
    from pydantic import ValidationError

    from neurotrain.tasks.gamma.config import PredictSection

    known = set(PredictSection.model_fields)
    unknown = sorted(k for k in options if k not in known and k not in EXTRA_OPTIONS)
    if unknown:
        raise ConfigError(f"config error in predict options: {unknown[0]}: unknown option (expected one of "
                          f"{', '.join(sorted(known | set(EXTRA_OPTIONS)))})")
    given = {k: v for k, v in options.items() if k in known and v is not None}
    try:
        return PredictSection.model_validate({**cfg.predict.model_dump(), **given})
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(x) for x in e["loc"])
        raise ConfigError(f"config error in predict options: {loc}: {e['msg']} (got {e.get('input')!r})") from None


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


class PeakList(list):
    """The listed peaks (dicts), and ``dropped``: how many found peaks were physically impossible and left out,
    per reason ('negative_area', 'fwhm_not_finite', 'below_min_sigma')."""

    def __init__(self, peaks: list[dict[str, Any]] | None = None, dropped: dict[str, int] | None = None) -> None:
        super().__init__(peaks or [])
        self.dropped: dict[str, int] = dict(dropped or {"negative_area": 0, "fwhm_not_finite": 0, "below_min_sigma": 0})


def list_peaks(cfg: Any, enhanced: np.ndarray, measured: np.ndarray, r662: float, power: float,
               covered: np.ndarray | None = None, crystal: str | None = None, min_sigma: float | None = None) -> PeakList:
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
    (``metrics.merge_reach_fwhm``) - so predict lists the peaks that evaluation would count.

    A physically impossible peak is never listed: a net area <= 0 or not finite (no emission line has one; the
    enhanced spectrum dips below its continuum there), a FWHM that is not finite (the window measurement found
    no half-maximum crossings), or a significance below ``min_sigma`` (default ``cfg.predict.min_peak_sigma``).
    They are counted per reason in the returned list's ``dropped``."""
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
        return PeakList()
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
    area, fwhm = m["area"][0], torch.where(valid, m["fwhm"][0], float("nan"))
    floor = float(cfg.predict.min_peak_sigma if min_sigma is None else min_sigma)
    bad_area = ~torch.isfinite(area) | (area <= 0)
    bad_fwhm = ~bad_area & (~torch.isfinite(fwhm) | (fwhm <= 0))
    bad_sigma = ~bad_area & ~bad_fwhm & ~(significance >= floor)
    out = PeakList(dropped={"negative_area": int(bad_area.sum()), "fwhm_not_finite": int(bad_fwhm.sum()),
                            "below_min_sigma": int(bad_sigma.sum())})
    keep = ~(bad_area | bad_fwhm | bad_sigma)
    for i in torch.nonzero(keep).flatten().tolist():  # a handful of found peaks
        feat, step, kind = float(origins["feature_of_kev"][i]), float(origins["step_of_kev"][i]), int(origins["feature_kind"][i])
        note = []
        if kind >= 0:
            note.append(f"{names[kind]} of {feat:.1f} keV?")
        if int(origins["step_kind"][i]) == 0:
            note.append(f"below the Compton edge of {step:.1f} keV?")
        elif int(origins["step_kind"][i]) == 1:
            note.append(f"above the Lu-176 onset at {step:.1f} keV?")
        out.append({
            "energy_kev": round(float(m["centroid"][0, i]), 3),
            "fwhm_kev": round(float(m["fwhm"][0, i]), 3),
            "net_area_counts": round(float(m["area"][0, i]), 1),
            "significance_sigma": round(float(significance[i]), 1),
            "feature_of_kev": round(feat, 3), "step_of_kev": round(step, 3), "note": "; ".join(note),
        })
    return out


def _print_peaks(path: Path, peaks: PeakList) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    dropped = sum(getattr(peaks, "dropped", {}).values())
    title = f"{path.name}: {len(peaks)} peaks" + (f" ({dropped} impossible peak(s) dropped)" if dropped else "")
    table = Table(title=escape(title))
    for col in ("energy (keV)", "FWHM (keV)", "net area (counts)", "sigma"):
        table.add_column(col, justify="right")
    table.add_column("could be")
    for p in peaks:
        table.add_row(f"{p['energy_kev']:.2f}", f"{p['fwhm_kev']:.2f}", f"{p['net_area_counts']:.0f}", f"{p['significance_sigma']:.1f}", escape(p.get("note", "")))
    Console(stderr=True).print(table)


def model_crystals(cfg: Any) -> list[str]:
    """The crystals the model was trained on (``simulate.train_crystals``, else ``simulate.detector.crystal``)."""
    return list(cfg.simulate.train_crystals) or [cfg.simulate.detector.crystal]


def check_detector(cfg: Any, spec: gio.GammaSpectrum, popt: Any, crystal: str | None) -> tuple[Any, str | None]:
    """The file's detector evidence (:func:`detector_check.identify`) and a warning line, or raise one
    :class:`DataError` line when ``popt.detector_check`` is 'refuse' and the file's detector is not of the model's
    input class on firm evidence (declared by the file, or a semiconductor's peaks); a mismatch on weaker
    evidence only warns. A crystal the user names counts as the model input only when the file agrees with it."""
    from neurotrain.tasks.gamma import detector_check as dc

    ev = dc.identify(spec.counts, spec.edges_kev, spec.detector_kind)
    if popt.detector_check == "off":
        return ev, None
    crystals = model_crystals(cfg)
    why = dc.mismatch(ev, crystals)
    if why is None and crystal is not None and ev.resolution_class not in (None, dc.KIND_CLASS.get(crystal)):
        why = f"got {ev.describe()}, not the named crystal {crystal}"
    if why is None:
        return ev, None
    lo, hi = cfg.simulate.fwhm_662_range
    msg = (f"{spec.path}: detector: expected a spectrum of the model's input detector ({'/'.join(crystals)}, FWHM "
           f"{100 * lo:.0f}-{100 * hi:.0f} % at 662 keV), {why}")
    # refused on firm evidence only: the file's own declaration, or peaks ten times narrower than any
    # scintillator's (a semiconductor). The measured FWHM of broad scintillator peaks is rough (it reads ~4-6 %
    # on the real 7 % CsI and NaI files), so a fast-vs-conventional scintillator difference only warns.
    firm = ev.source == "file" or ev.resolution_class == "semiconductor"
    if popt.detector_check == "refuse" and firm:
        raise DataError(msg + "; --opt detector_check=warn runs it anyway")
    return ev, msg + "; run anyway (detector_check=warn): the enhanced spectrum is outside what the model learned"


def _output_names(inputs: list[Path], output: Path | None) -> list[tuple[Path, str]]:
    """(folder, stem of the output files) per input; ``-o x.n42`` names the N42 output of a single input."""
    if output is not None and Path(output).suffix.lower() == ".n42":
        if len(inputs) != 1:
            raise ConfigError(f"config error in predict: -o {output}: an .n42 output takes one input file (got {len(inputs)})")
        return [(Path(output).parent, Path(output).stem)]
    out = [(Path(output) if output is not None else Path(p).parent / "enhanced", f"{Path(p).stem}_enhanced") for p in inputs]
    for d, _ in out:
        if d.exists() and not d.is_dir():
            raise ConfigError(f"config error in predict: -o {d}: expected a folder or an .n42 file name (an existing file is in the way)")
    return out


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Input files, a folder standing for the spectrum files (known suffixes, :data:`io.SUFFIXES`) in it."""
    out: list[Path] = []
    for p in map(Path, inputs):  # a few paths given by the user
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in gio.SUFFIXES)
            if not found:
                raise DataError(f"{p}: folder: expected spectrum files ({', '.join(sorted(gio.SUFFIXES))}), found none")
            out += found
        else:
            out.append(p)
    return out


def check_inputs(cfg: Any, inputs: list[Path], output: Path | None, **options: Any) -> list[tuple[Any, Any, str | None]]:
    """Read and check every input before a network is built or a file written: options, output place, format,
    calibration, counts and detector. Returns (spectrum, detector evidence, warning or None) per input file."""
    popt = predict_options(cfg, options)
    calibration = _parse_calibration(options.get("calibration"))
    files = expand_inputs(inputs)
    _output_names(files, output)
    r662, _ = fwhm_law(cfg, popt.model_dump(exclude_none=True))
    checked = []
    for path in files:  # a few small spectra
        spec = gio.read_spectrum(path, calibration)
        ev, warning = check_detector(cfg, spec, popt, popt.crystal)
        if warning is None and popt.crystal is None and popt.fwhm_662 is None and ev.source == "peaks" and ev.n_peaks >= 2 \
                and not 1 / RESOLUTION_NOTICE_RATIO < ev.r662 / r662 < RESOLUTION_NOTICE_RATIO:
            # the default law runs silently otherwise (issue 21): say so when the file's peaks disagree with it
            warning = (f"{spec.path}: note: its peaks look ~{100 * ev.r662:.1f} % FWHM at 662 keV, the model is told "
                       f"{100 * r662:.1f} % (the default law); --opt crystal=... or fwhm_662=... sets the input detector")
        checked.append((spec, ev, warning))
    return checked


def predict_files(cfg: Any, model: nn.Module, inputs: list[Path], output: Path | None, **options: Any) -> list[Path]:
    """Enhance each input file (or the spectrum files of an input folder); returns the written paths. All inputs
    are read and checked (format, calibration, detector: :func:`check_inputs`) before the first output is written."""
    popt = predict_options(cfg, options)
    checked = check_inputs(cfg, inputs, output, **options)
    r662, power = fwhm_law(cfg, {**options, **popt.model_dump(exclude_none=True)})
    # peaks are labelled with a crystal's features only when the user names the crystal
    crystal = popt.crystal
    verbose = bool(options.get("verbose", True))
    edges_dst = channel_edges(cfg.simulate).double().numpy()
    centers = 0.5 * (edges_dst[1:] + edges_dst[:-1])
    names = _output_names([c[0].path for c in checked], output)
    written: list[Path] = []
    for (spec, evidence, warning), (out_dir, stem) in zip(checked, names):
        path = spec.path
        counts = gio.resample(spec.counts, spec.edges_kev, edges_dst)
        covered = gio.covered_channels(spec.edges_kev, edges_dst)
        enhanced = enhance(cfg, model, counts, r662, power, popt.conserve_counts, covered)
        peaks = list_peaks(cfg, enhanced, counts, r662, power, covered, crystal)
        base = stem[: -len("_enhanced")] if stem.endswith("_enhanced") else stem
        note = (f"neurotrain gamma predict of {path.name}; input FWHM law {r662:.3f} x 662 keV x (E/662)^{power:.2f}; "
                f"detector {evidence.describe()}")
        dropped = "; ".join(f"{k} {v}" for k, v in peaks.dropped.items() if v)
        written.append(gio.write_csv(out_dir / f"{base}_enhanced.csv", {"energy_kev": centers, "input_counts": counts, "enhanced_counts": enhanced}, note))
        pk = {k: np.array([p[k] for p in peaks], dtype=np.float64)
              for k in ("energy_kev", "fwhm_kev", "net_area_counts", "significance_sigma", "feature_of_kev", "step_of_kev")}
        peak_note = note
        if crystal is not None:
            peak_note += (f"; crystal {crystal}; feature_of_kev / step_of_kev: the larger peak (keV) whose escape or "
                          "backscatter peak this one could be / the line whose Compton edge, or the Lu-176 onset, this "
                          "one could be the top of")
        written.append(gio.write_csv(
            out_dir / f"{base}_peaks.csv", pk,
            peak_note + "; significance_sigma: net area / sqrt(measured counts within +-1 input FWHM)"
            + (f"; physically impossible peaks dropped: {dropped}" if dropped else ""),
        ))
        written.append(gio.write_h5(
            out_dir / f"{base}_enhanced.h5",
            {"energy_kev": centers, "bin_edges_kev": edges_dst, "input": counts, "enhanced": enhanced,
             "covered": covered, "peaks_energy_kev": pk["energy_kev"], "peaks_fwhm_kev": pk["fwhm_kev"], "peaks_net_area": pk["net_area_counts"],
             "peaks_significance_sigma": pk["significance_sigma"],
             "peaks_feature_of_kev": pk["feature_of_kev"], "peaks_step_of_kev": pk["step_of_kev"]},
            {"source": str(path), "fwhm_662": r662, "power": power, "livetime": spec.livetime_s or 0.0,
             "detector": evidence.describe(), "detector_r662": evidence.r662,
             **{f"peaks_dropped_{k}": v for k, v in peaks.dropped.items()}},
        ))
        gain = float(edges_dst[1] - edges_dst[0])
        written.append(gio.write_n42(
            out_dir / f"{stem}.n42", enhanced, [float(edges_dst[0]), gain], spec.livetime_s, spec.realtime_s,
            title=f"{path.name} enhanced by neurotrain",
            remarks=[note, f"source file: {path}", "counts on the model grid; zero outside the range the input measured"],
        ))
        if verbose:
            if warning:
                print(warning, file=sys.stderr)
            if not covered.all():
                lo, hi = float(spec.edges_kev[0]), float(spec.edges_kev[-1])
                print(f"{path.name}: measured {lo:.0f}-{hi:.0f} keV of the model's {edges_dst[0]:.0f}-{edges_dst[-1]:.0f} keV; "
                      "the enhanced spectrum is zero outside", file=sys.stderr)
            _print_peaks(path, peaks)
        if popt.plot:
            from neurotrain.tasks.gamma.plots import plot_spectra

            written.append(plot_spectra(
                out_dir / f"{base}_enhanced.png", centers, {"input": counts, "network": enhanced},
                [p["energy_kev"] for p in peaks], title=path.name,
            ))
    return written
