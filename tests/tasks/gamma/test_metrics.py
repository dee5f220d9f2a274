"""Metrics and peak measurement against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from neurotrain.tasks.gamma import metrics as M
from neurotrain.tasks.gamma.postprocess import find_peaks, measure_lines

EDGES = torch.linspace(0.0, 1024.0, 1025)  # 1 keV channels
CENTERS = 0.5 * (EDGES[1:] + EDGES[:-1])


def gauss(center: float, fwhm: float, area: float) -> torch.Tensor:
    s = fwhm / 2.3548200450309493
    cdf = torch.special.ndtr((EDGES - center) / s)
    return area * (cdf[1:] - cdf[:-1])


def batch_for(lines: list[float], areas: list[float], target: torch.Tensor, counts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    n = len(lines)
    return {
        "target": target.view(1, 1, -1),
        "line_energy": torch.tensor([lines]),
        "line_area": torch.tensor([areas]),
        "line_mask": torch.ones(1, n, dtype=torch.bool),
        "line_detectable": torch.ones(1, n, dtype=torch.bool),
        "fwhm_params": torch.tensor([[10.0 / 662.0, 0.0]]),  # FWHM 10 keV at every energy
        "scale": torch.ones(1, 1),
        "counts": (counts if counts is not None else target).view(1, -1),
        "input": target.view(1, 1, -1).expand(1, 3, -1),
    }


def test_measure_lines_on_gaussian_over_flat_background() -> None:
    spec = gauss(400.3, 10.0, 1000.0) + 5.0
    m = measure_lines(spec.unsqueeze(0), EDGES, torch.tensor([[400.3]]), torch.tensor([[25.0]]))
    assert m["valid"].item()
    assert m["fwhm"].item() == pytest.approx(10.0, abs=0.4)
    assert m["centroid"].item() == pytest.approx(400.3, abs=0.1)
    assert m["area"].item() == pytest.approx(1000.0, rel=0.02)
    # peak height of a Gaussian: area / (sigma sqrt(2 pi)) per keV
    assert m["height"].item() == pytest.approx(1000.0 / (10.0 / 2.3548 * math.sqrt(2 * math.pi)), rel=0.02)


def test_line_metrics_hand_values() -> None:
    target = gauss(300.0, 4.0, 500.0) + gauss(700.0, 4.0, 800.0) + 1.0
    pred = gauss(302.0, 8.0, 550.0) + gauss(700.0, 8.0, 720.0) + 1.0
    b = batch_for([300.0, 700.0], [500.0, 800.0], target)
    fw = M.LineFWHM(EDGES, window_fwhm=2.0, tolerance_kev=3.0)
    fw.update(pred.view(1, 1, -1), b)
    assert fw.compute().item() == pytest.approx(8.0, abs=0.4)
    ce = M.CentroidError(EDGES, window_fwhm=2.0, tolerance_kev=3.0)
    ce.update(pred.view(1, 1, -1), b)
    assert ce.compute().item() == pytest.approx((2.0 + 0.0) / 2, abs=0.15)
    ae = M.NetAreaError(EDGES, window_fwhm=2.0, tolerance_kev=3.0, reference="true")
    ae.update(pred.view(1, 1, -1), b)
    # |550-500|/500 = 10 %, |720-800|/800 = 10 %  (windows of +-20 keV hold > 99.9 % of an 8 keV peak)
    assert ae.compute().item() == pytest.approx(10.0, abs=0.6)
    ae_t = M.NetAreaError(EDGES, window_fwhm=2.0, tolerance_kev=3.0)
    ae_t.update(target.view(1, 1, -1), b)
    assert ae_t.compute().item() == pytest.approx(0.0, abs=1e-6)


def test_spectrum_error_hand_value() -> None:
    target = gauss(500.0, 5.0, 100.0) + 2.0
    b = batch_for([500.0], [100.0], target)
    m = M.SpectrumError()
    m.update((1.1 * target).view(1, 1, -1), b)
    assert m.compute().item() == pytest.approx(0.1, rel=1e-4)


def test_peak_to_valley_hand_value() -> None:
    spec = torch.full((1024,), 2.0)
    spec[356] = 10.0
    spec[383] = 20.0
    b = batch_for([356.0129, 383.8485], [1.0, 1.0], spec)
    m = M.PeakToValley(EDGES, [(356.0129, 383.8485)], tolerance_kev=1.0)
    m.update(spec.view(1, 1, -1), b)
    assert m.compute().item() == pytest.approx(10.0 / 2.0)
    # absent doublet: nothing counted
    m2 = M.PeakToValley(EDGES, [(1085.837, 1112.076)])
    m2.update(spec.view(1, 1, -1), b)
    assert math.isnan(m2.compute().item())


def test_peak_detection_precision_recall_false_rate() -> None:
    bkg = 50.0
    target = gauss(200.0, 3.0, 3000.0) + gauss(600.0, 3.0, 3000.0) + bkg
    pred = target + gauss(850.0, 3.0, 3000.0)  # one invented line
    b = batch_for([200.0, 600.0], [3000.0, 3000.0], target, counts=target)
    m = M.PeakDetection(EDGES, "all", tolerance_kev=3.0, threshold=5.0, crystal="NaI", slab="none")
    m.update(pred.view(1, 1, -1), b)
    out = m.compute()
    assert out["det_recall"].item() == pytest.approx(1.0)
    assert out["det_precision"].item() == pytest.approx(2 / 3, abs=1e-6)
    assert out["det_false_rate"].item() == pytest.approx(1.0)


def test_find_peaks_energy_subchannel() -> None:
    spec = gauss(512.4, 4.0, 5000.0) + 20.0
    peaks, energy = find_peaks(spec.unsqueeze(0), spec.unsqueeze(0), EDGES, threshold=5.0)
    found = energy[peaks]
    assert found.numel() == 1
    assert found.item() == pytest.approx(512.4, abs=0.3)


def test_build_metrics_collection(lyso_cfg) -> None:
    mc = M.build_metrics(lyso_cfg)
    assert {"fwhm_kev", "centroid_err_kev", "area_err_pct", "peak_to_valley", "spectrum_err", "detection"} <= set(mc.keys())
