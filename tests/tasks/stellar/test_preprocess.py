"""Each preprocessing step on known inputs, drop reasons, dtype agreement, and the 25 real spectra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurotrain.tasks.stellar import io
from neurotrain.tasks.stellar import preprocess as pp
from neurotrain.tasks.stellar.config import PreprocessSection, ReadSection

from .conftest import LINES, continuum, lamost_wave, line_profile


def _raw(fluxes, ivars, z=0.0, wave=None, masks=None, dtype=torch.float32):
    wave = lamost_wave() if wave is None else wave
    f = torch.as_tensor(np.stack(fluxes), dtype=dtype)
    iv = torch.as_tensor(np.stack(ivars), dtype=dtype)
    b, n = f.shape
    return {"wave": torch.as_tensor(np.broadcast_to(wave, (b, n)).copy(), dtype=torch.float64), "flux": f, "ivar": iv,
            "mask": torch.zeros(b, n, dtype=torch.bool) if masks is None else torch.as_tensor(np.stack(masks)),
            "z": torch.full((b,), float(z), dtype=torch.float64)}


def _spectrum(z=0.0, snr=1e4, seed=0, lines=LINES):
    rng = np.random.default_rng(seed)
    w = lamost_wave()
    true = continuum(w) * line_profile(w / (1 + z), lines)
    sigma = continuum(w) / snr
    return true + rng.normal(0, 1, w.size) * sigma, 1.0 / sigma**2


def test_rest_grid_is_log_linear():
    cfg = PreprocessSection()
    g = pp.rest_grid(cfg)
    assert g.dtype == torch.float64 and g[0].item() == pytest.approx(3900.0)
    assert g[-1].item() <= 8800.0 and g[-1].item() * 10**1e-4 > 8800.0
    np.testing.assert_allclose(torch.diff(torch.log10(g)).numpy(), 1e-4, rtol=1e-9)


def test_line_lands_at_rest_wavelength_after_shift():
    """A single line at 6564.61 A (H alpha, vacuum) observed at z = 1e-3 (300 km/s, 6.6 A, ~4.3 px)."""
    centre, z = 6564.61, 1e-3
    f, iv = _spectrum(z=z, lines=((centre, 0.6, 2.5),))
    cfg = PreprocessSection()
    pre = pp.preprocess_batch(_raw([f], [iv], z=z), cfg)
    grid = pp.rest_grid(cfg).numpy()
    nf = pre["flux"][0].numpy()
    i = int(np.argmin(nf))
    # parabolic vertex through the minimum and its neighbours
    y0, y1, y2 = nf[i - 1 : i + 2]
    frac = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
    found = grid[i] * 10 ** (1e-4 * frac)
    assert found == pytest.approx(centre, abs=0.15)  # 0.1 px; without the shift it would be 6.6 A off
    raw_obs = pp.preprocess_batch(_raw([f], [iv], z=z), PreprocessSection(rest_frame=False))
    j = int(np.argmin(raw_obs["flux"][0].numpy()))
    assert grid[j] == pytest.approx(centre * (1 + z), abs=1.0)


@pytest.mark.parametrize("snr", [1e4, 50.0])
def test_continuum_times_lines_normalises_to_one(snr):
    f, iv = _spectrum(z=0.0, snr=snr, seed=1)
    cfg = PreprocessSection()
    pre = pp.preprocess_batch(_raw([f], [iv]), cfg)
    g = pp.rest_grid(cfg).numpy()
    away = np.ones_like(g, bool)
    for c, _, s in LINES:
        away &= np.abs(g - c) > 8 * s
    nf = pre["flux"][0].numpy()
    if snr > 1e3:
        assert np.max(np.abs(nf[away] - 1)) < 0.01
    else:  # noisy: the local median (100 px windows) is 1 within 1 %
        for k in range(0, g.size - 100, 100):
            sel = away[k : k + 100]
            assert abs(np.median(nf[k : k + 100][sel]) - 1) < 0.01, (g[k], np.median(nf[k : k + 100][sel]))
    # the lines themselves keep their depth (the continuum did not sag into them)
    for c, d, _ in LINES:
        assert nf[np.argmin(np.abs(g - c))] == pytest.approx(1 - d, abs=0.05 if snr > 1e3 else 0.15)


def test_resampling_conserves_flux_and_propagates_ivar():
    rng = np.random.default_rng(2)
    w = lamost_wave()
    f = 500 + 100 * np.sin(w / 37.0) + rng.uniform(0, 50, w.size)
    iv = rng.uniform(0.5, 2.0, w.size)
    grid = torch.as_tensor(10 ** (np.log10(4000.0) + 1.7e-4 * np.arange(4000)))  # coarser, shifted
    grid = grid[grid < 8500]
    out_f, out_i, cover = pp.resample_loglam(torch.as_tensor(w)[None], torch.as_tensor(f)[None],
                                             torch.as_tensor(iv)[None], grid)
    # independent integral of the input step function between the outer output edges (NumPy)
    lg = np.log(w)
    mid = 0.5 * (lg[1:] + lg[:-1])
    e_in = np.exp(np.concatenate([[2 * lg[0] - mid[0]], mid, [2 * lg[-1] - mid[-1]]]))
    cum = np.concatenate([[0], np.cumsum(f * np.diff(e_in))])
    lgo = np.log(grid.numpy())
    mo = 0.5 * (lgo[1:] + lgo[:-1])
    e_out = np.exp(np.concatenate([[2 * lgo[0] - mo[0]], mo, [2 * lgo[-1] - mo[-1]]]))
    want = np.interp(e_out[-1], e_in, cum) - np.interp(e_out[0], e_in, cum)
    got = float((out_f[0].numpy() * np.diff(e_out)).sum())
    assert got == pytest.approx(want, rel=1e-10)
    assert float(cover.min()) == pytest.approx(1.0)
    # identity grid: flux and ivar unchanged
    same_f, same_i, _ = pp.resample_loglam(torch.as_tensor(w)[None], torch.as_tensor(f)[None],
                                           torch.as_tensor(iv)[None], torch.as_tensor(w))
    np.testing.assert_allclose(same_f[0].numpy(), f, rtol=1e-9)
    np.testing.assert_allclose(same_i[0].numpy(), iv, rtol=1e-9)
    # rebinning 1.7x coarser: per-pixel S/N grows about as sqrt(1.7)
    ratio = np.median(out_f[0].numpy() * np.sqrt(out_i[0].numpy())) / np.median(f * np.sqrt(iv))
    assert 1.1 < ratio < 1.5
    # no coverage -> ivar 0
    wide = torch.as_tensor(10 ** (np.log10(3500.0) + 1e-4 * np.arange(5000)))
    _, wi, wc = pp.resample_loglam(torch.as_tensor(w)[None], torch.as_tensor(f)[None], torch.as_tensor(iv)[None], wide)
    outside = (wide < w[0] - 3) | (wide > w[-1] + 3)
    assert bool((wi[0][outside] == 0).all()) and bool((wc[0][outside] == 0).all())


def test_masked_pixels_carry_ivar_zero():
    f, iv = _spectrum(snr=100)
    m = np.zeros(f.size, bool)
    m[1500:1504] = True  # observed 6458-6466 A
    f[2000] = 50 * f[2000]  # a cosmic ray
    cfg = PreprocessSection()
    raw = _raw([f], [iv], masks=[m])
    mf, mi, bad = pp.mask_bad_pixels(raw["flux"], raw["ivar"], raw["mask"], cfg)
    assert bool(bad[0, 1500:1504].all()) and bool(bad[0, 2000]) and int(bad.sum()) == 5
    pre = pp.preprocess_batch(raw, cfg)
    g = pp.rest_grid(cfg)
    w = lamost_wave()
    hole = (g > w[1500] + 0.5) & (g < w[1503] - 0.5)
    assert int(hole.sum()) >= 2 and bool((pre["ivar"][0][hole] == 0).all())
    x = pp.network_input(pre, 2)
    assert x.shape == (1, 2, g.numel()) and x.dtype == torch.float32
    assert bool((x[0, 0][hole] == 1.0).all()) and bool((x[0, 1][hole] == 0).all())
    assert 0.5 < float(x[0, 1][~hole].median()) < 1.5  # S/N 100 per pixel -> about 1
    assert pp.network_input(pre, 1).shape == (1, 1, g.numel())


def test_denoise_reduces_noise_and_keeps_bad_pixels_bad():
    rng = np.random.default_rng(4)
    f = torch.as_tensor(100 + rng.normal(0, 5, (2, 2000)))
    iv = torch.full_like(f, 1 / 25.0)
    iv[:, 1000] = 0
    sf, si = pp.denoise(f, iv, 1.0)
    assert float(sf.std()) < 0.6 * float(f.std()) and float(sf.mean()) == pytest.approx(100, abs=0.3)
    assert bool((si[:, 1000] == 0).all())
    # propagated error matches the measured scatter within 15 %
    assert float(sf[:, 20:-20].std()) == pytest.approx(float(si[:, 20:990].rsqrt().median()), rel=0.15)


def test_drop_reasons_are_counted():
    cfg = PreprocessSection()
    good_f, good_i = _spectrum(snr=50, seed=5)
    nan_f = np.full_like(good_f, np.nan)
    low_f, low_i = _spectrum(snr=1.5, seed=6)
    short_f = good_f.copy()
    short_f[600:] = np.nan  # 3700-4300 A only
    few_f, few_i = good_f.copy(), good_i.copy()
    few_i[::3] = 0
    few_i[1::3] = 0  # two thirds of the pixels without data
    raw = _raw([good_f, nan_f, low_f, short_f, few_f], [good_i, good_i, low_i, good_i, few_i])
    pre = pp.preprocess_batch(raw, cfg)
    names = [pp.REASONS[int(r)] for r in pre["reason"]]
    assert names == ["kept", "all_nan", "low_snr", "too_short", "few_good_pixels"]
    assert pre["keep"].tolist() == [True, False, False, False, False]
    assert pre["reason"].dtype == torch.int8
    assert bool(torch.isfinite(pre["flux"]).all()) and bool(torch.isfinite(pre["ivar"]).all())
    assert float(pre["snr"][0]) == pytest.approx(50, rel=0.1)


def test_float64_equals_float32():
    f, iv = _spectrum(snr=40, seed=7, z=2e-4)
    cfg = PreprocessSection(denoise=True)
    p32 = pp.preprocess_batch(_raw([f], [iv], z=2e-4, dtype=torch.float32), cfg)
    p64 = pp.preprocess_batch(_raw([f], [iv], z=2e-4, dtype=torch.float64), cfg)
    assert p64["flux"].dtype == torch.float64 and p32["flux"].dtype == torch.float32
    np.testing.assert_allclose(p32["flux"].numpy(), p64["flux"].numpy(), atol=2e-4)
    np.testing.assert_allclose(p32["ivar"].numpy(), p64["ivar"].numpy(), rtol=2e-3, atol=1e-3)
    assert float(p32["snr"][0]) == pytest.approx(float(p64["snr"][0]), rel=1e-4)


def test_switches_off_still_normalise():
    f, iv = _spectrum(snr=1e4)
    cfg = PreprocessSection(continuum=False, mask_bad_pixels=False, rest_frame=False)
    pre = pp.preprocess_batch(_raw([f], [iv]), cfg)
    assert float(pre["flux"][0].median()) == pytest.approx(1.0, abs=0.02)


def test_real_spectra(stellar_realdata):
    files = sorted(stellar_realdata.glob("*.fits"))
    spectra, skipped = io.read_many(files, ReadSection(), workers=2)
    assert not skipped and len(spectra) == len(files) == 25
    cfg = PreprocessSection()
    pre = pp.preprocess_batch(io.stack_spectra(spectra), cfg, return_stages=True)
    assert int(pre["keep"].sum()) >= 20
    good = pre["ivar"] > 0
    med = torch.stack([pre["flux"][i][good[i]].median() for i in range(len(spectra))])
    assert bool(((med > 0.95) & (med < 1.02)).all()), med
    # red arm, away from lines and tellurics: the upper envelope is close to 1
    g = pre["stages"]["grid"]
    sel = (g > 6000) & (g < 6500)
    q90 = torch.stack([torch.quantile(pre["flux"][i][sel & good[i]], 0.9) for i in range(len(spectra))])
    assert bool(((q90 > 0.98) & (q90 < 1.1)).all()), q90
    # S/N follows the header's r-band value (our median is over 3900-8800 A)
    snrr = torch.tensor([s.meta["SNRR"] for s in spectra])
    assert float(torch.corrcoef(torch.stack([pre["snr"].double(), snrr.double()]))[0, 1]) > 0.8
