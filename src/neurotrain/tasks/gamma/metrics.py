"""Domain metrics of the gamma task as torchmetrics ``Metric``s (device-native, summed states, DDP-safe).

Every metric is updated as ``metric.update(pred, batch)`` with ``pred`` (B, 1, N) or (B, N) in the
normalisation of ``batch["target"]`` and the simulator's line bookkeeping in ``batch``:

* :class:`LineFWHM` - mean FWHM (keV) of the detectable true lines, measured on ``pred``;
* :class:`CentroidError` - mean |centroid - true energy| (keV);
* :class:`NetAreaError` - mean |net area - true photopeak area| / true area (%);
* :class:`PeakToValley` - mean peak-to-valley ratio of given doublets (min of the two peak heights over the
  minimum between them, the valley floored at 1 % of that height so the ratio saturates at 100);
* :class:`PeakDetection` - precision / recall of a multi-scale wavelet peak search against the true lines
  (tolerance in keV), and the false-peak rate (false peaks per spectrum). A found peak is *true* when it lies
  within the tolerance of a true line, of a secondary feature of one (single/double escape E-511/E-1022 keV,
  crystal K x-ray escape, 180-degree backscatter peak E/(1+2E/511), slab Pb K x-rays 74.2/84.9 keV), or of a
  peak of the noiseless target (a real deposit structure);
* :class:`SpectrumError` - whole-spectrum relative L1 error sum|pred - target| / sum target.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from neurotrain.tasks.gamma import physics
from neurotrain.tasks.gamma.postprocess import find_peaks, line_windows, measure_lines
from neurotrain.tasks.gamma.simulate import channel_edges, scint_fwhm


def _flat(pred: Tensor) -> Tensor:
    return pred[:, 0] if pred.dim() == 3 else pred


class _LineMetric(Metric):
    full_state_update = False

    def __init__(self, edges: Tensor, window_fwhm: float = 1.5, tolerance_kev: float = 3.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.register_buffer("edges", edges.float().clone(), persistent=False)
        self.window_fwhm = window_fwhm
        self.tolerance_kev = tolerance_kev
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _measure(self, pred: Tensor, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        spec = _flat(pred).float()
        le, lm = batch["line_energy"], batch["line_mask"].bool()
        fp = batch["fwhm_params"]
        fwhm_in = scint_fwhm(le, fp[:, :1], fp[:, 1:2])
        width = float(self.edges[1] - self.edges[0])
        hw = line_windows(le, lm, fwhm_in, self.window_fwhm, 2.5 * width)
        m = measure_lines(spec, self.edges, le, hw, self.tolerance_kev)
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
        m = measure_lines(spec, self.edges, le, self.window_fwhm * fwhm_in, self.tolerance_kev)
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
    """Mean absolute net-area error (%) of the detectable true lines.

    The reference is the net area that the same window and background procedure measures on the noiseless
    target (so the procedure's own bias on sloped continua cancels), over the lines where that measurement
    is within 50 % of the simulated photopeak area (elsewhere the window procedure itself fails, e.g. on a
    neighbour's tail); ``reference="true"`` compares with the simulated photopeak areas instead.
    """

    def __init__(self, *args: Any, reference: str = "target", **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.reference = reference

    def update(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        m, use = self._measure(pred, batch)
        true = batch["line_area"]
        ok = use & (true > 0)
        if self.reference == "target":
            ref = self._measure(batch["target"], batch)[0]["area"]
            # only lines whose area the window procedure recovers on the ideal target within 50 %
            ok = ok & ((ref - true).abs() < 0.5 * true)
            true = ref
        self.total += (100 * (m["area"] - true).abs() / true.clamp_min(1e-12))[ok].double().sum()
        self.count += ok.sum()


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
        for e1, e2 in self.pairs:  # a fixed, short list of named doublets
            present = (
                ((batch["line_energy"] - e1).abs() < 0.5) & batch["line_mask"].bool()
            ).any(1) & (((batch["line_energy"] - e2).abs() < 0.5) & batch["line_mask"].bool()).any(1)
            if not bool(present.any()):
                continue
            c1, c2 = int((e1 - e0) / w), int((e2 - e0) / w)
            h1 = torch.where((ch - c1).abs() <= tol, spec, torch.full_like(spec, -1e30)).amax(1)
            h2 = torch.where((ch - c2).abs() <= tol, spec, torch.full_like(spec, -1e30)).amax(1)
            between = (ch > c1 + tol) & (ch < c2 - tol)
            if not bool(between.any()):
                between = (ch > c1) & (ch < c2)
            low = torch.minimum(h1, h2).clamp_min(0)
            valley = torch.where(between, spec, torch.full_like(spec, 1e30)).amin(1)
            # valley floored at 1 % of the lower peak: P/V saturates at 100 for fully separated peaks
            ratio = low / torch.maximum(valley, 0.01 * low).clamp_min(1e-9)
            self.total += ratio[present].double().sum()
            self.count += present.sum()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp_min(1)).float() if self.count > 0 else torch.tensor(float("nan"))


def secondary_energies(line_e: Tensor, crystal: str, slab: str) -> Tensor:
    """Energies (B, M) keV of secondary features of each line and of the set-up (see module docstring)."""
    feats = [line_e - physics.ME_C2, line_e - 2 * physics.ME_C2, line_e / (1 + 2 * line_e / physics.ME_C2)]
    formula, _ = physics.MATERIALS[crystal]
    for s in formula:
        if s in physics.K_XRAYS:
            feats.append(line_e - physics.K_XRAYS[s][0])
            feats.append(line_e - physics.K_XRAYS[s][1])
    out = torch.cat(feats, 1)
    if slab in physics.K_XRAYS:
        const = torch.tensor([physics.K_XRAYS[slab][0], physics.K_XRAYS[slab][1]], device=line_e.device)
        out = torch.cat([out, const.expand(line_e.shape[0], -1)], 1)
    return out


class PeakDetection(Metric):
    """Peak search precision / recall against the true lines and false peaks per spectrum.

    ``mode`` picks what :meth:`compute` returns: ``"precision"``, ``"recall"``, ``"false_rate"`` or ``"all"``
    (a dict ``det_precision`` / ``det_recall`` / ``det_false_rate``, flattened by ``MetricCollection``).
    """

    full_state_update = False

    def __init__(
        self, edges: Tensor, mode: str = "all", tolerance_kev: float = 3.0, threshold: float = 4.0,
        crystal: str = "LYSO", slab: str = "Pb", **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.register_buffer("edges", edges.float().clone(), persistent=False)
        self.mode = mode
        self.tolerance_kev = tolerance_kev
        self.threshold = threshold
        self.crystal, self.slab = crystal, slab
        for name in ("tp", "fp", "found", "true", "spectra"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        scale = batch["scale"].view(-1, 1)
        spec = _flat(pred).float() * scale
        noise = batch["counts"] if "counts" in batch else batch["input"][:, 0] * scale
        peaks, energy = find_peaks(spec, noise, self.edges, self.threshold)
        tgt_peaks, tgt_energy = find_peaks(batch["target"][:, 0].float() * scale, noise, self.edges, self.threshold)
        le, lm = batch["line_energy"], batch["line_mask"].bool()
        det = batch["line_detectable"].bool() & lm
        tol = self.tolerance_kev
        # true lines found: any peak within tolerance
        d_line = (energy.unsqueeze(1) - le.unsqueeze(2)).abs()  # (B, L, N)
        hit_line = (d_line <= tol) & peaks.unsqueeze(1)
        self.found += (hit_line.any(2) & det).sum()
        self.true += det.sum()
        # each found peak: explained by a line, a secondary feature or a target peak?
        sec = secondary_energies(le, self.crystal, self.slab)
        sec_mask = torch.cat([lm] * (sec.shape[1] // lm.shape[1]), 1)
        if sec.shape[1] > sec_mask.shape[1]:
            sec_mask = torch.cat([sec_mask, torch.ones(lm.shape[0], sec.shape[1] - sec_mask.shape[1], dtype=torch.bool, device=lm.device)], 1)
        allowed = torch.cat([le, sec], 1)
        allowed_m = torch.cat([lm, sec_mask], 1)
        near_allowed = (((energy.unsqueeze(1) - allowed.unsqueeze(2)).abs() <= tol) & allowed_m.unsqueeze(2)).any(1)
        tgt_e = torch.where(tgt_peaks, tgt_energy, torch.full_like(tgt_energy, -1e9))
        # target peaks within tolerance (compare against the few target peaks of each spectrum)
        k = int(tgt_peaks.sum(1).max()) if bool(tgt_peaks.any()) else 0
        if k > 0:
            top = torch.topk(tgt_e, k, dim=1).values
            near_tgt = ((energy.unsqueeze(2) - top.unsqueeze(1)).abs() <= tol).any(2)
        else:
            near_tgt = torch.zeros_like(peaks)
        ok = peaks & (near_allowed | near_tgt)
        self.tp += ok.sum()
        self.fp += (peaks & ~ok).sum()
        self.spectra += spec.shape[0]

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


def build_metrics(cfg: Any, include_detection: bool = True) -> MetricCollection:
    """The validation / test metrics of the gamma task."""
    edges = channel_edges(cfg.simulate)
    mc = cfg.metrics
    kw = dict(window_fwhm=mc.window_fwhm, tolerance_kev=mc.tolerance_kev)
    d = cfg.simulate.detector
    metrics: dict[str, Metric] = {
        "fwhm_kev": LineFWHM(edges, **kw),
        "centroid_err_kev": CentroidError(edges, **kw),
        "area_err_pct": NetAreaError(edges, **kw),
        "peak_to_valley": PeakToValley(edges, DOUBLETS, mc.tolerance_kev),
        "spectrum_err": SpectrumError(),
    }
    if include_detection:
        metrics["detection"] = PeakDetection(
            edges, "all", mc.tolerance_kev, mc.detect_threshold, d.crystal, d.slab_material
        )
    return MetricCollection(metrics)


def update_collection(metrics: MetricCollection, pred: Any, batch: dict[str, Tensor]) -> None:
    """Update every metric of the collection with (pred, batch), in float32 outside any autocast region."""
    with torch.autocast(device_type=pred.device.type, enabled=False):
        metrics.update(pred.float(), batch)
