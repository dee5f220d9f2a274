"""Per-label metrics against hand-computed NumPy values, with masks, network outputs and batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurotrain.tasks.stellar.config import StellarConfig
from neurotrain.tasks.stellar.metrics import (
    LabelBias, LabelCoverage, LabelMAE, LabelR2, LabelRMSE, LabelRMSEOverCRLB, LabelRobustScatter, build_metrics,
    label_metrics, to_floats,
)

NAMES = ["TEFF", "FE_H"]
TRUE = np.array([[5000.0, -0.5], [5200.0, 0.0], [4800.0, 0.2], [6000.0, -1.0], [5500.0, 0.1]])
PRED = np.array([[5050.0, -0.4], [5150.0, 0.1], [4900.0, 0.1], [6300.0, -0.7], [5480.0, 0.4]])
SIGMA = np.array([[60.0, 0.05], [40.0, 0.2], [90.0, 0.2], [200.0, 0.5], [30.0, 0.1]])
CRLB = np.array([[40.0, 0.1], [40.0, 0.1], [50.0, 0.1], [80.0, 0.2], [40.0, 0.1]])
#: FE_H of star 2 unknown
MASK = np.array([[1, 1], [1, 1], [1, 0], [1, 1], [1, 1]], bool)


def _t(a):
    return torch.tensor(a)


def _reference() -> dict[str, list[float]]:
    ref: dict[str, list[float]] = {k: [] for k in ("bias", "scatter", "mae", "rmse", "r2", "coverage", "rmse_crlb")}
    for j in range(2):
        k = MASK[:, j]
        r = PRED[k, j] - TRUE[k, j]
        y = TRUE[k, j]
        ref["bias"].append(r.mean())
        ref["scatter"].append(1.4826 * np.median(np.abs(r - np.median(r))))
        ref["mae"].append(np.abs(r).mean())
        ref["rmse"].append(np.sqrt((r**2).mean()))
        ref["r2"].append(1 - (r**2).sum() / ((y - y.mean()) ** 2).sum())
        ref["coverage"].append((np.abs(r) <= SIGMA[k, j]).mean())
        ref["rmse_crlb"].append(np.sqrt((r**2).sum() / (CRLB[k, j] ** 2).sum()))
    return ref


@pytest.mark.parametrize("split", [False, True])
def test_every_metric_matches_numpy(split: bool) -> None:
    coll = label_metrics(NAMES)
    pred = {"mean": _t(PRED), "sigma": _t(SIGMA)}
    batch = {"target": _t(TRUE), "target_mask": _t(MASK), "crlb": _t(CRLB)}
    if split:  # two updates (as over two batches) give the same result
        for s in (slice(0, 2), slice(2, 5)):
            coll.update({k: v[s] for k, v in pred.items()}, {k: v[s] for k, v in batch.items()})
    else:
        coll.update(pred, batch)
    got = to_floats(coll.compute())
    ref = _reference()
    for stat, vals in ref.items():
        for j, name in enumerate(NAMES):
            assert got[stat][name] == pytest.approx(vals[j], rel=1e-9, abs=1e-12), (stat, name)


def test_hand_values_of_teff() -> None:
    """TEFF residuals 50, -50, 100, 300, -20 K: written out by hand."""
    m = LabelBias(NAMES)
    m.update({"mean": _t(PRED)}, {"target": _t(TRUE)})
    assert m.compute()["bias/TEFF"].item() == pytest.approx(76.0)
    s = LabelRobustScatter(NAMES)
    s.update({"mean": _t(PRED)}, {"target": _t(TRUE)})
    # median 50; |r - 50| = 0, 100, 50, 250, 70 -> median 70
    assert s.compute()["scatter/TEFF"].item() == pytest.approx(1.4826 * 70)
    c = LabelCoverage(NAMES)
    c.update({"mean": _t(PRED), "sigma": _t(SIGMA)}, {"target": _t(TRUE)})
    # |r| <= sigma: 50<=60 yes, 50<=40 no, 100<=90 no, 300<=200 no, 20<=30 yes -> 2/5
    assert c.compute()["coverage/TEFF"].item() == pytest.approx(0.4)


def test_network_output_and_nan_targets() -> None:
    mean, std = [5000.0, 0.0], [500.0, 0.5]
    rmse = LabelRMSE(NAMES, mean, std)
    cov = LabelCoverage(NAMES, mean, std, min_sigma=0.0)
    # normalised (0.2, 1.0) -> physical (5100, 0.5); log var log(0.04) -> sigma 0.2 x std = (100, 0.1)
    out = torch.tensor([[0.2, 1.0, math.log(0.04), math.log(0.04)]] * 2)
    batch = {"target": torch.tensor([[5010.0, 0.45], [5300.0, float("nan")]])}
    for m in (rmse, cov):
        m.update(out, batch)
    r = rmse.compute()
    assert r["rmse/TEFF"].item() == pytest.approx(math.sqrt((90.0**2 + 200.0**2) / 2))
    assert r["rmse/FE_H"].item() == pytest.approx(0.05)
    c = cov.compute()
    assert c["coverage/TEFF"].item() == pytest.approx(0.5)  # 90 <= 100 in, 200 > 100 out
    assert c["coverage/FE_H"].item() == pytest.approx(1.0)


def test_never_known_label_is_nan_and_crlb_optional() -> None:
    m = LabelMAE(NAMES)
    m.update({"mean": _t(PRED)}, {"target": _t(TRUE), "target_mask": _t(np.c_[MASK[:, 0], np.zeros(5, bool)])})
    assert math.isnan(m.compute()["mae/FE_H"].item())
    q = LabelRMSEOverCRLB(NAMES)
    q.update({"mean": _t(PRED)}, {"target": _t(TRUE)})
    assert math.isnan(q.compute()["rmse_crlb/TEFF"].item())
    r2 = LabelR2(NAMES)
    r2.update({"mean": _t(TRUE)}, {"target": _t(TRUE)})
    assert r2.compute()["r2/TEFF"].item() == pytest.approx(1.0)


def test_build_metrics_from_config() -> None:
    cfg = StellarConfig.model_validate({"labels": {"names": NAMES}})
    coll = build_metrics(cfg)
    out = torch.zeros(4, 4)  # the prior: mean of the label ranges
    coll.update(out, {"target": torch.tensor([[5400.0, -0.75]] * 4)})
    vals = coll.compute()
    assert vals["rmse/TEFF"].item() == pytest.approx(0.0, abs=1e-6)
    assert "rmse_crlb/TEFF" not in vals
    assert set(to_floats(vals)) == {"bias", "scatter", "mae", "rmse", "r2", "coverage"}
