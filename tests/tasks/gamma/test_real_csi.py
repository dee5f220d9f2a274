"""Sanity check of a trained model on the real CsI (Kromek D3S) Ba-133 + Cs-137 spectrum.

Needs a trained checkpoint: ``NEUROTRAIN_GAMMA_CKPT=runs/gamma/train/checkpoints/best.ckpt pytest -m slow
tests/tasks/gamma/test_real_csi.py``. The file carries no energy calibration; it is derived here from the
four obvious peaks (Ba/Cs K x-rays ~31 keV, Ba-133 81.0 and 356.0 keV, Cs-137 661.7 keV).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from neurotrain.tasks.gamma import io as gio

KNOWN = [31.0, 80.9979, 356.0129, 661.657]


def calibration_from_peaks(counts: np.ndarray) -> list[float]:
    from scipy.signal import find_peaks

    sm = np.convolve(counts, np.ones(9) / 9, "same")
    idx, _ = find_peaks(sm, prominence=sm.max() * 0.02, distance=20)
    idx = idx[:4]
    assert len(idx) == 4, idx
    return np.polyfit(idx + 0.5, KNOWN, 2)[::-1].tolist()


def test_calibration_from_peaks_is_monotone(realdata: Path) -> None:
    p = realdata / "SGM102432.spe"
    if not p.is_file():
        pytest.skip(f"{p} absent")
    raw = gio.read_spectrum(p, calibration=[0.0, 1.0])
    cal = calibration_from_peaks(raw.counts)
    s = gio.read_spectrum(p, calibration=cal)
    assert np.all(np.diff(s.edges_kev) > 0)
    assert 1500 < s.edges_kev[-1] < 4000


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
    for line in (356.0129, 661.657):
        assert np.min(np.abs(energies - line)) < 6.0, (line, energies)
    # Ba-133 and Cs-137 have no line between 400 and 640 keV (Compton edge of 662 at 477 is no peak)
    assert not np.any((energies > 400) & (energies < 640)), energies
