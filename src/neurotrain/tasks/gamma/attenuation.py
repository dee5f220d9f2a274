"""Photon interaction data of the gamma task: attenuation partials per element and material tables.

(The Monte Carlo transport that uses them is ``physics.py``, which re-exports these names.)

Units: energies in keV, lengths in cm, densities in g/cm^3, mass attenuation in cm^2/g, linear
attenuation in 1/cm.

Data and physics (sources):

* Total mass attenuation mu/rho of the elements: NIST SRD 126 (Hubbell & Seltzer; values computed by NIST
  with the XCOM cross sections), shipped in ``data/attenuation_nist.csv``. Compounds by the mixture rule
  mu/rho = sum_i w_i (mu/rho)_i (Hubbell & Seltzer, section 2).
* Coherent (Rayleigh) and incoherent (Compton on bound electrons, with the incoherent scattering function
  S(x, Z)) parts: ``data/scattering_partials.csv``, made by ``tools/build_gamma_partials.py`` from xraylib 4.3.0
  ``CS_Rayl`` / ``CS_Compt`` = the tables of Elam, Ravel & Sieber, Radiat. Phys. Chem. 63, 121 (2002), up to
  800 keV; above, coherent ~ E^-2 and incoherent -> Klein-Nishina (Klein & Nishina 1929; Evans, "The Atomic
  Nucleus", 1955, ch. 23) x Z N_A / A as S(x, Z) -> Z (the laws are in the file header and the tool).
* Photoabsorption and pair parts: the remainder mu - coherent - incoherent, formed at the NIST energies and
  interpolated log-log itself (the total is then the sum of the parts). Below the pair threshold
  2 m_e c^2 = 1022 keV the remainder is photoabsorption. Above, the photoelectric part is continued as a power
  law fitted to the remainder at 600 and 1000 keV, and pair production is what is left (no offline pair
  table is shipped). The K-shell share of photoabsorption is (J-1)/J with J the K-edge jump ratio of the
  NIST table.
* Coherent scattering is not tracked: it deposits no energy and at these energies turns photons mostly by
  small angles, so its cross section is left out of the interaction probabilities (photons fly through as if
  it did not exist) - the common Monte Carlo simplification of EGS4's default (IRAYLR = 0) and MCNP's
  PHYS:P NOCOH option.
* The incoherent cross section sets how often a photon Compton-scatters; the angle and energy of the scatter
  are sampled from the free-electron Klein-Nishina distribution (binding and Doppler broadening of the
  angular distribution are neglected).
* K x-rays and fluorescence yields: X-ray Data Booklet (LBNL, 3rd ed. 2009, Tables 1-2 and 1-3; yields after
  Krause, J. Phys. Chem. Ref. Data 8, 307 (1979)).
* Compton angles: Klein-Nishina sampled with the Butcher & Messel (1960) composition-rejection scheme
  (as in EGS4 / Geant4's G4KleinNishinaCompton).
* Crystal densities: Saint-Gobain Crystals datasheets (PreLude 420 LYSO 7.1, NaI(Tl) 3.67, CsI(Tl) 4.51,
  BrilLanCe 380 LaBr3(Ce) 5.08 g/cm^3); LYSO stoichiometry Lu1.8Y0.2SiO5. Germanium 5.323 g/cm^3 (CRC Handbook
  of Chemistry and Physics, section 4); its mu/rho from NIST SRD 126 Table 3 (Z = 32), its coherent and
  incoherent parts from xraylib like the other elements.
* Germanium K x-rays: Ka1 9.886 / Ka2 9.855 keV (intensity-weighted mean 9.876 keV), Kb1 10.982 keV (X-ray Data
  Booklet Table 1-2); K fluorescence yield 0.535 (Krause 1979); K-beta share 0.12 of K x-rays (Kb/Ka = 0.136,
  Scofield, At. Data Nucl. Data Tables 14, 121 (1974)). They make the escape lines at E - 9.9 / E - 11.0 keV.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch

ME_C2 = 510.99895  # electron rest energy, keV (CODATA 2018)
R_E = 2.8179403262e-13  # classical electron radius, cm (CODATA 2018)
N_A = 6.02214076e23  # Avogadro constant, 1/mol

#: Crystal (and slab) compositions as atoms per formula unit, and densities in g/cm^3.
MATERIALS: dict[str, tuple[dict[str, float], float]] = {
    "LYSO": ({"Lu": 1.8, "Y": 0.2, "Si": 1.0, "O": 5.0}, 7.1),
    "NaI": ({"Na": 1.0, "I": 1.0}, 3.67),
    "CsI": ({"Cs": 1.0, "I": 1.0}, 4.51),
    "LaBr3": ({"La": 1.0, "Br": 3.0}, 5.08),
    "Pb": ({"Pb": 1.0}, 11.35),
    "Fe": ({"Fe": 1.0}, 7.874),
    "Ge": ({"Ge": 1.0}, 5.323),
}

#: K x-ray data per element: (K-alpha mean energy keV, K-beta energy keV, K-beta share, fluorescence yield).
#: X-ray Data Booklet (LBNL 2009) Table 1-2 energies (K-alpha as the intensity-weighted mean of Ka1/Ka2),
#: yields from Krause (1979).
K_XRAYS: dict[str, tuple[float, float, float, float]] = {
    "Ge": (9.876, 10.982, 0.12, 0.535),
    "Br": (11.91, 13.29, 0.13, 0.618),
    "Y": (14.93, 16.74, 0.15, 0.710),
    "I": (28.51, 32.29, 0.18, 0.884),
    "Cs": (30.85, 34.99, 0.19, 0.895),
    "La": (33.30, 37.80, 0.19, 0.901),
    "Lu": (53.71, 61.28, 0.22, 0.950),
    "Pb": (74.24, 84.94, 0.22, 0.963),
}

#: Mass number weights (g/mol) are read from the data file; Z per symbol:
Z_OF = {"O": 8, "Na": 11, "Si": 14, "Fe": 26, "Ge": 32, "Br": 35, "Y": 39, "I": 53, "Cs": 55, "La": 57, "Lu": 71, "Pb": 82}


#: Version of the transport physics and data decomposition; part of the response cache key (with the data
#: file hash of :func:`data_fingerprint`), so that a change rebuilds cached responses.
PHYSICS_VERSION = 3
DATA_FILES = ("attenuation_nist.csv", "scattering_partials.csv")


@dataclass(frozen=True)
class ElementTable:
    symbol: str
    z: int
    weight: float
    energy: tuple[float, ...]  # keV, edges repeated
    mu_rho: tuple[float, ...]  # cm^2/g


@dataclass(frozen=True)
class ScatteringTable:
    symbol: str
    energy: tuple[float, ...]  # keV, increasing
    coherent: tuple[float, ...]  # cm^2/g
    incoherent: tuple[float, ...]  # cm^2/g


def _data_text(name: str) -> str:
    return resources.files("neurotrain.tasks.gamma.data").joinpath(name).read_text("utf-8")


@lru_cache(maxsize=1)
def data_fingerprint() -> str:
    """SHA-256 (16 hex digits) of the shipped photon data files, for cache keys."""
    h = hashlib.sha256()
    for name in DATA_FILES:
        h.update(name.encode())
        h.update(_data_text(name).encode())
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def element_tables() -> dict[str, ElementTable]:
    """Read ``data/attenuation_nist.csv`` (NIST SRD 126) into one table per element."""
    rows: dict[str, list[tuple[float, float]]] = {}
    meta: dict[str, tuple[int, float]] = {}
    for line in _data_text("attenuation_nist.csv").splitlines():
        if not line or line.startswith("#") or line.startswith("Z,"):
            continue
        z, sym, aw, e, mu, _ = line.split(",")
        rows.setdefault(sym, []).append((float(e), float(mu)))
        meta[sym] = (int(z), float(aw))
    return {
        s: ElementTable(s, meta[s][0], meta[s][1], tuple(r[0] for r in v), tuple(r[1] for r in v))
        for s, v in rows.items()
    }


@lru_cache(maxsize=1)
def scattering_tables() -> dict[str, ScatteringTable]:
    """Read ``data/scattering_partials.csv`` (coherent / incoherent, see the module docstring) per element."""
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for line in _data_text("scattering_partials.csv").splitlines():
        if not line or line.startswith("#") or line.startswith("Z,"):
            continue
        _z, sym, e, coh, inc, _src = line.split(",")
        rows.setdefault(sym, []).append((float(e), float(coh), float(inc)))
    return {
        s: ScatteringTable(s, tuple(r[0] for r in v), tuple(r[1] for r in v), tuple(r[2] for r in v))
        for s, v in rows.items()
    }


def klein_nishina_sigma(energy_kev: torch.Tensor) -> torch.Tensor:
    """Klein-Nishina total cross section per electron, cm^2 (Evans 1955, eq. 23.3.1)."""
    k = energy_kev / ME_C2
    l2k = torch.log1p(2 * k)
    term = (1 + k) / k**2 * (2 * (1 + k) / (1 + 2 * k) - l2k / k) + l2k / (2 * k) - (1 + 3 * k) / (1 + 2 * k) ** 2
    return 2 * math.pi * R_E**2 * term


def _loglog_interp(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Log-log interpolation of a table with repeated abscissae at absorption edges (right-continuous)."""
    idx = torch.searchsorted(xs, x, right=True).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
    same = x1 <= x0
    t = torch.where(same, torch.zeros_like(x), torch.log(x / x0) / torch.log(x1 / x0).clamp_min(1e-12))
    return torch.exp(torch.log(y0) + t * (torch.log(y1) - torch.log(y0)))


def element_partials(symbol: str, energy: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mass attenuation partials (cm^2/g) of one element at ``energy`` (keV, float64 tensor).

    Returns ``total`` (NIST), ``coherent`` and ``incoherent`` (tabulated), ``photo`` and ``pair`` (the rest),
    and ``k_share`` (K-shell share of photoabsorption, zero below the K edge); see the module docstring.
    ``photo + coherent + incoherent + pair == total``.
    """
    t = element_tables()[symbol]
    sc = scattering_tables()[symbol]
    xs = torch.tensor(t.energy, dtype=torch.float64)
    ys = torch.tensor(t.mu_rho, dtype=torch.float64)
    es = torch.tensor(sc.energy, dtype=torch.float64)
    coh_tab = torch.tensor(sc.coherent, dtype=torch.float64)
    inc_tab = torch.tensor(sc.incoherent, dtype=torch.float64)

    def scatter(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _loglog_interp(e, es, coh_tab), _loglog_interp(e, es, inc_tab)

    # The remainder is split off at the NIST nodes, where the total is exact, and interpolated itself: it is a
    # small difference of large numbers above ~500 keV, so subtracting interpolated scattering from an
    # interpolated total would put the interpolation error of the total (a few % of photo at 662 keV) into it.
    coh_n, inc_n = scatter(xs)
    rest_n = (ys - coh_n - inc_n).clamp_min(1e-12)
    coherent, incoherent = scatter(energy)
    rest = _loglog_interp(energy, xs, rest_n)
    total = rest + coherent + incoherent
    # photoelectric power law above 1 MeV, anchored on the remainder at 600 and 1000 keV (NIST nodes)
    anchor = torch.tensor([600.0, 1000.0], dtype=torch.float64)
    ra = _loglog_interp(anchor, xs, rest_n)
    slope = float(torch.log(ra[0] / ra[1]) / math.log(1000.0 / 600.0))
    slope = min(max(slope, 1.0), 3.5)
    photo_hi = ra[1] * (energy / 1000.0) ** (-slope)
    above = energy > 2 * ME_C2
    photo = torch.where(above, torch.minimum(photo_hi, rest), rest)
    pair = torch.where(above, rest - photo, torch.zeros_like(rest))
    # K-shell share from the jump ratio at the K edge (the repeated energy with the largest jump)
    k_share = torch.zeros_like(energy)
    if symbol in K_XRAYS:
        e_arr, mu_arr = list(t.energy), list(t.mu_rho)
        best, edge = 0.0, 0.0
        for i in range(1, len(e_arr)):
            if e_arr[i] == e_arr[i - 1] and mu_arr[i] / mu_arr[i - 1] > best:
                best, edge = mu_arr[i] / mu_arr[i - 1], e_arr[i]
        if best > 1.0:
            k_share = torch.where(energy >= edge, torch.full_like(energy, (best - 1.0) / best), k_share)
        elif t.energy[0] > 0:
            # K edge below the tabulated range (Br, Y here): above it all photoabsorption is mostly K-shell;
            # use the hydrogenic-like 0.8 typical of mid-Z elements (Hubbell 1969, NSRDS-NBS 29, Table 5).
            k_share = torch.full_like(energy, 0.8)
    return {
        "total": total, "coherent": coherent, "incoherent": incoherent, "photo": photo, "pair": pair,
        "k_share": k_share,
    }


def mass_fractions(material: str) -> dict[str, float]:
    """Mass fractions of the elements of a material from its formula and the tabulated atomic weights."""
    formula, _ = MATERIALS[material]
    tables = element_tables()
    masses = {s: n * tables[s].weight for s, n in formula.items()}
    tot = sum(masses.values())
    return {s: m / tot for s, m in masses.items()}


@dataclass
class MaterialTable:
    """Linear attenuation (1/cm) of one material on a uniform log-energy grid, plus K-fluorescence data.

    ``mu`` has rows photo, compton (the incoherent cross section), pair - coherent scattering is left out (see the
    module docstring); ``kx_prob`` (J, G) is the probability that a photoabsorption at
    that energy emits a K x-ray of emitter ``j`` (element choice x K share x fluorescence yield).
    """

    name: str
    density: float
    log_e0: float
    dlog: float
    mu: torch.Tensor  # (3, G) photo, compton (incoherent), pair in 1/cm
    kx_prob: torch.Tensor  # (J, G)
    kx_alpha: torch.Tensor  # (J,) keV
    kx_beta: torch.Tensor  # (J,) keV
    kx_beta_share: torch.Tensor  # (J,)

    def to(self, device: torch.device) -> MaterialTable:
        return MaterialTable(
            self.name, self.density, self.log_e0, self.dlog, self.mu.to(device), self.kx_prob.to(device),
            self.kx_alpha.to(device), self.kx_beta.to(device), self.kx_beta_share.to(device),
        )

    def lookup(self, energy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear interpolation in log E: returns (mu_parts (3, n), kx_prob (J, n))."""
        pos = ((torch.log(energy.clamp(10.0, 9999.0)) - self.log_e0) / self.dlog).clamp(0, self.mu.shape[1] - 1.001)
        i0 = pos.floor().long()
        f = (pos - i0).to(self.mu.dtype)
        mu = self.mu[:, i0] * (1 - f) + self.mu[:, i0 + 1] * f
        kx = self.kx_prob[:, i0] * (1 - f) + self.kx_prob[:, i0 + 1] * f
        return mu, kx


def material_table(material: str, n_grid: int = 1200, e_min: float = 10.0, e_max: float = 10000.0) -> MaterialTable:
    """Build the :class:`MaterialTable` of a material (float32, CPU)."""
    if material not in MATERIALS:
        raise KeyError(material)
    _, density = MATERIALS[material]
    energy = torch.logspace(math.log10(e_min), math.log10(e_max), n_grid, dtype=torch.float64)
    fr = mass_fractions(material)
    photo = torch.zeros_like(energy)
    compton = torch.zeros_like(energy)
    pair = torch.zeros_like(energy)
    parts = {s: element_partials(s, energy) for s in fr}
    for s, w in fr.items():
        photo += w * parts[s]["photo"]
        compton += w * parts[s]["incoherent"]
        pair += w * parts[s]["pair"]
    emitters = [s for s in fr if s in K_XRAYS]
    kx = torch.stack(
        [fr[s] * parts[s]["photo"] / photo.clamp_min(1e-30) * parts[s]["k_share"] * K_XRAYS[s][3] for s in emitters]
    ) if emitters else torch.zeros(0, n_grid, dtype=torch.float64)
    mu = torch.stack([photo, compton, pair]) * density
    return MaterialTable(
        material, density, math.log(e_min), math.log(e_max / e_min) / (n_grid - 1), mu.float(), kx.float(),
        torch.tensor([K_XRAYS[s][0] for s in emitters]), torch.tensor([K_XRAYS[s][1] for s in emitters]),
        torch.tensor([K_XRAYS[s][2] for s in emitters]),
    )
