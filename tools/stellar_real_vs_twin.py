"""Real LAMOST spectra against their generator twins drawn at the real spectra's own S/N (docs/results/stellar.md,
"Fifth session"): mean normalised flux per wavelength bin and the per-pixel S/N profile, by spectral group.

    python tools/stellar_real_vs_twin.py [FOLDER] [DRAWS]     (default: ../shared/realdata/stellar, 8)

Each real spectrum (reader + default preprocessing) gets DRAWS twins: a dwarf at the Teff of its LAMOST subclass
(Pecaut & Mamajek 2013), [Fe/H] 0, rest frame, no flux-calibration error or tellurics, at the real spectrum's S/N
(median flux x sqrt(ivar) over 4500-5500 A), through the same preprocessing; the twin's value is the median over
the draws. Pixels without data (ivar 0) are left out on both sides. Printed: (1) mean normalised flux per bin, real /
twin, median per group; (2) median per-pixel S/N in a band over that in 4500-5500 A, real / twin.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "tasks" / "stellar"))

import test_real_gap as gap  # noqa: E402

from neurotrain.tasks.stellar import preprocess as P  # noqa: E402
from neurotrain.tasks.stellar import simulate as S  # noqa: E402
from neurotrain.tasks.stellar.config import GENERATOR_LABELS, PreprocessSection, SimulateSection  # noqa: E402

#: flux bins (rest vacuum A): 50 A in the blue where the gap was, wider further red
EDGES = (*range(3850, 4600, 50), *range(4600, 5400, 100), 5400, 6000, 6500, 7000, 8000, 9000)
SN_BANDS = {"3850-3900": (3850, 3900), "3900-3950": (3900, 3950), "4000-4100": (4000, 4100),
            "4200-4300": (4200, 4300), "4400-4500": (4400, 4500), "6000-6500": (6000, 6500), "8000-8500": (8000, 8500)}
SN_REF = (4500.0, 5500.0)


def groups(teff: np.ndarray) -> dict[str, np.ndarray]:
    return {"F": teff >= 6000, "G": (teff < 6000) & (teff >= 5270), "K0-K4": (teff < 5270) & (teff >= 4500),
            "K5-K7": teff < 4500}


def main(folder: str = str(REPO.parent / "shared" / "realdata" / "stellar"), draws: str = "8") -> None:
    warnings.simplefilter("ignore", RuntimeWarning)  # empty bins give NaN, left out of the medians
    pc, sc, r = PreprocessSection(), SimulateSection(oversample=2), int(draws)
    sub, flux, ivar, _ = gap.load_real(Path(folder), pc)
    teff = np.array([gap.PM13_TEFF[s] for s in sub], dtype=float)
    grid = P.rest_grid(pc).numpy()
    ref = (grid > SN_REF[0]) & (grid < SN_REF[1])
    snr = np.nanmedian(np.where(ivar[:, ref] > 0, flux[:, ref] * np.sqrt(ivar[:, ref]), np.nan), 1)
    cfg = sc.model_copy(update={"rv_range_kms": (0.0, 0.0), "response_error": 0.0, "response_jump": 0.0,
                                "bad_pixel_fraction": 0.0, "sky_residuals": False, "tellurics": False,
                                "forest_shift_log10": 0.0})
    t = np.repeat(teff, r)
    lab = torch.zeros(t.size, len(GENERATOR_LABELS))
    lab[:, 0] = torch.as_tensor(t, dtype=torch.float32)
    lab[:, 1] = torch.as_tensor(gap.ms_logg(t), dtype=torch.float32)
    raw = S.simulate_raw(lab, torch.as_tensor(np.repeat(snr, r), dtype=torch.float32), cfg,
                         torch.Generator().manual_seed(0), "cpu")
    pre = P.preprocess_batch(raw, pc)
    tf, ti = pre["flux"].numpy(), pre["ivar"].numpy()
    twin = np.nanmedian(np.where(ti > 0, tf, np.nan).reshape(len(teff), r, -1), 1)
    twin_sn = np.where(ti > 0, tf * np.sqrt(np.clip(ti, 0, None)), np.nan).reshape(len(teff), r, -1)[:, 0]
    real_sn = np.where(ivar > 0, flux * np.sqrt(np.clip(ivar, 0, None)), np.nan)
    real = np.where(ivar > 0, flux, np.nan)
    gs = groups(teff)
    head = " | ".join(f"{k} ({int(v.sum())}) real / twin" for k, v in gs.items())
    print(f"{len(teff)} stars, twins at the real S/N ({r} draws)\n\n| bin (A) | {head} |\n|---|" + "---|" * len(gs))
    for a, b in zip(EDGES[:-1], EDGES[1:]):
        m = (grid >= a) & (grid < b)
        cells = [f"{np.nanmedian(np.nanmean(real[g][:, m], 1)):.3f} / {np.nanmedian(np.nanmean(twin[g][:, m], 1)):.3f}"
                 for g in gs.values()]
        print(f"| {a}-{b} | " + " | ".join(cells) + " |")
    print(f"\n| S/N over {SN_REF[0]:.0f}-{SN_REF[1]:.0f} A | {head} |\n|---|" + "---|" * len(gs))
    for name, (a, b) in SN_BANDS.items():
        m = (grid >= a) & (grid < b)
        cells = []
        for g in gs.values():
            rr = np.nanmedian(real_sn[g][:, m], 1) / np.nanmedian(real_sn[g][:, ref], 1)
            tt = np.nanmedian(twin_sn[g][:, m], 1) / np.nanmedian(twin_sn[g][:, ref], 1)
            cells.append(f"{np.nanmedian(rr):.2f} / {np.nanmedian(tt):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
