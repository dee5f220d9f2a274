"""Physical features of a gamma spectrum that a peak search can find besides the emitted lines, and the
evaluation's exemption rules (docs/results/gamma.md, "Exemption rules").

* :func:`secondary_energies`, :func:`compton_edges`, :data:`LU176_ONSETS_KEV`: where escape, backscatter,
  x-ray peaks, Compton edges and Lu-176 onsets lie (keV);
* :func:`explained_intervals` / :func:`peak_origins`: the feature intervals of the training-time metric and of
  predict's peak labels;
* :func:`exemption_windows` / :func:`classify_false_peaks`: the evaluation's rules, each window as wide as the
  physics of the detector the spectrum claims to be, and nothing wider.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from neurotrain.tasks.gamma import physics
from neurotrain.tasks.gamma.simulate import measured_energy, scint_fwhm, true_energy


def secondary_energies(line_e: Tensor, crystal: str, slab: str) -> Tensor:
    """Energies (B, M) keV of point-like secondary features of each line and of the set-up: single / double
    escape E - 511 / E - 1022 keV, 180-degree backscatter peak E / (1 + 2E/511), crystal K x-ray escape
    E - E_K, and the slab's K x-rays (the last two columns, not tied to a line)."""
    feats = [line_e - physics.ME_C2, line_e - 2 * physics.ME_C2, line_e / (1 + 2 * line_e / physics.ME_C2)]
    formula, _ = physics.MATERIALS[crystal]
    for s in formula:
        if s in physics.K_XRAYS:
            feats.append(line_e - physics.K_XRAYS[s][0])
            feats.append(line_e - physics.K_XRAYS[s][1])
    out = torch.cat(feats, 1)
    if slab in physics.K_XRAYS:
        const = torch.tensor([physics.K_XRAYS[slab][0], physics.K_XRAYS[slab][1]], device=line_e.device)
        out = torch.cat([out, const.expand(line_e.shape[0], -1)], 1)
    return out


def compton_edges(line_e: Tensor) -> Tensor:
    """Compton edge E * 2a / (1 + 2a), a = E / 511 keV, of each line (keV)."""
    a = line_e / physics.ME_C2
    return line_e * 2 * a / (1 + 2 * a)


#: Lu-176 in LYSO: deposits are the beta (end point 597 keV) summed with the absorbed part of the 88.3 / 201.8 /
#: 306.8 keV cascade (ENSDF), so the intrinsic spectrum has a step up at every partial cascade sum
LU176_ONSETS_KEV = (88.34, 201.83, 306.78, 290.17, 395.12, 508.61, 596.95)


def step_reach(e: Tensor, step_reach_kev: float, step_reach_fwhm: float, r662: Tensor, power: Tensor) -> Tensor:
    """How far (keV) from a step at ``e`` a peak search finds the step's top: at least ``step_reach_kev``,
    and ``step_reach_fwhm`` x the input detector's FWHM there (law ``r662``, ``power``) when that is larger."""
    floor = torch.full_like(e, float(step_reach_kev))
    if step_reach_fwhm <= 0:
        return floor
    return torch.maximum(floor, step_reach_fwhm * scint_fwhm(e.clamp_min(1.0), r662, power))


def explained_intervals(
    line_e: Tensor, line_mask: Tensor, line_detectable: Tensor, crystal: str, slab: str, tol_kev: float, step_reach_kev: float,
    batch: dict[str, Tensor] | None = None, step_reach_fwhm: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Energy intervals (lo, hi, mask), each (B, M) keV, where a found peak is real structure of the spectrum.
    With ``batch`` (its ``calibration``), the features are computed from the true energies and placed where
    the spectrum's calibration shows them, like ``line_e``.

    * every true line, +-``tol_kev``;
    * point-like secondary features of the *detectable* lines (:func:`secondary_energies`), +-``tol_kev``;
    * steps: the Compton edge of each detectable line (the continuum drops above it; the interval lies below
      it) and for LYSO the Lu-176 beta onsets (:data:`LU176_ONSETS_KEV`, the continuum rises; the interval
      lies above). A peak search finds the top of a step on its high side, ``step_reach_kev`` (its largest
      wavelet scale) away on a sharp step; a spectrum of finite resolution overshoots there (Gibbs-like) as
      far as about its resolution away. With ``step_reach_fwhm`` > 0 and ``batch["fwhm_params"]``, the reach
      is at least ``step_reach_fwhm`` x the input detector's FWHM at the step - the scale within which the
      measured counts place a step, so the same for every method. Richardson-Lucy (200 iterations) on LYSO
      at 1e6 counts puts its overshoot of the 597 keV onset at 617-626 keV (input FWHM there 62 keV)."""
    b = line_e.shape[0]
    dev = line_e.device
    det = line_detectable & line_mask
    e_true = true_energy(line_e, batch) if batch is not None else line_e

    def shown(e: Tensor) -> Tensor:
        return measured_energy(e, batch) if batch is not None else e.expand(b, -1)

    sec = shown(secondary_energies(e_true, crystal, slab))
    n_per_line = sec.shape[1] // line_e.shape[1]
    sec_m = torch.cat([det] * n_per_line, 1)
    if sec.shape[1] > sec_m.shape[1]:
        sec_m = torch.cat([sec_m, torch.ones(b, sec.shape[1] - sec_m.shape[1], dtype=torch.bool, device=dev)], 1)
    points = torch.cat([line_e, sec], 1)
    points_m = torch.cat([line_mask, sec_m], 1)

    law = batch["fwhm_params"] if batch is not None and "fwhm_params" in batch else None

    def reach(e: Tensor) -> Tensor:
        if law is None:
            return torch.full_like(e, float(step_reach_kev))
        return step_reach(e, step_reach_kev, step_reach_fwhm, law[:, :1], law[:, 1:2])

    ce = shown(compton_edges(e_true))
    lo = [points - tol_kev, ce - reach(ce) - tol_kev]
    hi = [points + tol_kev, ce + tol_kev]
    mask = [points_m, det]
    if crystal == "LYSO":
        on = shown(torch.tensor(LU176_ONSETS_KEV, device=dev))
        lo.append(on - tol_kev)
        hi.append(on + reach(on) + tol_kev)
        mask.append(torch.ones_like(on, dtype=torch.bool))
    return torch.cat(lo, 1), torch.cat(hi, 1), torch.cat(mask, 1)


def secondary_names(crystal: str) -> list[str]:
    """Names of the per-line groups of :func:`secondary_energies`, in its column order."""
    names = ["single escape", "double escape", "backscatter"]
    formula, _ = physics.MATERIALS[crystal]
    for s in formula:
        if s in physics.K_XRAYS:
            names += [f"{s} Ka escape", f"{s} Kb escape"]
    return names


def peak_origins(
    energy: Tensor, area: Tensor, r662: float, power: float, crystal: str | None, tol_kev: float,
    step_reach_kev: float, step_reach_fwhm: float,
) -> dict[str, Tensor]:
    """Where found peaks (``energy`` (K,) keV, net ``area`` (K,)) lie on a feature of another, larger found
    peak or of the crystal - the evaluation's explained features (:func:`explained_intervals`) that a spectrum
    without a truth list can name: not the shielding's K x-rays, which need no parent. Only peaks with a
    positive area are parents. Returns (K,) tensors:

    * ``feature_of_kev`` / ``feature_kind``: the larger peak whose single / double escape, 180-degree
      backscatter or crystal K x-ray escape peak (:func:`secondary_energies`) lies within ``tol_kev``, and the
      index into :func:`secondary_names` (NaN / -1 where none; the largest such parent);
    * ``step_of_kev``: the larger peak whose Compton edge this one lies at most ``step_reach_kev`` or
      ``step_reach_fwhm`` input FWHM (law ``r662``, ``power``) below, or for LYSO the Lu-176 onset
      (:data:`LU176_ONSETS_KEV`) it lies as far above: the top of a step (NaN where none); ``step_kind`` 0 for
      a Compton edge, 1 for a Lu-176 onset, -1 for none.

    A peak there may still be a line of its own; the label says that a known feature can explain it (LYSO's
    onsets cover much of 85-630 keV, so e.g. Na-22's 511 keV line also reads "above the 508.6 keV onset")."""
    k, dev = energy.shape[0], energy.device
    nan = torch.full_like(energy, float("nan"))
    none = torch.full((k,), -1, dtype=torch.long, device=dev)
    out = {"feature_of_kev": nan.clone(), "feature_kind": none.clone(), "step_of_kev": nan.clone(), "step_kind": none.clone()}
    if k == 0 or crystal is None or crystal not in physics.MATERIALS:
        return out
    law = (torch.tensor(r662, device=dev), torch.tensor(power, device=dev))
    no_parent = torch.full((k, k), float("-inf"), device=dev)

    def reach(e: Tensor) -> Tensor:
        return step_reach(e, step_reach_kev, step_reach_fwhm, *law)

    # [i, j]: peak j is larger than peak i and a peak at all
    larger = (area.unsqueeze(0) > area.unsqueeze(1)) & (area > 0).unsqueeze(0)
    n_groups = len(secondary_names(crystal))
    feats = secondary_energies(energy.unsqueeze(0), crystal, "none")[0, : n_groups * k].view(n_groups, k)
    hit = ((energy.view(k, 1, 1) - feats.t().unsqueeze(0)).abs() <= tol_kev) & larger.unsqueeze(2)  # [i, j, g]
    # escape peaks need pair production: a parent above 2 m_e c^2 = 1022 keV
    hit[:, :, :2] &= (energy > 2 * physics.ME_C2).view(1, k, 1)
    parent_area = torch.where(hit.any(2), area.unsqueeze(0).expand(k, -1), no_parent)
    best = parent_area.argmax(1)
    has = hit.any(2).any(1)
    out["feature_of_kev"] = torch.where(has, energy[best], nan)
    out["feature_kind"] = torch.where(has, hit[torch.arange(k, device=dev), best].float().argmax(1), none)
    ce = compton_edges(energy)
    below_edge = (energy.unsqueeze(1) >= (ce - reach(ce) - tol_kev).unsqueeze(0)) & (energy.unsqueeze(1) <= (ce + tol_kev).unsqueeze(0)) & larger
    edge_parent = torch.where(below_edge, area.unsqueeze(0).expand(k, -1), no_parent).argmax(1)
    step = torch.where(below_edge.any(1), energy[edge_parent], nan)
    kind = torch.where(below_edge.any(1), 0, none)
    if crystal == "LYSO":
        on = torch.tensor(LU176_ONSETS_KEV, dtype=energy.dtype, device=dev)
        above = (energy.unsqueeze(1) >= (on - tol_kev).unsqueeze(0)) & (energy.unsqueeze(1) <= (on + reach(on) + tol_kev).unsqueeze(0))
        lu = (kind < 0) & above.any(1)
        step = torch.where(lu, on[above.float().argmax(1)], step)
        kind = torch.where(lu, 1, kind)
    out["step_of_kev"], out["step_kind"] = step, kind
    return out




# ------------------------------------------------------------------ the evaluation's exemption rules

#: the rules of docs/results/gamma.md "Exemption rules", in the order a raw false peak is tried against them
EXEMPTION_RULES = ("x_ray_escape", "pair_escape", "backscatter", "shield_x_ray", "compton_edge", "lu176_onset")
#: Ge K-alpha1 / K-beta1 (keV), X-ray Data Booklet (LBNL 2009) Table 1-2: the escape lines of an HPGe detector
GE_K_XRAYS_KEV = (9.886, 10.982)
#: 1 - cos(150 degrees): the backscatter peak's window runs from the 180-degree to the 150-degree energy
ONE_MINUS_COS_150 = 1.0 + math.sqrt(3.0) / 2.0


def detector_elements(detector: str) -> list[tuple[float, float]]:
    """(K-alpha, K-beta) energies (keV) of the elements of ``detector`` ("HPGe" or a crystal of
    ``physics.MATERIALS``) that emit K x-rays above 5 keV."""
    if detector == "HPGe":
        return [GE_K_XRAYS_KEV]
    formula, _ = physics.MATERIALS[detector]
    return [(physics.K_XRAYS[s][0], physics.K_XRAYS[s][1]) for s in formula if s in physics.K_XRAYS]


def exemption_windows(
    batch: dict[str, Tensor], detector: str, slab: str, tol_kev: float, width_kev: Callable[[Tensor], Tensor],
    lu176: bool,
) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Per rule of :data:`EXEMPTION_RULES`: (lo, hi, mask), each (B, M) keV, the windows in which a raw false
    peak is that rule's feature. Parents are the detectable truth lines of ``batch``; features are computed
    from true energies and placed where the spectrum's calibration shows them. ``detector``: the detector the
    spectrum claims to be ("HPGe" or a crystal); ``width_kev`` maps energies (B, M) to that detector's FWHM;
    ``lu176``: whether that detector holds Lu-176 (LYSO)."""
    le = batch["line_energy"]
    det = batch["line_detectable"].bool() & batch["line_mask"].bool()
    e_true = true_energy(le, batch)
    b, dev = le.shape[0], le.device
    shown = lambda e: measured_energy(e, batch)  # noqa: E731
    out: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
    lo, hi, m = [], [], []
    for ka, kb in detector_elements(detector):
        for ek in (ka, kb):
            c = shown(e_true - ek)
            lo.append(c - tol_kev)
            hi.append(c + tol_kev)
            m.append(det & (e_true > kb))  # the parent must reach the K edge (taken as the K-beta energy)
    out["x_ray_escape"] = _cat(lo, hi, m, b, dev)
    above = det & (e_true > 2 * physics.ME_C2)
    se, de = shown(e_true - physics.ME_C2), shown(e_true - 2 * physics.ME_C2)
    out["pair_escape"] = _cat([se - tol_kev, de - tol_kev], [se + tol_kev, de + tol_kev], [above, above], b, dev)
    bs180 = shown(e_true / (1 + 2 * e_true / physics.ME_C2))
    bs150 = shown(e_true / (1 + ONE_MINUS_COS_150 * e_true / physics.ME_C2))
    out["backscatter"] = (bs180 - tol_kev, bs150 + tol_kev, det)
    if slab in physics.K_XRAYS:
        kx = shown(torch.tensor(physics.K_XRAYS[slab][:2], device=dev).expand(b, -1))
        out["shield_x_ray"] = (kx - tol_kev, kx + tol_kev, torch.ones_like(kx, dtype=torch.bool))
    else:
        out["shield_x_ray"] = _cat([], [], [], b, dev)
    ce = shown(compton_edges(e_true))
    out["compton_edge"] = (ce - width_kev(ce) - tol_kev, ce + tol_kev, det)
    if lu176:
        on = shown(torch.tensor(LU176_ONSETS_KEV, device=dev).expand(b, -1))
        out["lu176_onset"] = (on - tol_kev, on + width_kev(on) + tol_kev, torch.ones_like(on, dtype=torch.bool))
    else:
        out["lu176_onset"] = _cat([], [], [], b, dev)
    return out


def _cat(lo: list[Tensor], hi: list[Tensor], m: list[Tensor], b: int, dev: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    if not lo:
        z = torch.zeros(b, 0, device=dev)
        return z, z, z.bool()
    return torch.cat(lo, 1), torch.cat(hi, 1), torch.cat(m, 1)


def classify_false_peaks(
    energy: Tensor, false: Tensor, windows: dict[str, tuple[Tensor, Tensor, Tensor]],
) -> dict[str, Tensor]:
    """Assign each raw false peak (``energy`` (B, K) keV, ``false`` (B, K) bool) to the first rule of
    :data:`EXEMPTION_RULES` whose window holds it. Returns per rule, and ``unexplained``, a (B, K) bool."""
    left = false.clone()
    out: dict[str, Tensor] = {}
    e = energy.unsqueeze(2)
    for rule in EXEMPTION_RULES:
        lo, hi, m = windows[rule]
        if lo.shape[1] == 0:
            out[rule] = torch.zeros_like(false)
            continue
        inside = ((e >= lo.unsqueeze(1)) & (e <= hi.unsqueeze(1)) & m.unsqueeze(1)).any(2)
        out[rule] = left & inside
        left = left & ~inside
    out["unexplained"] = left
    return out
