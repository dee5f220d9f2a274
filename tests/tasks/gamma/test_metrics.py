"""Metrics and peak measurement against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from neurotrain.tasks.gamma import metrics as M
from neurotrain.tasks.gamma.postprocess import find_peaks, line_windows, measure_lines

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
    # bookkeeping alone: without the test against the measured counts
    m = M.PeakDetection(EDGES, "all", tolerance_kev=3.0, threshold=5.0, crystal="NaI", slab="none", merge_reach_fwhm=None)
    m.update(pred.view(1, 1, -1), b)
    out = m.compute()
    assert out["det_recall"].item() == pytest.approx(1.0)
    assert out["det_precision"].item() == pytest.approx(2 / 3, abs=1e-6)
    assert out["det_false_rate"].item() == pytest.approx(1.0)
    # with it, the invented line has no counts behind it and is not a found peak at all
    m = M.PeakDetection(EDGES, "all", tolerance_kev=3.0, threshold=5.0, crystal="NaI", slab="none")
    m.update(pred.view(1, 1, -1), b)
    out = m.compute()
    assert (out["det_recall"].item(), out["det_false_rate"].item()) == (pytest.approx(1.0), pytest.approx(0.0))


def test_peak_detection_structure_of_the_target_is_not_false() -> None:
    # a step-like feature of the deposits that no truth-list rule names (a Lu-176 K-escape onset, say),
    # sharp in the target and reproduced by the prediction, plus one line the target does not have
    # (bookkeeping only: the counts here are not at an input resolution, so the counts test is off)
    bkg = 50.0
    target = gauss(200.0, 3.0, 3000.0) + gauss(430.0, 3.0, 3000.0) + bkg
    pred = target + gauss(850.0, 3.0, 3000.0)
    b = batch_for([200.0], [3000.0], target, counts=target)
    asked = M.PeakDetection(EDGES, "all", tolerance_kev=3.0, threshold=5.0, crystal="NaI", slab="none", merge_reach_fwhm=None)
    asked.update(pred.view(1, 1, -1), b)
    assert asked.compute()["det_false_rate"].item() == pytest.approx(1.0)  # only 850 keV
    alone = M.PeakDetection(EDGES, "all", tolerance_kev=3.0, threshold=5.0, crystal="NaI", slab="none", explain_by_target=False,
                            merge_reach_fwhm=None)
    alone.update(pred.view(1, 1, -1), b)
    assert alone.compute()["det_false_rate"].item() == pytest.approx(2.0)  # 430 and 850 keV
    # a peak 6 keV from the target's is outside the 3 keV tolerance
    shifted = M.PeakDetection(EDGES, "all", tolerance_kev=3.0, threshold=5.0, crystal="NaI", slab="none", merge_reach_fwhm=None)
    shifted.update((gauss(200.0, 3.0, 3000.0) + gauss(436.0, 3.0, 3000.0) + bkg).view(1, 1, -1), b)
    assert shifted.compute()["det_false_rate"].item() == pytest.approx(1.0)


def test_find_peaks_energy_subchannel() -> None:
    spec = gauss(512.4, 4.0, 5000.0) + 20.0
    peaks, energy = find_peaks(spec.unsqueeze(0), spec.unsqueeze(0), EDGES, threshold=5.0)
    found = energy[peaks]
    assert found.numel() == 1
    assert found.item() == pytest.approx(512.4, abs=0.3)


def test_build_metrics_collection(lyso_cfg) -> None:
    mc = M.build_metrics(lyso_cfg)
    assert {"fwhm_kev", "centroid_err_kev", "area_err_pct", "peak_to_valley", "spectrum_err", "detection"} <= set(mc.keys())


# ---------------------------------------------------------------- regressions of the metric audit (issue 3)


def test_window_method_continuum_from_side_channels_outside_roi() -> None:
    # Gaussian (FWHM 6 keV, area 2000) on a sloped continuum 100 - 0.1 (E - 500) counts/keV: the straight line
    # through the side channels is exact, so the net area is the Gaussian's share inside +-15 keV (> 99.99 %)
    spec = gauss(500.0, 6.0, 2000.0) + (100.0 - 0.1 * (CENTERS - 500.0))
    m = measure_lines(spec.unsqueeze(0), EDGES, torch.tensor([[500.0]]), torch.tensor([[15.0]]), noise_var=spec.unsqueeze(0))
    assert m["valid"].item()
    assert m["area"].item() == pytest.approx(2000.0, rel=0.01)
    # Gilmore: sigma^2 = G + (n / 2m)^2 * side sum, n = 31 ROI channels, m = 2 side channels per side
    g = spec[485:516].sum().item()
    side = spec[483:485].sum().item() + spec[516:518].sum().item()
    assert m["area_sigma"].item() == pytest.approx(math.sqrt(g + (31 / 4) ** 2 * side), rel=1e-4)
    assert m["fwhm"].item() == pytest.approx(6.0, abs=0.3)


def test_roi_narrower_than_the_peak_is_not_a_measurement() -> None:
    # the doublet bug: a 48 keV-wide input peak measured in a +-7 keV ROI (shrunk by a 4 keV-away weak
    # neighbour) gave a "FWHM" of a fraction of a channel; now the measurement is invalid
    torch.manual_seed(0)
    clean = gauss(356.0, 48.0, 1e5) + 200.0
    noisy = torch.poisson(clean)
    m = measure_lines(noisy.unsqueeze(0), EDGES, torch.tensor([[356.0]]), torch.tensor([[7.0]]), noise_var=noisy.unsqueeze(0), min_significance=3.0)
    assert not m["valid"].item()
    m_clean = measure_lines(clean.unsqueeze(0), EDGES, torch.tensor([[356.0]]), torch.tensor([[15.0]]))
    assert not m_clean["valid"].item()  # the cap of a peak: ROI edges sit on its own flanks
    m_wide = measure_lines(clean.unsqueeze(0), EDGES, torch.tensor([[356.0]]), torch.tensor([[72.0]]))
    assert m_wide["valid"].item() and m_wide["fwhm"].item() == pytest.approx(48.0, abs=1.0)


def test_line_windows_ignore_weak_neighbours() -> None:
    le = torch.tensor([[356.0, 351.9, 383.8]])
    la = torch.tensor([[1000.0, 10.0, 150.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    fw = torch.full((1, 3), 48.0)
    hw = line_windows(le, mask, fw, 1.5, 2.5, line_area=la)
    assert hw[0, 0].item() == pytest.approx((383.8 - 356.0) / 2)  # 351.9 holds 1 %: ignored
    assert line_windows(le, mask, fw, 1.5, 2.5)[0, 0].item() == pytest.approx(2.5)  # old behaviour


def test_absent_peak_is_a_miss_not_a_negative_area() -> None:
    target = gauss(300.0, 3.0, 2000.0) + gauss(700.0, 3.0, 2000.0) + 20.0
    pred = gauss(300.0, 3.0, 2200.0) + 20.0 - 0.05 * (CENTERS - 700.0).clamp_min(0)  # 700 keV line missing
    b = batch_for([300.0, 700.0], [2000.0, 2000.0], target, counts=target)
    m = M.NetAreaError(EDGES, window_fwhm=1.5, tolerance_kev=3.0, mode="all")
    m.update(pred.view(1, 1, -1), b)
    out = m.compute()
    assert out["area_err_pct"].item() == pytest.approx(10.0, abs=0.5)  # only the 300 keV line, +10 %
    assert out["area_miss_rate"].item() == pytest.approx(0.5)


def test_peak_to_valley_without_dip_is_one() -> None:
    spec = gauss(370.0, 48.0, 1e5) + 10.0  # the Ba-133 doublet blended at input resolution
    b = batch_for([356.0129, 383.8485], [1.0, 1.0], spec)
    m = M.PeakToValley(EDGES, [(356.0129, 383.8485)], tolerance_kev=3.0)
    m.update(spec.view(1, 1, -1), b)
    assert m.compute().item() == pytest.approx(1.0)


def test_find_peaks_weak_neighbour_of_strong_peak_is_found() -> None:
    # Co-57-like: 122 keV (area 1e5) and 136.5 keV (area 1.2e4) sharp lines; a broad scale centred on the
    # strong line used to hide the weak one
    spec = gauss(122.0, 1.0, 1e5) + gauss(136.5, 1.0, 1.2e4) + 300.0
    res = torch.full((1, 1024), 30.0)
    measured = gauss(122.0, 30.0, 1e5) + gauss(136.5, 30.0, 1.2e4) + 300.0  # what a 30 keV detector records
    peaks, energy = find_peaks(spec.unsqueeze(0), measured.unsqueeze(0), EDGES, 4.0, resolution_kev=res)
    found = energy[peaks]
    assert ((found - 136.5).abs() < 1.5).any() and ((found - 122.0).abs() < 1.5).any()


def test_find_peaks_narrow_wiggle_rejected_by_area_test() -> None:
    # a 3-channel wiggle of 600 counts on 1000 counts/channel (1e6-like): ~6 sigma per channel, so the
    # per-channel wavelet test alone calls it a peak; against the counts of one input resolution element
    # (+-60 keV, sqrt(121000) = 348) it is 1.7 sigma - what a ringing lobe or response noise looks like
    cont = torch.full((1024,), 1000.0)
    cont[599:602] += 200.0
    res = torch.full((1, 1024), 60.0)
    p_old, _ = find_peaks(cont.unsqueeze(0), cont.unsqueeze(0), EDGES, 4.0)
    p_new, _ = find_peaks(cont.unsqueeze(0), cont.unsqueeze(0), EDGES, 4.0, resolution_kev=res)
    assert p_old.any()
    assert not p_new.any()
    # a real line of 2500 counts (7 sigma against the same element) is kept
    spec = cont + gauss(400.0, 1.5, 2500.0)
    p, e = find_peaks(spec.unsqueeze(0), spec.unsqueeze(0), EDGES, 4.0, resolution_kev=res)
    assert ((e[p] - 400.0).abs() < 1.5).any()


def test_satellite_inside_the_input_resolution_is_not_a_peak_of_its_own() -> None:
    # one line measured at 40 keV FWHM (1e5 counts on 200/channel); a sharpened spectrum that splits it into
    # 80 % at 500 keV and a 20 % satellite 12 keV away: the counts are explained as well by one peak
    res = torch.full((1, 1024), 40.0)
    g = torch.Generator().manual_seed(5)
    counts = torch.poisson(gauss(500.0, 40.0, 1e5) + 200.0, generator=g).unsqueeze(0)
    split = (gauss(500.0, 2.0, 8e4) + gauss(512.0, 2.0, 2e4) + 200.0).unsqueeze(0)
    p_all, e_all = find_peaks(split, counts, EDGES, 4.0, resolution_kev=res, merge_reach_fwhm=None)
    assert ((e_all[p_all] - 512.0).abs() < 1.5).any()  # the area test alone lets the satellite through
    p, e = find_peaks(split, counts, EDGES, 4.0, resolution_kev=res)
    assert ((e[p] - 500.0).abs() < 1.5).any()
    assert not ((e[p] - 512.0).abs() < 5.0).any()
    # the measured spectrum itself (no broadening: measured_domain) keeps its one peak
    p_in, e_in = find_peaks(counts, counts, EDGES, 4.0, resolution_kev=res, measured_domain=True)
    assert ((e_in[p_in] - 500.0).abs() < 3.0).any()


def test_every_candidate_is_tested_against_the_counts() -> None:
    # 100 narrow invented peaks on a flat measurement: each passes the net-area test, none is in the counts
    res = torch.full((1, 1024), 5.0)
    counts = torch.full((1, 1024), 1000.0)
    spec = counts[0].clone()
    for e in range(15, 1010, 10):
        spec += gauss(float(e), 1.0, 3000.0)
    p_area, _ = find_peaks(spec.unsqueeze(0), counts, EDGES, 4.0, resolution_kev=res, merge_reach_fwhm=None)
    assert p_area.sum() >= 90
    p, _ = find_peaks(spec.unsqueeze(0), counts, EDGES, 4.0, resolution_kev=res)
    assert p.sum() == 0


def test_counts_test_near_the_spectrum_ends() -> None:
    # invented narrow peaks a few channels from either end of a flat measurement are dropped, while a line
    # really measured there (20 keV FWHM, so its windows run past the end of the spectrum) is kept
    res = torch.full((1, 1024), 20.0)
    counts = torch.full((1, 1024), 1000.0)
    invented = counts[0] + gauss(6.5, 1.0, 3000.0) + gauss(1017.5, 1.0, 3000.0)
    p, _ = find_peaks(invented.unsqueeze(0), counts, EDGES, 4.0, resolution_kev=res)
    assert p.sum() == 0
    measured = (1000.0 + gauss(12.5, 20.0, 2e5) + gauss(1010.5, 20.0, 2e5)).unsqueeze(0)
    sharp = (1000.0 + gauss(12.5, 1.0, 2e5) + gauss(1010.5, 1.0, 2e5)).unsqueeze(0)
    p, e = find_peaks(sharp, measured, EDGES, 4.0, resolution_kev=res)
    assert ((e[p] - 12.5).abs() < 1.5).any() and ((e[p] - 1010.5).abs() < 1.5).any()


def test_two_lines_the_counts_resolve_are_both_kept() -> None:
    # the same 80/20 pair 12 keV apart (0.3 FWHM) really present: at 1e6 counts the shape of the measured
    # peak demands the second line (merging it would shift the centroid by 2.4 keV, ~140 sigma)
    res = torch.full((1, 1024), 40.0)
    g = torch.Generator().manual_seed(6)
    counts = torch.poisson(gauss(500.0, 40.0, 8e5) + gauss(512.0, 40.0, 2e5) + 200.0, generator=g).unsqueeze(0)
    sharp = (gauss(500.0, 2.0, 8e5) + gauss(512.0, 2.0, 2e5) + 200.0).unsqueeze(0)
    p, e = find_peaks(sharp, counts, EDGES, 4.0, resolution_kev=res)
    assert ((e[p] - 500.0).abs() < 1.5).any() and ((e[p] - 512.0).abs() < 1.5).any()


def test_explained_intervals_cover_compton_edge_and_lu176_onsets() -> None:
    le = torch.tensor([[661.657]])
    lo, hi, mask = M.explained_intervals(le, torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool), "LYSO", "Pb", 3.0, 23.0)
    def explained(e: float) -> bool:
        return bool(((lo <= e) & (e <= hi) & mask).any())
    assert explained(661.0) and explained(184.3)  # line, backscatter peak 661.657 / (1 + 2 * 661.657 / 511)
    assert explained(477.3 - 10.0)  # below the Compton edge 477.3 keV
    assert explained(395.1 + 20.0)  # above the Lu-176 395 keV onset
    assert not explained(900.0)
    _, _, mask_nai = M.explained_intervals(le, torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool), "NaI", "Pb", 3.0, 23.0)
    assert mask_nai.shape[1] < mask.shape[1]  # no Lu-176 in NaI


def test_step_reach_follows_the_input_resolution() -> None:
    """A step's top lies up to about a method's resolution from the step: with ``step_reach_fwhm`` 0.5 the
    explained interval above Lu-176's 597 keV onset reaches half the input FWHM (LYSO 10 % at 662 keV,
    square-root law: 31.4 keV at 597 keV), and below Cs-137's Compton edge (477.3 keV) 28.1 keV; 0 keeps
    only the peak search's scale (``step_reach_kev``)."""
    le = torch.tensor([[661.657]])
    one = torch.ones(1, 1, dtype=torch.bool)
    batch = {"fwhm_params": torch.tensor([[0.10, 0.5]]), "calibration": torch.tensor([[1.0, 0.0]])}

    def explained(e: float, reach_fwhm: float) -> bool:
        lo, hi, mask = M.explained_intervals(le, one, one, "LYSO", "Pb", 3.0, 5.8, batch, reach_fwhm)
        return bool(((lo <= e) & (e <= hi) & mask).any())

    half_fwhm_597 = 0.5 * 0.10 * 661.657 * (596.95 / 661.657) ** 0.5
    assert explained(596.95 + 25.0, 0.5) and not explained(596.95 + 25.0, 0.0)  # RL's overshoot: 617-626 keV
    # the interval ends at onset + reach + tolerance (3 keV)
    assert explained(596.95 + half_fwhm_597 + 3.0 - 0.5, 0.5)
    assert not explained(596.95 + half_fwhm_597 + 3.0 + 0.5, 0.5)
    assert explained(477.3 - 25.0, 0.5) and not explained(477.3 - 25.0, 0.0)
    assert not explained(477.3 + 10.0, 0.5)  # above a Compton edge the continuum falls: no top there
    # the reach is the input's: a wider detector law widens it
    batch["fwhm_params"] = torch.tensor([[0.12, 0.5]])
    assert explained(596.95 + 35.0, 0.5)


@pytest.mark.parametrize(
    "level",
    [
        # the HPGe target (simulate.target: hpge, no Lu-176) passes at 1e4 counts
        1e4,
        pytest.param(1e5, marks=pytest.mark.xfail(strict=True, reason="the truth list misses structure of the deposits (Lu-176 cascade K x-ray escapes and Compton edges, response Monte Carlo noise): PeakDetection also asks the target")),
        pytest.param(1e6, marks=pytest.mark.xfail(strict=True, reason="the truth list misses structure of the deposits (Lu-176 cascade K x-ray escapes and Compton edges, response Monte Carlo noise): PeakDetection also asks the target")),
    ],
)
def test_target_has_no_false_peaks_and_high_recall(lyso_cfg, level: float) -> None:
    """Against the truth list alone (no help from the target), the ideal answer would pass the false-peak
    rule: < 0.1 false peaks per spectrum, recall of the detectable lines >= 0.85."""
    from neurotrain.tasks.gamma.simulate import Scene, channel_edges, simulate_batch

    g = torch.Generator()
    g.manual_seed(7)
    b = simulate_batch(lyso_cfg, 16, g, torch.device("cpu"), Scene(counts=level, fwhm_662=0.1, power=0.5))
    m = M.PeakDetection(
        channel_edges(lyso_cfg.simulate), "all", lyso_cfg.metrics.tolerance_kev, lyso_cfg.metrics.detect_threshold, "LYSO", "Pb",
        explain_by_target=False,
    )
    m.update(b["target"], b)
    out = m.compute()
    print(level, {k: round(float(v), 3) for k, v in out.items()})
    assert out["det_false_rate"].item() < 0.1
    assert out["det_recall"].item() >= 0.85


def test_paired_area_error_scores_both_methods_on_the_lines_both_show() -> None:
    target = gauss(300.0, 3.0, 2000.0) + gauss(700.0, 3.0, 2000.0) + 20.0
    b = batch_for([300.0, 700.0], [2000.0, 2000.0], target, counts=target)
    finds_both = gauss(300.0, 3.0, 2400.0) + gauss(700.0, 3.0, 1000.0) + 20.0  # +20 % and -50 %
    finds_one = gauss(300.0, 3.0, 2200.0) + 20.0  # +10 %, 700 keV line missing
    metric = M.NetAreaError(EDGES, window_fwhm=1.5, tolerance_kev=3.0)
    out = M.paired_area_error(metric, {"a": finds_both.view(1, 1, -1), "b": finds_one.view(1, 1, -1)}, b)
    assert out["lines"] == 1
    assert out["a"] == pytest.approx(20.0, abs=0.5)
    assert out["b"] == pytest.approx(10.0, abs=0.5)
    # each method over its own found lines, as NetAreaError reports: a is judged on both lines
    metric.update(finds_both.view(1, 1, -1), b)
    assert metric.compute().item() == pytest.approx(35.0, abs=0.7)


def test_refine_to_counts_moves_areas_to_the_data_and_keeps_peaks_sharp() -> None:
    from neurotrain.tasks.gamma.baseline import resolution_matrix
    from neurotrain.tasks.gamma.postprocess import refine_to_counts

    r662, power = 40.0 / 662.0, 0.0  # input FWHM 40 keV everywhere
    truth = gauss(300.0, 2.0, 4e4) + gauss(700.0, 2.0, 2e4) + 30.0
    counts = (truth @ resolution_matrix(EDGES, r662, power).T).unsqueeze(0)  # noiseless measurement
    # a network that places and sharpens the peaks right but gets their areas wrong
    guess = (gauss(300.0, 2.0, 2.4e4) + gauss(700.0, 2.0, 3e4) + 30.0).unsqueeze(0)
    out = refine_to_counts(guess, counts, EDGES, r662, power, 20)[0]
    b = batch_for([300.0, 700.0], [4e4, 2e4], truth, counts=counts[0])
    m = M.NetAreaError(EDGES, window_fwhm=0.5, tolerance_kev=3.0, reference="true")
    before, _, _ = m.line_errors(guess.view(1, 1, -1), b)
    after, _, _ = m.line_errors(out.view(1, 1, -1), b)
    assert before.min() > 20.0 and after.max() < 0.5 * before.min()
    w = M.LineFWHM(EDGES, window_fwhm=0.5, tolerance_kev=3.0)
    w.update(out.view(1, 1, -1), b)
    assert w.compute().item() < 3.0  # still 2 keV peaks, not the 40 keV input
    assert torch.equal(refine_to_counts(guess, counts, EDGES, r662, power, 0), guess)


def test_false_rate_at_recall_reads_the_curve_between_thresholds() -> None:
    curve = {"threshold": [3.0, 5.0, 8.0], "recall": [0.8, 0.6, 0.4], "false_rate": [1.0, 0.5, 0.1]}
    assert M.false_rate_at_recall(curve, 0.5) == (pytest.approx(0.3), "=")
    assert M.false_rate_at_recall(curve, 0.6) == (pytest.approx(0.5), "=")
    # a recall the method never reaches has no value; one below its lowest is bounded by that point
    assert M.false_rate_at_recall(curve, 0.9) == (None, ">")
    assert M.false_rate_at_recall(curve, 0.2) == (pytest.approx(0.1), "<=")


def test_detection_tradeoff_recall_falls_with_threshold_and_explanations_stay_fixed(lyso_cfg) -> None:
    from neurotrain.tasks.gamma.simulate import Scene, simulate_batch

    g = torch.Generator()
    g.manual_seed(11)
    b = simulate_batch(lyso_cfg, 8, g, torch.device("cpu"), Scene(counts=1e5, fwhm_662=0.1, power=0.5))
    curve = M.detection_tradeoff(lyso_cfg, b["target"], b, [40.0, 4.0, 20.0, 4.0])
    assert curve["threshold"] == [4.0, 20.0, 40.0]
    assert curve["recall"][0] > curve["recall"][-1]
    assert all(a >= b_ for a, b_ in zip(curve["recall"], curve["recall"][1:]))
    # the target's own peaks at the default threshold explain its peaks at every higher one
    assert curve["false_rate"] == [0.0, 0.0, 0.0] and curve["false_rate_err"] == [0.0, 0.0, 0.0]
    # an invented line with counts behind it: a false peak at low thresholds, its error sqrt(n) / spectra
    from neurotrain.tasks.gamma.simulate import channel_centers

    e = channel_centers(lyso_cfg.simulate)
    bump = 4000.0 * torch.exp(-0.5 * ((e - 1700.0) / 30.0) ** 2)
    b2 = dict(b, counts=b["counts"].float() + bump)
    pred = b["target"] + bump.view(1, 1, -1) / b["scale"].view(-1, 1, 1)
    c2 = M.detection_tradeoff(lyso_cfg, pred, b2, [4.0])
    n_fp = round(c2["false_rate"][0] * 8)
    assert n_fp >= 1
    assert c2["false_rate_err"][0] == pytest.approx(math.sqrt(n_fp) / 8, abs=1e-3)


def test_detection_tradeoff_figure_is_written(tmp_path) -> None:
    from neurotrain.tasks.gamma import plots

    curve = {"threshold": [3.0, 5.0], "recall": [0.6, 0.4], "false_rate": [0.5, 0.2], "false_rate_err": [0.1, 0.05], "precision": [0.8, 0.9]}
    trade = {"1e+04": {"curves": {"network": curve, "baseline": curve}, "baseline_recall": 0.4}}
    path = plots.plot_detection_tradeoff(tmp_path / "t.png", trade)
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_broad_bump_sharpened_into_a_line_fails_the_line_versus_continuum_test() -> None:
    fwhm_in = 30.0
    res = torch.full((1, CENTERS.numel()), fwhm_in)
    continuum = 1000.0 - 0.5 * CENTERS
    # the counts: a real line at 600 keV seen at the input resolution, and at 300 keV a bump twice as wide,
    # which no single line makes; the "enhanced" spectrum turns both into narrow lines
    measured = continuum + gauss(300.0, 2 * fwhm_in, 6000.0) + gauss(600.0, fwhm_in, 6000.0)
    enhanced = continuum + gauss(300.0, 3.0, 6000.0) + gauss(600.0, 3.0, 6000.0)
    args = (enhanced.unsqueeze(0), measured.unsqueeze(0), EDGES, 4.0)
    p, e = find_peaks(*args, resolution_kev=res)
    # against its area removed, the 300 keV peak looks needed: without it the model falls short of the counts
    assert ((e[p] - 300.0).abs() < 1.5).any() and ((e[p] - 600.0).abs() < 1.5).any()
    p, e = find_peaks(*args, resolution_kev=res, continuum_width_fwhm=3.0)
    assert not ((e[p] - 300.0).abs() < 1.5).any(), e[p]
    assert ((e[p] - 600.0).abs() < 1.5).any(), e[p]  # the real line beats its area spread wide
