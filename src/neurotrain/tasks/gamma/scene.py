"""Scenes of the gamma simulator: which lines a spectrum holds (keV, photons reaching the crystal face).

A training spectrum holds 1-``max_sources`` library sources with random activities (log-uniform 0.1-1), a share
``random_line_fraction`` of spectra 1-``max_random_lines`` lines at random energies, and the terrestrial
environment (K-40, Th-232, Ra-226 at activities 0.5-2). :class:`Scene` fixes any of these for evaluation sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from neurotrain.tasks.gamma import library
from neurotrain.tasks.gamma.cascade import CascadeTable, cascade_table

@dataclass
class Scene:
    """Overrides for evaluation sets; ``None`` fields are drawn at random from the config ranges."""

    sources: list[str] | None = None  # the same sources in every spectrum
    counts: float | None = None
    fwhm_662: float | None = None
    power: float | None = None
    random_lines: int | None = None  # number of random-energy lines (0 disables)
    random_line_energies: list[float] | None = None
    environment: bool | None = None
    jitter: bool = True
    crystal: str | None = None  # another crystal of the same geometry


def _log_uniform(lo: float, hi: float, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    u = torch.rand(n, generator=gen, device=device)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def _uniform(lo: float, hi: float, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def merge_lines(
    energy: torch.Tensor, area: torch.Tensor, detectable: torch.Tensor, merge_kev: float,
    extra: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Merge lines closer than ``merge_kev`` (B, L): summed areas at the area-weighted energy; a merged line
    is detectable when the summed area was detectable for any member. Emptied slots get area 0. ``extra``
    (B, L), e.g. the same lines' areas in another detector, is summed over the same groups and returned fourth."""
    b, n_l = energy.shape
    e_sorted, order = torch.sort(torch.where(area > 0, energy, torch.full_like(energy, 1e9)), dim=1)
    a_sorted = area.gather(1, order)
    d_sorted = detectable.gather(1, order)
    new_group = torch.ones_like(e_sorted, dtype=torch.long)
    new_group[:, 1:] = (e_sorted[:, 1:] - e_sorted[:, :-1] > merge_kev).long()
    gid = torch.cumsum(new_group, 1) - 1
    a_sum = torch.zeros(b, n_l, device=energy.device, dtype=area.dtype).scatter_add_(1, gid, a_sorted)
    ea_sum = torch.zeros_like(a_sum).scatter_add_(1, gid, a_sorted * e_sorted)
    d_any = torch.zeros_like(a_sum).scatter_add_(1, gid, d_sorted.to(area.dtype)) > 0
    e_out = torch.where(a_sum > 0, ea_sum / a_sum.clamp_min(1e-30), torch.zeros_like(a_sum))
    out: tuple[torch.Tensor, ...] = (e_out, a_sum, d_any & (a_sum > 0))
    if extra is not None:
        out = (*out, torch.zeros_like(a_sum).scatter_add_(1, gid, extra.gather(1, order).to(area.dtype)))
    return out


@dataclass
class SceneLines:
    """Lines of a batch. ``src_*`` (B, Ls): library sources then random lines; ``env_*`` (B, Le): environment;
    energies in keV, weights relative emission rates (per unit activity). Cascades of the spectrum's sources
    (B, Q), Q = source slots x cascades per source: energies, weight activity x p_both (0: padding), global index
    into ``cascades`` and the columns of e1 / e2 in ``src_*`` (-1: not a library line)."""

    src_e: torch.Tensor
    src_w: torch.Tensor
    env_e: torch.Tensor
    env_w: torch.Tensor
    pair_e1: torch.Tensor  # (B, Q) cascades of the spectrum's sources, Q = S x Pmax
    pair_e2: torch.Tensor
    pair_w: torch.Tensor  # (B, Q) activity x p_both (0 = padding)
    pair_idx: torch.Tensor  # (B, Q) global cascade index (0 where padding)
    slot1: torch.Tensor  # (B, Q) column of e1 in src_* (-1: none)
    slot2: torch.Tensor
    cascades: list


_TABLES: dict[tuple[tuple[str, ...], str], tuple[torch.Tensor, torch.Tensor, CascadeTable]] = {}


def _tables(names: tuple[str, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, CascadeTable]:
    """Line and cascade tables of ``names`` on ``device``, built once (no host work per batch)."""
    key = (names, str(device))
    if key not in _TABLES:
        e, i = library.line_table(list(names), device)
        _TABLES[key] = (e, i, cascade_table(list(names), device))
    return _TABLES[key]


def draw_lines(sim: Any, scene: Scene, b: int, gen: torch.Generator, device: torch.device) -> SceneLines:
    """Draw the lines of ``b`` spectra (see the module docstring; ``scene`` overrides)."""
    e_lo, e_hi = sim.e_min_kev, sim.e_max_kev
    chosen = scene.sources
    if chosen is not None and len(chosen) == 0:
        names = list(sim.sources)[:1]
        pick = torch.zeros(b, 1, dtype=torch.long, device=device)
        act = torch.zeros(b, 1, device=device)
    elif chosen is not None:
        names = list(chosen)
        k = len(names)
        pick = torch.arange(k, device=device).unsqueeze(0).expand(b, -1)
        act = _log_uniform(0.5, 2.0, b * k, gen, device).view(b, k)
    else:
        names = list(sim.sources)
        s_max = sim.max_sources
        pick = torch.randint(0, len(names), (b, s_max), generator=gen, device=device)
        n_src = torch.randint(sim.min_sources, s_max + 1, (b,), generator=gen, device=device)
        use = torch.arange(s_max, device=device).unsqueeze(0) < n_src.unsqueeze(1)
        act = _log_uniform(0.1, 1.0, b * s_max, gen, device).view(b, s_max) * use
    tab_e, tab_i, ct = _tables(tuple(names), device)
    width = tab_e.shape[1]
    e_src = tab_e[pick].reshape(b, -1)  # (B, S x W)
    i_src = (tab_i[pick] * act.unsqueeze(2)).reshape(b, -1)

    # cascades of the chosen sources: weights per (spectrum, source slot, cascade)
    s_slots = pick.shape[1]
    base = (torch.arange(s_slots, device=device) * width).view(1, -1, 1)
    pw = (act.unsqueeze(2) * ct.p[pick]).reshape(b, -1)
    s1 = torch.where(ct.line1[pick] >= 0, ct.line1[pick] + base, -torch.ones_like(ct.line1[pick])).reshape(b, -1)
    s2 = torch.where(ct.line2[pick] >= 0, ct.line2[pick] + base, -torch.ones_like(ct.line2[pick])).reshape(b, -1)
    pidx = ct.index[pick].reshape(b, -1)
    pw = pw * (pidx >= 0)

    # random-energy lines
    r_max = sim.max_random_lines
    if scene.random_line_energies is not None:
        e_rand = torch.tensor(scene.random_line_energies, device=device).unsqueeze(0).expand(b, -1)
        i_rand = _log_uniform(0.5, 1.0, b * e_rand.shape[1], gen, device).view(b, -1)
    else:
        e_rand = _uniform(e_lo + 15.0, e_hi - 30.0, b * r_max, gen, device).view(b, r_max)
        i_rand = _log_uniform(0.05, 1.0, b * r_max, gen, device).view(b, r_max)
        if scene.random_lines is not None:
            k_rand = torch.full((b,), scene.random_lines, device=device)
        else:
            has = torch.rand(b, generator=gen, device=device) < sim.random_line_fraction
            k_rand = torch.randint(1, r_max + 1, (b,), generator=gen, device=device) * has
        i_rand = i_rand * (torch.arange(r_max, device=device).unsqueeze(0) < k_rand.unsqueeze(1))
        # spectra with no source and no random line get random lines
        empty = (i_src.sum(1) <= 0) & (i_rand.sum(1) <= 0)
        i_rand[:, 0] = torch.where(empty, torch.ones_like(i_rand[:, 0]), i_rand[:, 0])
    src_e = torch.cat([e_src, e_rand], 1)
    src_w = torch.cat([i_src, i_rand], 1) * ((torch.cat([e_src, e_rand], 1) >= e_lo) & (torch.cat([e_src, e_rand], 1) < e_hi))

    # environment: terrestrial lines
    env_e, env_i, _ = _tables(tuple(library.ENVIRONMENT), device)
    env_act = _uniform(0.5, 2.0, b * env_e.shape[0], gen, device).view(b, -1, 1)
    env_e = env_e.unsqueeze(0).expand(b, -1, -1).reshape(b, -1)
    env_w = (env_i.unsqueeze(0) * env_act).reshape(b, -1) * ((env_e >= e_lo) & (env_e < e_hi))
    return SceneLines(
        src_e, src_w, env_e, env_w, ct.e1[pick].reshape(b, -1), ct.e2[pick].reshape(b, -1), pw, pidx.clamp_min(0),
        s1, s2, ct.flat,
    )
