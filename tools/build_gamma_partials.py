"""Generate the gamma simulator's photon scattering partials ``src/neurotrain/tasks/gamma/data/scattering_partials.csv``.

Per element of ``physics.MATERIALS`` and energy on a log grid from 10 keV to 10 MeV (``POINTS_PER_DECADE``
per decade, plus the table end ``XRAYLIB_MAX_KEV``), the file holds the coherent (Rayleigh) and incoherent
(Compton, bound electrons) mass cross sections in cm^2/g.

Source up to ``XRAYLIB_MAX_KEV`` = 800 keV: xraylib 4.3.0 ``CS_Rayl`` / ``CS_Compt`` (T. Schoonjans et al.,
Spectrochim. Acta B 66, 776 (2011)). These functions interpolate the cross-section tables of W. T. Elam,
B. D. Ravel and J. R. Sieber, Radiat. Phys. Chem. 63, 121 (2002) (tabulated 100 eV - 800 keV; xraylib's
values equal xraydb's ``mu_elam(..., 'coh' / 'incoh')`` to all printed digits, checked with xraydb 4.5.8).
The incoherent cross section there includes the incoherent scattering function S(x, Z) (electron binding),
which is what makes it smaller than the free-electron Klein-Nishina value at low energy.

Above 800 keV (no table): stated extrapolation laws, anchored on the 800 keV table value of each element:

* coherent: sigma_coh(E) = sigma_coh(800) x (800 / E)^2 (the high-energy form-factor limit; the table's own
  log slope between 600 and 800 keV is 1.93-2.00 for these elements);
* incoherent: sigma_inc(E) = sigma_KN(E) Z N_A / A x [1 - d(800) (800 / E)^n], with d = 1 - sigma_inc /
  (sigma_KN Z N_A / A) the binding deficit (0.0002 for O to 0.011 for Pb at 800 keV) and n its log slope
  between 600 and 800 keV (clamped to 1-2): S(x, Z) -> Z, so the cross section tends to Klein-Nishina times
  the electrons per gram. sigma_KN: Klein & Nishina (1929), as ``physics.klein_nishina_sigma``.

Pair production has no offline tabulation here (xraylib stops at 800 keV and has none); the simulator keeps
deriving it from the NIST total (see ``physics.py``). Atomic weights A are xraylib's ``AtomicWeight`` (the
tables are per gram of that weight).

Run from the repository root in a scratch environment with xraylib::

    /tmp/venv_lib/bin/pip install xraylib==4.3.0      # or: pip install --target /tmp/xl xraylib==4.3.0
    PYTHONPATH=src /tmp/venv_lib/bin/python tools/build_gamma_partials.py [--check]

``--check`` writes nothing and exits 1 when the regenerated text differs from the present file.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import sys
from pathlib import Path

import xraylib

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "neurotrain" / "tasks" / "gamma" / "data" / "scattering_partials.csv"

#: last energy (keV) of xraylib's (Elam et al.'s) scattering tables.
XRAYLIB_MAX_KEV = 800.0
#: second anchor (keV) for the log slopes of the extrapolation.
SLOPE_ANCHOR_KEV = 600.0
POINTS_PER_DECADE = 20
E_MIN_KEV, E_MAX_KEV = 10.0, 10000.0
#: Elements of physics.MATERIALS (kept here so the tool needs neither torch nor neurotrain).
ELEMENTS = {"O": 8, "Na": 11, "Si": 14, "Fe": 26, "Ge": 32, "Br": 35, "Y": 39, "I": 53, "Cs": 55, "La": 57, "Lu": 71, "Pb": 82}

ME_C2 = 510.99895  # keV (CODATA 2018)
R_E = 2.8179403262e-13  # cm (CODATA 2018)
N_A = 6.02214076e23  # 1/mol


def klein_nishina(e_kev: float) -> float:
    """Klein-Nishina total cross section per free electron, cm^2 (Evans 1955, eq. 23.3.1)."""
    k = e_kev / ME_C2
    l2k = math.log1p(2 * k)
    term = (1 + k) / k**2 * (2 * (1 + k) / (1 + 2 * k) - l2k / k) + l2k / (2 * k) - (1 + 3 * k) / (1 + 2 * k) ** 2
    return 2 * math.pi * R_E**2 * term


def energy_grid() -> list[float]:
    n = round(math.log10(E_MAX_KEV / E_MIN_KEV) * POINTS_PER_DECADE)
    grid = {round(E_MIN_KEV * 10 ** (i / POINTS_PER_DECADE), 6) for i in range(n + 1)}
    grid.add(XRAYLIB_MAX_KEV)
    return sorted(grid)


def partials(z: int, e_kev: float) -> tuple[float, float, str]:
    """(coherent, incoherent) in cm^2/g and the source tag of one element at one energy."""
    if e_kev <= XRAYLIB_MAX_KEV:
        return xraylib.CS_Rayl(z, e_kev), xraylib.CS_Compt(z, e_kev), "xraylib"
    per_gram = z * N_A / xraylib.AtomicWeight(z)
    coh = xraylib.CS_Rayl(z, XRAYLIB_MAX_KEV) * (XRAYLIB_MAX_KEV / e_kev) ** 2

    def deficit(e: float) -> float:
        return 1.0 - xraylib.CS_Compt(z, e) / (klein_nishina(e) * per_gram)

    d_hi, d_lo = deficit(XRAYLIB_MAX_KEV), deficit(SLOPE_ANCHOR_KEV)
    n = math.log(d_lo / d_hi) / math.log(XRAYLIB_MAX_KEV / SLOPE_ANCHOR_KEV) if d_hi > 0 and d_lo > d_hi else 1.0
    n = min(max(n, 1.0), 2.0)
    inc = klein_nishina(e_kev) * per_gram * (1.0 - max(d_hi, 0.0) * (XRAYLIB_MAX_KEV / e_kev) ** n)
    return coh, inc, "extrapolated"


def render() -> str:
    version = importlib.metadata.version("xraylib")
    head = [
        "# Coherent (Rayleigh) and incoherent (Compton, bound electrons) mass cross sections of the gamma simulator's elements.",
        f"# Made by tools/build_gamma_partials.py with xraylib {version} (Schoonjans et al., Spectrochim. Acta B 66, 776 (2011)).",
        "# source=xraylib: CS_Rayl / CS_Compt, i.e. the tables of Elam, Ravel & Sieber, Radiat. Phys. Chem. 63, 121 (2002),",
        "#   whose incoherent cross section includes the incoherent scattering function S(x,Z) (electron binding).",
        f"# source=extrapolated (above {XRAYLIB_MAX_KEV:g} keV): coherent ~ E^-2 from the {XRAYLIB_MAX_KEV:g} keV value;",
        "#   incoherent = Klein-Nishina x Z N_A / A x (1 - d (800/E)^n), d the binding deficit at 800 keV, n its 600-800 keV slope.",
        "# Pair production is not tabulated here (no offline source); physics.py derives it from the NIST total.",
        "# Columns: Z, symbol, photon energy (keV), coherent (cm2/g), incoherent (cm2/g), source",
        "Z,symbol,energy_keV,coherent_cm2_g,incoherent_cm2_g,source",
    ]
    rows = []
    for sym, z in ELEMENTS.items():
        for e in energy_grid():
            coh, inc, src = partials(z, e)
            rows.append(f"{z},{sym},{e:g},{coh:.5e},{inc:.5e},{src}")
    return "\n".join(head + rows) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report whether the file is up to date, do not write")
    ap.add_argument("--output", type=Path, default=OUT)
    args = ap.parse_args()
    text = render()
    if args.check:
        old = args.output.read_text("utf-8") if args.output.is_file() else ""
        same = old == text
        print(f"{args.output}: {'up to date' if same else 'differs from the regenerated text'}")
        return 0 if same else 1
    tmp = args.output.with_suffix(".csv.tmp")
    tmp.write_text(text, "utf-8")
    tmp.replace(args.output)
    print(f"wrote {args.output} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
