"""Operating curves of the peak search (recall and false peaks per spectrum against the detection threshold),
for a training-time look at the trade-off; ``neurotrain evaluate`` compares methods at equal false-peak rate
through ``tuning.py`` instead."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import Tensor


def detection_tradeoff(cfg: Any, pred: Tensor, batch: dict[str, Tensor], thresholds: list[float]) -> dict[str, list[float]]:
    """The peak search's operating curve on ``pred``: for each detection threshold (sigma), the recall of the
    detectable true lines, the false peaks per spectrum with its Poisson standard error (sqrt(false peaks) /
    spectra) and the precision. What counts as explained stays that of ``cfg.metrics.detect_threshold`` (the
    target's peaks at that threshold), so only the method's search moves along the curve."""
    from neurotrain.tasks.gamma.metrics import peak_detection

    det = peak_detection(cfg).to(pred.device)
    curve: dict[str, list[float]] = {"threshold": [], "recall": [], "false_rate": [], "false_rate_err": [], "precision": []}
    explained = None
    for t in sorted(set(float(x) for x in thresholds)):
        peaks, energy = det.find(pred, batch, t)
        if explained is None:  # channel energies, and so what is explained, are the same at every threshold
            explained = det.explained(energy, batch)
        det.reset()
        det.update(pred, batch, search=(peaks, energy, explained))
        out = det.compute()
        n_spec = max(1.0, float(det.spectra))
        curve["threshold"].append(t)
        curve["recall"].append(round(float(out["det_recall"]), 4))
        curve["false_rate"].append(round(float(out["det_false_rate"]), 4))
        curve["false_rate_err"].append(round(math.sqrt(float(det.fp)) / n_spec, 4))
        curve["precision"].append(round(float(out["det_precision"]), 4))
    return curve


def false_rate_at_recall(curve: dict[str, list[float]], recall: float) -> tuple[float | None, str]:
    """False peaks per spectrum of ``curve`` (:func:`detection_tradeoff`) at ``recall``, linear between the
    curve's points, with "=" inside its recall range. Above the range's top there is no value
    (``None``, ">": the method never finds that many lines); below its bottom the value at the curve's lowest
    recall is an upper bound (``"<="``), as raising the threshold further only removes peaks."""
    r = np.asarray(curve["recall"], dtype=float)
    f = np.asarray(curve["false_rate"], dtype=float)
    if r.size == 0 or recall > r.max() + 1e-9:
        return None, ">"
    if recall < r.min() - 1e-9:
        return float(f[np.argmin(r)]), "<="
    order = np.lexsort((f, r))
    r, f = r[order], f[order]
    first = np.concatenate([[True], r[1:] > r[:-1]])  # of equal recalls, the fewest false peaks
    return float(np.interp(recall, r[first], f[first])), "="
