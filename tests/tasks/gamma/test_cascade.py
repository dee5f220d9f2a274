"""True-coincidence summing of cascades and random pile-up, per detector."""

from __future__ import annotations

import pytest
import torch

from neurotrain.tasks.gamma import cascade, hpge
from neurotrain.tasks.gamma import simulate as S
from neurotrain.tasks.gamma.config import GammaConfig

QUIET = dict(environment=False, random_lines=0, jitter=False, fwhm_662=0.08, power=0.5)


@pytest.fixture(scope="module")
def wide(gamma_cache):
    """20-2800 keV, 2048 channels (1.36 keV), NaI input, HPGe target, source 1 cm from the NaI face."""
    def make(**sim: object) -> GammaConfig:
        base = {
            "n_channels": 2048, "e_min_kev": 20.0, "e_max_kev": 2800.0, "response_photons": 150, "lu176_events": 5000,
            "cache_dir": str(gamma_cache), "max_lines": 64, "source_distance_cm": 1.0, "pileup": False,
            "detector": {"crystal": "NaI", "backscatter_fraction": 0.0, "slab_material": "none"},
        }
        base.update(sim)
        return GammaConfig(simulate=base)
    return make


def _bump(spec: torch.Tensor, c: torch.Tensor, e: float) -> float:
    """Counts within +-3 keV of ``e`` above the level of 5-15 keV on both sides."""
    win = (c - e).abs() < 3.0
    side = spec[((c - e).abs() > 5.0) & ((c - e).abs() < 15.0)].mean()
    return float(spec[win].sum() - side * win.sum())


def test_cascade_table_lists_the_required_cascades() -> None:
    by_source = {c.source for c in cascade.load_cascades()}
    assert {"Ba-133", "Co-60", "Eu-152", "Y-88"} <= by_source
    t = cascade.cascade_table(["Cs-137", "Co-60"])
    assert t.index[0].max() == -1  # Cs-137: no cascade
    assert t.e1[1, 0].item() == pytest.approx(1173.228) and t.line1[1, 0] >= 0 and t.line2[1, 0] >= 0


@pytest.mark.parametrize(("source", "sum_kev"), [("Ba-133", 437.01), ("Co-60", 2505.72), ("Y-88", 2734.1),
                                                 ("Eu-152", 1529.79)])
def test_sum_peak_appears_with_summing_on_not_off(wide, source: str, sum_kev: float) -> None:
    on, off = wide(), wide(coincidence_summing=False)
    c = S.channel_centers(on.simulate)
    scene = S.Scene(sources=[source], counts=1e6, **QUIET)
    b_on = S.simulate_batch(on, 1, torch.Generator().manual_seed(3), torch.device("cpu"), scene)
    b_off = S.simulate_batch(off, 1, torch.Generator().manual_seed(3), torch.device("cpu"), scene)
    # the germanium target: a sharp line at the sum energy, nothing there without summing
    assert _bump(b_on["clean_target"][0], c, sum_kev) > 20.0
    assert abs(_bump(b_off["clean_target"][0], c, sum_kev)) < 5.0
    # the NaI input (FWHM ~8 % x sqrt(E / 662 keV)): a broad excess centred on the sum energy
    diff = b_on["clean_input"][0] - b_off["clean_input"][0]
    w = 0.08 * 662.0 * (sum_kev / 662.0) ** 0.5
    core = diff[(c - sum_kev).abs() < 0.5 * w].sum()
    assert float(core) > 20.0, float(core)
    # nothing sums above e1 + e2: the band above the sum peak stays (nearly) empty
    assert float(core) > 5 * float(diff[(c - sum_kev > 1.5 * w) & (c - sum_kev < 2.5 * w)].abs().sum())
    # the sum peak is a truth line of the target, with its own area
    near = (b_on["line_energy"][0] - sum_kev).abs() < 0.5
    assert bool((near & b_on["line_mask"][0]).any())
    assert not bool(((b_off["line_energy"][0] - sum_kev).abs() < 0.5)[b_off["line_mask"][0]].any())


def test_summing_out_takes_counts_from_the_cascade_lines_per_detector(wide) -> None:
    """Co-60 at 1 cm: each line loses its share g x eps_t(partner) to summing, with each detector's own total
    efficiency (the 60 x 60 mm germanium stops more of the partner than the 1" NaI... per photon at its face)."""
    on, off = wide(), wide(coincidence_summing=False)
    scene = S.Scene(sources=["Co-60"], counts=1e6, **QUIET)
    b_on = S.simulate_batch(on, 1, torch.Generator().manual_seed(4), torch.device("cpu"), scene)
    b_off = S.simulate_batch(off, 1, torch.Generator().manual_seed(4), torch.device("cpu"), scene)

    def area(b: dict, key: str, e: float) -> float:
        sel = ((b["line_energy"][0] - e).abs() < 0.5) & b["line_mask"][0]
        v = b[key][0][sel].sum()
        return float(v * (b["scale"][0, 0] if key == "line_area" else 1.0))

    g = hpge.solid_angle_fraction(1.0, on.simulate.detector.radius_cm)
    r_t = hpge.get_hpge_response(on.simulate)
    r_in = S.get_response(on.simulate)
    for e, partner in ((1173.228, 1332.492), (1332.492, 1173.228)):
        for key, resp in (("line_area", r_t), ("line_area_input", r_in)):
            eps_t = float(S.batched_interp(torch.tensor([[partner]]), resp.incident, resp.total()))
            # live time differs by the summing losses of the input: compare ratios to the other line's ratio
            loss = 1 - area(b_on, key, e) / area(b_off, key, e) * b_off["live_time_s"][0] / b_on["live_time_s"][0]
            assert float(loss) == pytest.approx(g * 0.9983 / (0.9985 if e < 1200 else 0.99983) * eps_t, rel=0.15, abs=2e-3)


def test_pileup_adds_counts_above_the_line_in_proportion_to_the_rate(wide) -> None:
    c = None
    above = []
    for rate in (None, 1e4, 2e4):
        cfg = wide(pileup=rate is not None, pileup_rate_cps=rate, coincidence_summing=False)
        c = S.channel_centers(cfg.simulate)
        b = S.simulate_batch(cfg, 1, torch.Generator().manual_seed(5), torch.device("cpu"),
                             S.Scene(sources=["Cs-137"], counts=1e6, **QUIET))
        t = b["clean_target"][0]
        above.append(float(t[c > 700].sum() / t.sum()))
        if rate is not None:
            assert float(b["pileup_target"][0]) == pytest.approx(rate * cfg.simulate.hpge.pileup_resolving_time_us * 1e-6)
            assert float(b["clean_input"][0].sum()) == pytest.approx(1e6, rel=0.02)  # recorded counts as asked
    assert above[0] < 1e-4
    assert above[2] / above[1] == pytest.approx(2.0, rel=0.05)
    # the Cs-137 + Cs-137 pile-up sum peak at 1323 keV
    t_sum = above[1]
    assert t_sum > 1e-3


def test_self_convolution_puts_sums_at_the_sum_energy() -> None:
    edges = torch.linspace(20.0, 1020.0, 1001)  # 1 keV channels from 20 keV
    a = torch.zeros(1, 1000)
    a[0, 80] = 1.0  # centre 100.5 keV
    a[0, 280] = 1.0  # centre 300.5 keV
    out = cascade.self_convolve(a, a, 20.0, 1.0)
    c = 0.5 * (edges[1:] + edges[:-1])
    mean = float((out[0] * c).sum() / out[0].sum())
    assert float(out[0].sum()) == pytest.approx(4.0)
    assert mean == pytest.approx((201.0 + 2 * 401.0 + 601.0) / 4, abs=0.01)
    assert float(out[0][(c - 401.0).abs() < 1].sum()) == pytest.approx(2.0)


def test_cascades_with_a_photon_off_the_grid_do_not_sum(wide) -> None:
    """Ba-133 on a 100-600 keV grid: the 81.0 keV partner has no response there, so no 437 keV sum line."""
    cfg = wide(e_min_kev=100.0, e_max_kev=600.0, n_channels=512)
    b = S.simulate_batch(cfg, 1, torch.Generator().manual_seed(6), torch.device("cpu"),
                         S.Scene(sources=["Ba-133"], counts=1e5, **QUIET))
    assert not bool(((b["line_energy"][0] - 437.01).abs() < 0.5)[b["line_mask"][0]].any())
    assert bool(torch.isfinite(b["target"]).all()) and float(b["clean_target"].min()) >= 0
