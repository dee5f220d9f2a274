"""Classical deconvolution baselines: Richardson-Lucy and boosted Gold (what ROOT TSpectrum users run).

Both invert the scintillator's resolution: the response matrix A[k, j] is the probability that a deposit at
channel centre j is recorded in channel k, a Gaussian of the input FWHM law FWHM(E) = r * 662 * (E/662)^p
(the same law the simulator and the network's conditioning use). The deconvolved deposit spectrum is then
shown at HPGe resolution (the simulator's target law), so it is comparable with the target.

* Richardson-Lucy (Richardson, JOSA 62, 55 (1972); Lucy, AJ 79, 745 (1974)):
  x <- x * A^T (y / A x) / A^T 1.
* Gold (Gold, ANL-6984 (1964)), boosted as in Morhac et al., NIM A 401, 113 (1997) and ROOT's
  ``TSpectrum::Deconvolution``: with A' = A^T A and y' = A^T y, x <- x * y' / (A' x) for ``iterations``
  steps, then x <- x^boost, repeated ``repetitions`` times.

All operations are batched matrix products on the device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from neurotrain.tasks.gamma.simulate import (
    broaden, channel_edges, hpge_fwhm, scint_fwhm,
)


def resolution_matrix(edges: Tensor, r662: float, power: float) -> Tensor:
    """A (N, N): column j = Gaussian of FWHM(E_j) centred on channel centre j, integrated over channels."""
    centers = 0.5 * (edges[1:] + edges[:-1])
    sig = (scint_fwhm(centers, torch.tensor(r662), torch.tensor(power)) / 2.3548200450309493).clamp_min(1e-3)
    cdf = torch.special.ndtr((edges.view(-1, 1) - centers.view(1, -1)) / sig.view(1, -1))  # (N+1, N)
    a = cdf[1:] - cdf[:-1]
    return a / a.sum(0, keepdim=True).clamp_min(1e-12)


def richardson_lucy(y: Tensor, a: Tensor, iterations: int = 200, init: Tensor | None = None) -> Tensor:
    """Richardson-Lucy deconvolution of spectra ``y`` (B, N) with response ``a`` (N, N), started from ``init``
    (B, N) or, by default, from a flat spectrum of the same total."""
    return richardson_lucy_path(y, a, [iterations], init)[iterations]


def richardson_lucy_path(y: Tensor, a: Tensor, snapshots: list[int], init: Tensor | None = None) -> dict[int, Tensor]:
    """Richardson-Lucy iterates (B, N) after each number of iterations in ``snapshots``, from one run (the
    sweep of ``tuning.py`` costs what its longest setting costs)."""
    y = y.clamp_min(0)
    norm = a.sum(0).clamp_min(1e-12)  # A^T 1
    if init is None:
        x = torch.full_like(y, 1.0) * (y.sum(1, keepdim=True) / y.shape[1]).clamp_min(1e-6)
    else:
        # a zero channel would stay zero under the multiplicative update
        x = init.clamp_min(1e-6 * float(y.mean().clamp_min(1e-6)))
    want = set(int(k) for k in snapshots)
    out: dict[int, Tensor] = {0: x} if 0 in want else {}
    for it in range(1, max(want) + 1):  # the iterations are the algorithm; each is a batched matmul
        est = (x @ a.T).clamp_min(1e-12)
        x = x * ((y / est) @ a) / norm
        if it in want:
            out[it] = x
    return out


def gold(y: Tensor, a: Tensor, iterations: int = 200, repetitions: int = 5, boost: float = 1.2) -> Tensor:
    """Boosted Gold deconvolution (Morhac 1997) of ``y`` (B, N) with response ``a`` (N, N)."""
    return gold_path(y, a, iterations, repetitions, boost)[repetitions]


def gold_path(y: Tensor, a: Tensor, iterations: int, repetitions: int, boost: float = 1.2) -> dict[int, Tensor]:
    """Boosted Gold (Morhac et al., NIM A 401 (1997) 113): ``iterations`` Gold steps x <- x A'^T y / (A' x)
    with A' = A^T A, then x <- x^boost, ``repetitions`` times; the iterate after each repetition r (1-based,
    before that repetition's boost), rescaled so that A x keeps the measured total."""
    y = y.clamp_min(0)
    at_a = a.T @ a
    yp = y @ a  # A^T y per row
    x = torch.ones_like(y) * (y.sum(1, keepdim=True) / y.shape[1]).clamp_min(1e-6)
    total = y.sum(1, keepdim=True)
    out: dict[int, Tensor] = {}
    for rep in range(1, repetitions + 1):
        for _ in range(iterations):
            x = x * yp / (x @ at_a.T).clamp_min(1e-12)
        # restore the total counts (boosting changes the scale)
        out[rep] = x * (total / (x @ a.T).sum(1, keepdim=True).clamp_min(1e-12))
        if rep < repetitions:
            x = x.clamp_min(0) ** boost
            x = x * (total / (x @ a.T).sum(1, keepdim=True).clamp_min(1e-12))  # keep the scale bounded
    return out


def show_at_target(cfg: Any, x: Tensor) -> Tensor:
    """Deconvolved deposits (B, N) shown at the target detector's resolution (``eval_score.target_law``: the
    germanium law with the HPGe target, the ``hpge_fwhm_anchors`` fit otherwise), (B, N)."""
    from neurotrain.tasks.gamma.eval_score import target_law

    sim = cfg.simulate
    edges = channel_edges(sim, x.device)
    centers = 0.5 * (edges[1:] + edges[:-1])
    fw = hpge_fwhm(centers, target_law(cfg)).unsqueeze(0).expand(x.shape[0], -1)
    return broaden(x, edges, fw)


def run_baseline(cfg: Any, counts: Tensor, r662: float | None = None, power: float | None = None) -> Tensor:
    """Deconvolve (B, N) spectra with the configured method and show them at HPGe resolution (B, N)."""
    bc = cfg.baseline
    sim = cfg.simulate
    edges = channel_edges(sim, counts.device)
    a = resolution_matrix(edges, bc.fwhm_662 if r662 is None else r662, bc.power if power is None else power)
    if bc.method == "gold":
        x = gold(counts, a, bc.iterations, bc.boost_repetitions, bc.boost)
    else:
        x = richardson_lucy(counts, a, bc.iterations)
    return show_at_target(cfg, x)
