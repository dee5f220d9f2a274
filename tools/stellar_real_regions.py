"""Which wavelength regions move a trained stellar network on the 25 real LAMOST spectra, and how the generator's
line cores compare with the real ones there (docs/results/stellar.md, "Simulation to real").

    python tools/stellar_real_regions.py CKPT [REALDATA_FOLDER]

Region swap: each real spectrum (reader + preprocessing) is compared with its generator twin (dwarf at the Teff of
its LAMOST subclass, Pecaut & Mamajek 2013; [Fe/H] 0; noiseless; same preprocessing and the real ivar). One
window at a time is copied from the twin into the real spectrum ("real, twin in W") and from the real spectrum
into the twin ("twin, real in W"); the network's median Teff offset from the subclass Teff and median [Fe/H] show
which windows carry the sim-to-real gap. Line cores: the minimum normalised flux within +-4 A of each line, median
over F/G and over K stars, real vs twin. Reuses the loaders of ``tests/tasks/stellar/test_real_gap.py``.
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

from neurotrain.engine.checkpoint import load_model  # noqa: E402
from neurotrain.tasks.stellar import preprocess as P  # noqa: E402
from neurotrain.tasks.stellar.postprocess import predict_labels  # noqa: E402

#: rest vacuum windows (A) swapped one at a time; None: H alpha + H beta +-40 A
WINDOWS: dict[str, tuple[float, float] | None] = {
    "H alpha + H beta +-40 A": None, "3700-4500 A": (3700, 4500), "4500-5000 A": (4500, 5000),
    "5000-5500 A": (5000, 5500), "5500-6500 A": (5500, 6500), "6500-7500 A": (6500, 7500), "7500-9100 A": (7500, 9100),
}
#: vacuum line centres (A) of the line-core table
LINES = {"Ca II K": 3934.8, "Ca II H + H epsilon": 3969.6, "H delta": 4102.9, "Ca I": 4227.9,
         "G band (CH)": 4307.0, "H gamma": 4341.7, "Fe I": 4384.7, "H beta": 4862.7, "Mg b": 5176.0}
K_DWARF_MAX_TEFF = 5300.0  # below: K subclasses of the table (K0 = 5270 K)


def main(ckpt: str, folder: str = str(REPO.parent / "shared" / "realdata" / "stellar")) -> None:
    cfg, model = load_model(ckpt)
    model.eval()
    pc, sc = cfg.preprocess, cfg.simulate
    sub, flux, ivar, _ = gap.load_real(Path(folder), pc)
    ref = np.array([gap.PM13_TEFF[s] for s in sub], dtype=float)
    twin = gap.templates(ref, sc, pc)
    grid = P.rest_grid(pc).numpy()
    names = list(cfg.labels.names)
    fg = ref >= K_DWARF_MAX_TEFF

    def labels(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pre = {"flux": torch.as_tensor(f, dtype=torch.float32), "ivar": torch.as_tensor(ivar, dtype=torch.float32)}
        with torch.no_grad():
            m = predict_labels(model, P.network_input(pre, cfg.model.in_channels, pc))["mean"].numpy()
        return m[:, names.index("TEFF")], m[:, names.index("FE_H")]

    def row(tag: str, f: np.ndarray) -> None:
        t, z = labels(f)
        d = t - ref
        print(f"| {tag} | {np.median(d):+.0f} | {np.median(d[fg]):+.0f} | {np.median(d[~fg]):+.0f} | {np.median(z):+.2f} |")

    print(f"{len(sub)} stars ({fg.sum()} F/G, {(~fg).sum()} K)\n")
    print("| spectrum | Teff offset (K) | F/G | K | median [Fe/H] |\n| --- | ---: | ---: | ---: | ---: |")
    row("real", flux)
    row("twin", twin)
    for name, w in WINDOWS.items():
        m = gap.balmer_mask(grid) > 0 if w is None else (grid >= w[0]) & (grid < w[1])
        row(f"real, twin in {name}", np.where(m[None], twin, flux))
        row(f"twin, real in {name}", np.where(m[None], flux, twin))
    good = ivar > 0
    print("\n| line (core: min flux within +-4 A) | F/G real | F/G twin | K real | K twin |\n| --- | ---: | ---: | ---: | ---: |")
    for name, c in LINES.items():
        m = np.abs(grid - c) < 4
        with warnings.catch_warnings():  # a spectrum with no good pixel there gives NaN, left out of the median
            warnings.simplefilter("ignore", RuntimeWarning)
            core_real = np.nanmin(np.where(good[:, m], flux[:, m], np.nan), 1)
        core_twin = twin[:, m].min(1)
        print(f"| {name} {c:.1f} A | {np.nanmedian(core_real[fg]):.3f} | {np.median(core_twin[fg]):.3f} | "
              f"{np.nanmedian(core_real[~fg]):.3f} | {np.median(core_twin[~fg]):.3f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
