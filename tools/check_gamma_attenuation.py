"""Compare the gamma simulator's derived attenuation partials with an independent offline table.

``neurotrain.tasks.gamma.physics.element_partials`` splits the NIST XCOM total mu/rho into a Klein-Nishina
Compton part and a photoelectric(+coherent) / pair remainder. This script sets those beside the partial
cross sections of xraylib (T. Schoonjans et al., Spectrochim. Acta B 66, 776 (2011); its photo / Rayleigh /
Compton tables are those of W. T. Elam, B. D. Ravel and J. R. Sieber, Radiat. Phys. Chem. 63, 121 (2002):
Scofield photoionisation, Hubbell et al. coherent and incoherent scattering, the same theory XCOM uses).
xraylib stops at 800 keV and has no pair production, so 1332 and 2614 keV are compared on the total only.

Run from the repository root with xraylib importable, e.g.::

    pip install --no-deps --target /tmp/xl xraylib==4.3.0
    PYTHONPATH=/tmp/xl .venv/bin/python tools/check_gamma_attenuation.py

Prints, per element and energy, physics.py's total / photo / compton / pair and the relative differences
(physics.py / xraylib - 1) of photo vs xraylib photo + Rayleigh (physics.py lumps coherent into photo),
compton vs xraylib incoherent, and total vs xraylib total.
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
    print(f"{'el':3s} {'E keV':>7s} {'total':>9s} {'photo':>9s} {'compt':>9s} {'pair':>9s} | "
          f"{'photo vs ph+coh':>15s} {'compt vs incoh':>14s} {'total vs total':>14s}")
    for sym in ELEMENTS:
        if sym not in tables:
            print(f"{sym:3s} not in data/attenuation_nist.csv (physics.py has no table for it)")
            continue
        z = tables[sym].z
        e = torch.tensor(ENERGIES_KEV, dtype=torch.float64)
        p = physics.element_partials(sym, e)
        for k, ek in enumerate(ENERGIES_KEV):
            tot, ph, co, pa = (float(p[n][k]) for n in ("total", "photo", "compton", "pair"))
            line = f"{sym:3s} {ek:7.0f} {tot:9.4g} {ph:9.4g} {co:9.4g} {pa:9.4g} | "
            if ek <= XRAYLIB_MAX_KEV:
                x_ph, x_coh, x_inc = xraylib.CS_Photo(z, ek), xraylib.CS_Rayl(z, ek), xraylib.CS_Compt(z, ek)
                line += f"{rel(ph, x_ph + x_coh):>15s} {rel(co, x_inc):>14s} {rel(tot, x_ph + x_coh + x_inc):>14s}"
            else:
                line += f"{'(xraylib: none above 800 keV, no pair)':>45s}"
            print(line)
    print()
    print("Crystals (mixture rule, physics.mass_fractions): photoabsorption share of all interactions,")
    print("physics.py photo/total vs xraylib photo/(photo+coherent+incoherent) and photo/(photo+incoherent).")
    for mat in ("LYSO", "NaI", "CsI", "LaBr3"):
        fr = physics.mass_fractions(mat)
        for ek in [x for x in ENERGIES_KEV if x <= XRAYLIB_MAX_KEV]:
            e = torch.tensor([ek], dtype=torch.float64)
            ph = tot = x_ph = x_coh = x_inc = 0.0
            for sym, w in fr.items():
                p = physics.element_partials(sym, e)
                ph += w * float(p["photo"][0])
                tot += w * float(p["total"][0])
                z = tables[sym].z
                x_ph += w * xraylib.CS_Photo(z, ek)
                x_coh += w * xraylib.CS_Rayl(z, ek)
                x_inc += w * xraylib.CS_Compt(z, ek)
            print(f"{mat:6s} {ek:5.0f} keV  physics {ph / tot:.4f}  xraylib {x_ph / (x_ph + x_coh + x_inc):.4f}"
                  f"  xraylib without coherent {x_ph / (x_ph + x_inc):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
