"""Line physics of the synthetic generator: line strengths from the labels, the curve of growth, the line
profiles at LAMOST resolution, and the continuum-normalised absorption spectrum (used by ``simulate.py``).
The tables it draws from (named lines and bands, the forest's species, the solar calibration numbers) are in
``line_tables.py`` and re-exported here.

Model (all torch, batch-first, differentiable in the labels; numbers and their sources):

* **Line opacity vs the labels.** Each line's line-centre optical depth ``tau0`` is calibrated on the Sun
  (Teff 5777 K, log g 4.44, microturbulence 1.04 km/s) so that the curve of growth returns the solar
  equivalent width of the Rowland table (Moore, Minnaert & Houtgast 1966; e.g. Ca II K 20 A, Mg b 5184 1.58 A,
  Na D2 0.75 A, Ca II 8542 3.66 A, H alpha 4.0 A). Away from the Sun ``log10 tau0`` moves with the abundance
  ``[X/H] = [Fe/H] + [X/Fe]`` and with theta = 5040/Teff through Saha-Boltzmann over the H- continuum
  (Gray 2005, "The Observation and Analysis of Stellar Photospheres", ch. 13), with kappa(H-) ~
  P_e theta^2.5 10^(0.754 theta) and an electron pressure log P_e = 1.3 + 4 (theta_sun - theta) +
  (log g - 4.44)/3 + 0.5 [Fe/H] (P_e ~ g^(1/3) in cool photospheres):
  neutral lines of mostly ionised metals (Fe I, Mg I, Ca I, Na I, K I, Ti I): d log tau / d theta =
  chi_ion - chi_exc - 0.754, no gravity term (P_e cancels); lines of the majority ion (Fe II, Ca II, Sr II,
  Ba II): d log tau / d theta = 4 - chi_exc - 0.754 and tau ~ 1/P_e, so they grow at low gravity
  (ionisation balance: Fe II / Fe I is a gravity indicator). Both metal slopes are tempered by 0.7
  (``THETA_TEMPER``: the line-forming layer's temperature varies less than Teff). Both assume the metal is
  mostly ionised; Saha's N+/N0 in the line-forming layer (5000 K in the Sun, ``LAYER_T_SUN``) corrects them
  where Fe and Mg turn ~half neutral (K dwarfs: Mg I / Fe I lines grow less than Na I / Ca I). Balmer lines use an
  effective slope of -3.5 dex per unit theta (the observed ~3x growth of H alpha / H beta equivalent width
  from 4500 K to 6000 K and ~8 A at 7000 K) times the neutral hydrogen fraction from Saha's equation, which
  puts their maximum near 9000-10000 K (A0-A2 stars). Molecules: CH (G band) ~ [C/H], +1.5 dex per unit
  theta (optical depth 0.3 in the Sun); TiO ~ [Ti/H], +8 dex per unit theta and ~ g^(1/3) (molecule
  formation favoured by pressure), calibrated to band optical depths 0.45-0.9 in a 3800 K dwarf (M0 V) so
  that the bands vanish above ~4500 K.
* **Curve of growth.** W / dlambda_D = sqrt(F_D(tau0)^2 + W_L^2 (1 - (F_D / (sqrt(pi) tau0))^2)) with the
  Doppler part F_D = integral of 1 - exp(-tau0 exp(-x^2)) dx (Gauss-Legendre quadrature) and the
  damping part W_L = 2 sqrt(sqrt(pi) a tau0) (Rodgers & Williams 1974 interpolation): linear for weak lines,
  flat (~ sqrt(ln tau0)) when saturated, ~ sqrt(N) once damping wings dominate. Doppler width from thermal
  speed sqrt(2kT/m) and microturbulence xi = 2.478 - 0.325 log g km/s (APOGEE, Holtzman et al. 2015).
  The Voigt damping parameter a grows with gravity as a ~ g^0.4 for van der Waals broadening of metal
  lines (pressure-sensitive wings of Mg b, Na D, Ca I 4227, Na I 8183/8195 ~ g^0.6) and with the photosphere's
  gas pressure as Teff falls (gamma_6 ~ P_g T^-0.7, P_g from hydrostatics over the H- opacity: ~+0.4 dex in
  a 4400 K dwarf, ``line_tables.VDW_T_POWER``; this is what makes Na D and Ca I 4227 so strong in K dwarfs),
  a ~ P_e for the
  Stark-broadened Balmer lines, and a ~ g^0.2 for the Ca II triplet, which with the larger microturbulence
  of giants makes the triplet weaken with gravity (Diaz, Terlevich & Terlevich 1989).
* **Profiles at resolution R.** The line-spread function is a Gaussian of FWHM lambda/R. A metal line of
  equivalent width W has the optical depth (1-eta) W Gauss(sigma_LSF^2 + W_D^2/12) (its Doppler part, the
  saturated core as a box of width W_D) and, for its damping part eta W, the Milne-Eddington depth profile
  D = eta W pseudo-Voigt(sigma_LSF, gamma = eta W / (pi D_max)) (a Lorentzian depth of central depth
  ``LINE_DEPTH_MAX`` 0.9 and wings c / x^2, seen through the LSF; pseudo-Voigt of Ida, Ando & Toraya 2000),
  which enters as the optical depth -ln(1 - D) so that the line keeps its EW and its core deepens with W
  (strong lines of K dwarfs reach 0.1 at R 1800, as real ones do). Balmer lines keep the optical-depth form
  W [(1-eta) Gauss + eta pseudo-Voigt]: their Stark / self-broadened wings are unsaturated far out, with a
  Lorentz HWHM equal in the Sun to ``HYDROGEN_WING_SCALE`` (3) x W_L/4 (solar H alpha ~0.34 deep at R 1800, not
  0.47) and elsewhere scaled with the physical damping width a dlambda_D (set by the perturbers, not by the
  line's strength, so a weaker Balmer line of a K dwarf also has a shallower core). Bands:
  CH as a smooth 30 A box peaking near 5000 K, TiO as a sharp head degrading redward, CN (3883, 4216 A; ~[C/H] +
  [N/H], N following Fe) and MgH (5211 A; cool dense photospheres, ~g^(1/2)) as heads degrading blueward
  (e-folding = the band width). A forest of 6000 lines (Fe I 62 %, Fe II 12 %, Ti I 12 %, Ca I 8 %, Mg I 6 %)
  at fixed pseudo-random wavelengths (density ~ lambda^-5, drawn once from ``FOREST_SEED``) each get a
  curve-of-growth W and an LSF-wide Gaussian (a banded (B, L) @ (L, M) product); with the named lines it
  removes the Sun's line-blanketing fraction per band (``SOLAR_BLANKETING``: ~20 % at 4000-4500 A falling to
  ~2.5 % beyond 7500 A).
  Transmissions multiply: flux = exp(-sum of absorptions).

Limits: no radiative transfer or model atmospheres (one-layer lines with a fixed Milne-Eddington depth limit), no
line-blanketing of the continuum, no chromospheric emission, no rotation, Lorentzian rather than Stark
(lambda^-5/2) Balmer wings, molecules only CH, CN, MgH and TiO (no C2, VO, CaH), blends combine as exp(-sum)
which underestimates the EW of overlapping saturated lines, forest wavelengths are not real line lists (a
least-squares fit of the model to a real spectrum is pulled towards a weak forest, and the blue blanketing of
real K dwarfs grows ~2x from G2 to K3-K5 where the model's grows ~1.5x; Mg b of K dwarfs is too strong against real
LAMOST spectra, whose Mg b side bands sit in MgH: docs/results/stellar.md).
It is a label -> spectrum map with the right signs, sizes and non-linearities, not a synthesis code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from neurotrain.tasks.stellar.config import GENERATOR_LABELS
from neurotrain.tasks.stellar.line_tables import (  # noqa: F401  (re-exported: synth.<name> keeps working)
    BALMER_FLUX_SCALE,
    BAND_EXTRA_FEH,
    BAND_PARAMS,
    BLUE_DEGRADED_BANDS,
    ELEMENT_LABEL,
    FOREST_DENSITY_POWER,
    FOREST_N,
    FOREST_RANGE,
    FOREST_SEED,
    FOREST_SPECIES,
    LINE_DEPTH_MAX,
    LINE_TABLE,
    LOGG_SUN,
    SOLAR_BLANKETING,
    TEFF_SUN,
    LineStrength,
)
from neurotrain.tasks.stellar.lines import (  # noqa: F401  (re-exported: synth.lsf_sigma keeps working)
    FWHM_PER_SIGMA,
    air_to_vacuum,
    gauss,
    lsf_sigma,
    pseudo_voigt,
)
from neurotrain.tasks.stellar.photosphere import (  # noqa: F401  (re-exported: synth.<name> keeps working)
    _abundance,
    C_KMS,
    COG_NODES,
    curve_of_growth,
    _doppler_kms,
    FOREST_COG_NODES,
    _ionisation_saturation,
    label_index,
    _line_log_tau,
    log_pe,
    LOG_TAU_CLAMP,
    PE_FEH_SLOPE,
    _vdw_log_a,
)

#: Balmer wings are Stark / self-broadened far beyond a saturated damping profile: with the metal-line mapping
#: (Lorentzian HWHM = W_L / 4, a black core over +-1 A) the solar H alpha came out 0.47 deep at R 1800, but the
#: Sun's H alpha (flux atlas, Kurucz et al. 1984: residual flux ~0.17 at the centre, ~0.6 at +-0.7 A, EW 4.0 A
#: mostly in wings reaching +-10 A) smoothed to R 1800 is ~0.3-0.35 deep; real LAMOST G0-G3 dwarfs: 0.31 (H alpha)
#: and 0.37 (H beta). Hydrogen's Lorentzian HWHM is this many times W_L / 4 (solar H alpha: 0.34 deep)
HYDROGEN_WING_SCALE = 3.0
#: half-width (A) of the window each named line is computed on, by solar EW (A): strong lines carry wide
#: damping wings; the profile is tapered linearly to 0 over the outer 20 % of the window
NAMED_WINDOW_AA = ((2.0, 400.0), (0.5, 150.0), (0.0, 60.0))



@dataclass(frozen=True)
class _Lines:
    """Per-line constants as numpy arrays (float64), with the solar log tau0 calibrated."""

    names: tuple[str, ...]
    vac: np.ndarray
    elements: list[str]
    species: list[str]
    chi_exc: np.ndarray
    chi_ion: np.ndarray
    mass: np.ndarray
    log_a: np.ndarray
    damp_logg: np.ndarray
    log_tau_sun: np.ndarray
    ew_sun: np.ndarray
    #: hydrogen: Lorentz HWHM of the wings over the physical damping width a * dlambda_D, fixed in the Sun (else NaN)
    wing_ratio: np.ndarray | None = None


def _calibrate(vac: np.ndarray, ew: np.ndarray, mass: np.ndarray, log_a: np.ndarray) -> np.ndarray:
    """Solar log tau0 whose curve-of-growth EW equals ``ew`` (bisection, vectorised over lines)."""
    t = torch.float64
    dl = torch.as_tensor(vac, dtype=t) * _doppler_kms(torch.tensor(TEFF_SUN, dtype=t), torch.tensor(LOGG_SUN, dtype=t),
                                                      torch.as_tensor(mass, dtype=t)) / C_KMS
    target = torch.as_tensor(ew, dtype=t) / dl
    lo = torch.full_like(target, LOG_TAU_CLAMP[0])
    hi = torch.full_like(target, LOG_TAU_CLAMP[1])
    la = torch.as_tensor(log_a, dtype=t)
    for _ in range(60):  # bisection: 60 halvings of a 20-dex bracket
        mid = (lo + hi) / 2
        below = curve_of_growth(mid, la)[0] < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return ((lo + hi) / 2).numpy()


@lru_cache(maxsize=1)
def named_lines() -> _Lines:
    """The atomic lines of ``LINE_TABLE`` (bands excluded), calibrated on the Sun."""
    rows = [r for r in LINE_TABLE if r.species in ("neutral", "ion", "hydrogen")]
    vac = air_to_vacuum(np.array([r.air_aa for r in rows]))
    mass = np.array([r.mass_amu for r in rows])
    log_a = np.array([r.log_a for r in rows])
    ew = np.array([r.ew_sun_aa * (BALMER_FLUX_SCALE if r.species == "hydrogen" else 1.0) for r in rows])
    lines = _Lines(tuple(r.name for r in rows), vac, [r.element for r in rows], [r.species for r in rows],
                   np.array([r.chi_exc for r in rows]), np.array([r.chi_ion for r in rows]), mass, log_a,
                   np.array([r.damp_logg for r in rows]),
                   _calibrate(vac, ew, mass, log_a), ew)
    # Balmer wings: in the Sun the Lorentz HWHM is HYDROGEN_WING_SCALE * W_L / 4 (matched to the solar H alpha at
    # R 1800); elsewhere it follows the physical (Stark / self-) broadening width a * dlambda_D, which is set by
    # the perturbers' density, not by the line's strength (see ``absorption``)
    sun = torch.tensor([[TEFF_SUN, LOGG_SUN] + [0.0] * (len(GENERATOR_LABELS) - 2)], dtype=torch.float64)
    par = line_widths(lines, sun)
    ratio = (HYDROGEN_WING_SCALE * par["gamma"] / par["damp_width"])[0].numpy()
    return replace(lines, wing_ratio=np.where([s == "hydrogen" for s in lines.species], ratio, np.nan))


@lru_cache(maxsize=1)
def forest_lines() -> _Lines:
    """The weak-line forest: FOREST_N lines at fixed pseudo-random vacuum wavelengths (seed FOREST_SEED)."""
    rng = np.random.default_rng(FOREST_SEED)
    frac = np.array([s[3] for s in FOREST_SPECIES])
    kind = rng.choice(len(FOREST_SPECIES), size=FOREST_N, p=frac / frac.sum())
    lo, hi = FOREST_RANGE
    k = FOREST_DENSITY_POWER - 1.0  # inverse-CDF draw of a density ~ lambda^-FOREST_DENSITY_POWER
    vac = np.sort(rng.uniform(hi**-k, lo**-k, FOREST_N) ** (-1.0 / k))
    pick = [FOREST_SPECIES[k] for k in kind]
    chi = np.array([rng.uniform(*p[4]) for p in pick])
    log_tau = np.array([rng.uniform(*p[5]) for p in pick])
    return _Lines(tuple(f"{p[0]} {'II' if p[1] == 'ion' else 'I'} {v:.1f}" for p, v in zip(pick, vac)), vac,
                  [p[0] for p in pick], [p[1] for p in pick], chi, np.array([p[2] for p in pick]),
                  np.array([p[6] for p in pick]), np.full(FOREST_N, -1.8), np.full(FOREST_N, 0.4), log_tau,
                  np.full(FOREST_N, np.nan))


def line_widths(lines: _Lines, labels: torch.Tensor, nodes: int = COG_NODES) -> dict[str, torch.Tensor]:
    """Equivalent width (A), its Doppler part (A), damping share, W_L / 4 (A) with W_L the damping part of the
    curve of growth, and the physical damping width a * dlambda_D (A) of each line: (B, L); ``nodes``: quadrature
    nodes of the curve of growth."""
    d = dict(dtype=labels.dtype, device=labels.device)
    teff, logg, feh = labels[:, 0:1], labels[:, 1:2], labels[:, 2:3]
    theta = 5040.0 / teff
    chi_exc, chi_ion = torch.as_tensor(lines.chi_exc, **d), torch.as_tensor(lines.chi_ion, **d)
    log_tau = (torch.as_tensor(lines.log_tau_sun, **d) + _abundance(labels, lines.elements)
               + _line_log_tau(lines.species, lines.elements, chi_exc, chi_ion, theta, logg, feh, teff))
    is_h = torch.tensor([s == "hydrogen" for s in lines.species], device=labels.device)
    damp = torch.as_tensor(lines.damp_logg, **d) * (logg - LOGG_SUN)
    damp = damp + torch.where(is_h, PE_FEH_SLOPE * feh, torch.zeros_like(damp))  # Stark ~ n_e
    mass = torch.as_tensor(lines.mass, **d)
    dl = torch.as_tensor(lines.vac, **d) * _doppler_kms(teff, logg, mass) / C_KMS
    vdw = torch.where(is_h, torch.zeros_like(damp), _vdw_log_a(teff, logg, mass))  # hydrogen: Stark, no vdW term
    log_a = torch.as_tensor(lines.log_a, **d) + damp + vdw
    w, w_d, eta = curve_of_growth(log_tau, log_a, nodes)
    w_l = (w * w - w_d * w_d).clamp(min=0).sqrt()
    return {"ew": w * dl, "ew_doppler": w_d * dl, "eta": eta, "gamma": w_l * dl / 4.0,
            "damp_width": torch.pow(10.0, log_a) * dl}


def _band_log_tau(row: LineStrength, labels: torch.Tensor) -> torch.Tensor:
    t_slope, g_slope, t_ref, g_ref, theta_peak = BAND_PARAMS[row.species]
    teff, logg = labels[:, 0], labels[:, 1]
    xh = ((1.0 + BAND_EXTRA_FEH.get(row.species, 0.0)) * labels[:, label_index("FE_H")]
          + labels[:, label_index(ELEMENT_LABEL[row.element])])
    dth = 5040.0 / teff - 5040.0 / t_ref
    log_tau = math.log10(row.ew_sun_aa) + xh + t_slope * dth + g_slope * (logg - g_ref)
    if theta_peak is not None:  # d log tau / d theta = t_slope - 2 c dth falls to 0 at theta_peak
        curv = t_slope / (2.0 * (theta_peak - 5040.0 / t_ref))
        log_tau = log_tau - curv * dth * dth
    return log_tau


def absorption(labels: torch.Tensor, wave: torch.Tensor, resolution: float, forest: bool = True) -> torch.Tensor:
    """Total absorption A (B, M) at rest vacuum wavelengths ``wave`` (M,), increasing: normalised flux = exp(-A).
    ``forest=False``: the named lines and bands only (:func:`forest_absorption` is the rest)."""
    wave = wave.to(labels.dtype)
    sig = lsf_sigma(wave, resolution)
    total = torch.zeros(labels.shape[0], wave.shape[0], dtype=labels.dtype, device=labels.device)
    named = named_lines()
    par = line_widths(named, labels)
    m = wave.shape[0]
    for i, lam0 in enumerate(named.vac):  # ~40 named lines; each profile on its window, tapered to 0 at the edges
        half = next(h for e, h in NAMED_WINDOW_AA if named.ew_sun[i] >= e)
        a, b = (int(torch.searchsorted(wave, torch.tensor(float(lam0) + d, dtype=wave.dtype, device=wave.device)))
                for d in (-half, half))
        if b <= a:
            continue
        x = wave[a:b] - float(lam0)
        taper = ((half - x.abs()) / (0.2 * half)).clamp(0.0, 1.0)
        s_lsf = float(lam0) / (resolution * FWHM_PER_SIGMA)
        ew, eta = par["ew"][:, i : i + 1], par["eta"][:, i : i + 1]
        s_core = torch.sqrt(s_lsf**2 + par["ew_doppler"][:, i : i + 1] ** 2 / 12.0)
        if named.species[i] == "hydrogen":  # Stark wings: width from the perturbers, area from the curve of growth
            gamma = (par["damp_width"][:, i : i + 1] * float(named.wing_ratio[i])).clamp(min=1e-6)
            prof = ew * ((1 - eta) * gauss(x, s_core) + eta * pseudo_voigt(x, torch.full_like(gamma, s_lsf), gamma))
        else:  # metals: Doppler part as a Gaussian optical depth, damping part as a Milne-Eddington depth profile
            w_l = eta * ew
            gamma = (w_l / (math.pi * LINE_DEPTH_MAX)).clamp(min=1e-6)
            depth = (w_l * pseudo_voigt(x, torch.full_like(gamma, s_lsf), gamma)).clamp(max=LINE_DEPTH_MAX)
            prof = ew * (1 - eta) * gauss(x, s_core) - torch.log1p(-depth)
        prof = prof * taper
        total = total + torch.nn.functional.pad(prof, (a, m - b))
    for row in LINE_TABLE:  # molecular bands: optical depth times a smooth window
        if row.species not in BAND_PARAMS:
            continue
        c = float(air_to_vacuum(np.asarray(row.air_aa)))
        tau = torch.pow(10.0, _band_log_tau(row, labels)).unsqueeze(1)
        edge = sig
        if row.species == "TiO":  # sharp head, degrading redward
            win = torch.sigmoid((wave - c) / edge) * torch.exp(-(wave - c).clamp(min=0) / row.width_aa)
        elif row.species in BLUE_DEGRADED_BANDS:  # head at the red end, degrading blueward
            win = torch.sigmoid((c - wave) / edge) * torch.exp(-(c - wave).clamp(min=0) / row.width_aa)
        else:
            h = row.width_aa / 2
            win = torch.sigmoid((wave - c + h) / edge) * torch.sigmoid((c + h - wave) / edge)
        total = total + tau * win
    return total + forest_absorption(labels, wave, resolution) if forest else total


def forest_absorption(labels: torch.Tensor, wave: torch.Tensor, resolution: float) -> torch.Tensor:
    """Absorption (B, M) of the line forest alone at rest vacuum wavelengths ``wave`` (M,), increasing: each line's
    EW times its unit-area LSF Gaussian, summed. Lines are taken in wavelength-sorted chunks, each a dense
    (B, lines) @ (lines, its pixel window) product: a line's Gaussian is cut at ``FOREST_LSF_CUT`` sigma, so the
    dense (B, 6000) @ (6000, M) product, >99 % zeros, is not needed (the same sum, ~50x fewer operations)."""
    wave = wave.to(labels.dtype)
    ew = line_widths(forest_lines(), labels, FOREST_COG_NODES)["ew"]
    chunks, pixels = forest_basis(wave, resolution)
    if not chunks:  # no forest line within reach of this grid
        return torch.zeros(labels.shape[0], wave.shape[0], dtype=labels.dtype, device=labels.device)
    parts = torch.cat([ew[:, lo:hi] @ basis for lo, hi, basis in chunks], 1)
    # out of place (index_add, not +=): the CRLB differentiates this under torch.func.vmap
    return torch.zeros(labels.shape[0], wave.shape[0], dtype=labels.dtype, device=labels.device).index_add(
        1, pixels, parts)


_BASIS_CACHE: dict[tuple, tuple[list[tuple[int, int, torch.Tensor]], torch.Tensor]] = {}
#: lines per chunk of the banded forest product, and where each line's Gaussian is cut (in LSF sigmas: 6 sigma
#: leaves 2e-9 of its area out)
FOREST_CHUNK_LINES, FOREST_LSF_CUT = 128, 6.0


def forest_basis(wave: torch.Tensor, resolution: float) -> tuple[list[tuple[int, int, torch.Tensor]], torch.Tensor]:
    """The forest's unit-area LSF Gaussians on ``wave`` (M,) in wavelength-sorted chunks: a list of (first line,
    last line + 1, Gaussians (lines, pixels of the chunk's window)), and the grid index of every window pixel, all
    windows concatenated. The last few grids are cached (the training loop reuses one)."""
    key = (wave.shape[0], float(wave[0]), float(wave[-1]), float(wave[wave.shape[0] // 2]), resolution,
           wave.device, wave.dtype)
    cached = _BASIS_CACHE.get(key)
    if cached is None:
        lam = torch.as_tensor(forest_lines().vac, dtype=wave.dtype, device=wave.device)
        sig = lsf_sigma(lam, resolution)
        chunks, pixels = [], []
        for lo in range(0, lam.shape[0], FOREST_CHUNK_LINES):
            hi = min(lo + FOREST_CHUNK_LINES, lam.shape[0])
            a = int(torch.searchsorted(wave, (lam[lo] - FOREST_LSF_CUT * sig[lo]).reshape(1)))
            b = int(torch.searchsorted(wave, (lam[hi - 1] + FOREST_LSF_CUT * sig[hi - 1]).reshape(1), right=True))
            if b <= a:
                continue
            chunks.append((lo, hi, gauss(wave[None, a:b] - lam[lo:hi, None], sig[lo:hi, None])))
            pixels.append(torch.arange(a, b, device=wave.device))
        cached = (chunks, torch.cat(pixels) if pixels else torch.zeros(0, dtype=torch.long, device=wave.device))
        if len(_BASIS_CACHE) >= 4:
            _BASIS_CACHE.pop(next(iter(_BASIS_CACHE)))
        _BASIS_CACHE[key] = cached
    return cached
