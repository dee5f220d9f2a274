"""Tuning of the classical baselines per crystal and count level, on validation spectra that the test never
sees (docs/results/gamma.md, "Classical baselines, tuned per count level").

Richardson-Lucy is swept over ``baseline.rl_iterations`` (one run, snapshots), boosted Gold (Morháč et al.,
NIM A 401 (1997) 113) over ``baseline.gold_iterations`` per repetition x 1..``baseline.gold_repetitions``
boost repetitions (boost ``baseline.boost``). Each setting's output, shown at the target resolution, goes
through the evaluation's own peak search and truth matching (:mod:`eval_score`); of the settings whose
unexplained false peaks per spectrum stay within the budget (the network's on the same spectra, or
``baseline.false_peak_budget``) the one of highest recall is kept (ties: fewer unexplained false peaks, then
fewer iterations); when none is within budget, the one with the fewest. ``baseline.stop_rule: discrepancy``
instead stops Richardson-Lucy per spectrum at the first snapshot whose Poisson chi^2 per channel against the
measured counts is <= 1 (Morozov's discrepancy principle), with no validation set needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from neurotrain.tasks.gamma.baseline import (
    gold, gold_path, resolution_matrix, richardson_lucy, richardson_lucy_path, show_at_target,
)
from neurotrain.tasks.gamma.eval_score import found_peaks, peak_counts
from neurotrain.tasks.gamma.simulate import channel_edges


@dataclass(frozen=True)
class Setting:
    """One baseline setting: ``method`` "rl", "rl_discrepancy" (iterations = the longest allowed) or "gold"."""

    method: str
    iterations: int
    repetitions: int = 1
    boost: float = 1.0

    def label(self) -> str:
        if self.method == "gold":
            return f"Gold {self.iterations} x {self.repetitions} (boost {self.boost:g})"
        if self.method == "rl_discrepancy":
            return f"RL, discrepancy stop (<= {self.iterations})"
        return f"RL {self.iterations}"


def _matrix(cfg: Any, batch: dict[str, Tensor]) -> Tensor:
    """The resolution matrix of the FWHM law the methods are given (``batch["fwhm_params"]``; one law per
    evaluation set, the first spectrum's)."""
    r662, power = (float(v) for v in batch["fwhm_params"][0])
    return resolution_matrix(channel_edges(cfg.simulate, batch["counts"].device), r662, power)


def rl_discrepancy(y: Tensor, a: Tensor, snapshots: list[int]) -> tuple[Tensor, Tensor]:
    """Richardson-Lucy stopped per spectrum at the first snapshot whose chi^2 per channel, sum (y - A x)^2 /
    max(y, 1) / N, is <= 1; the last snapshot where none is. Returns (x (B, N), iterations (B,))."""
    path = richardson_lucy_path(y, a, snapshots)
    its = sorted(path)
    xs = torch.stack([path[i] for i in its], 0)  # (S, B, N)
    chi2 = (((y.unsqueeze(0) - xs @ a.T) ** 2) / y.clamp_min(1.0).unsqueeze(0)).mean(2)  # (S, B)
    ok = chi2 <= 1.0
    ok[-1] = True
    first = ok.float().argmax(0)  # (B,)
    x = xs.gather(0, first.view(1, -1, 1).expand(1, -1, y.shape[1]))[0]
    return x, torch.tensor(its, device=y.device)[first]


def run_setting(cfg: Any, batch: dict[str, Tensor], setting: Setting) -> Tensor:
    """The baseline's spectrum (B, N counts) at the target resolution for ``setting``."""
    y, a = batch["counts"].float(), _matrix(cfg, batch)
    if setting.method == "gold":
        x = gold(y, a, setting.iterations, setting.repetitions, setting.boost)
    elif setting.method == "rl_discrepancy":
        x, _ = rl_discrepancy(y, a, [i for i in cfg.baseline.rl_iterations if i <= setting.iterations])
    else:
        x = richardson_lucy(y, a, setting.iterations)
    return show_at_target(cfg, x)


def _stats(cfg: Any, crystal: str, spec: Tensor, batch: dict[str, Tensor]) -> dict[str, float]:
    c = peak_counts(cfg, crystal, "rl_tuned", found_peaks(cfg, spec, batch, measured_domain=False), batch)
    n = max(1, c["raw_false"].shape[0])
    return {
        "recall": round(float(c["lines_found"].sum() / c["lines"].sum().clamp_min(1)), 4),
        "unexplained": round(float(c["unexplained"].sum()) / n, 4),
        "raw_false": round(float(c["raw_false"].sum()) / n, 4),
    }


def sweep(cfg: Any, crystal: str, batch: dict[str, Tensor], method: str) -> list[tuple[Setting, dict[str, float]]]:
    """Every setting of ``method`` ("rl" or "gold") with its validation recall and false peaks."""
    bc = cfg.baseline
    y, a = batch["counts"].float(), _matrix(cfg, batch)
    out: list[tuple[Setting, dict[str, float]]] = []
    if method == "rl":
        for it, x in sorted(richardson_lucy_path(y, a, bc.rl_iterations).items()):
            out.append((Setting("rl", it), _stats(cfg, crystal, show_at_target(cfg, x), batch)))
    else:
        for it in bc.gold_iterations:
            for rep, x in sorted(gold_path(y, a, it, bc.gold_repetitions, bc.boost).items()):
                out.append((Setting("gold", it, rep, bc.boost), _stats(cfg, crystal, show_at_target(cfg, x), batch)))
    return out


def choose(results: list[tuple[Setting, dict[str, float]]], budget: float) -> Setting:
    """The setting of highest recall within ``budget`` unexplained false peaks per spectrum (ties: fewer false
    peaks, then fewer iterations); the fewest false peaks when none is within budget."""
    cost = lambda s: s.iterations * s.repetitions  # noqa: E731
    within = [(s, r) for s, r in results if r["unexplained"] <= budget + 1e-9]
    if within:
        return min(within, key=lambda sr: (-sr[1]["recall"], sr[1]["unexplained"], cost(sr[0])))[0]
    return min(results, key=lambda sr: (sr[1]["unexplained"], -sr[1]["recall"], cost(sr[0])))[0]


def tune(cfg: Any, crystal: str, batch: dict[str, Tensor], budget: float | None) -> dict[str, Any]:
    """Tuned Richardson-Lucy and Gold settings for one (crystal, count level) from validation ``batch``.
    ``budget``: unexplained false peaks per spectrum allowed (None: ``baseline.false_peak_budget``).
    Returns ``{"budget", "rl": Setting, "gold": Setting, "sweep": {method: [setting + stats]}}``."""
    bc = cfg.baseline
    b = bc.false_peak_budget if budget is None else float(budget)
    out: dict[str, Any] = {"budget": round(b, 4), "sweep": {}}
    for method in ("rl", "gold"):
        res = sweep(cfg, crystal, batch, method)
        out["sweep"][method] = [{**asdict(s), "label": s.label(), **r} for s, r in res]
        out[method] = choose(res, b)
    if bc.stop_rule == "discrepancy":
        out["rl"] = Setting("rl_discrepancy", max(bc.rl_iterations))
    return out


def untuned(cfg: Any) -> dict[str, Any]:
    """The configured settings (``baseline.iterations``, ``boost_repetitions``), when no tuning runs."""
    bc = cfg.baseline
    rl = Setting("rl_discrepancy", max(bc.rl_iterations)) if bc.stop_rule == "discrepancy" else Setting("rl", bc.iterations)
    return {"budget": None, "sweep": {}, "rl": rl, "gold": Setting("gold", bc.iterations, bc.boost_repetitions, bc.boost)}
