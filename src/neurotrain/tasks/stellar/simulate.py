"""Synthetic LAMOST-like low-resolution spectra: labels -> normalised model -> raw observed spectra.

Everything is batched torch on the generator's device, reproducible from the ``torch.Generator``.
Units: wavelength Angstrom in vacuum, Teff K, log g dex (cgs), abundances dex; labels in
``config.GENERATOR_LABELS`` order (TEFF, LOGG, FE_H, C_FE, MG_FE, CA_FE, NA_FE, TI_FE).

* ``sample_labels``: a Kiel-diagram prior. Dwarfs on a main sequence log g = 4.7 -> 4.2 from 3800 K to 7000 K
  (plus subgiants at log g 3.5-4.1, 5000-6500 K); giants on a red-giant branch log g 0.8 -> 3.5 from 3800 K to
  5300 K, 150 K hotter per dex lower [Fe/H] (metal-poor giant branches are bluer), and a red clump at
  4650 K / log g 2.45; Gaussian scatter about both. Abundances uniform in their ranges, optionally with the
  thick-disc/halo alpha plateau ([Mg,Ca,Ti/Fe] ~ +0.2..0.4 below [Fe/H] ~ -1).
* ``normalised_model``: the continuum-normalised absorption spectrum at resolving power R (``synth.py``
  documents its physics: Saha-Boltzmann line strengths, curve of growth, LSF-convolved Voigt-like profiles,
  CH and TiO bands, a forest of 6000 Fe/Ti/Ca/Mg lines; and its limits).
  With ``forest_shift_log10`` > 0, ``simulate_raw`` shifts each spectrum's forest by a random amount (its
  wavelengths are not a real line list, so only its blanketing and line density are then learnt).
* ``continuum_sed``: a Planck curve at the continuum's colour temperature (``CONTINUUM_T_RATIO`` x Teff) with a
  Balmer jump (up to 0.5 dex at ~9500 K, ~0.1 dex for the
  Sun) below 3646 A; no line blanketing of the continuum.
* ``simulate_raw``: (with ``generator: payne`` the normalised model is the Payne emulator's, fed with the
  ``emulator_labels`` columns of the labels) on LAMOST's observed grid (log10 lambda = coeff0 + coeff1 i,
  3909 px, 3700-9099 A):
  radial velocity uniform in ``rv_range_kms`` -> z = sqrt((1+b)/(1-b)) - 1; SED x model x flux-calibration
  error (a smooth Legendre curve per spectrum of rms ``response_error`` in log, plus a small different offset
  and tilt per arm, blue/red split at ``arm_split_aa``); telluric O2 A/B and H2O bands scaled by airmass
  and water vapour, by default only as the residual of the pipeline's telluric correction (LAMOST DR10
  spectra carry no A band: ``telluric_corrected``); noise: photon noise through LAMOST's effective throughput
  (``THROUGHPUT_CURVE``, measured on DR10 spectra: ~40x lower at 3850 A than at its 7000-7500 A peak, a dip at
  the dichroic crossover ~5800 A) plus a sky background through the same throughput, scaled so the median S/N per
  pixel over ``snr_band_aa`` (g band) equals the asked S/N;
  ivar = 1/sigma_est^2 with sigma_est the same noise law on the *observed* counts (what a pipeline can
  estimate; the true sigma would hand the network a noise-free copy of the lines); bad pixels (cosmic spikes or
  dead pixels, mask True, ivar 0); sky-line residuals above ``sky_residual_min_aa`` that ivar does not account for (as in real sky subtraction).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from neurotrain.errors import ConfigError
from neurotrain.tasks.stellar import synth
from neurotrain.tasks.stellar.config import GENERATOR_LABELS, SimulateSection
from neurotrain.tasks.stellar.lines import FEATURES

#: Kiel-diagram sequences (see module docstring): main sequence log g at (3800 K, 7000 K); subgiant box;
#: giant branch (Teff, log g) end points; RGB Teff shift per dex [Fe/H]; red clump centre and log g width
MS_LOGG, MS_TEFF = (4.7, 4.2), (3800.0, 7000.0)
SUBGIANT_TEFF, SUBGIANT_LOGG = (5000.0, 6500.0), (3.5, 4.1)
RGB_TEFF, RGB_LOGG, RGB_FEH_SHIFT = (3800.0, 5300.0), (0.8, 3.5), -150.0
CLUMP_TEFF, CLUMP_LOGG, CLUMP_LOGG_SD = 4650.0, 2.45, 0.08
ALPHA_LABELS, ALPHA_PLATEAU = ("MG_FE", "CA_FE", "TI_FE"), (0.2, 0.4)
#: second radiation constant hc/k (A K); Balmer limit (A); Balmer-jump peak (dex), its Teff and width (K)
HC_K_AA = 1.438_777e8
#: colour temperature of the line-free continuum over Teff. The continuum leaves from tau ~ 1, hotter than Teff
#: (grey Eddington atmosphere: T(tau=1) = (5/4)^(1/4) Teff = 1.06 Teff; the Sun's tau_5000 = 1 layer is ~6400 K,
#: Holweger & Mueller 1974), and the flux the lines remove in the blue is returned in the continuum: the Sun's
#: line-free continuum between 4000 and 8000 A has the colour of a ~6500 K Planck curve (1.12 Teff), and its
#: line-averaged irradiance F(455 nm) / F(805 nm) ~ 1.8 (Neckel & Labs 1984) against 1.54 for a 5777 K Planck
#: curve. With 1 the generator's G dwarfs were too red: the blue end of the continuum fit then bent down over the
#: blanketed 3850-3950 A, leaving it ~1 where real LAMOST G dwarfs read ~0.7 (docs/results/stellar.md).
CONTINUUM_T_RATIO = 1.12
BALMER_LIMIT_AA, BALMER_JUMP_DEX, BALMER_JUMP_TEFF, BALMER_JUMP_WIDTH = 3646.0, 0.5, 9500.0, 3000.0
#: reference wavelength (A) of the photon-count factor lambda / PHOTON_REF_AA in ``noise_sigma``
PHOTON_REF_AA = 5500.0
#: effective LAMOST throughput (atmosphere, telescope, fibres, spectrograph, CCD): (observed wavelength A, relative
#: photon-counting efficiency), interpolated in log. Measured on DR10 spectra as (S/N)^2 / (F_lambda lambda) per
#: pixel (photon noise: S/N^2 ~ counts ~ F_lambda lambda T), normalised at 5000-5500 A per spectrum, median over the
#: 25 FGK spectra of ``shared/realdata/stellar`` in 100-500 A bins, then scaled to 1 at its 7000-7500 A peak
#: (``python tools/stellar_throughput.py`` prints this table): an instrument property (no label enters it). It sets the S/N ratios between bands: real FGK spectra have S/N in
#: the r and i bands ~1.5-3x their g-band S/N (the sample's SNRR / SNRG headers), and 3850-3900 A only ~0.25x
#: (the old model, flat from 4000 to 8800 A after Cui et al. 2012, gave ~0.9x and 0.6x: blue lines were read at
#: ~2.5x their real S/N, and the continuum fit, weighted by ivar, followed the blue end down where real ones do not)
THROUGHPUT_CURVE: tuple[tuple[float, float], ...] = (
    (3750.0, 0.0067), (3850.0, 0.013), (3950.0, 0.021), (4050.0, 0.038), (4150.0, 0.051), (4250.0, 0.063),
    (4350.0, 0.082), (4450.0, 0.108), (4550.0, 0.140), (4700.0, 0.169), (4900.0, 0.210), (5100.0, 0.232),
    (5300.0, 0.256), (5500.0, 0.269), (5650.0, 0.260), (5750.0, 0.223), (5825.0, 0.231), (5875.0, 0.270),
    (5950.0, 0.361), (6100.0, 0.493), (6300.0, 0.634), (6500.0, 0.792), (6800.0, 0.940), (7250.0, 1.0),
    (7750.0, 0.893), (8250.0, 0.850), (8650.0, 0.693), (8850.0, 0.560), (8950.0, 0.287), (9050.0, 0.268),
)
#: telluric band optical depths at airmass 1 (O2) and 1 x typical water vapour (H2O), LSF-smoothed
TELLURIC_TAU = {"O2 B band": 0.35, "O2 A band": 1.2, "H2O 7250": 0.06}
AIRMASS_RANGE, PWV_RANGE = (1.0, 2.0), (0.3, 2.0)
#: sky-line residuals: fixed line list (count, seed), relative intensities log-uniform over 1 dex
SKY_LINES_N, SKY_SEED, SKY_MAX_AA = 80, 7_700_777, 9300.0
#: bad pixels: spike height in units of sigma (uniform), half are spikes and half dead (zero) pixels
SPIKE_SIGMA = (10.0, 100.0)


def _ranges(cfg: SimulateSection) -> torch.Tensor:
    missing = [k for k in GENERATOR_LABELS if k not in cfg.label_ranges]
    if missing:
        raise ConfigError(f"simulate.label_ranges: expected every generator label (missing {', '.join(missing)})")
    return torch.tensor([cfg.label_ranges[k] for k in GENERATOR_LABELS], dtype=torch.float64)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device, dtype=torch.float64)


def sample_labels(n: int, cfg: SimulateSection, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """(n, 8) float32 physical labels in ``GENERATOR_LABELS`` order, inside ``cfg.label_ranges``."""
    device = torch.device(device)
    rng = _ranges(cfg).to(device)
    u = lambda lo, hi: _uniform(n, float(lo), float(hi), generator, device)  # noqa: E731
    lab = torch.stack([u(lo, hi) for lo, hi in rng], 1)
    i_t, i_g, i_fe = (GENERATOR_LABELS.index(k) for k in ("TEFF", "LOGG", "FE_H"))
    feh = lab[:, i_fe]
    if cfg.physical_hr:
        gauss = lambda s: s * torch.randn(n, generator=generator, device=device, dtype=torch.float64)  # noqa: E731
        pick = torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)
        giant = pick[:, 0] < cfg.giant_fraction
        clump = giant & (pick[:, 1] < cfg.red_clump_fraction)
        sub = ~giant & (pick[:, 1] < cfg.subgiant_fraction)
        t_ms = u(max(rng[i_t, 0], MS_TEFF[0]), min(rng[i_t, 1], MS_TEFF[1]))
        frac = ((t_ms - MS_TEFF[0]) / (MS_TEFF[1] - MS_TEFF[0])).clamp(0, 1)
        g_ms = MS_LOGG[0] + (MS_LOGG[1] - MS_LOGG[0]) * frac + gauss(cfg.hr_scatter_logg)
        t_sub, g_sub = u(*SUBGIANT_TEFF), u(*SUBGIANT_LOGG)
        g_rgb = u(*RGB_LOGG)
        t_rgb = (RGB_TEFF[0] + (g_rgb - RGB_LOGG[0]) / (RGB_LOGG[1] - RGB_LOGG[0]) * (RGB_TEFF[1] - RGB_TEFF[0])
                 + RGB_FEH_SHIFT * feh + gauss(cfg.hr_scatter_teff))
        g_rgb = g_rgb + gauss(cfg.hr_scatter_logg)
        t_rc = CLUMP_TEFF + RGB_FEH_SHIFT * feh + gauss(cfg.hr_scatter_teff)
        g_rc = CLUMP_LOGG + gauss(CLUMP_LOGG_SD)
        lab[:, i_t] = torch.where(clump, t_rc, torch.where(giant, t_rgb, torch.where(sub, t_sub, t_ms)))
        lab[:, i_g] = torch.where(clump, g_rc, torch.where(giant, g_rgb, torch.where(sub, g_sub, g_ms)))
    if cfg.alpha_trend > 0:
        w = cfg.alpha_trend * (-feh).clamp(0, 1)
        for name in ALPHA_LABELS:
            j = GENERATOR_LABELS.index(name)
            lab[:, j] = (1 - w) * lab[:, j] + w * u(*ALPHA_PLATEAU)
    return torch.minimum(torch.maximum(lab, rng[:, 0]), rng[:, 1]).float()


def sample_snr(n: int, cfg: SimulateSection, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """(n,) S/N per pixel drawn log-uniform from ``cfg.snr_range``."""
    lo, hi = (math.log(v) for v in cfg.snr_range)
    return torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator, device=torch.device(device)))


def observed_grid(cfg: SimulateSection, device: torch.device | str = "cpu") -> torch.Tensor:
    """LAMOST's observed vacuum wavelength grid (N,) float64: 10 ** (coeff0 + coeff1 * i)."""
    i = torch.arange(cfg.n_pixels, dtype=torch.float64, device=torch.device(device))
    return torch.pow(10.0, cfg.coeff0 + cfg.coeff1 * i)


def normalised_model(labels: torch.Tensor, wave_rest: torch.Tensor, cfg: SimulateSection) -> torch.Tensor:
    """Continuum-normalised flux (B, M) at rest vacuum wavelengths ``wave_rest`` (M,), resolving power
    ``cfg.resolution``; differentiable in ``labels`` (B, 8), in their dtype."""
    wave = torch.as_tensor(wave_rest, device=labels.device)
    return torch.exp(-synth.absorption(labels, wave, cfg.resolution))


def continuum_sed(labels: torch.Tensor, wave: torch.Tensor) -> torch.Tensor:
    """Planck-like continuum (B, M) at CONTINUUM_T_RATIO x Teff (Teff = labels[:, 0]), wavelengths ``wave`` (M,)
    or (B, M) in A, normalised to 1 at 5500 A, with a Balmer jump below 3646 A (see module docstring)."""
    teff = labels[:, :1].double()
    w = torch.as_tensor(wave, device=labels.device).double()
    w = w.unsqueeze(0) if w.dim() == 1 else w
    t_col = CONTINUUM_T_RATIO * teff
    planck = lambda lam: lam**-5 / torch.expm1(HC_K_AA / (lam * t_col))  # noqa: E731
    sed = planck(w) / planck(torch.full_like(teff, 5500.0))
    jump = BALMER_JUMP_DEX * torch.exp(-(((teff - BALMER_JUMP_TEFF) / BALMER_JUMP_WIDTH) ** 2))
    sed = sed * torch.pow(10.0, -jump * torch.sigmoid((BALMER_LIMIT_AA - w) / 20.0))
    return sed.to(labels.dtype)


def throughput(wave: torch.Tensor) -> torch.Tensor:
    """Relative LAMOST effective throughput (same shape as ``wave``, observed A), peak 1: ``THROUGHPUT_CURVE``
    interpolated linearly in log10, constant beyond its ends."""
    knots = torch.tensor(THROUGHPUT_CURVE, dtype=torch.float64, device=wave.device)
    x, y = knots[:, 0].contiguous(), knots[:, 1].log10()
    w = wave.double().clamp(float(x[0]), float(x[-1]))
    i = torch.searchsorted(x, w.contiguous()).clamp(1, x.shape[0] - 1)
    t = (w - x[i - 1]) / (x[i] - x[i - 1])
    return torch.pow(10.0, y[i - 1] + t * (y[i] - y[i - 1])).to(wave.dtype)


def noise_sigma(signal: torch.Tensor, wave: torch.Tensor, snr: torch.Tensor, cfg: SimulateSection,
                observed: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel noise sigma (B, N) of flux ``signal`` (B, N) at observed wavelengths ``wave`` (N,): photon
    noise (photon counts ~ signal x lambda x ``throughput``) plus a sky background of ``sky_background`` x the
    median band counts (through the same throughput), scaled so that the median of signal / sigma over
    ``snr_band_aa`` equals ``snr`` (B,).

    With ``observed`` (B, N), the noisy flux, it returns the sigma a reduction pipeline *estimates*: the same
    noise law evaluated on the observed counts (clipped at 0) instead of the true ones, as LAMOST's 1D pipeline
    derives its inverse variance from the measured object + sky counts. The true sigma is a noise-free copy of
    the spectrum: handed to the network as ivar it leaks every line's depth at any S/N (a network trained on
    it beat the Cramér-Rao bound of the flux 4x at S/N 10 and lost it all when that channel was flattened)."""
    # photons per energy flux ~ lambda (counting noise is in photons; THROUGHPUT_CURVE was measured that way)
    thr = (throughput(wave) * wave / PHOTON_REF_AA).to(signal.dtype)
    counts = signal.clamp(min=0) * thr
    band = (wave >= cfg.snr_band_aa[0]) & (wave <= cfg.snr_band_aa[1])
    if not bool(band.any()):
        raise ConfigError(f"simulate.snr_band_aa: expected a band inside the grid (got {cfg.snr_band_aa})")
    # the sky is light too: its photons pass the same throughput (a flat sky F_lambda at ``sky_background`` x the
    # source's median band counts), so the background fades in the blue with the source
    thr_band = thr[band].median().clamp(min=1e-30)
    bkg = cfg.sky_background * counts[:, band].median(1, keepdim=True).values.clamp(min=1e-30) * thr / thr_band
    var_rel = counts + bkg  # variance in units of 1/kappa (kappa: counts per flux unit)
    sn_rel = (signal * thr / var_rel.sqrt())[:, band].median(1, keepdim=True).values
    root_kappa = snr.to(signal.dtype).unsqueeze(1) / sn_rel.clamp(min=1e-30)
    if observed is not None:
        var_rel = observed.to(signal.dtype).clamp(min=0) * thr + bkg
    return var_rel.sqrt() / (root_kappa * thr.clamp(min=1e-6))


def _legendre(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Legendre polynomials P_0..P_degree at x: (degree + 1, *x.shape)."""
    p = [torch.ones_like(x), x]
    for k in range(1, degree):
        p.append(((2 * k + 1) * x * p[k] - k * p[k - 1]) / (k + 1))
    return torch.stack(p[: degree + 1])


def _response(wave: torch.Tensor, b: int, cfg: SimulateSection, g: torch.Generator) -> torch.Tensor:
    """Multiplicative flux-calibration error (B, N): exp of a smooth curve over the whole range plus a
    different offset and tilt per arm (a jump at ``arm_split_aa``)."""
    dev, deg = wave.device, cfg.response_degree
    x = 2 * (wave - wave[0]) / (wave[-1] - wave[0]) - 1
    coef = torch.randn(b, deg + 1, generator=g, device=dev, dtype=torch.float64)
    coef = coef * cfg.response_error / math.sqrt(deg + 1)
    log_r = coef @ _legendre(x, deg)
    red = wave >= cfg.arm_split_aa
    for arm, sel in ((0, ~red), (1, red)):
        if not bool(sel.any()):
            continue
        w = wave[sel]
        xa = 2 * (w - w[0]) / (w[-1] - w[0]).clamp(min=1e-9) - 1
        ca = torch.randn(b, 2, generator=g, device=dev, dtype=torch.float64) * cfg.response_jump
        log_r[:, sel] += ca[:, :1] + ca[:, 1:] * xa
    return torch.exp(log_r)


def _window(wave: torch.Tensor, centre: float, width: float, edge: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid((wave - centre + width / 2) / edge) * torch.sigmoid((centre + width / 2 - wave) / edge)


def _tellurics(wave: torch.Tensor, b: int, cfg: SimulateSection, g: torch.Generator) -> torch.Tensor:
    """Telluric transmission (B, N) in the observed frame, O2 ~ airmass, H2O ~ airmass x water vapour. With
    ``cfg.telluric_corrected`` only the pipeline's correction residual: the optical depth times a per-spectrum
    factor drawn from N(0, ``cfg.telluric_residual``), so the band is left slightly too deep or too shallow."""
    dev = wave.device
    airmass = _uniform(b, *AIRMASS_RANGE, g, dev)[:, None]
    pwv = _uniform(b, *PWV_RANGE, g, dev)[:, None]
    edge = synth.lsf_sigma(wave, cfg.resolution)
    tau = torch.zeros(b, wave.shape[0], dtype=torch.float64, device=dev)
    for f in FEATURES:
        if f.kind == "telluric":
            scale = airmass * (pwv if f.name.startswith("H2O") else 1.0)
            tau = tau + TELLURIC_TAU[f.name] * scale * _window(wave, f.vacuum_aa, f.width_aa, edge)
    if cfg.telluric_corrected:
        tau = tau * cfg.telluric_residual * torch.randn(b, 1, generator=g, device=dev, dtype=torch.float64)
    return torch.exp(-tau)


@lru_cache(maxsize=4)
def _sky_lines(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed sky-line wavelengths (A) and relative intensities, drawn once from ``SKY_SEED``."""
    rng = np.random.default_rng(SKY_SEED)
    return np.sort(rng.uniform(lo, hi, SKY_LINES_N)), 10.0 ** rng.uniform(-1.0, 0.0, SKY_LINES_N)


def _interp_log_grid(model: torch.Tensor, log0: float, step: float, wave_rest: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``model`` (B, Mf), sampled at log10 lambda = log0 + step j, at ``wave_rest`` (B, N)."""
    pos = ((torch.log10(wave_rest) - log0) / step).clamp(0, model.shape[1] - 1 - 1e-6)
    j = pos.floor().long()
    f = (pos - j).to(model.dtype)
    return torch.gather(model, 1, j) * (1 - f) + torch.gather(model, 1, j + 1) * f


_EMULATORS: dict[tuple[str, str], torch.nn.Module] = {}


def _model_for(cfg: SimulateSection) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(labels (B, 8), rest grid (M,)) -> normalised flux: the line model, or the Payne emulator fed with the
    columns of ``cfg.emulator_labels`` (continuum 1.0 outside its wavelength range)."""
    if cfg.generator != "payne":
        return lambda lab, wave: normalised_model(lab, wave, cfg)
    unknown = [n for n in cfg.emulator_labels if n not in GENERATOR_LABELS]
    if cfg.emulator_path is None or unknown:
        raise ConfigError(f"simulate.emulator_labels: expected an emulator_path and names among "
                          f"{', '.join(GENERATOR_LABELS)} to simulate with a Payne emulator "
                          f"(got {cfg.emulator_path}, unknown {unknown})")
    cols = [GENERATOR_LABELS.index(n) for n in cfg.emulator_labels]

    def run(lab: torch.Tensor, wave: torch.Tensor) -> torch.Tensor:
        from neurotrain.tasks.stellar.emulator import PayneEmulator

        key = (str(cfg.emulator_path), str(lab.device))
        if key not in _EMULATORS:
            _EMULATORS[key] = PayneEmulator.from_npz(cfg.emulator_path).to(lab.device)
        emu = _EMULATORS[key]
        n_in = int(emu.n_labels)  # type: ignore[attr-defined]
        if n_in != len(cols):
            raise ConfigError(f"simulate.emulator_labels: expected {n_in} names for {cfg.emulator_path} "
                              f"(got {len(cols)})")
        with torch.no_grad():
            return emu.resample(wave).to(lab.device)(lab[:, cols]).to(lab.dtype)  # type: ignore[attr-defined]

    return run


def _fine_grid(cfg: SimulateSection) -> tuple[float, float, int]:
    """(log10 lambda_0, step, size) of the oversampled rest grid covering the observed grid at every z of
    ``rv_range_kms`` (fixed per config, so its forest basis is built once)."""
    step = cfg.coeff1 / cfg.oversample
    z = [math.sqrt((1 + v / synth.C_KMS) / (1 - v / synth.C_KMS)) - 1 for v in cfg.rv_range_kms]
    lo = cfg.coeff0 - math.log10(1 + max(z)) - 4 * step
    hi = cfg.coeff0 + cfg.coeff1 * (cfg.n_pixels - 1) - math.log10(1 + min(z)) + 4 * step
    return lo, step, int(math.ceil((hi - lo) / step)) + 1


def _shifted_forest_model(labels: torch.Tensor, log0: float, step: float, n_fine: int, cfg: SimulateSection,
                          g: torch.Generator) -> torch.Tensor:
    """Normalised line model (B, n_fine) on the fine log grid with each spectrum's forest shifted by a random
    whole number of fine pixels within +- ``cfg.forest_shift_log10``: the forest is computed once on a grid
    extended by the largest shift and each row gathers its own window (no per-spectrum basis)."""
    dev = labels.device
    j = int(math.ceil(cfg.forest_shift_log10 / step))
    fine = torch.pow(10.0, log0 + step * torch.arange(n_fine, device=dev, dtype=torch.float64))
    ext = torch.pow(10.0, log0 + step * torch.arange(-j, n_fine + j, device=dev, dtype=torch.float64))
    named = synth.absorption(labels, fine, cfg.resolution, forest=False)
    forest = synth.forest_absorption(labels, ext, cfg.resolution)
    shift = torch.randint(-j, j + 1, (labels.shape[0], 1), generator=g, device=dev)
    idx = torch.arange(n_fine, device=dev)[None, :] + j - shift
    return torch.exp(-(named + torch.gather(forest, 1, idx)))


def simulate_raw(labels: torch.Tensor, snr: torch.Tensor, cfg: SimulateSection, generator: torch.Generator,
                 device: torch.device | str) -> dict[str, torch.Tensor]:
    """Raw observed-frame batch of the stellar contract for physical ``labels`` (B, 8) at S/N ``snr`` (B,):
    ``wave`` (B, N) float64, ``flux``/``ivar`` (B, N) float32, ``mask`` (B, N) bool (True = bad), ``z`` (B,)
    float64, plus ``rv_kms`` (B,) float64 (the drawn radial velocity)."""
    dev = torch.device(device)
    labels = labels.to(dev, torch.float32)
    snr = snr.to(dev, torch.float64)
    b, g = labels.shape[0], generator
    wave = observed_grid(cfg, dev)
    rv = _uniform(b, *cfg.rv_range_kms, g, dev)
    beta = rv / synth.C_KMS
    z = torch.sqrt((1 + beta) / (1 - beta)) - 1
    wave_rest = wave[None, :] / (1 + z[:, None])  # (B, N)
    # normalised model on one fine log-lambda rest grid covering every allowed shift, then interpolated per spectrum
    log0, step, n_fine = _fine_grid(cfg)
    fine = torch.pow(10.0, log0 + step * torch.arange(n_fine, device=dev, dtype=torch.float64))
    if cfg.generator == "lines" and cfg.forest_shift_log10 > 0:
        flux_fine = _shifted_forest_model(labels, log0, step, n_fine, cfg, g)
    else:
        flux_fine = _model_for(cfg)(labels, fine)
    model = _interp_log_grid(flux_fine, log0, step, wave_rest).double()
    scale = torch.exp(_uniform(b, *(math.log(v) for v in cfg.flux_scale_range), g, dev))[:, None]
    signal = scale * continuum_sed(labels.double(), wave_rest) * model * _response(wave, b, cfg, g)
    if cfg.tellurics:
        signal = signal * _tellurics(wave, b, cfg, g)
    sigma = noise_sigma(signal, wave, snr, cfg)
    flux = signal + sigma * torch.randn(signal.shape, generator=g, device=dev, dtype=torch.float64)
    # the file's ivar is what the pipeline estimates from the noisy counts, never the true sigma (noise_sigma)
    sigma_est = noise_sigma(signal, wave, snr, cfg, observed=flux)
    if cfg.sky_residuals and cfg.sky_residual_sigma > 0 and cfg.sky_residual_min_aa < float(wave[-1]):
        lam, inten = _sky_lines(cfg.sky_residual_min_aa, SKY_MAX_AA)
        lam_t = torch.as_tensor(lam, device=dev)
        sig_t = synth.lsf_sigma(lam_t, cfg.resolution)[:, None]
        basis = torch.exp(-0.5 * ((wave[None, :] - lam_t[:, None]) / sig_t) ** 2)
        amp = torch.randn(b, lam.size, generator=g, device=dev, dtype=torch.float64)
        amp = amp * torch.as_tensor(inten, device=dev) * cfg.sky_residual_sigma
        flux = flux + (amp @ basis) * sigma
    ivar = 1.0 / sigma_est**2
    bad = torch.rand(signal.shape, generator=g, device=dev) < cfg.bad_pixel_fraction
    spike = torch.rand(signal.shape, generator=g, device=dev) < 0.5
    jump = SPIKE_SIGMA[0] + (SPIKE_SIGMA[1] - SPIKE_SIGMA[0]) * torch.rand(signal.shape, generator=g, device=dev,
                                                                           dtype=torch.float64)
    flux = torch.where(bad, torch.where(spike, flux + jump * sigma, torch.zeros_like(flux)), flux)
    ivar = torch.where(bad, torch.zeros_like(ivar), ivar)
    return {"wave": wave.expand(b, -1).clone(), "flux": flux.float(), "ivar": ivar.float(), "mask": bad,
            "z": z, "rv_kms": rv}


class FluxFn:
    """A labels -> normalised-flux callable on a fixed rest grid (what the CRLB differentiates).

    ``label_names``: the order of the label vector it takes; ``wave``: the rest grid (M,)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], label_names: tuple[str, ...],
                 wave: torch.Tensor) -> None:
        self.fn, self.label_names, self.wave = fn, tuple(label_names), wave

    def __call__(self, labels: torch.Tensor) -> torch.Tensor:
        return self.fn(labels)


def generator_flux_fn(cfg: SimulateSection, wave_rest: torch.Tensor) -> FluxFn:
    """The generator as labels (B, P) -> normalised flux (B, M) on ``wave_rest`` (M,): the line model
    (P = 8, ``GENERATOR_LABELS``) or, with ``cfg.generator == "payne"``, the Payne emulator of
    ``cfg.emulator_path`` resampled onto the grid (P = len(``cfg.emulator_labels``))."""
    wave = torch.as_tensor(wave_rest, dtype=torch.float64)
    if cfg.generator == "payne":
        from neurotrain.tasks.stellar.emulator import PayneEmulator

        if cfg.emulator_path is None:
            raise ConfigError("simulate.emulator_path: expected a Payne .npz when generator is 'payne' (got None)")
        emu = PayneEmulator.from_npz(cfg.emulator_path)
        if emu.n_labels != len(cfg.emulator_labels):
            raise ConfigError(f"simulate.emulator_labels: expected {emu.n_labels} names for {cfg.emulator_path} "
                              f"(got {len(cfg.emulator_labels)})")
        res = emu.resample(wave)
        return FluxFn(lambda lab: res.to(lab.device)(lab), tuple(cfg.emulator_labels), wave)
    return FluxFn(lambda lab: normalised_model(lab, wave.to(lab.device), cfg), GENERATOR_LABELS, wave)
