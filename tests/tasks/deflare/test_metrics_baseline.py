import pytest
import torch

from neurotrain.tasks.deflare.baseline import ba_filter, flicker_filter
from neurotrain.tasks.deflare.metrics import build_metrics, compute_all, update_all


def _score(out, tgt, inp, mask=None):
    m = build_metrics()
    update_all(m, out, tgt, inp, mask)
    return compute_all(m)


def test_identity_and_perfect_deflare_scores():
    inp = torch.tensor([3.0, 2.0, -1.0, 0.0, 4.0])
    tgt = torch.tensor([1.0, 2.0, -1.0, 0.0, 4.0])
    mask = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    ident = _score(inp, tgt, inp, mask)
    assert ident["flare_removal_rate"] == 0 and ident["background_removal_rate"] == 0
    assert ident["light_preservation"] == 1
    perfect = _score(tgt, tgt, inp, mask)
    assert perfect["flare_removal_rate"] == 1 and perfect["background_removal_rate"] == 0
    assert perfect["event_count_ratio"] == 1 and perfect["voxel_mse"] == 0
    wipe = _score(torch.zeros(5), tgt, inp, mask)
    assert wipe["flare_removal_rate"] == 1 and wipe["background_removal_rate"] == 1 and wipe["light_preservation"] == 0


def test_removals_count_as_flare_first_inside_a_cell():
    inp, tgt = torch.tensor([4.0]), torch.tensor([2.0])
    r = _score(torch.tensor([3.0]), tgt, inp)
    assert r["flare_removal_rate"] == pytest.approx(0.5) and r["background_removal_rate"] == 0
    r = _score(torch.tensor([1.0]), tgt, inp)  # one removal too many: that one is background
    assert r["flare_removal_rate"] == 1 and r["background_removal_rate"] == pytest.approx(0.5)
    r = _score(torch.tensor([-4.0]), tgt, inp)  # wrong sign keeps nothing
    assert r["flare_removal_rate"] == 1 and r["background_removal_rate"] == 1


def test_ba_filter_removes_isolated_events_keeps_clusters():
    v = torch.zeros(8, 10, 10)
    v[3, 1, 1] = 1  # isolated
    v[5, 6:9, 6:9] = 1  # 3x3 cluster
    out = ba_filter(v, window_bins=1)
    assert out[3, 1, 1] == 0
    assert out[5, 6:9, 6:9].sum() == 9


def test_flicker_filter_removes_100hz_pixel_keeps_moving_edge():
    v = torch.zeros(8, 4, 4)
    v[:, 0, 0] = torch.tensor([2.0, 2.0, -2.0, -2.0, 2.0, 2.0, -2.0, -2.0])  # 100 Hz at 2.5 ms bins
    v[2:4, 2, 2] = 3.0  # an edge passing: one polarity, two bins
    out = flicker_filter(v, duration_us=20_000)
    assert out[:, 0, 0].abs().sum() == 0
    assert torch.equal(out[:, 2, 2], v[:, 2, 2])
