"""Strong lines of the generator against the 25 real LAMOST DR10 spectra, measured the same way on both (a check of
the physics in ``synth.py``, never a fit; skipped where ``shared/realdata/stellar`` is absent).

Each real spectrum (reader + preprocessing) is compared with its generator twin (dwarf at its subclass Teff,
Pecaut & Mamajek 2013; [Fe/H] 0; noiseless; same preprocessing): Lick-style indices with the band and side-band
definitions of Worthey et al. (1994, ApJS 94, 687) and Trager et al. (1998, ApJS 116, 1) (air, converted to vacuum),
measured on the continuum-normalised spectra at LAMOST resolution: not Lick-system values (Lick's resolution is
~8-9 A, ours ~2.5 A), but like for like between real and twin.

``python tests/tasks/stellar/test_real_lines.py [FOLDER]`` prints the table of docs/results/stellar.md ("Generator:
cool dwarfs and blue strong lines").
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from neurotrain.tasks.stellar import preprocess as P
from neurotrain.tasks.stellar.config import PreprocessSection, SimulateSection
from neurotrain.tasks.stellar.lines import air_to_vacuum

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_real_gap as gap  # noqa: E402

#: index band, blue and red side bands (air A), Worthey et al. 1994 / Trager et al. 1998
LICK_BANDS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "Ca4227": ((4222.250, 4234.750), (4211.000, 4219.750), (4241.000, 4251.000)),
    "Fe4383": ((4369.125, 4420.375), (4359.125, 4370.375), (4442.875, 4455.375)),
    "Hbeta": ((4847.875, 4876.625), (4827.875, 4847.875), (4876.625, 4891.625)),
    "Mgb": ((5160.125, 5192.625), (5142.625, 5161.375), (5191.375, 5206.375)),
    "NaD": ((5876.875, 5909.375), (5860.625, 5875.625), (5922.125, 5948.125)),
}
K_DWARF_MAX_TEFF = 5300.0  # below: the K subclasses (K0 = 5270 K)


def lick_index(grid: np.ndarray, flux: np.ndarray, name: str) -> np.ndarray:
    """Index (A) of each spectrum (B, M) on the vacuum grid (M,): the integral of 1 - F / F_c over the band, F_c the
    line through the side-band means; NaN pixels (masked) are left out of the means and the sum."""
    (a, b), blue, red = (tuple(air_to_vacuum(np.asarray(x))) for x in LICK_BANDS[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        side = [(np.nanmean(flux[:, (grid >= lo) & (grid < hi)], 1), (lo + hi) / 2) for lo, hi in (blue, red)]
    (fb, lb), (fr, lr) = side
    m = (grid >= a) & (grid < b)
    cont = fb[:, None] + (fr - fb)[:, None] * (grid[m] - lb) / (lr - lb)
    return np.nansum(1 - flux[:, m] / cont, 1) * float(np.diff(grid[m]).mean())


def real_and_twins(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(grid, real normalised flux with NaN where ivar = 0, twins, subclass Teff)."""
    cfg = PreprocessSection()
    sub, flux, ivar, _ = gap.load_real(folder, cfg)
    ref = np.array([gap.PM13_TEFF[s] for s in sub], dtype=float)
    return P.rest_grid(cfg).numpy(), np.where(ivar > 0, flux, np.nan), gap.templates(ref, SimulateSection(), cfg), ref


@pytest.fixture(scope="module")
def real():
    folder = Path(__file__).resolve().parents[3].parent / "shared" / "realdata" / "stellar"
    if not sorted(folder.glob("*.fits")):
        pytest.skip(f"{folder}: no real LAMOST spectra")
    return real_and_twins(folder)


def test_k_dwarf_resonance_lines_within_a_factor_2_of_real(real):
    """Ca4227 and NaD of the K dwarfs' twins within a factor 2 of the real median (now 5.0 vs 6.4 A and 4.6 vs
    7.7 A; the old generator: 2.76 and 2.13 A, factors 2.3 and 3.6), and each grows from F/G to K by more than 3x
    as the real ones do (real: 5.7x and 5.1x)."""
    grid, flux, twin, ref = real
    k = ref < K_DWARF_MAX_TEFF
    for name in ("Ca4227", "NaD"):
        r, t = lick_index(grid, flux, name), lick_index(grid, twin, name)
        ratio = float(np.median(t[k]) / np.nanmedian(r[k]))
        assert 0.5 < ratio < 2.0, (name, ratio)
        assert float(np.median(t[k]) / np.median(t[~k])) > 3, name


def main(folder: str = "../shared/realdata/stellar") -> None:
    grid, flux, twin, ref = real_and_twins(Path(folder))
    k = ref < K_DWARF_MAX_TEFF
    print(f"{len(ref)} stars ({(~k).sum()} F/G, {k.sum()} K)\n")
    print("| index (A, R 1800) | F/G real | F/G twin | K real | K twin |\n| --- | ---: | ---: | ---: | ---: |")
    for name in LICK_BANDS:
        r, t = lick_index(grid, flux, name), lick_index(grid, twin, name)
        print(f"| {name} | {np.nanmedian(r[~k]):.2f} | {np.median(t[~k]):.2f} | {np.nanmedian(r[k]):.2f} | "
              f"{np.median(t[k]):.2f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
