"""The shipped gamma line library (``data/lines.csv``) against its evaluated source.

Reference numbers: ENSDF evaluated decay data (NNDC/BNL), archive of September 2023 as bundled in the PyPI
package paceENSDF 0.6.3 (A. M. Hurst et al., EPJ Web of Conf. 284, 18002 (2023)); absolute intensities are
RI x NR x BR of the ENSDF records, e.g. Cs-137 661.657 keV RI 85.1 with NR = BR = 1, Tl-208 2614.511 keV
99.754 per Tl-208 decay times the Bi-212 alpha branching BR = 0.3594, Bi-214 609.321 keV RI 100 x NR 0.4545
x BR 0.99979, Na-22 annihilation 2 x IB 89.955. ``tools/build_gamma_lines.py`` regenerates the file.
"""

from __future__ import annotations

from importlib import resources

import pytest

from neurotrain.tasks.gamma import library
from neurotrain.tasks.gamma.config import LAB_SOURCES
from neurotrain.tasks.gamma.metrics import DOUBLETS

# (source, energy keV, photons per 100 decays of the source / chain head), ENSDF via paceENSDF 0.6.3
ENSDF_SPOT_VALUES = [
    ("Cs-137", 661.657, 85.1),
    ("Co-60", 1173.228, 99.85),
    ("Co-60", 1332.492, 99.9826),
    ("Am-241", 59.5409, 35.9),
    ("Na-22", 1274.537, 99.94),
    ("K-40", 1460.82, 10.66 * 9.33 * 0.1072),
    ("Ba-133", 356.0129, 100.0 * 0.6205),
    ("Ba-133", 383.8485, 14.41 * 0.6205),
    ("Eu-152", 121.7817, 107.3 * 0.3689 * 0.7208),
    ("Eu-152", 344.2785, 26.591),
    ("Eu-152", 1085.837, 38.04 * 0.3689 * 0.7208),
    ("Eu-152", 1112.076, 51.4 * 0.3689 * 0.7208),
    ("Eu-152", 1408.013, 78.48 * 0.3689 * 0.7208),
    ("Th-232", 2614.511, 99.754 * 0.3594),
    ("Th-232", 583.187, 85.0 * 0.3594),
    ("Th-232", 238.632, 43.6),
    ("Th-232", 911.204, 25.8),
    ("Ra-226", 186.211, 3.64),
    ("Ra-226", 609.321, 100.0 * 0.4545 * 0.99979),
    ("Ra-226", 351.932, 78.6 * 0.4545 * 0.9998),  # Pb-214, times BR(Po-218 alpha)
    ("U-235", 185.713, 57.2),
]

ISSUE_SOURCES = ["Am-241", "Ba-133", "Cs-137", "Co-57", "Co-60", "Na-22", "Eu-152", "K-40", "Th-232", "Ra-226", "U-235"]
CHAIN_MEMBERS = {"Th-232": {"Tl-208", "Ac-228", "Pb-212", "Bi-212"}, "Ra-226": {"Pb-214", "Bi-214", "Ra-226"}}
KINDS = {"gamma", "xray", "annihilation"}


def find(source: str, energy_kev: float, tol_kev: float = 1e-3) -> library.Line:
    hits = [line for line in library.lines_of(source) if abs(line.energy_kev - energy_kev) <= tol_kev]
    assert len(hits) == 1, f"{source} {energy_kev} keV: {len(hits)} library lines within {tol_kev} keV"
    return hits[0]


@pytest.mark.parametrize(("source", "energy_kev", "percent"), ENSDF_SPOT_VALUES)
def test_spot_values_match_ensdf(source: str, energy_kev: float, percent: float) -> None:
    line = find(source, energy_kev)
    assert line.kind == "gamma"
    assert line.intensity == pytest.approx(percent / 100.0, rel=2e-4)


def test_every_named_source_present() -> None:
    have = set(library.sources())
    assert set(ISSUE_SOURCES) <= have
    assert set(LAB_SOURCES) <= have


def test_chain_members_carry_lines() -> None:
    text = resources.files("neurotrain.tasks.gamma.data").joinpath("lines.csv").read_text("utf-8")
    notes: dict[str, set[str]] = {}
    for row in text.splitlines():
        if row and not row.startswith(("#", "source,")):
            src, _e, _i, kind, note = (row.split(",") + [""])[:5]
            if kind == "gamma" and note:
                notes.setdefault(src, set()).add(note.split()[0])
    for chain, members in CHAIN_MEMBERS.items():
        assert members <= notes[chain], f"{chain}: members without lines {members - notes[chain]}"


def test_tl208_lines_carry_the_bi212_alpha_branching() -> None:
    # 2614.511 and 583.187 keV are 99.754 and 85.0 per Tl-208 decay; both scaled by BR(Bi-212 alpha) = 0.3594
    hi, lo = find("Th-232", 2614.511), find("Th-232", 583.187)
    assert hi.intensity / lo.intensity == pytest.approx(99.754 / 85.0, rel=1e-4)
    assert hi.intensity < 0.36


def test_rows_are_well_formed() -> None:
    for src in library.sources():
        lines = library.lines_of(src)
        energies = [line.energy_kev for line in lines]
        assert energies == sorted(energies), f"{src}: energies not ascending"
        for line in lines:
            assert line.kind in KINDS
            assert 0.0 < line.intensity < 2.0, f"{src} {line.energy_kev}: intensity {line.intensity} per decay"
            assert 10.0 <= line.energy_kev <= 3000.0


def test_xrays_and_annihilation_rows() -> None:
    for src in ("Ba-133", "Cs-137", "Eu-152"):
        assert any(line.kind == "xray" for line in library.lines_of(src)), src
    ann = [line for line in library.lines_of("Na-22") if line.kind == "annihilation"]
    assert len(ann) == 1
    assert ann[0].energy_kev == pytest.approx(510.999, abs=1e-3)
    assert ann[0].intensity == pytest.approx(2 * (89.9 + 0.055) / 100.0, rel=1e-4)


def test_doublets_and_negative_control_lines_exist() -> None:
    for a, b in DOUBLETS:
        assert any(abs(e - a) < 1e-3 for e in library.library_energies())
        assert any(abs(e - b) < 1e-3 for e in library.library_energies())
    ra, u = find("Ra-226", 186.211), find("U-235", 185.713)
    # closer than HPGe resolves at 186 keV (about 1 keV FWHM): the negative control's premise
    assert 0.4 < ra.energy_kev - u.energy_kev < 0.6


def test_header_cites_the_source() -> None:
    text = resources.files("neurotrain.tasks.gamma.data").joinpath("lines.csv").read_text("utf-8")
    header = "\n".join(row for row in text.splitlines() if row.startswith("#"))
    assert "ENSDF" in header and "paceENSDF 0.6.3" in header and "tools/build_gamma_lines.py" in header
