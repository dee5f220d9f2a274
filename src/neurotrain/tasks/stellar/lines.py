"""The spectral features of FGKM stars that carry the labels, at LAMOST resolution.

One table serves the generator (which line responds to which label), the figures (lines marked on
spectra) and the feature-importance report (important regions named by the features they hold).

Wavelengths are laboratory air wavelengths in Angstrom (NIST Atomic Spectra Database; TiO band heads
and the CH G band from Pickles 1998, PASP 110, 863, and Gray & Corbally 2009, "Stellar Spectral
Classification", ch. 2 and 8), converted to vacuum by :func:`air_to_vacuum` because LAMOST wavelengths
are vacuum. Bands have a width: TiO absorbs redward of its head, CN and MgH blueward of theirs.

It also holds the line-profile shapes at resolving power R used by ``synth.py``: the Gaussian line-spread function
(FWHM lambda / R) and the pseudo-Voigt (Ida, Ando & Toraya 2000).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class Feature:
    """One line or band. ``labels``: the labels its strength responds to; ``width_aa``: the band's extent
    (0 for a line, whose width is the LSF and its own wings); ``kind``: ``line``, ``band`` or ``telluric``."""

    name: str
    air_aa: float
    labels: tuple[str, ...]
    kind: str = "line"
    width_aa: float = 0.0

    @property
    def vacuum_aa(self) -> float:
        return float(air_to_vacuum(np.asarray(self.air_aa)))

    @property
    def span_vacuum(self) -> tuple[float, float]:
        """Vacuum wavelength range the feature occupies (a band extends redward of its head)."""
        c = self.vacuum_aa
        if self.kind == "line":
            return (c, c)
        if self.name.startswith("TiO"):
            return (c, c + self.width_aa)
        if self.name.startswith(("CN", "MgH")):  # heads degrading blueward
            return (c - self.width_aa, c)
        return (c - self.width_aa / 2, c + self.width_aa / 2)


FEATURES: tuple[Feature, ...] = (
    Feature("Fe I 3820", 3820.43, ("FE_H", "TEFF")),
    Feature("Fe I 3826", 3825.88, ("FE_H", "TEFF")),
    Feature("Mg I 3829", 3829.36, ("MG_FE", "FE_H")),
    Feature("Mg I 3832", 3832.30, ("MG_FE", "FE_H")),
    Feature("Mg I 3838", 3838.29, ("MG_FE", "FE_H")),
    Feature("Fe I 3856", 3856.37, ("FE_H", "TEFF")),
    Feature("Fe I 3860", 3859.91, ("FE_H", "TEFF")),
    Feature("CN 3883", 3883.0, ("C_FE", "FE_H", "TEFF"), "band", 40.0),
    Feature("Fe I 3886", 3886.28, ("FE_H", "TEFF")),
    Feature("Ca II K", 3933.66, ("CA_FE", "FE_H", "TEFF")),
    Feature("Ca II H", 3968.47, ("CA_FE", "FE_H", "TEFF")),
    Feature("H epsilon", 3970.07, ("TEFF",)),
    Feature("Fe I 4046", 4045.81, ("FE_H",)),
    Feature("Sr II 4077", 4077.71, ("LOGG", "FE_H")),
    Feature("H delta", 4101.73, ("TEFF", "LOGG")),
    Feature("CN 4216", 4216.0, ("C_FE", "FE_H", "TEFF"), "band", 40.0),
    Feature("Ca I 4227", 4226.73, ("CA_FE", "TEFF", "LOGG")),
    Feature("Fe I 4260", 4260.47, ("FE_H",)),
    Feature("Fe I 4272", 4271.76, ("FE_H", "TEFF")),
    Feature("CH G band", 4304.0, ("C_FE", "TEFF"), "band", 30.0),
    Feature("Fe I 4325", 4325.76, ("FE_H",)),
    Feature("H gamma", 4340.46, ("TEFF", "LOGG")),
    Feature("Fe I 4384", 4383.55, ("FE_H",)),
    Feature("Fe I 4405", 4404.75, ("FE_H", "TEFF")),
    Feature("Ba II 4554", 4554.03, ("LOGG", "FE_H")),
    Feature("H beta", 4861.33, ("TEFF", "LOGG")),
    Feature("Fe II 4924", 4923.93, ("LOGG", "FE_H")),
    Feature("TiO 4955", 4954.6, ("TEFF", "TI_FE", "LOGG"), "band", 80.0),
    Feature("Fe II 5018", 5018.44, ("LOGG", "FE_H")),
    Feature("Mg b 5167", 5167.32, ("MG_FE", "LOGG", "FE_H")),
    Feature("Mg b 5173", 5172.68, ("MG_FE", "LOGG", "FE_H")),
    Feature("Mg b 5184", 5183.60, ("MG_FE", "LOGG", "FE_H")),
    Feature("MgH 5211", 5211.0, ("TEFF", "LOGG", "MG_FE"), "band", 150.0),
    Feature("Fe I 5270", 5269.54, ("FE_H",)),
    Feature("Fe I 5328", 5328.04, ("FE_H",)),
    Feature("Fe I 5406", 5405.77, ("FE_H",)),
    Feature("TiO 5448", 5448.0, ("TEFF", "TI_FE"), "band", 100.0),
    Feature("Mg I 5528", 5528.40, ("MG_FE", "FE_H")),
    Feature("Na D2", 5889.95, ("NA_FE", "LOGG", "FE_H")),
    Feature("Na D1", 5895.92, ("NA_FE", "LOGG", "FE_H")),
    Feature("TiO 6159", 6158.0, ("TEFF", "TI_FE"), "band", 100.0),
    Feature("Ca I 6162", 6162.17, ("CA_FE", "LOGG")),
    Feature("Fe I 6495", 6494.98, ("FE_H",)),
    Feature("H alpha", 6562.79, ("TEFF",)),
    Feature("TiO 7054", 7054.0, ("TEFF", "TI_FE"), "band", 120.0),
    Feature("K I 7699", 7698.96, ("LOGG", "TEFF")),
    Feature("Na I 8183", 8183.26, ("LOGG", "NA_FE")),
    Feature("Na I 8195", 8194.82, ("LOGG", "NA_FE")),
    Feature("Ca II 8498", 8498.02, ("CA_FE", "LOGG", "FE_H")),
    Feature("Ca II 8542", 8542.09, ("CA_FE", "LOGG", "FE_H")),
    Feature("Ca II 8662", 8662.14, ("CA_FE", "LOGG", "FE_H")),
    Feature("O2 B band", 6875.0, (), "telluric", 30.0),
    Feature("O2 A band", 7605.0, (), "telluric", 40.0),
    Feature("H2O 7250", 7250.0, (), "telluric", 180.0),
)

#: the few features a person wants marked on every spectrum figure
MAIN_LINES: tuple[str, ...] = (
    "Ca II K", "Ca II H", "H delta", "CH G band", "H gamma", "H beta", "Mg b 5173", "Na D2", "H alpha",
    "Ca II 8542",
)


def air_to_vacuum(air_aa: np.ndarray) -> np.ndarray:
    """Air -> vacuum wavelength (Angstrom), the IAU standard of Morton (2000, ApJS 130, 403), eq. 3,
    iterated once on the vacuum wavenumber; good to 0.01 A over 3000-10000 A."""
    air = np.asarray(air_aa, dtype=np.float64)
    vac = air.copy()
    for _ in range(2):
        s2 = (1e4 / vac) ** 2
        n = 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)
        vac = air * n
    return vac


def vacuum_to_air(vac_aa: np.ndarray) -> np.ndarray:
    """Vacuum -> air wavelength (Angstrom), Morton (2000) eq. 3."""
    vac = np.asarray(vac_aa, dtype=np.float64)
    s2 = (1e4 / vac) ** 2
    n = 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)
    return vac / n


def feature(name: str) -> Feature:
    """The feature of that name (``KeyError`` names the known ones)."""
    for f in FEATURES:
        if f.name == name:
            return f
    raise KeyError(f"unknown spectral feature {name!r} (known: {', '.join(f.name for f in FEATURES)})")


def features_in(lo_aa: float, hi_aa: float, pad_aa: float = 0.0) -> list[Feature]:
    """Features whose vacuum span overlaps [lo - pad, hi + pad] Angstrom, bluest first."""
    out = []
    for f in FEATURES:
        a, b = f.span_vacuum
        if b >= lo_aa - pad_aa and a <= hi_aa + pad_aa:
            out.append(f)
    return sorted(out, key=lambda f: f.span_vacuum[0])


def lsf_sigma(wave: torch.Tensor, resolution: float) -> torch.Tensor:
    """Gaussian LSF sigma (A) at wavelength ``wave`` for resolving power R (FWHM = lambda / R)."""
    return wave / (resolution * FWHM_PER_SIGMA)


def gauss(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Unit-area Gaussian of ``sigma`` (A) at offsets ``x`` (A)."""
    return torch.exp(-0.5 * (x / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def pseudo_voigt(x: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Unit-area pseudo-Voigt of Gaussian sigma and Lorentzian HWHM gamma (Ida, Ando & Toraya 2000)."""
    fg, fl = FWHM_PER_SIGMA * sigma, 2.0 * gamma
    f = (fg**5 + 2.69269 * fg**4 * fl + 2.42843 * fg**3 * fl**2 + 4.47163 * fg**2 * fl**3
         + 0.07842 * fg * fl**4 + fl**5) ** 0.2
    r = fl / f
    eta = (1.36603 * r - 0.47719 * r * r + 0.11116 * r**3).clamp(0.0, 1.0)
    hw = f / 2
    return eta * hw / (math.pi * (x * x + hw * hw)) + (1 - eta) * gauss(x, f / FWHM_PER_SIGMA)
