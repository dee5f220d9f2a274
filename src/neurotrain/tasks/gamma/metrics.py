"""Domain metrics of the gamma task as torchmetrics ``Metric``s (device-native, summed states, DDP-safe).

Every metric is updated as ``metric.update(pred, batch)`` with ``pred`` (B, 1, N) or (B, N) in the
normalisation of ``batch["target"]`` and the simulator's line bookkeeping in ``batch``:

* :class:`LineFWHM` - mean FWHM (keV) of the detectable true lines, measured on ``pred``;
* :class:`CentroidError` - mean |centroid - true energy| (keV);
* :class:`NetAreaError` - mean |net area - reference area| / reference area (%) over the lines found, and
  the share of lines missed (no valid, significant, positive net area);
* :class:`PeakToValley` - mean peak-to-valley ratio of given doublets (min of the two raw peak heights over
  the minimum between them, the valley floored at 1 % of that height so the ratio saturates at 100, and 1
  when there is no dip);
* :class:`PeakDetection` - precision / recall of a multi-scale wavelet peak search against the true lines
  (tolerance in keV), and the false-peak rate (false peaks per spectrum). A found peak is *true* when it lies
  in an explained interval: a true line, a secondary feature of one (single/double escape E-511/E-1022 keV,
  crystal K x-ray escape, 180-degree backscatter peak E/(1+2E/511), slab Pb K x-rays 74.2/84.9 keV), a
  Compton edge, or for LYSO a Lu-176 beta onset. The same rule for every method, target included.

Line measurements (FWHM, centroid, area) use the window method of
:func:`~neurotrain.tasks.gamma.postprocess.measure_lines`; a line counts only where that measurement is valid
and its net area is at least ``min_significance`` sigma above zero against the measured input counts.
* :class:`SpectrumError` - whole-spectrum relative L1 error sum|pred - target| / sum target.

Physical features (escape, backscatter, x-ray peaks, Compton edges, Lu-176 onsets) live in ``peak_rules.py``;
the evaluation's own scoring (truth-only matching, exemption rules, paired lines) in ``eval_score.py``. These metrics monitor training (``PeakDetection`` there still lets
a peak of the target excuse a found peak); ``neurotrain evaluate`` scores with ``eval_score.py`` alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from neurotrain.tasks.gamma.detection_curves import detection_tradeoff, false_rate_at_recall  # noqa: F401  (re-exported)
from neurotrain.tasks.gamma.peak_rules import (  # noqa: F401  (re-exported: predict and tests import them here)
    LU176_ONSETS_KEV, compton_edges, explained_intervals, peak_origins, secondary_energies, secondary_names, step_reach,
)
from neurotrain.tasks.gamma.postprocess import PEAK_SCALES, find_peaks, line_windows, measure_lines
from neurotrain.tasks.gamma.simulate import channel_edges, measured_energy, scint_fwhm


def _flat(pred: Tensor) -> Tensor:
    return pred[:, 0] if pred.dim() == 3 else pred


def _counts(batch: dict[str, Tensor]) -> Tensor:
    """Measured input counts (B, N): the Poisson data every method's peaks are tested against."""
    return batch["counts"].float() if "counts" in batch else batch["input"][:, 0].float() * batch["scale"].view(-1, 1)


def _noise_var(batch: dict[str, Tensor]) -> Tensor:
    """Poisson variance of the measured counts per channel in the normalised units of ``batch["target"]``."""
    return _counts(batch).clamp_min(1.0) / batch["scale"].view(-1, 1).float() ** 2


class _LineMetric(Metric):
    full_state_update = False

    def __init__(
        self, edges: Tensor, window_fwhm: float = 1.5, tolerance_kev: float = 3.0, min_significance: float = 0.0, **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.register_buffer("edges", edges.float().clone(), persistent=False)
        self.window_fwhm = window_fwhm
        self.tolerance_kev = tolerance_kev
        self.min_significance = min_significance
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _measure(self, pred: Tensor, batch: dict[str, Tensor], significance: float | None = None) -> tuple[dict[str, Tensor], Tensor]:
        spec = _flat(pred).float()
        le, lm = batch["line_energy"], batch["line_mask"].bool()
        fp = batch["fwhm_params"]
        fwhm_in = scint_fwhm(le, fp[:, :1], fp[:, 1:2])
        width = float(self.edges[1] - self.edges[0])
        hw = line_windows(le, lm, fwhm_in, self.window_fwhm, 2.5 * width, line_area=batch["line_area"])
        sig = self.min_significance if significance is None else significance
        m = measure_lines(spec, self.edges, le, hw, self.tolerance_kev, noise_var=_noise_var(batch), min_significance=sig)
        use = batch["line_detectable"].bool() & lm
        return m, use

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp_min(1)).float() if self.count > 0 else torch.tensor(float("nan"))


class LineFWHM(_LineMetric):
    """Mean FWHM (keV) of the detectable, isolated true lines: no other line with more than 5 % of its area
    within 2 input FWHM, so the input's width is measurable too. The window is ``window_fwhm`` x input FWHM."""

    def update(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        spec = _flat(pred).float()
        le, lm, la = batch["line_energy"], batch["line_mask"].bool(), batch["line_area"]
        fp = batch["fwhm_params"]
        fwhm_in = scint_fwhm(le, fp[:, :1], fp[:, 1:2])
        d = (le.unsqueeze(2) - le.unsqueeze(1)).abs()
        strong = lm.unsqueeze(1) & (la.unsqueeze(1) > 0.05 * la.unsqueeze(2))
        crowd = (strong & (d > 0.01) & (d < 2 * fwhm_in.unsqueeze(2))).any(2)
        use = batch["line_detectable"].bool() & lm & ~crowd
        m = measure_lines(
            spec, self.edges, le, self.window_fwhm * fwhm_in, self.tolerance_kev, noise_var=_noise_var(batch),
            min_significance=self.min_significance,
        )
        ok = use & m["valid"]
        self.total += m["fwhm"][ok].double().sum()
        self.count += ok.sum()


class CentroidError(_LineMetric):
    """Mean absolute centroid error (keV) of the detectable true lines."""

    def update(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        m, use = self._measure(pred, batch)
        ok = use & m["valid"]
        self.total += (m["centroid"] - batch["line_energy"])[ok].abs().double().sum()
        self.count += ok.sum()


class NetAreaError(_LineMetric):
    """Mean absolute net-area error (%) of the detectable true lines, and the share of them missed.

    The reference is the net area that the same window procedure measures on the noiseless target (so the
    procedure's own bias on sloped continua cancels), over the lines where that measurement is within 50 % of
    the simulated photopeak area (elsewhere the window procedure itself fails, e.g. on a neighbour's tail);
    ``reference="true"`` compares with the simulated photopeak areas instead. A line whose peak is not there in
    ``pred`` (invalid measurement: net area not positive, below ``min_significance`` against the measured
    counts, or wider than its ROI) is a *miss*: it enters ``area_miss_rate``, never the mean error - a
    negative net area is what the window method returns on an absent peak, not an area.
    ``mode``: ``"error"`` (the mean error), ``"miss"`` or ``"all"`` (dict ``area_err_pct`` / ``area_miss_rate``).
    """

    def __init__(self, *args: Any, reference: str = "target", mode: str = "error", min_significance: float = 3.0, **kw: Any) -> None:
        super().__init__(*args, min_significance=min_significance, **kw)
        self.reference = reference
        self.mode = mode
        self.add_state("missed", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def line_errors(self, pred: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(error %, scored, found), each (B, L): the absolute net-area error of every line, whether the line
        is scored at all (detectable, reference measurable) and whether ``pred`` shows it."""
        m, use = self._measure(pred, batch)
        true = batch["line_area"]
        ok = use & (true > 0)
        if self.reference == "target":
            ref = self._measure(batch["target"], batch, significance=0.0)[0]
            # only lines whose area the window procedure recovers on the ideal target within 50 %
            ok = ok & ref["valid"] & ((ref["area"] - true).abs() < 0.5 * true)
            true = ref["area"]
        found = m["valid"] & (m["area"] > 0)
        return 100 * (m["area"] - true).abs() / true.clamp_min(1e-12), ok, found

    def update(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        err, ok, found = self.line_errors(pred, batch)
        self.total += err[ok & found].double().sum()
        self.count += (ok & found).sum()
        self.missed += (ok & ~found).sum()

    def compute(self) -> Tensor | dict[str, Tensor]:
        err = super().compute()
        miss = (self.missed / (self.count + self.missed).clamp_min(1)).float()
        if self.mode == "all":
            return {"area_err_pct": err, "area_miss_rate": miss}
        return miss if self.mode == "miss" else err


class PeakToValley(Metric):
    """Mean peak-to-valley ratio of the doublets ``pairs`` (keV) present in a spectrum (raw heights)."""

    full_state_update = False

    def __init__(self, edges: Tensor, pairs: list[tuple[float, float]], tolerance_kev: float = 3.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.register_buffer("edges", edges.float().clone(), persistent=False)
        self.pairs = pairs
        self.tolerance_kev = tolerance_kev
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        spec = _flat(pred).float()
        e0 = float(self.edges[0])
        w = float(self.edges[1] - self.edges[0])
        tol = max(1, int(round(self.tolerance_kev / w)))
        ch = torch.arange(spec.shape[1], device=spec.device)
        lines, lm = batch["line_energy"], batch["line_mask"].bool()
        for e1, e2 in self.pairs:  # a fixed, short list of named doublets
            # where this spectrum's calibration shows them
            m = measured_energy(torch.tensor([e1, e2], device=spec.device), batch)
            present = (((lines - m[:, :1]).abs() < 0.5) & lm).any(1) & (((lines - m[:, 1:]).abs() < 0.5) & lm).any(1)
            if not bool(present.any()):
                continue
            c1, c2 = ((m - e0) / w).long().unbind(1)
            c1, c2 = c1.unsqueeze(1), c2.unsqueeze(1)
            h1 = torch.where((ch - c1).abs() <= tol, spec, torch.full_like(spec, -1e30)).amax(1)
            h2 = torch.where((ch - c2).abs() <= tol, spec, torch.full_like(spec, -1e30)).amax(1)
            between = (ch > c1 + tol) & (ch < c2 - tol)
            between = torch.where(between.any(1, keepdim=True), between, (ch > c1) & (ch < c2))
            low = torch.minimum(h1, h2).clamp_min(0)
            valley = torch.where(between, spec, torch.full_like(spec, 1e30)).amin(1)
            # valley floored at 1 % of the lower peak: P/V saturates at 100 for fully separated peaks; no dip
            # below the lower peak (an unresolved doublet, the "peak" windows on one blend's flanks) is P/V 1
            ratio = (low / torch.maximum(valley, 0.01 * low).clamp_min(1e-9)).clamp_min(1.0)
            self.total += ratio[present].double().sum()
            self.count += present.sum()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp_min(1)).float() if self.count > 0 else torch.tensor(float("nan"))

class PeakDetection(Metric):
    """Peak search precision / recall against the true lines and false peaks per spectrum.

    The search is :func:`~neurotrain.tasks.gamma.postprocess.find_peaks` on ``pred`` (rescaled to counts), the
    same rule for every method: Ricker significance above ``threshold`` against the Poisson noise of the
    measured input counts, and a net area of at least ``threshold`` x sqrt(measured counts within +-1 input
    FWHM). Recall: share of the detectable true lines with a found peak within ``tolerance_kev``. A found peak
    is *true* when it lies in one of :func:`explained_intervals` (lines, escape / backscatter / x-ray peaks,
    Compton edges, Lu-176 onsets) or, with ``explain_by_target``, within ``tolerance_kev`` of a peak that the
    same search finds in the target, else *false*: a false peak is structure the ideal HPGe-like spectrum does
    not show. The target is needed because the truth list cannot name every feature of the deposits: LYSO's
    Lu-176 background adds, to each partial cascade sum, Lu K x-ray escapes (88.3 - 53.7 = 34.6 keV,
    88.3 - 61.3 = 27.1 keV, ...) and Compton edges of the cascade gammas, and the target carries the response's
    Monte Carlo noise; without it the target itself showed 1-6 "false" peaks per LYSO spectrum at 1e6 counts
    (train.yaml at 16,000 photons per response row, four seeds of 64 spectra).
    ``mode`` picks what :meth:`compute` returns: ``"precision"``, ``"recall"``, ``"false_rate"`` or ``"all"``
    (a dict ``det_precision`` / ``det_recall`` / ``det_false_rate``, flattened by ``MetricCollection``).
    """

    full_state_update = False

    def __init__(
        self, edges: Tensor, mode: str = "all", tolerance_kev: float = 3.0, threshold: float = 4.0,
        crystal: str = "LYSO", slab: str = "Pb", explain_by_target: bool = True, measured_domain: bool = False,
        merge_reach_fwhm: float | None = 1.0, step_reach_fwhm: float = 0.0, continuum_width_fwhm: float | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.step_reach_fwhm = step_reach_fwhm
        self.measured_domain = measured_domain
        self.merge_reach_fwhm = merge_reach_fwhm
        self.continuum_width_fwhm = continuum_width_fwhm
        self.register_buffer("edges", edges.float().clone(), persistent=False)
        self.mode = mode
        self.explain_by_target = explain_by_target
        self.tolerance_kev = tolerance_kev
        self.threshold = threshold
        self.crystal, self.slab = crystal, slab
        for name in ("tp", "fp", "found", "true", "spectra"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _resolution(self, batch: dict[str, Tensor]) -> Tensor:
        centres = 0.5 * (self.edges[1:] + self.edges[:-1])
        fp = batch["fwhm_params"]
        return scint_fwhm(centres.unsqueeze(0), fp[:, :1], fp[:, 1:2])

    def find(self, pred: Tensor, batch: dict[str, Tensor], threshold: float | None = None) -> tuple[Tensor, Tensor]:
        """(peaks, energy), each (B, N): the search's peak channels at ``threshold`` (default: the metric's) and
        every channel's sub-channel energy (keV), which does not depend on the threshold."""
        spec = _flat(pred).float() * batch["scale"].view(-1, 1)
        return find_peaks(spec, _counts(batch), self.edges, self.threshold if threshold is None else threshold,
                          resolution_kev=self._resolution(batch), measured_domain=self.measured_domain,
                          merge_reach_fwhm=self.merge_reach_fwhm, continuum_width_fwhm=self.continuum_width_fwhm)

    def explained(self, energy: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """(B, N): whether a peak at each channel's ``energy`` would lie in an explained interval."""
        le, lm = batch["line_energy"], batch["line_mask"].bool()
        reach = PEAK_SCALES[-1] * float(self.edges[1] - self.edges[0])
        lo, hi, am = explained_intervals(
            le, lm, batch["line_detectable"].bool(), self.crystal, self.slab, self.tolerance_kev, reach, batch,
            self.step_reach_fwhm,
        )
        e = energy.unsqueeze(1)
        explained = ((e >= lo.unsqueeze(2)) & (e <= hi.unsqueeze(2)) & am.unsqueeze(2)).any(1)
        if self.explain_by_target:
            t_peaks, _ = find_peaks(_flat(batch["target"]).float() * batch["scale"].view(-1, 1), _counts(batch),
                                    self.edges, self.threshold, resolution_kev=self._resolution(batch),
                                    merge_reach_fwhm=self.merge_reach_fwhm, continuum_width_fwhm=self.continuum_width_fwhm)
            # a (B, N, N) comparison would not fit at 4096 channels: mark +-tolerance around each target peak
            width = float(self.edges[1] - self.edges[0])
            reach = max(1, int(math.ceil(self.tolerance_kev / width)))
            near = F.max_pool1d(t_peaks.float().unsqueeze(1), 2 * reach + 1, stride=1, padding=reach)[:, 0] > 0
            explained = explained | near
        return explained

    def search(self, pred: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(peaks, energy, explained), each (B, N): found peak channels, their energies (keV), and whether
        each lies in an explained interval."""
        peaks, energy = self.find(pred, batch)
        return peaks, energy, self.explained(energy, batch)

    def update(self, pred: Tensor, batch: dict[str, Tensor], search: tuple[Tensor, Tensor, Tensor] | None = None) -> None:
        """Count one batch; ``search``: its :meth:`search` result when already at hand."""
        peaks, energy, explained = search if search is not None else self.search(pred, batch)
        le, lm = batch["line_energy"], batch["line_mask"].bool()
        det = batch["line_detectable"].bool() & lm
        hit_line = ((energy.unsqueeze(1) - le.unsqueeze(2)).abs() <= self.tolerance_kev) & peaks.unsqueeze(1)
        self.found += (hit_line.any(2) & det).sum()
        self.true += det.sum()
        self.tp += (peaks & explained).sum()
        self.fp += (peaks & ~explained).sum()
        self.spectra += peaks.shape[0]

    def compute(self) -> Tensor | dict[str, Tensor]:
        out = {
            "det_precision": (self.tp / (self.tp + self.fp).clamp_min(1)).float(),
            "det_recall": (self.found / self.true.clamp_min(1)).float(),
            "det_false_rate": (self.fp / self.spectra.clamp_min(1)).float(),
        }
        if self.mode == "all":
            return out
        return out[f"det_{self.mode}"]


class SpectrumError(Metric):
    """Whole-spectrum relative L1 error, mean over spectra."""

    full_state_update = False

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        p, t = _flat(pred).float(), batch["target"][:, 0].float()
        err = (p - t).abs().sum(1) / t.sum(1).clamp_min(1e-12)
        self.total += err.double().sum()
        self.count += p.shape[0]

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp_min(1)).float()


DOUBLETS = [(356.0129, 383.8485), (1085.837, 1112.076)]


def build_metrics(cfg: Any, include_detection: bool = True, measured_domain: bool = False) -> MetricCollection:
    """The validation / test metrics of the gamma task; ``measured_domain`` for scoring the measured spectrum
    itself (its peak search needs no broadening to the input resolution)."""
    edges = channel_edges(cfg.simulate)
    mc = cfg.metrics
    kw = dict(window_fwhm=mc.window_fwhm, tolerance_kev=mc.tolerance_kev)
    metrics: dict[str, Metric] = {
        "fwhm_kev": LineFWHM(edges, **kw),
        "centroid_err_kev": CentroidError(edges, **kw),
        "area_err_pct": NetAreaError(edges, mode="all", **kw),
        "peak_to_valley": PeakToValley(edges, DOUBLETS, mc.tolerance_kev),
        "spectrum_err": SpectrumError(),
    }
    if include_detection:
        metrics["detection"] = peak_detection(cfg, measured_domain)
    return MetricCollection(metrics)


def peak_detection(cfg: Any, measured_domain: bool = False) -> PeakDetection:
    """The task's :class:`PeakDetection` from ``cfg.metrics`` and the detector (``measured_domain``: the
    spectrum scored is the measured one)."""
    mc, d = cfg.metrics, cfg.simulate.detector
    return PeakDetection(
        channel_edges(cfg.simulate), "all", mc.tolerance_kev, mc.detect_threshold, d.crystal, d.slab_material,
        measured_domain=measured_domain, merge_reach_fwhm=mc.merge_reach_fwhm, step_reach_fwhm=mc.step_reach_fwhm,
        continuum_width_fwhm=mc.continuum_width_fwhm,
    )


def paired_area_error(metric: NetAreaError, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, float]:
    """Mean net-area error (%) of each method in ``preds`` over the lines that *every* one of them shows,
    measured as ``metric`` measures.

    :class:`NetAreaError` averages each method over the lines it finds, so a method that finds more (weaker)
    lines is scored on a harder set; this compares them line by line. Adds ``lines``, the size of the set."""
    errs, common = {}, None
    for name, pred in preds.items():
        err, ok, found = metric.to(pred.device).line_errors(pred.float(), batch)
        errs[name] = err
        common = ok & found if common is None else common & found
    assert common is not None
    n = int(common.sum())
    out = {name: (float(e[common].double().mean()) if n else float("nan")) for name, e in errs.items()}
    out["lines"] = float(n)
    return out


def update_collection(metrics: MetricCollection, pred: Any, batch: dict[str, Tensor]) -> None:
    """Update every metric of the collection with (pred, batch), in float32 outside any autocast region."""
    with torch.autocast(device_type=pred.device.type, enabled=False):
        metrics.update(pred.float(), batch)
