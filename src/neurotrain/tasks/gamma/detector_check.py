"""Which detector measured a spectrum file, and whether it is the kind the model was trained on.

Evidence, in order: the detector the format declares (N42's RadDetectorKindCode, SpecUtils' instrument type:
:func:`specutils_io.detector_kind`); else the FWHM of the strongest peaks the counts show, as a fraction of the
energy scaled to 662 keV by the scintillator law's E^0.5; else the channel count (>= 8192 channels: an HPGe
MCA; scintillator MCAs have 256-2048).

Resolution classes at 662 keV (Knoll, "Radiation Detection and Measurement", 4th ed., ch. 10 and 12; Gilmore,
"Practical Gamma-ray Spectrometry", 2nd ed.): HPGe 0.2 % (1.3 keV), CZT ~2 %, LaBr3 / CeBr3 2.6-4 %, NaI(Tl)
6.5-7.5 %, CsI(Tl) 7-8 %, LYSO / GAGG 8-12 %. The class boundaries sit between them: below 1.5 % a
semiconductor, 1.5-4.5 % a fast halide scintillator, above 4.5 % a conventional scintillator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: crystal -> resolution class
KIND_CLASS: dict[str, str] = {
    "HPGe": "semiconductor", "CZT": "semiconductor",
    "LaBr3": "fast scintillator", "CeBr3": "fast scintillator",
    "NaI": "scintillator", "CsI": "scintillator", "LYSO": "scintillator", "GAGG": "scintillator",
}
#: upper bounds of FWHM / E at 662 keV of the semiconductor and fast-scintillator classes (module docstring)
CLASS_BOUNDS = (0.015, 0.045)
#: channel count from which a file without other evidence is taken for an HPGe spectrum
HPGE_MIN_CHANNELS = 8192


@dataclass
class DetectorEvidence:
    """What a file says about its detector. ``kind``: a crystal or a class name; ``source``: 'file', 'peaks',
    'channels' or 'none'; ``r662``: the measured FWHM / E at 662 keV (NaN without peaks)."""

    kind: str | None
    resolution_class: str | None
    source: str
    r662: float
    n_peaks: int

    def describe(self) -> str:
        if self.source == "none":
            return "unknown detector"
        what = {"file": "declared in the file", "peaks": f"FWHM of {self.n_peaks} peaks",
                "channels": "by its channel count"}[self.source]
        res = f", FWHM {100 * self.r662:.2g} % at 662 keV" if np.isfinite(self.r662) else ""
        return f"{self.kind or self.resolution_class} ({what}{res})"


def resolution_class(r662: float) -> str:
    """'semiconductor', 'fast scintillator' or 'scintillator' for a FWHM / E at 662 keV (fraction)."""
    return "semiconductor" if r662 < CLASS_BOUNDS[0] else "fast scintillator" if r662 < CLASS_BOUNDS[1] else "scintillator"


def measure_resolution(counts: np.ndarray, edges_kev: np.ndarray, min_kev: float = 50.0, max_peaks: int = 5,
                       min_sigma: float = 8.0, smooth_channels: float = 1.0) -> tuple[float, int]:
    """Median FWHM / E at 662 keV (E^0.5 law) of the ``max_peaks`` most significant peaks above ``min_kev``,
    and how many were used (NaN, 0 without any). A peak must stand ``min_sigma`` x sqrt(counts) above its
    surroundings after a Gaussian smoothing of ``smooth_channels`` sigma (removed from the width in quadrature);
    peaks no wider than the smoothing (single-channel spikes) are left out."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks, peak_widths

    c = np.asarray(counts, dtype=np.float64)
    s = gaussian_filter1d(c, smooth_channels, mode="nearest")
    centres = 0.5 * (edges_kev[1:] + edges_kev[:-1])
    idx, props = find_peaks(s, prominence=np.sqrt(np.maximum(s, 1.0)))
    kernel = 2.3548 * smooth_channels
    idx = idx[centres[idx] > min_kev]
    if idx.size == 0:
        return float("nan"), 0
    width_ch = peak_widths(s, idx, rel_height=0.5)[0]
    prom = s[idx] - peak_widths(s, idx, rel_height=1.0)[1]
    # a peak's significance grows with its width: net counts ~ prominence x FWHM over sqrt(counts beneath)
    signif = prom * np.sqrt(width_ch) / np.sqrt(np.maximum(s[idx], 1.0))
    keep = (signif >= min_sigma) & (width_ch > 1.1 * kernel)  # not a single-channel spike
    idx, signif, width_ch = idx[keep], signif[keep], width_ch[keep]
    if idx.size == 0:
        return float("nan"), 0
    top = np.argsort(signif)[::-1][:max_peaks]
    idx, width_ch = idx[top], width_ch[top]
    gain = np.diff(edges_kev)[idx]
    fwhm_kev = np.sqrt(width_ch**2 - kernel**2) * gain
    e = centres[idx]
    r662 = fwhm_kev / e * np.sqrt(e / 662.0)
    return float(np.median(r662)), int(idx.size)


def identify(counts: np.ndarray, edges_kev: np.ndarray, declared: str | None) -> DetectorEvidence:
    """The detector of a spectrum from the file's declaration, else its peaks, else its channel count."""
    r662, n = measure_resolution(counts, edges_kev)
    if declared is not None:
        return DetectorEvidence(declared, KIND_CLASS.get(declared), "file", r662, n)
    if n > 0:
        cls = resolution_class(r662)
        return DetectorEvidence("HPGe" if cls == "semiconductor" else None, cls, "peaks", r662, n)
    if counts.size >= HPGE_MIN_CHANNELS:
        return DetectorEvidence("HPGe", "semiconductor", "channels", r662, 0)
    return DetectorEvidence(None, None, "none", r662, 0)


def mismatch(evidence: DetectorEvidence, model_crystals: list[str]) -> str | None:
    """Why the file's detector is not one the model takes as input (one phrase), or None when it is or
    when nothing is known."""
    if evidence.resolution_class is None:
        return None
    allowed = {KIND_CLASS[c] for c in model_crystals if c in KIND_CLASS}
    if evidence.resolution_class in allowed:
        return None
    return f"got {evidence.describe()}, a {evidence.resolution_class}"
