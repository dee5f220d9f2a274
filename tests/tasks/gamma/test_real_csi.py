"""Sanity check of a trained model on the real CsI (Kromek D3S) Ba-133 + Cs-137 spectrum.

Needs a trained checkpoint: ``NEUROTRAIN_GAMMA_CKPT=runs/gamma/train/checkpoints/best.ckpt pytest -m slow
tests/tasks/gamma/test_real_csi.py``. The file carries no energy calibration; it is derived here from the
four obvious peaks (Ba/Cs K x-rays ~31 keV, Ba-133 81.0 and 356.0 keV, Cs-137 661.7 keV). That calibration
puts the maximum of the smoothed Ba-133 cluster at 356 keV, but 302.9 keV pulls that maximum left of the
356.0 keV line, so the line itself sits about 5 keV lower on this scale: the trained model is checked against
where a fit to the measured counts puts each line, not against library energies (a model that snapped to
356.0 would be recalling the library, not reading the data).

Issue 20 part 4: on this file no line that the counts do not support (an early model listed 121.6 keV, an
Eu-152 line, in a Ba-133 + Cs-137 spectrum). :func:`postprocess.counts_support` asks the measured counts
themselves (local quadratic continuum + a Gaussian of CsI's FWHM, docs/results/gamma.md "Named rows").
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from neurotrain.tasks.gamma import io as gio
from neurotrain.tasks.gamma.postprocess import counts_support

KNOWN = [31.0, 80.9979, 356.0129, 661.657]
#: CsI(Tl) FWHM law of this file, r * 662 keV * (E / 662 keV)^0.5: the fit below gives 45 keV at 662 keV
CSI_R662 = 0.068
#: below this, the Ba / Cs K x-rays and the 81 keV line sit on the steep low-energy end of the spectrum,
#: which a quadratic continuum over +-2 FWHM does not follow: support is asked above it only
SUPPORT_FROM_KEV = 100.0


def support_sigma(path: Path, cal: list[float], energies: list[float]) -> np.ndarray:
    """Significance (sigma) of a CsI-resolution line at each energy in the file's measured counts."""
    s = gio.read_spectrum(path, calibration=cal)
    e = torch.tensor(energies, dtype=torch.float64)
    _, z = counts_support(torch.tensor(s.counts, dtype=torch.float64), torch.tensor(s.edges_kev), e,
                          CSI_R662 * 662.0 * (e / 662.0) ** 0.5)
    return z.numpy()


def calibration_from_peaks(counts: np.ndarray) -> list[float]:
    from scipy.signal import find_peaks

    sm = np.convolve(counts, np.ones(9) / 9, "same")
    idx, _ = find_peaks(sm, prominence=sm.max() * 0.02, distance=20)
    idx = idx[:4]
    assert len(idx) == 4, idx
    return np.polyfit(idx + 0.5, KNOWN, 2)[::-1].tolist()


def fitted_line_positions(energy: np.ndarray, counts: np.ndarray) -> dict[float, float]:
    """Where the measured counts put Ba-133 356.0 and Cs-137 661.7 keV on the file's energy scale (keV):
    the Ba-133 276.4 / 302.9 / 356.0 / 383.8 keV cluster as four Gaussians with the library spacings and one
    common shift (sigma ~ sqrt(E)), Cs-137 as one Gaussian, each on a straight background."""
    from scipy.optimize import curve_fit

    def ba_cluster(x: np.ndarray, a1: float, a2: float, a3: float, a4: float, s: float, b0: float, b1: float, mu: float) -> np.ndarray:
        out = b0 + b1 * (x - 356.0)
        for e0, a in ((276.4, a1), (302.9, a2), (356.0129, a3), (383.8485, a4)):
            out = out + a * np.exp(-0.5 * ((x - e0 - mu) / (s * np.sqrt(e0 / 356.0))) ** 2)
        return out

    def one(x: np.ndarray, a: float, mu: float, s: float, b0: float, b1: float) -> np.ndarray:
        return a * np.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * (x - 662.0)

    m = (energy > 250) & (energy < 440)
    pb, _ = curve_fit(ba_cluster, energy[m], counts[m], p0=[50, 100, 300, 50, 15, 10, 0, 0])
    m = (energy > 560) & (energy < 760)
    pc, _ = curve_fit(one, energy[m], counts[m], p0=[counts[m].max(), 662.0, 20.0, 10.0, 0.0])
    return {356.0129: 356.0129 + float(pb[-1]), 661.657: float(pc[1])}


def test_calibration_from_peaks_is_monotone(realdata: Path) -> None:
    p = realdata / "SGM102432.spe"
    if not p.is_file():
        pytest.skip(f"{p} absent")
    raw = gio.read_spectrum(p, calibration=[0.0, 1.0])
    cal = calibration_from_peaks(raw.counts)
    s = gio.read_spectrum(p, calibration=cal)
    assert np.all(np.diff(s.edges_kev) > 0)
    assert 1500 < s.edges_kev[-1] < 4000
    # the peak-maximum calibration is right for Cs-137 but puts the Ba-133 356 keV line some keV low
    centres = 0.5 * (s.edges_kev[1:] + s.edges_kev[:-1])
    where = fitted_line_positions(centres, s.counts.astype(float))
    assert abs(where[661.657] - 661.657) < 3.0, where
    assert 345.0 < where[356.0129] < 354.0, where


def test_counts_support_on_real_csi(realdata: Path) -> None:
    p = realdata / "SGM102432.spe"
    if not p.is_file():
        pytest.skip(f"{p} absent")
    cal = calibration_from_peaks(gio.read_spectrum(p, calibration=[0.0, 1.0]).counts)
    z = support_sigma(p, cal, [121.6, 356.0, 480.0, 661.7, 800.0])
    assert z[1] > 10 and z[3] > 10, z  # Ba-133 356 keV and Cs-137 662 keV
    assert np.all(np.abs(z[[0, 2, 4]]) < 3), z  # no line at 121.6 keV, the 662 keV Compton region, 800 keV


@pytest.mark.slow
def test_trained_model_on_real_csi(realdata: Path, tmp_path: Path) -> None:
    ckpt = os.environ.get("NEUROTRAIN_GAMMA_CKPT")
    if not ckpt or not Path(ckpt).is_file():
        pytest.skip("set NEUROTRAIN_GAMMA_CKPT to a trained gamma checkpoint")
    p = realdata / "SGM102432.spe"
    if not p.is_file():
        pytest.skip(f"{p} absent")
    from neurotrain.engine.checkpoint import load_model
    from neurotrain.tasks.gamma.predict import predict_files

    cfg, model = load_model(Path(ckpt))
    cal = calibration_from_peaks(gio.read_spectrum(p, calibration=[0.0, 1.0]).counts)
    predict_files(cfg, model, [p], tmp_path, calibration=cal, crystal="CsI")
    peaks = np.loadtxt(tmp_path / "SGM102432_peaks.csv", delimiter=",", comments="#", skiprows=2, ndmin=2)
    energies = peaks[:, 0] if peaks.size else np.array([])
    s = gio.read_spectrum(p, calibration=cal)
    centres = 0.5 * (s.edges_kev[1:] + s.edges_kev[:-1])
    for line, where in fitted_line_positions(centres, s.counts.astype(float)).items():
        # 3 keV: under a tenth of CsI's FWHM (~36 keV at 356 keV, 45 keV fitted at 662 keV)
        assert np.min(np.abs(energies - where)) < 3.0, (line, where, energies)
    # Ba-133 and Cs-137 have no line between 400 and 640 keV (Compton edge of 662 at 477 is no peak)
    assert not np.any((energies > 400) & (energies < 640)), energies
    # no listed line that the measured counts do not support (3 sigma, below the search's 4)
    high = energies[energies > SUPPORT_FROM_KEV]
    z = support_sigma(p, cal, high.tolist()) if high.size else np.array([])
    assert np.all(z >= 3.0), dict(zip(high.round(1).tolist(), z.round(1).tolist()))
