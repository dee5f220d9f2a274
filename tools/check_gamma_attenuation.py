"""Compare the gamma simulator's attenuation partials with an independent offline table.

``neurotrain.tasks.gamma.physics.element_partials`` takes the NIST XCOM total mu/rho, the shipped coherent
and incoherent cross sections (``data/scattering_partials.csv``, made from xraylib by
``tools/build_gamma_partials.py``) and gives photoabsorption / pair as the remainder. This script sets them
beside xraylib (T. Schoonjans et al., Spectrochim. Acta B 66, 776 (2011); its photo / Rayleigh / Compton
tables are those of W. T. Elam, B. D. Ravel and J. R. Sieber, Radiat. Phys. Chem. 63, 121 (2002)): the
photo column checks the remainder against an independent photoionisation table (Scofield), the scattering
columns check that the shipped file is read and interpolated right. xraylib stops at 800 keV and has no pair
production, so 1332 and 2614 keV are compared on nothing.

Run from the repository root with xraylib importable, e.g.::

    pip install --no-deps --target /tmp/xl xraylib==4.3.0
    PYTHONPATH=/tmp/xl .venv/bin/python tools/check_gamma_attenuation.py

Prints, per element and energy, physics.py's total / photo / coherent / incoherent / pair and the relative
differences (physics.py / xraylib - 1) of each against xraylib; then per crystal the photoabsorption share of
the interactions the transport samples (coherent is not tracked), photo / (total - coherent), against
xraylib's photo / (photo + incoherent).
"""

from __future__ import annotations

import argparse

import torch
import xraylib

from neurotrain.tasks.gamma import physics

ENERGIES_KEV = (30.0, 100.0, 300.0, 662.0, 1332.0, 2614.0)
ELEMENTS = ("Lu", "Y", "Si", "O", "Na", "I", "Cs", "La", "Br", "Ge", "Pb", "Fe")
XRAYLIB_MAX_KEV = 800.0


def rel(a: float, b: float) -> str:
    return f"{100.0 * (a / b - 1.0):+7.1f}%"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    tables = physics.element_tables()
    scatter = physics.scattering_tables()
    print(f"{'el':3s} {'E keV':>7s} {'total':>9s} {'photo':>9s} {'coh':>9s} {'incoh':>9s} {'pair':>9s} | "
          f"{'photo':>7s} {'coh':>7s} {'incoh':>7s} {'total':>7s}  (vs xraylib)")
    for sym in ELEMENTS:
        if sym not in tables or sym not in scatter:
            print(f"{sym:3s} not in data/attenuation_nist.csv / data/scattering_partials.csv (no table in physics.py)")
            continue
        z = tables[sym].z
        e = torch.tensor(ENERGIES_KEV, dtype=torch.float64)
        p = physics.element_partials(sym, e)
        for k, ek in enumerate(ENERGIES_KEV):
            tot, ph, coh, inc, pa = (float(p[n][k]) for n in ("total", "photo", "coherent", "incoherent", "pair"))
            line = f"{sym:3s} {ek:7.0f} {tot:9.4g} {ph:9.4g} {coh:9.4g} {inc:9.4g} {pa:9.4g} | "
            if ek <= XRAYLIB_MAX_KEV:
                x_ph, x_coh, x_inc = xraylib.CS_Photo(z, ek), xraylib.CS_Rayl(z, ek), xraylib.CS_Compt(z, ek)
                line += f"{rel(ph, x_ph)} {rel(coh, x_coh)} {rel(inc, x_inc)} {rel(tot, x_ph + x_coh + x_inc)}"
            else:
                line += "(xraylib: none above 800 keV, no pair)"
            print(line)
    print()
    print("Crystals (mixture rule, physics.mass_fractions): photoabsorption share of the sampled interactions,")
    print("physics.py photo/(total-coherent) vs xraylib photo/(photo+incoherent).")
    for mat in ("LYSO", "NaI", "CsI", "LaBr3"):
        fr = physics.mass_fractions(mat)
        for ek in [x for x in ENERGIES_KEV if x <= XRAYLIB_MAX_KEV] + [661.657]:
            e = torch.tensor([ek], dtype=torch.float64)
            ph = tot = coh = x_ph = x_inc = 0.0
            for sym, w in fr.items():
                p = physics.element_partials(sym, e)
                ph += w * float(p["photo"][0])
                tot += w * float(p["total"][0])
                coh += w * float(p["coherent"][0])
                z = tables[sym].z
                x_ph += w * xraylib.CS_Photo(z, ek)
                x_inc += w * xraylib.CS_Compt(z, ek)
            a, b = ph / (tot - coh), x_ph / (x_ph + x_inc)
            print(f"{mat:6s} {ek:8.3f} keV  physics {a:.4f}  xraylib {b:.4f}  {rel(a, b)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
