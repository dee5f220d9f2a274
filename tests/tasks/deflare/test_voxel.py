import pytest
import torch

from neurotrain.tasks.deflare.voxel import (
    active_bins_mask,
    bin_lower_edges,
    crop_to,
    events_to_voxel,
    pad_to_multiple,
    voxel_to_events,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("duration,bins", [(20_000, 8), (1_003, 7), (8, 8)])
def test_encode_decode_encode_is_exact(duration, bins):
    v = torch.randint(-4, 5, (3, bins, 6, 11), generator=_gen()).float()
    starts = torch.tensor([0, duration, 5 * duration])
    ev = voxel_to_events(v, duration_us=duration, t_start=starts, generator=_gen(1))
    assert ev["t"].shape[0] == int(v.abs().sum())
    assert torch.all(ev["t"][1:] >= ev["t"][:-1])  # time-sorted
    v2 = events_to_voxel(
        ev["t"], ev["x"], ev["y"], ev["p"], num_bins=bins, sensor_size=(6, 11), duration_us=duration,
        t_start=starts, segment=ev["segment"], num_segments=3,
    )
    assert torch.equal(v2, v)


def test_decoded_timestamps_lie_in_their_bins_and_are_seeded():
    v = torch.zeros(8, 2, 2)
    v[3, 1, 0] = 5
    v[7, 0, 1] = -2
    ev = voxel_to_events(v, duration_us=20_000, t_start=40_000, generator=_gen(3))
    pos = ev["p"] > 0
    assert torch.all((ev["t"][pos] >= 40_000 + 7_500) & (ev["t"][pos] < 40_000 + 10_000))
    assert torch.all((ev["t"][~pos] >= 40_000 + 17_500) & (ev["t"][~pos] < 60_000))
    assert torch.all(ev["x"][pos] == 0) and torch.all(ev["y"][pos] == 1)
    again = voxel_to_events(v, duration_us=20_000, t_start=40_000, generator=_gen(3))
    assert torch.equal(ev["t"], again["t"])
    other = voxel_to_events(v, duration_us=20_000, t_start=40_000, generator=_gen(4))
    assert not torch.equal(ev["t"], other["t"])


def test_encoding_bins_polarity_and_window():
    t = torch.tensor([0, 2_499, 2_500, 19_999, 20_000, -1])
    x = torch.tensor([0, 0, 1, 2, 2, 2])
    y = torch.zeros(6, dtype=torch.long)
    p = torch.tensor([1, -1, 1, 1, 1, 1])
    v = events_to_voxel(t, x, y, p, num_bins=8, sensor_size=(1, 3), duration_us=20_000)
    assert v[0, 0, 0] == 0  # +1 and -1 in the same cell cancel (the seed's encoding)
    assert v[1, 0, 1] == 1 and v[7, 0, 2] == 1
    assert v.abs().sum() == 2  # events at 20000 and -1 are outside the window


def test_bilinear_conserves_polarity_and_splits_between_bins():
    t = torch.tensor([0, 10_000])
    v = events_to_voxel(t, torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([1.0, -1.0]), num_bins=3,
                        sensor_size=(1, 2), duration_us=20_000, method="bilinear")
    assert v[0, 0, 0] == pytest.approx(1.0)
    assert v[:, 0, 1].tolist() == pytest.approx([0.0, -1.0, 0.0])  # t* = 1 exactly
    t2 = torch.tensor([5_000])
    v2 = events_to_voxel(t2, torch.tensor([0]), torch.tensor([0]), torch.tensor([1.0]), num_bins=3,
                         sensor_size=(1, 1), duration_us=20_000, method="bilinear")
    assert v2[:, 0, 0].tolist() == pytest.approx([0.5, 0.5, 0.0])


def test_bin_edges_cover_every_microsecond_once():
    e = bin_lower_edges(7, 1_003)
    assert e[0] == 0 and e[-1] == 1_003 and torch.all(e[1:] > e[:-1])
    r = torch.arange(1_003)
    b = (r * 7) // 1_003
    assert torch.all((r >= e[b]) & (r < e[b + 1]))


def test_pad_and_crop_round_trip():
    v = torch.randn(2, 1, 8, 37, 45)
    p, size = pad_to_multiple(v, 8)
    assert p.shape[-2:] == (40, 48) and size == (37, 45)
    assert torch.equal(crop_to(p, size), v)
    assert p[..., 37:, :].abs().sum() == 0


def test_active_bins_mask_limits_partial_segments():
    starts = torch.tensor([0, 20_000])
    m = active_bins_mask(starts, 8, 20_000, t_first=3_000, t_last=24_000)
    assert m[0].tolist() == [False, True, True, True, True, True, True, True]
    assert m[1].tolist() == [True, True, False, False, False, False, False, False]


def test_partial_bins_draw_timestamps_inside_the_recording():
    v = torch.zeros(2, 8, 1, 1)
    v[0, 0, 0, 0] = 50  # first bin [0, 2500) but the recording starts at 2000
    v[1, 7, 0, 0] = -50  # last bin [37500, 40000) but the recording ends at 37600
    starts = torch.tensor([0, 20_000])
    ev = voxel_to_events(v, duration_us=20_000, t_start=starts, generator=_gen(), t_min=2_000, t_max=37_600)
    pos = ev["p"] > 0
    assert ev["t"][pos].min() >= 2_000 and ev["t"][pos].max() < 2_500
    assert ev["t"][~pos].min() >= 37_500 and ev["t"][~pos].max() <= 37_600
    v2 = events_to_voxel(ev["t"], ev["x"], ev["y"], ev["p"], num_bins=8, sensor_size=(1, 1), duration_us=20_000,
                         t_start=starts, segment=ev["segment"], num_segments=2)
    assert torch.equal(v2, v)
