"""Per-event metrics against hand-computed cases."""

import math

import pytest
import torch

from neurotrain.tasks.deflare.metrics import LABELS, EventMetrics, event_structural_ratio


def _run(score, label, **kw):
    m = EventMetrics()
    m.update(torch.tensor(score), torch.tensor(label), **kw)
    return {k: float(v) for k, v in m.compute().items()}


def test_event_metrics_hand_computed():
    #        scene scene scene light glare glare glare flick noise hot
    label = [0, 0, 0, 1, 2, 2, 2, 5, 6, 7]
    score = [1.0, 1.0, 0.2, 1.0, 0.0, 0.3, 0.9, 0.0, 0.0, 1.0]
    r = _run(score, label, threshold=0.5)
    # dropped: scene #3, glare #5 #6, flicker #8, noise #9
    assert r["flare_recall"] == pytest.approx(3 / 4)
    assert r["flare_precision"] == pytest.approx(3 / 4)  # 3 flare among 4 dropped non-noise events
    assert r["flare_f1"] == pytest.approx(3 / 4)
    assert r["scene_kept"] == pytest.approx(2 / 3) and r["light_kept"] == 1.0
    assert r["signal_kept"] == pytest.approx(3 / 4)
    assert r["noise_removed"] == pytest.approx(1 / 2)
    assert r["kept_fraction"] == pytest.approx(5 / 10)
    # flare scores 1 - score of flare [1, .7, .1, 1] vs signal [0, 0, .8, 0]: 14 of 16 pairs ordered
    assert r["flare_auroc"] == pytest.approx(14 / 16, abs=1e-6)


def test_identity_recall_zero_keeps_everything():
    label = torch.randint(0, len(LABELS), (1000,), generator=torch.Generator().manual_seed(0))
    r = _run(torch.ones(1000).tolist(), label.tolist())
    assert r["flare_recall"] == 0 and r["flare_f1"] == 0 and r["kept_fraction"] == 1
    assert r["signal_kept"] == 1 and r["noise_removed"] == 0
    assert r["flare_auroc"] == pytest.approx(0.5)
    assert math.isnan(r["flare_precision"])  # nothing dropped: precision undefined


def test_esr_hand_computed():
    # packet of N=4 events, M=2, two pixels with counts 3 and 1:
    # NTSS = 3*2 / (4*3) = 0.5; L = 2 - (0.5^3 + 0.5^1) = 1.375; ESR = sqrt(0.6875)
    x = torch.tensor([0, 0, 0, 1, 1])  # the 5th event is not a full packet: ignored
    y = torch.zeros(5, dtype=torch.long)
    assert event_structural_ratio(x, y, (1, 2), n=4, m=2) == pytest.approx(math.sqrt(0.6875))
    assert math.isnan(event_structural_ratio(x[:3], y[:3], (1, 2), n=4, m=2))
