"""The gamma-ray line library (``data/lines.csv``, ENSDF decay data made by ``tools/build_gamma_lines.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch

#: Sources of the terrestrial environment (not chosen as check sources).
ENVIRONMENT = ("K-40", "Th-232", "Ra-226")


@dataclass(frozen=True)
class Line:
    source: str
    energy_kev: float
    intensity: float  # photons per decay (fraction, not percent)
    kind: str


@lru_cache(maxsize=1)
def load_lines() -> tuple[Line, ...]:
    """All lines of the shipped library."""
    text = resources.files("neurotrain.tasks.gamma.data").joinpath("lines.csv").read_text("utf-8")
    out = []
    for row in text.splitlines():
        if not row or row.startswith(("#", "source,")):
            continue
        src, e, i, kind, _note = (row.split(",") + [""])[:5]
        out.append(Line(src, float(e), float(i) / 100.0, kind))
    return tuple(out)


def sources() -> list[str]:
    """Names of all sources in the library, in file order."""
    seen: list[str] = []
    for line in load_lines():
        if line.source not in seen:
            seen.append(line.source)
    return seen


def lines_of(source: str) -> list[Line]:
    """The lines of one source; raises ``KeyError`` naming the known sources when unknown."""
    found = [line for line in load_lines() if line.source == source]
    if not found:
        raise KeyError(f"unknown source {source!r} (known: {', '.join(sources())})")
    return found


def line_table(names: list[str], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded tables (n_sources, max_lines) of energies (keV) and intensities (per decay, 0 = padding)."""
    per = [lines_of(n) for n in names]
    width = max(len(p) for p in per)
    energy = torch.zeros(len(names), width)
    inten = torch.zeros(len(names), width)
    for i, p in enumerate(per):
        energy[i, : len(p)] = torch.tensor([line.energy_kev for line in p])
        inten[i, : len(p)] = torch.tensor([line.intensity for line in p])
    return energy.to(device), inten.to(device)


def library_energies(min_intensity: float = 0.0) -> list[float]:
    """Every library energy (keV) with an intensity of at least ``min_intensity`` per decay."""
    return sorted({line.energy_kev for line in load_lines() if line.intensity >= min_intensity})
