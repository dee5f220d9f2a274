"""Measure LAMOST's effective throughput from real spectra: the numbers behind ``simulate.THROUGHPUT_CURVE``.

    python tools/stellar_throughput.py [FOLDER]      (default: ../shared/realdata/stellar)

For photon-limited noise S/N^2 ~ counts ~ F_lambda lambda T(lambda), so (S/N)^2 / (F_lambda lambda) = flux x ivar /
lambda traces the throughput T (atmosphere, telescope, fibres, spectrograph, CCD) up to a constant per spectrum. Each
spectrum is normalised by its median over 5000-5500 A, the median over spectra is taken per bin, and the table is
scaled to 1 at its 7000-7500 A peak. It reads only the spectra's flux and ivar (no label), and the relative flux
calibration of DR10 enters through F_lambda. Printed: bin, knot wavelength, relative throughput, 16-84 % range.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: bin edges (observed vacuum A): 100 A in the blue, finer around the dichroic crossover, wider in the red
EDGES = (3700, 3800, 3900, 4000, 4100, 4200, 4300, 4400, 4500, 4600, 4800, 5000, 5200, 5400, 5600, 5700, 5800,
         5850, 5900, 6000, 6200, 6400, 6600, 7000, 7500, 8000, 8500, 8800, 8900, 9000, 9100)
NORM_BAND, PEAK_BAND = (5000.0, 5500.0), (7000.0, 7500.0)


def measure(folder: Path) -> list[tuple[float, float, float, float, float]]:
    """(bin start, knot wavelength, relative throughput, 16th, 84th percentile over spectra) per bin."""
    from neurotrain.tasks.stellar import io as sio

    spectra, skipped = sio.read_many(sorted(folder.glob("*.fits")), workers=1)
    if not spectra:
        raise SystemExit(f"{folder}: no readable LAMOST FITS spectra ({len(skipped)} skipped)")
    raw = sio.stack_spectra(spectra)
    wave = raw["wave"].numpy()
    wave = wave[0] if wave.ndim > 1 else wave
    flux, ivar = raw["flux"].numpy(), raw["ivar"].numpy()
    q = np.where((ivar > 0) & (flux > 0), flux * ivar / wave[None], np.nan)
    with warnings.catch_warnings():  # a spectrum without good pixels in a bin gives NaN, left out of the median
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = (wave > NORM_BAND[0]) & (wave < NORM_BAND[1])
        q = q / np.nanmedian(q[:, ref], 1, keepdims=True)
        rows = []
        for a, b in zip(EDGES[:-1], EDGES[1:]):
            per = np.nanmedian(q[:, (wave >= a) & (wave < b)], 1)
            rows.append((a, (a + b) / 2, np.nanmedian(per), np.nanpercentile(per, 16), np.nanpercentile(per, 84)))
    peak = next(r[2] for r in rows if r[0] == PEAK_BAND[0])
    return [(a, c, m / peak, lo / peak, hi / peak) for a, c, m, lo, hi in rows]


def main(folder: str = str(REPO.parent / "shared" / "realdata" / "stellar")) -> None:
    print("| bin start (A) | knot (A) | relative throughput | 16-84 % over spectra |\n| ---: | ---: | ---: | ---: |")
    for a, c, m, lo, hi in measure(Path(folder)):
        print(f"| {a} | {c:.0f} | {m:.4f} | {lo:.4f}-{hi:.4f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
