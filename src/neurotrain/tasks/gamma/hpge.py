"""The germanium detector of the ``hpge`` target: geometry, resolution law, response (keV, cm).

The target of ``simulate.target: hpge`` is the spectrum that this detector records of the same source as the
scintillator, made with the same photon transport (``physics.transport``) with germanium's own cross sections
(NIST SRD 126 / xraylib, ``data/``), so it has germanium's photofraction, Compton continuum, pair escapes and
Ge K x-ray escape lines at E - 9.88 and E - 10.98 keV, from its own Monte Carlo seed
(``simulate.response_seed + hpge.seed_offset``). It has no Lu-176 and no scintillator escape lines.

Crystal (``HPGeSection``): a p-type closed-end coaxial crystal, by default 60 mm diameter x 60 mm long with a
10 mm x 45 mm core bored from the back and a 0.7 mm lithium-diffused outer contact (front and side) that collects
no charge: 166 cm^3 sensitive, ~40 % relative efficiency by the rule of thumb relative efficiency ~ V / 4.3 cm^3
(Gilmore, "Practical Gamma-ray Spectrometry", 2nd ed. 2008). The transport itself gives 50 %
(:func:`relative_efficiency`): it leaves out electron escape, bremsstrahlung and the cryostat, which cost real
crystals full-energy events. The dead layer and core are insensitive germanium: photons are attenuated and
scattered there, electrons' energy there is not recorded. Peak-to-Compton (IEEE 325, Co-60) of the simulated
spectrum: 61-67 at 0.7-0.5 keV channels, against ~60 specified for 40 % coaxial detectors.

Resolution: FWHM^2 = noise^2 + 2.355^2 F w E + (c E)^2 (Knoll, "Radiation Detection and Measurement", 4th ed.,
sec. 12.IV: electronic noise, Fano statistics of the w = 2.96 eV pair creation energy at 77 K with F ~ 0.11-0.13,
incomplete charge collection ~ E). Defaults give 0.98 / 1.43 / 1.86 keV at 122 / 662 / 1332 keV.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from neurotrain.tasks.gamma.resolution import hpge_coefficients, hpge_fwhm
from neurotrain.tasks.gamma.response import Geometry, Response, get_response

FWHM_PER_SIGMA = 2.3548200450309493


def geometry(sim: Any) -> Geometry:
    """The germanium crystal of ``sim.hpge`` as a transport :class:`Geometry` (behind the same slab as the
    scintillator: the same lab bench)."""
    h, d = sim.hpge, sim.detector
    return Geometry(
        "HPGe", "Ge", h.diameter_mm / 20.0, h.length_mm / 10.0, d.slab_material, float(d.backscatter_fraction),
        int(sim.response_seed) + int(h.seed_offset), lu176=False, dead_layer_cm=h.dead_layer_mm / 10.0,
        core_radius_cm=h.core_diameter_mm / 20.0, core_depth_cm=h.core_depth_mm / 10.0, photons=h.response_photons,
    )


def fwhm_coefficients(h: Any) -> tuple[float, float, float]:
    """(a, b, c) of FWHM^2 = a + b E + c E^2 (keV^2, keV, 1) of the germanium law of ``h`` (HPGeSection):
    a = noise^2, b = 2.355^2 F w, c = (charge-collection coefficient)^2."""
    b = FWHM_PER_SIGMA**2 * h.fano * h.pair_energy_ev * 1e-3
    return float(h.noise_fwhm_kev) ** 2, b, float(h.charge_collection) ** 2


def target_fwhm_coefficients(sim: Any) -> tuple[float, float, float]:
    """The FWHM law of the target detector (for :func:`resolution.hpge_fwhm`): the germanium law with
    ``target: hpge``, the ``hpge_fwhm_anchors`` fit with ``target: resolution_only``."""
    if getattr(sim, "target", "resolution_only") == "hpge":
        return fwhm_coefficients(sim.hpge)
    return hpge_coefficients(sim.hpge_fwhm_anchors)


def target_fwhm(energy: torch.Tensor, sim: Any) -> torch.Tensor:
    """FWHM (keV) of the target detector at ``energy`` (keV)."""
    return hpge_fwhm(energy, target_fwhm_coefficients(sim))


def get_hpge_response(sim: Any, device: torch.device | None = None) -> Response:
    """The germanium detector's response (memory / disk cache / Monte Carlo, as ``response.get_response``)."""
    return get_response(sim, device, geometry(sim))


def solid_angle_fraction(distance_cm: float, radius_cm: float) -> float:
    """Omega / 4 pi of a disk of ``radius_cm`` seen from a point on its axis at ``distance_cm``:
    (1 - d / sqrt(d^2 + R^2)) / 2."""
    return 0.5 * (1.0 - distance_cm / math.sqrt(distance_cm**2 + radius_cm**2))


#: full-energy efficiency of a 3" x 3" NaI(Tl) for 1332.5 keV photons of a point source at 25 cm on its axis, the
#: denominator of the relative efficiency (IEEE Std 325-1996; Knoll, 4th ed., sec. 12.V)
NAI_3X3_EFFICIENCY_1332_25CM = 1.2e-3


def relative_efficiency(resp: Response, radius_cm: float, distance_cm: float = 25.0) -> float:
    """IEEE 325 relative efficiency of the detector of ``resp`` (front-face radius ``radius_cm``): full-energy
    probability at 1332.5 keV x the solid-angle fraction at ``distance_cm`` / 1.2e-3. Within the response's
    parallel-beam model (photons enter the front face only), so a slight underestimate for a real point source."""
    i = int(torch.argmin((resp.incident - 1332.5).abs()))
    return float(resp.full_energy[i]) * solid_angle_fraction(distance_cm, radius_cm) / NAI_3X3_EFFICIENCY_1332_25CM
