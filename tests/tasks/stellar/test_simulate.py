"""The synthetic generator responds to the labels through the right lines, with the asked noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurotrain.tasks.stellar import simulate as S
from neurotrain.tasks.stellar.config import GENERATOR_LABELS, SimulateSection
from neurotrain.tasks.stellar.lines import air_to_vacuum

CFG = SimulateSection()
IDX = {k: i for i, k in enumerate(GENERATOR_LABELS)}


def star(teff: float, logg: float, **xfe: float) -> torch.Tensor:
    lab = torch.zeros(1, len(GENERATOR_LABELS), dtype=torch.float64)
    lab[0, IDX["TEFF"]], lab[0, IDX["LOGG"]] = teff, logg
    for k, v in xfe.items():
        lab[0, IDX[k.upper()]] = v
    return lab


def grid(lo: float, hi: float) -> torch.Tensor:
    """A log-linear rest grid with LAMOST's pixel size (d log10 lambda = 1e-4)."""
    return torch.pow(10.0, torch.arange(math.log10(lo), math.log10(hi), 1e-4, dtype=torch.float64))


def ew(labels: torch.Tensor, lo: float, hi: float, pad: float = 30.0) -> torch.Tensor:
    """Equivalent width (A) of the normalised model between lo and hi (vacuum A), per spectrum."""
    w = grid(lo - pad, hi + pad)
    f = S.normalised_model(labels, w, CFG)
    sel = (w >= lo) & (w <= hi)
    dw = torch.gradient(w)[0]
    return ((1 - f[:, sel]) * dw[sel]).sum(1)


def vac(air: float) -> float:
    return float(air_to_vacuum(np.asarray(air)))


def test_more_mg_deeper_mg_b_monotonic():
    for teff, logg in ((5800, 4.4), (4700, 2.5)):
        labs = torch.cat([star(teff, logg, mg_fe=m) for m in (-0.3, 0.0, 0.3, 0.6)])
        e = ew(labs, 5160, 5190)
        assert torch.all(e.diff() > 0.02), e  # each +0.3 dex of Mg adds visible absorption


def test_mg_b_pressure_wings_stronger_in_dwarfs():
    e = ew(torch.cat([star(5000, 2.5), star(5000, 4.6)]), 5160, 5190)
    assert e[1] > 1.2 * e[0]


def test_hotter_star_has_stronger_balmer_lines():
    labs = torch.cat([star(4500, 4.5), star(6000, 4.4)])
    c = vac(6562.79)
    e = ew(labs, c - 15, c + 15)
    assert e[1] > 1.4 * e[0], e
    # H beta sits in the blanketed blue (~12 % of the solar continuum removed by lines there, more in a K dwarf):
    # any window around it holds as much forest as line, so the line's own equivalent width is compared
    from neurotrain.tasks.stellar import synth

    lines = synth.named_lines()
    w = synth.line_widths(lines, labs)["ew"][:, lines.names.index("H beta")]
    assert w[1] > 1.5 * w[0], w


def test_balmer_lines_peak_near_9500_k():
    teffs = [6000.0, 8000.0, 9500.0, 12000.0]
    c = vac(4861.33)
    e = ew(torch.cat([star(t, 4.0) for t in teffs]), c - 25, c + 25)
    assert int(e.argmax()) == 2, e


def test_more_carbon_deeper_g_band():
    e = ew(torch.cat([star(5000, 3.0, c_fe=c) for c in (-0.5, 0.0, 0.5)]), 4290, 4320)
    assert torch.all(e.diff() > 0.05), e


def test_tio_band_in_cool_dwarf_only():
    w = grid(6950, 7200)
    f = S.normalised_model(torch.cat([star(3800, 4.7), star(6000, 4.3)]), w, CFG)
    head = vac(7054.0)
    band = f[:, (w > head + 3) & (w < head + 60)].mean(1)
    blue = f[:, (w > head - 60) & (w < head - 10)].mean(1)
    assert blue[0] - band[0] > 0.15  # M0 dwarf: a clear band depression redward of the head
    assert abs(blue[1] - band[1]) < 0.02  # a G star has none


def test_ca_triplet_weaker_in_dwarfs_and_fe_ii_ionisation_balance():
    labs = torch.cat([star(4800, 2.0), star(4800, 4.6)])
    cat = ew(labs, vac(8542.09) - 10, vac(8542.09) + 10)
    assert cat[0] > cat[1]
    fe2 = ew(labs, vac(5018.44) - 2, vac(5018.44) + 2, pad=10)
    assert fe2[0] > fe2[1]


def test_metals_scale_with_fe_h_and_saturate():
    labs = torch.cat([star(5500, 4.4, fe_h=x) for x in (-2.0, -1.0, 0.0)])
    e = ew(labs, 5250, 5450)  # Fe I forest and named Fe I lines
    assert torch.all(e.diff() > 0)
    assert e[1] / e[0] > e[2] / e[1]  # curve of growth: linear when weak, saturating when strong


def test_model_is_differentiable_in_labels():
    lab = star(5500, 4.0).requires_grad_(True)
    f = S.normalised_model(lab, grid(5100, 5300), CFG)
    (1 - f).sum().backward()
    g = lab.grad[0]
    assert torch.isfinite(g).all()
    assert g[IDX["FE_H"]] > 0 and g[IDX["MG_FE"]] > 0 and g[IDX["TEFF"]] < 0


def test_labels_in_ranges_dwarfs_and_giants_represented():
    g = torch.Generator().manual_seed(0)
    lab = S.sample_labels(4000, CFG, g, "cpu")
    assert lab.shape == (4000, 8) and lab.dtype == torch.float32
    for k, (lo, hi) in CFG.label_ranges.items():
        col = lab[:, IDX[k]]
        assert col.min() >= lo - 1e-3 and col.max() <= hi + 1e-3, k
    giant = lab[:, IDX["LOGG"]] < 3.5
    assert 0.3 < giant.float().mean() < 0.6
    # dwarfs: log g falls with Teff along the main sequence; giants: log g rises with Teff along the RGB
    dw = lab[~giant & (lab[:, IDX["LOGG"]] > 4.0)]
    assert np.corrcoef(dw[:, 0], dw[:, 1])[0, 1] < -0.5
    gi = lab[giant]
    assert np.corrcoef(gi[:, 0], gi[:, 1])[0, 1] > 0.5
    assert gi[:, 0].max() < 5800


def test_snr_and_contract():
    g = torch.Generator().manual_seed(3)
    lab = S.sample_labels(6, CFG, g, "cpu")
    snr = torch.tensor([8.0, 15.0, 30.0, 50.0, 100.0, 150.0])
    raw = S.simulate_raw(lab, snr, CFG, g, "cpu")
    n = CFG.n_pixels
    assert raw["wave"].shape == (6, n) and raw["wave"].dtype == torch.float64
    assert raw["flux"].dtype == torch.float32 and raw["ivar"].dtype == torch.float32
    assert raw["mask"].dtype == torch.bool and raw["z"].shape == (6,) and raw["z"].dtype == torch.float64
    assert abs(float(raw["wave"][0, 0]) - 3700) < 1 and abs(float(raw["wave"][0, -1]) - 9099) < 2
    assert torch.all(raw["ivar"][raw["mask"]] == 0) and torch.all(raw["ivar"][~raw["mask"]] > 0)
    band = (raw["wave"][0] >= 4000) & (raw["wave"][0] <= 5500)
    for i in range(6):
        good = band & ~raw["mask"][i]
        measured = (raw["flux"][i, good] * raw["ivar"][i, good].sqrt()).median()
        assert abs(float(measured) / float(snr[i]) - 1) < 0.10, (i, float(measured), float(snr[i]))
    frac = raw["mask"].float().mean()
    assert 0.2 * CFG.bad_pixel_fraction < frac < 3 * CFG.bad_pixel_fraction


def test_deterministic_with_seed():
    def run(seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        lab = S.sample_labels(3, CFG, g, "cpu")
        return S.simulate_raw(lab, torch.full((3,), 40.0), CFG, g, "cpu")

    a, b, c = run(11), run(11), run(12)
    for k in ("flux", "ivar", "mask", "z"):
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["flux"], c["flux"])


@pytest.mark.parametrize("rv", [(250.0, 300.0), (-300.0, -250.0)])
def test_line_lands_at_doppler_shifted_wavelength(rv):
    cfg = CFG.model_copy(update={"rv_range_kms": rv, "sky_residuals": False, "tellurics": False,
                                 "bad_pixel_fraction": 0.0, "response_error": 0.0, "response_jump": 0.0})
    g = torch.Generator().manual_seed(5)
    raw = S.simulate_raw(star(6500, 4.2).float(), torch.tensor([3000.0]), cfg, g, "cpu")
    w, f, z = raw["wave"][0], raw["flux"][0].double(), float(raw["z"][0])
    expect = vac(6562.79) * (1 + z)
    sel = (w > expect - 12) & (w < expect + 12)
    ws, fs = w[sel], f[sel]
    j = int(fs.argmin())
    a, b, _ = np.polyfit(ws[j - 1 : j + 2].numpy(), fs[j - 1 : j + 2].numpy(), 2)
    found = -b / (2 * a)
    assert abs(found - expect) < 0.4, (found, expect)  # well inside a pixel (~1.5 A) of a ~6 A shift
    assert abs(found - vac(6562.79)) > 4.0
    assert abs(float(raw["rv_kms"][0]) / 299792.458 - z) < 1e-6


def test_response_changes_flux_shape_not_lines():
    cfg0 = CFG.model_copy(update={"response_error": 0.0, "response_jump": 0.0, "sky_residuals": False,
                                  "tellurics": False, "bad_pixel_fraction": 0.0})
    cfg1 = cfg0.model_copy(update={"response_error": 0.3, "response_jump": 0.05})
    lab = star(5500, 4.0).float()
    r0 = S.simulate_raw(lab, torch.tensor([5000.0]), cfg0, torch.Generator().manual_seed(1), "cpu")
    r1 = S.simulate_raw(lab, torch.tensor([5000.0]), cfg1, torch.Generator().manual_seed(1), "cpu")
    ratio = r1["flux"][0] / r0["flux"][0]
    assert ratio.std() > 0.02  # the calibration error reshapes the continuum ...
    w = r0["wave"][0]
    split = int(torch.searchsorted(w, torch.tensor(CFG.arm_split_aa, dtype=torch.float64)))
    assert (ratio[split + 2 : split + 8].mean() - ratio[split - 8 : split - 2].mean()).abs() > 1e-3  # arm jump
    local = ratio[(w > 5150) & (w < 5200)]
    assert local.std() / local.mean() < 0.01  # ... but is smooth across a line (no line-shaped residual)


def test_continuum_sed_planck_shape():
    w = grid(3700, 9100)
    sed = S.continuum_sed(torch.cat([star(4000, 4.6), star(7000, 4.2)]), w)
    assert torch.allclose(sed[:, (w - 5500).abs().argmin()], torch.ones(2, dtype=sed.dtype), atol=0.01)
    blue_red = sed[:, (w - 4000).abs().argmin()] / sed[:, (w - 8000).abs().argmin()]
    assert blue_red[0] < 1 < blue_red[1]  # cool stars are red, hot stars blue


def test_generator_flux_fn_lines():
    w = grid(5000, 5300)
    fn = S.generator_flux_fn(CFG, w)
    assert fn.label_names == GENERATOR_LABELS
    f = fn(star(5500, 4.0))
    assert f.shape == (1, w.numel()) and float(f.max()) <= 1.0 and float(f.min()) > 0.0


def test_alpha_trend_and_snr_prior():
    cfg = CFG.model_copy(update={"alpha_trend": 1.0})
    g = torch.Generator().manual_seed(2)
    lab = S.sample_labels(3000, cfg, g, "cpu")
    feh, mg = lab[:, IDX["FE_H"]], lab[:, IDX["MG_FE"]]
    assert mg[feh < -1].mean() > mg[feh > 0].mean() + 0.1  # alpha-enhanced metal-poor stars
    snr = S.sample_snr(3000, CFG, g, "cpu")
    assert snr.min() >= CFG.snr_range[0] and snr.max() <= CFG.snr_range[1]
    assert abs(float(torch.log(snr).mean()) - sum(math.log(v) for v in CFG.snr_range) / 2) < 0.1  # log-uniform


def test_ivar_is_estimated_from_the_noisy_counts_not_the_true_spectrum() -> None:
    """Same star, same flux scale, no calibration error, tellurics or bad pixels: only the noise differs between
    two draws. A pipeline's ivar comes from the counts it measured, so it must differ with the noise (by ~1/SNR
    relative per pixel) and follow the flux draw by draw; the true sigma would be the same in both (a noise-free
    copy of the lines, which a network can read at any S/N)."""
    cfg = SimulateSection(rv_range_kms=(0.0, 0.0), flux_scale_range=(1000.0, 1000.0), response_error=0.0,
                          response_jump=0.0, tellurics=False, sky_residuals=False, bad_pixel_fraction=0.0)
    lab = star(5800.0, 4.4).float().expand(2, -1)
    snr = torch.full((2,), 5.0)
    a = S.simulate_raw(lab, snr, cfg, torch.Generator().manual_seed(1), "cpu")
    b = S.simulate_raw(lab, snr, cfg, torch.Generator().manual_seed(2), "cpu")
    var_a, var_b = 1 / a["ivar"].double(), 1 / b["ivar"].double()
    rel = ((var_a - var_b).abs() / var_a).median()
    assert rel > 0.05, f"ivar did not change with the noise draw (median relative change {rel:.3g})"
    # where a draw measured more counts, its estimated variance is larger: the ivar follows the measured flux
    up = (a["flux"] > b["flux"]).flatten()
    assert bool(((var_a > var_b).flatten() == up).double().mean() > 0.95)
