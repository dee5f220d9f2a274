"""True-coincidence summing of gamma cascades and random pile-up (keV, counts; batched torch).

**Summing** (first order, two photons; e.g. Debertin & Helmer, "Gamma- and X-ray Spectrometry with
Semiconductor Detectors", 1988, ch. 5.5). For a cascade e1 -> e2 emitted together with probability p per decay
(``data/cascades.csv``), a point source on the detector axis whose photons reach the crystal face with
probability g = Omega / 4 pi (``simulate.source_distance_cm``; emission directions independent, angular
correlation neglected) and a detector of full-energy / total probabilities eps_p(E) / eps_t(E) per photon reaching
the face (its response), per photon of e1 reaching the face the partner reaches it with probability g p / I(e1).
Per decay that reaches the face with both photons:

* summing-out: the e1 peak loses eps_p1 g eps_t2 (and e2 likewise);
* sum peak at e1 + e2 of area eps_p1 g eps_p2;
* continuum: e1 full + e2 partial, e1 partial + e2 full, both partial (the convolution of the two deposit
  spectra), minus the single-photon continua of events now counted as sums.

The continuum terms depend only on the detector and the cascade: :func:`summing_tables` computes them once per
response (cached), so a batch costs one (B, P) x (P, N) product. Each detector sums with its own efficiencies.

**Pile-up** (first order): two events within the resolving time tau record one pulse at the sum energy. At a
count rate r each event is piled with probability 2 r tau; the recorded spectrum is
S (1 - 2 r tau) + r tau (S * S) / N (self-convolution, Knoll 4th ed., ch. 17.IV), with N (1 - r tau) events.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch

from neurotrain.tasks.gamma import library
from neurotrain.tasks.gamma.resolution import batched_interp
from neurotrain.tasks.gamma.response import Response


@dataclass(frozen=True)
class Cascade:
    source: str
    e1: float  # keV
    e2: float  # keV
    p_both: float  # per decay


@lru_cache(maxsize=1)
def load_cascades() -> tuple[Cascade, ...]:
    """All cascades of ``data/cascades.csv``."""
    text = resources.files("neurotrain.tasks.gamma.data").joinpath("cascades.csv").read_text("utf-8")
    out = []
    for row in text.splitlines():
        if not row or row.startswith(("#", "source,")):
            continue
        src, e1, e2, p, *_ = row.split(",")
        out.append(Cascade(src, float(e1), float(e2), float(p)))
    return tuple(out)


@dataclass
class CascadeTable:
    """Cascades of a list of sources, padded: (S, P) tensors; ``line1``/``line2`` the slots of e1/e2 in
    ``library.line_table(names)`` (-1: not in the table)."""

    e1: torch.Tensor
    e2: torch.Tensor
    p: torch.Tensor
    line1: torch.Tensor
    line2: torch.Tensor
    index: torch.Tensor  # (S, P) global cascade index into ``flat`` (-1 padding)
    flat: list[Cascade]


def cascade_table(names: list[str], device: torch.device | None = None) -> CascadeTable:
    """The cascades of ``names`` (sources of the library), padded to the largest count (at least 1)."""
    per = [[c for c in load_cascades() if c.source == n] for n in names]
    width = max(1, max((len(c) for c in per), default=0))
    s = len(names)
    e1, e2, p = torch.zeros(s, width), torch.zeros(s, width), torch.zeros(s, width)
    l1, l2, idx = (torch.full((s, width), -1, dtype=torch.long) for _ in range(3))
    flat: list[Cascade] = []
    for i, (name, cs) in enumerate(zip(names, per)):
        lines = library.lines_of(name)
        for j, c in enumerate(cs):
            e1[i, j], e2[i, j], p[i, j] = c.e1, c.e2, c.p_both
            l1[i, j] = next((k for k, ln in enumerate(lines) if abs(ln.energy_kev - c.e1) < 0.1), -1)
            l2[i, j] = next((k for k, ln in enumerate(lines) if abs(ln.energy_kev - c.e2) < 0.1), -1)
            idx[i, j] = len(flat)
            flat.append(c)
    to = (lambda t: t.to(device)) if device is not None else (lambda t: t)
    return CascadeTable(to(e1), to(e2), to(p), to(l1), to(l2), to(idx), flat)


def shift_rows(rows: torch.Tensor, shift_kev: torch.Tensor, width: float) -> torch.Tensor:
    """Move histograms ``rows`` (P, N) up in energy by ``shift_kev`` (P,) keV (linear split between the two
    channels around the shifted position); what passes the grid's end is dropped."""
    n = rows.shape[1]
    s = shift_kev / width
    k = torch.floor(s).long()
    f = (s - k).unsqueeze(1)
    j = torch.arange(n, device=rows.device).unsqueeze(0)
    src0 = j - k.unsqueeze(1)
    src1 = src0 - 1

    def take(src: torch.Tensor) -> torch.Tensor:
        ok = (src >= 0) & (src < n)
        return torch.where(ok, rows.gather(1, src.clamp(0, n - 1)), torch.zeros_like(rows))

    return take(src0) * (1 - f) + take(src1) * f


def self_convolve(a: torch.Tensor, b: torch.Tensor, e_min: float, width: float) -> torch.Tensor:
    """Histogram of the sum of two deposits drawn from ``a`` and ``b`` (R, N) on the same channel grid
    (first edge ``e_min`` keV, channel ``width`` keV): products of all channel pairs (FFT), put at the energy
    of the sum of their centres. (R, N); sums above the grid are dropped."""
    n = a.shape[1]
    m = 2 * n
    c = torch.fft.irfft(torch.fft.rfft(a, m) * torch.fft.rfft(b, m), m)[:, : 2 * n - 1].clamp_min(0)
    # index i + j holds centres' sum 2 e_min + (i + j + 1) width = channel (i + j) + 0.5 + e_min / width
    shift = e_min / width + 0.5
    k0 = int(torch.floor(torch.tensor(shift)).item())
    f = shift - k0
    out = torch.zeros_like(a)
    lo = c[:, : max(0, n - k0)]
    out[:, k0 : k0 + lo.shape[1]] += lo * (1 - f)
    hi = c[:, : max(0, n - k0 - 1)]
    out[:, k0 + 1 : k0 + 1 + hi.shape[1]] += hi * f
    return out


@dataclass
class SummingTables:
    """Per detector and cascade (global index): efficiencies and the summing continuum per coincident decay."""

    eps_p1: torch.Tensor  # (P,)
    eps_p2: torch.Tensor
    eps_t1: torch.Tensor
    eps_t2: torch.Tensor
    continuum: torch.Tensor  # (P, N) per coincident pair reaching the face with both photons


_TABLES: dict[tuple[str, str, tuple[Cascade, ...]], SummingTables] = {}


def summing_tables(resp: Response, cascades: list[Cascade]) -> SummingTables:
    """The summing terms of ``cascades`` for the detector of ``resp`` (cached per response and cascade list)."""
    key = (resp.key, str(resp.edges.device), tuple(cascades))
    if key in _TABLES:
        return _TABLES[key]
    dev = resp.edges.device
    centers, edges = resp.incident, resp.edges
    n = centers.numel()
    e1 = torch.tensor([c.e1 for c in cascades], device=dev, dtype=torch.float32).view(1, -1)
    e2 = torch.tensor([c.e2 for c in cascades], device=dev, dtype=torch.float32).view(1, -1)
    total = resp.total()
    eps_p1, eps_p2 = batched_interp(e1, centers, resp.full_energy)[0], batched_interp(e2, centers, resp.full_energy)[0]
    eps_t1, eps_t2 = batched_interp(e1, centers, total)[0], batched_interp(e2, centers, total)[0]
    row = lambda e: resp.continuum[torch.bucketize(e[0], edges).sub(1).clamp(0, n - 1)]  # noqa: E731
    c1, c2 = row(e1), row(e2)
    width = float(edges[1] - edges[0])
    cont = (
        shift_rows(c1, e2[0], width) * eps_p2.unsqueeze(1)
        + shift_rows(c2, e1[0], width) * eps_p1.unsqueeze(1)
        + self_convolve(c1, c2, float(edges[0]), width)
        - c1 * eps_t2.unsqueeze(1)
        - c2 * eps_t1.unsqueeze(1)
    )
    out = SummingTables(eps_p1, eps_p2, eps_t1, eps_t2, cont)
    _TABLES[key] = out
    return out


def pileup(deposits: torch.Tensor, prob: torch.Tensor, e_min: float, width: float) -> torch.Tensor:
    """First-order random pile-up of deposit histograms (B, N) with pile-up probability ``prob`` = r tau (B,):
    S (1 - 2 r tau) + r tau (S * S) / N. Returns (B, N)."""
    n_tot = deposits.sum(1, keepdim=True).clamp_min(1e-12)
    conv = self_convolve(deposits, deposits, e_min, width)
    p = prob.unsqueeze(1)
    return deposits * (1 - 2 * p) + p * conv / n_tot
