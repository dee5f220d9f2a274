"""The evaluation's rules (docs/results/gamma.md) on hand-built spectra: exemption windows, physically impossible
peaks, truth-only matching, paired comparison and the baselines' tuning choice."""

from __future__ import annotations

import pytest
import torch

from neurotrain.tasks.gamma import baseline as bl
from neurotrain.tasks.gamma.config import GammaConfig
from neurotrain.tasks.gamma.eval_score import paired, peak_counts, score_rows
from neurotrain.tasks.gamma.peak_rules import GE_K_XRAYS_KEV, classify_false_peaks, compton_edges, exemption_windows
from neurotrain.tasks.gamma.postprocess import physical_peaks
from neurotrain.tasks.gamma.tuning import Setting, choose, rl_discrepancy

EDGES = torch.linspace(0.0, 2048.0, 2049)  # 1 keV channels
HPGE_WIDTH = lambda e: torch.full_like(e, 2.0)  # noqa: E731


def gauss(center: float, fwhm: float, area: float) -> torch.Tensor:
    s = fwhm / 2.3548200450309493
    cdf = torch.special.ndtr((EDGES - center) / s)
    return area * (cdf[1:] - cdf[:-1])


def truth(lines: list[float], areas: list[float], counts: torch.Tensor, r662: float = 10.0 / 662.0) -> dict[str, torch.Tensor]:
    n = len(lines)
    return {
        "line_energy": torch.tensor([lines]), "line_area": torch.tensor([areas]),
        "line_mask": torch.ones(1, n, dtype=torch.bool), "line_detectable": torch.ones(1, n, dtype=torch.bool),
        "fwhm_params": torch.tensor([[r662, 0.0]]), "scale": torch.ones(1, 1), "counts": counts.view(1, -1),
        "calibration": torch.tensor([[1.0, 0.0]]),
    }


def classify(energies: list[float], lines: list[float], detector: str, lu176: bool, slab: str = "Pb") -> dict[str, list[float]]:
    b = truth(lines, [1000.0] * len(lines), torch.zeros(2048))
    e = torch.tensor([energies])
    win = exemption_windows(b, detector, slab, 3.0, HPGE_WIDTH, lu176)
    kinds = classify_false_peaks(e, torch.ones_like(e, dtype=torch.bool), win)
    return {k: e[v].tolist() for k, v in kinds.items() if bool(v.any())}


def test_each_rule_holds_its_feature_and_nothing_wider() -> None:
    ce = float(compton_edges(torch.tensor(1500.0)))
    got = classify(
        [1500 - 511, 1500 - 1022, 190.0, 74.2, ce - 1.5, ce - 30.0, 122.0 - GE_K_XRAYS_KEV[0], 600.0, 250.0],
        [1500.0, 662.0, 122.0], "HPGe", lu176=False,
    )
    assert got["pair_escape"] == pytest.approx([989.0, 478.0])
    assert got["backscatter"] == pytest.approx([190.0])  # 662 keV scattered at 150-180 degrees: 184.3-193.7 keV
    assert got["shield_x_ray"] == pytest.approx([74.2])
    assert got["compton_edge"] == [pytest.approx(ce - 1.5)]
    assert got["x_ray_escape"] == [pytest.approx(122.0 - 9.886)]
    # 30 keV below a Compton edge (ringing at the input resolution), a Lu-176 onset in an HPGe spectrum, 250 keV
    assert got["unexplained"] == pytest.approx([ce - 30.0, 600.0, 250.0], abs=1e-3)


def test_escape_rules_follow_the_claimed_detector() -> None:
    # a 662 keV line: no pair escape (below 1022 keV); I K x-ray escape only for a NaI spectrum
    nai = classify([662.0 - 28.51, 662.0 - 511.0], [662.0], "NaI", lu176=False)
    assert nai["x_ray_escape"] == pytest.approx([633.49], abs=1e-3) and nai["unexplained"] == pytest.approx([151.0])
    hpge = classify([662.0 - 28.51], [662.0], "HPGe", lu176=False)
    assert "x_ray_escape" not in hpge
    # Lu-176 onsets only where the detector holds Lu-176
    assert classify([597.95], [1332.0], "LYSO", lu176=True)["lu176_onset"] == pytest.approx([597.95])
    assert classify([597.95], [1332.0], "HPGe", lu176=False)["unexplained"] == pytest.approx([597.95])
    assert "shield_x_ray" not in classify([74.2], [1332.0], "HPGe", lu176=False, slab="none")


def test_physical_peaks_drops_dips_and_peaks_without_a_width() -> None:
    spec = (gauss(400.0, 10.0, 5000.0) - gauss(700.0, 10.0, 2000.0) + 100.0).unsqueeze(0)
    e = torch.tensor([[400.0, 700.0, 1000.0]])  # a line, a dip, flat continuum
    keep, m = physical_peaks(spec, EDGES, e, torch.ones_like(e, dtype=torch.bool), torch.full_like(e, 10.0), 1.5, 3.0)
    assert keep.tolist() == [[True, False, False]]
    assert float(m["area"][0, 1]) < 0


def _cfg() -> GammaConfig:
    return GammaConfig(simulate={"n_channels": 2048, "e_min_kev": 0.0, "e_max_kev": 2048.0, "detector": {"crystal": "NaI"}})


def test_no_credit_for_a_peak_of_the_target_and_paired_lines() -> None:
    cfg = _cfg()
    # the counts hold a bump at 850 keV that no truth line explains (Monte Carlo noise of a response, say)
    counts = gauss(400.0, 40.0, 20000.0) + gauss(1000.0, 60.0, 20000.0) + gauss(850.0, 55.0, 20000.0) + 200.0
    b = truth([400.0, 1000.0], [20000.0, 20000.0], counts, r662=0.07)
    sharp = gauss(400.0, 2.0, 20000.0) + gauss(1000.0, 2.0, 20000.0) + 200.0
    bump = sharp + gauss(850.0, 2.0, 20000.0)  # the target shows it too
    rows = score_rows(cfg, "NaI", {"target": bump.unsqueeze(0), "network": bump.unsqueeze(0),
                                   "rl_tuned": sharp.unsqueeze(0), "input": counts.unsqueeze(0)}, b)
    assert rows["rl_tuned"]["raw_false"] == 0 and rows["rl_tuned"]["recall"] == 1.0
    # matching the target earns nothing: the 850 keV peak is false for the network and the target alike
    assert rows["network"]["raw_false"] == 1 and rows["network"]["unexplained"] == 1
    assert rows["target"]["raw_false"] == 1
    assert rows["network"]["fwhm_lines"] == 2 and rows["network"]["fwhm_kev"] == pytest.approx(2.0, abs=0.6)
    assert rows["network"]["area_err_pct"] < 5 and rows["network"]["miss_rate"] == 0.0
    assert rows["input"]["fwhm_kev"] > 30  # the input on its subset of the common lines


def test_paired_scores_every_row_on_the_same_lines() -> None:
    det = torch.ones(1, 3, dtype=torch.bool)
    c = {"raw_false": torch.zeros(1), "lines": torch.full((1,), 3.0), "lines_found": torch.full((1,), 3.0)}
    c.update({k: torch.zeros(1) for k in ("x_ray_escape", "pair_escape", "backscatter", "shield_x_ray", "compton_edge",
                                           "lu176_onset", "unexplained", "dropped", "false_600_900")})
    def ln(measured: list[bool], fwhm: list[float]) -> dict[str, torch.Tensor]:
        m = torch.tensor([measured])
        return {"measured": m, "fwhm_ok": m, "fwhm": torch.tensor([fwhm]), "area_err_pct": torch.tensor([fwhm]) * 10}
    rows = paired({"network": c, "rl_tuned": c}, {"network": ln([True, True, True], [2.0, 3.0, 40.0]),
                                                 "rl_tuned": ln([True, True, False], [5.0, 7.0, 0.0])}, det)
    # line 3 (which only the network measured) enters neither mean; each row keeps its own miss rate
    assert rows["network"]["fwhm_kev"] == pytest.approx(2.5) and rows["rl_tuned"]["fwhm_kev"] == pytest.approx(6.0)
    assert rows["network"]["fwhm_lines"] == rows["rl_tuned"]["fwhm_lines"] == 2
    assert rows["network"]["miss_rate"] == 0.0 and rows["rl_tuned"]["miss_rate"] == pytest.approx(1 / 3, abs=1e-3)


def test_peak_counts_band_and_dropped() -> None:
    cfg = _cfg()
    b = truth([400.0], [1000.0], torch.zeros(2048))
    found = {"energy": torch.tensor([[400.5, 650.0, 880.0, 950.0]]), "keep": torch.tensor([[True, True, True, False]]),
             "dropped": torch.tensor([[False, False, False, True]])}
    c = peak_counts(cfg, "NaI", "network", found, b)
    assert (float(c["raw_false"][0]), float(c["false_600_900"][0]), float(c["dropped"][0])) == (2.0, 2.0, 1.0)
    assert float(c["lines_found"][0]) == 1.0


def test_choose_keeps_within_the_budget() -> None:
    res = [
        (Setting("rl", 10), {"recall": 0.5, "unexplained": 0.1}),
        (Setting("rl", 50), {"recall": 0.7, "unexplained": 0.4}),
        (Setting("rl", 200), {"recall": 0.7, "unexplained": 0.3}),
        (Setting("rl", 1000), {"recall": 0.9, "unexplained": 2.0}),
    ]
    assert choose(res, 0.5) == Setting("rl", 200)  # equal recall: fewer false peaks
    assert choose(res, 5.0) == Setting("rl", 1000)
    assert choose(res, 0.05) == Setting("rl", 10)  # none within: the fewest false peaks


def test_paths_match_single_runs_and_discrepancy_stops() -> None:
    edges = torch.linspace(20.0, 1044.0, 257)
    a = bl.resolution_matrix(edges, 0.08, 0.5)
    x_true = torch.zeros(1, 256)
    x_true[0, [60, 130, 131, 200]] = torch.tensor([3000.0, 2000.0, 1500.0, 4000.0])
    x_true += 20.0
    g = torch.Generator().manual_seed(3)
    y = torch.poisson(x_true @ a.T, generator=g)
    path = bl.richardson_lucy_path(y, a, [5, 40])
    assert torch.allclose(path[40], bl.richardson_lucy(y, a, 40))
    gp = bl.gold_path(y, a, 30, 3, 1.2)
    assert torch.allclose(gp[3], bl.gold(y, a, 30, 3, 1.2))
    snaps = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    x, its = rl_discrepancy(y, a, snaps)
    chi2 = lambda v: float((((y - v @ a.T) ** 2) / y.clamp_min(1)).mean())  # noqa: E731
    assert chi2(x) <= 1.0 and int(its[0]) < 1000
    # the first snapshot that fits: the one before did not
    before = snaps[snaps.index(int(its[0])) - 1]
    assert chi2(bl.richardson_lucy(y, a, before)) > 1.0
