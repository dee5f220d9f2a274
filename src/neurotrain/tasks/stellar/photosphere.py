"""The one-layer photosphere behind the generator's line strengths (``synth.py`` assembles the spectrum).

From the labels to each line's equivalent width: the electron pressure of the line-forming layer (a scaling in
theta, log g and [Fe/H]; see ``synth``'s docstring), the neutral hydrogen fraction (Saha), microturbulence and the
Doppler width, the Saha-Boltzmann optical depth of neutral, ionised and hydrogen lines relative to the Sun, the
saturation of the ionisation in cool dwarfs, van der Waals damping that grows with the photospheric gas pressure,
the abundance of each line's element, and the curve of growth (Doppler core by Gauss-Legendre quadrature plus the
damping part). All batched torch, differentiable in the labels (the CRLB uses the Jacobian).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from neurotrain.tasks.stellar.config import GENERATOR_LABELS
from neurotrain.tasks.stellar.line_tables import (
    ELEMENT_LABEL,
    LAYER_T_SUN,
    LOGG_SUN,
    SAHA_ELEMENT,
    TEFF_SUN,
    VDW_T_POWER,
)

C_KMS = 299_792.458
THETA_SUN = 5040.0 / TEFF_SUN
#: thermal speed sqrt(2 k T / (A m_u)) = VTH_COEF sqrt(T / A) km/s
VTH_COEF = 0.128_95
#: H- binding energy (eV): the continuum opacity kappa(H-) ~ P_e theta^2.5 10^(0.754 theta)
H_MINUS_EV = 0.754
#: electron-pressure model (see the docstring of synth.py), log10 dyn cm^-2
LOG_PE_SUN, PE_THETA_SLOPE, PE_LOGG_SLOPE, PE_FEH_SLOPE = 1.3, 4.0, 1.0 / 3.0, 0.5
#: microturbulence (km/s) = XI0 + XI_LOGG * log g, floored (Holtzman et al. 2015)
XI0, XI_LOGG, XI_MIN = 2.478, -0.325, 0.5
#: Gauss-Legendre nodes of the Doppler curve of growth on x in [0, COG_XMAX] (covers tau0 up to ~1e12)
COG_NODES, COG_XMAX = 24, 6.5  # 0.6 % worst-case error against 200 nodes, monotone in tau0
#: the forest (a nuisance: 6000 lines per spectrum) uses fewer nodes: 1.1 % worst case against 24, half the cost
FOREST_COG_NODES = 12
LOG_TAU_CLAMP = (-8.0, 12.0)
#: most quadrature elements evaluated at once (memory cap of the curve of growth)
COG_CHUNK = 1 << 26
#: the Saha-Boltzmann temperature slopes of metal lines are tempered by this factor (the line-forming layer's
#: temperature varies less than Teff); it matches Mg b and Fe 5270 growing ~2-3x from the Sun to a K5 dwarf
#: (Lick indices, Worthey et al. 1994, ApJS 94, 687)
THETA_TEMPER = 0.7
BALMER_T_SLOPE = -3.5


def label_index(name: str) -> int:
    return GENERATOR_LABELS.index(name)


def microturbulence(logg: torch.Tensor) -> torch.Tensor:
    """Microturbulent velocity (km/s) from log g (Holtzman et al. 2015, APOGEE DR12)."""
    return (XI0 + XI_LOGG * logg).clamp(min=XI_MIN)


def log_pe(theta: torch.Tensor, logg: torch.Tensor, feh: torch.Tensor) -> torch.Tensor:
    """log10 electron pressure (dyn cm^-2) of the line-forming layer, the simple scaling of the docstring."""
    return LOG_PE_SUN + PE_THETA_SLOPE * (THETA_SUN - theta) + PE_LOGG_SLOPE * (logg - LOGG_SUN) + PE_FEH_SLOPE * feh


def log_neutral_h(teff: torch.Tensor, pe_log: torch.Tensor) -> torch.Tensor:
    """log10 of the neutral hydrogen fraction from Saha's equation: log(N+/N0) = 2.5 log T - 13.6 theta
    - 0.1762 - log P_e (partition functions U+ = 1, U0 = 2)."""
    ratio = 2.5 * torch.log10(teff) - 13.6 * 5040.0 / teff - 0.1762 - pe_log
    return -torch.nn.functional.softplus(ratio * math.log(10.0)) / math.log(10.0)


@lru_cache(maxsize=4)
def _gauss_legendre(nodes: int = COG_NODES) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(nodes)
    return (x + 1) * COG_XMAX / 2, w * COG_XMAX / 2


def curve_of_growth(log_tau: torch.Tensor, log_a: torch.Tensor,
                    nodes: int = COG_NODES) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Equivalent width in Doppler units and its parts, for line-centre optical depth 10^log_tau and Voigt
    damping 10^log_a (any matching shapes). Returns (W, W_D, eta) with W, W_D in units of dlambda_D and
    eta the damping share of W (0..1). Large inputs are processed in chunks of the last axis (memory)."""
    log_tau, log_a = torch.broadcast_tensors(log_tau, log_a)
    per = max(1, COG_CHUNK // max(1, log_tau[..., :1].numel() * nodes))
    if log_tau.dim() > 0 and log_tau.shape[-1] > per:
        parts = [curve_of_growth(t, a, nodes) for t, a in zip(log_tau.split(per, -1), log_a.split(per, -1))]
        return tuple(torch.cat(p, -1) for p in zip(*parts))  # type: ignore[return-value]
    xn, wn = _gauss_legendre(nodes)
    xq = torch.as_tensor(xn, dtype=log_tau.dtype, device=log_tau.device)
    wq = torch.as_tensor(wn, dtype=log_tau.dtype, device=log_tau.device)
    tau = torch.pow(10.0, log_tau.clamp(*LOG_TAU_CLAMP))
    profile = torch.exp(-xq * xq)
    w_d = 2.0 * (-torch.expm1(-tau.unsqueeze(-1) * profile) * wq).sum(-1)
    ratio = (w_d / (math.sqrt(math.pi) * tau)).clamp(max=1.0)
    w_l2 = 4.0 * math.sqrt(math.pi) * torch.pow(10.0, log_a) * tau * (1.0 - ratio * ratio)
    w2 = w_d * w_d + w_l2
    return w2.sqrt(), w_d, w_l2 / w2


def _vdw_log_a(teff: torch.Tensor, logg: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """log10 of the van der Waals damping parameter a relative to the Sun at the same gravity, (B, L): gas pressure
    of the photosphere from hydrostatics over the H- opacity (d log P_g / d theta = 4 - 0.754 - 2.5 / (theta ln 10),
    tempered like the metal lines by THETA_TEMPER), T^VDW_T_POWER, over the Doppler width (a = gamma / dnu_D)."""
    theta = 5040.0 / teff
    log_pg = THETA_TEMPER * ((PE_THETA_SLOPE - H_MINUS_EV) * (theta - THETA_SUN) - 2.5 * torch.log10(theta / THETA_SUN))
    sun = _doppler_kms(torch.full_like(teff, TEFF_SUN), logg, mass)
    return log_pg + VDW_T_POWER * torch.log10(teff / TEFF_SUN) - torch.log10(_doppler_kms(teff, logg, mass) / sun)


def _line_log_tau(species: list[str], elements: list[str], chi_exc: torch.Tensor, chi_ion: torch.Tensor,
                  theta: torch.Tensor, logg: torch.Tensor, feh: torch.Tensor, teff: torch.Tensor) -> torch.Tensor:
    """log10 tau0 relative to the Sun, without the abundance term: (B, L) from per-line (L,) constants."""
    dth = theta - THETA_SUN
    pe_rel = log_pe(theta, logg, feh) - LOG_PE_SUN
    neutral = THETA_TEMPER * (chi_ion - chi_exc - H_MINUS_EV) * dth
    ion = (THETA_TEMPER * ((PE_THETA_SLOPE - chi_exc - H_MINUS_EV) * dth - 2.5 * torch.log10(theta / THETA_SUN))
           - PE_LOGG_SLOPE * (logg - LOGG_SUN) - PE_FEH_SLOPE * feh)
    h_sun = log_neutral_h(torch.as_tensor(TEFF_SUN, dtype=theta.dtype),
                          torch.as_tensor(LOG_PE_SUN, dtype=theta.dtype))
    hydrogen = (BALMER_T_SLOPE * dth + log_neutral_h(teff, log_pe(theta, logg, feh)) - h_sun
                - (pe_rel - PE_THETA_SLOPE * (THETA_SUN - theta)))
    kind = torch.tensor([{"neutral": 0, "ion": 1, "hydrogen": 2}[s] for s in species], device=theta.device)
    metal = torch.where(kind == 0, neutral, ion) + _ionisation_saturation(elements, chi_ion, kind, theta, logg, feh)
    return torch.where(kind == 2, hydrogen, metal)


def _ionisation_saturation(elements: list[str], chi_ion: torch.Tensor, kind: torch.Tensor, theta: torch.Tensor,
                           logg: torch.Tensor, feh: torch.Tensor) -> torch.Tensor:
    """log10 of the factor 1 / (1 + N0/N+) relative to the Sun, (B, L): the slopes above assume the metal is mostly
    ionised (neutral lines: a minority; ion lines: the majority); where Saha's ratio S = N+/N0 (line-forming layer,
    ``LAYER_T_SUN`` tempered, model P_e, ``SAHA_ELEMENT``) nears 1 both lose that share. Neutral lines use their own
    ionisation energy, ion lines their element's."""
    d = dict(dtype=theta.dtype, device=theta.device)
    sah = [SAHA_ELEMENT.get(e, SAHA_ELEMENT["FE"]) for e in elements]
    chi = torch.where(kind == 0, chi_ion, torch.tensor([c for c, _ in sah], **d))
    log_2u = torch.tensor([u for _, u in sah], **d)

    def log_corr(th: torch.Tensor, pe_log: torch.Tensor) -> torch.Tensor:
        th_l = 5040.0 / LAYER_T_SUN + THETA_TEMPER * (th - THETA_SUN)
        log_s = log_2u + 2.5 * torch.log10(5040.0 / th_l) - chi * th_l - 0.1762 - pe_log
        return torch.nn.functional.softplus(-log_s * math.log(10.0)) / math.log(10.0)  # log10(1 + 1/S)

    sun = log_corr(torch.full_like(theta, THETA_SUN), torch.full_like(theta, LOG_PE_SUN))
    return sun - log_corr(theta, log_pe(theta, logg, feh))


def _abundance(labels: torch.Tensor, elements: list[str]) -> torch.Tensor:
    """[X/H] (B, L) of each line's element; hydrogen 0, metals without their own label follow [Fe/H]."""
    feh = labels[:, label_index("FE_H"), None]
    cols = [ELEMENT_LABEL.get(e) for e in elements]
    idx = torch.tensor([label_index(c) if c else 0 for c in cols], device=labels.device)
    has = torch.tensor([c is not None for c in cols], device=labels.device)
    xfe = torch.where(has, labels[:, idx], torch.zeros_like(labels[:, idx]))
    is_h = torch.tensor([e == "H" for e in elements], device=labels.device)
    return torch.where(is_h, torch.zeros_like(xfe), feh + xfe)


def _doppler_kms(teff: torch.Tensor, logg: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(VTH_COEF**2 * teff / mass + microturbulence(logg) ** 2)
