"""Per-event classical filters: STCF/BAF against a brute-force count, AFK on a constructed case."""

import numpy as np
import torch

from neurotrain.tasks.deflare.baseline import afk_keep, neighbour_support, stcf_keep


def test_neighbour_support_equals_brute_force():
    r = np.random.default_rng(0)
    n, h, w = 400, 6, 7
    b = r.integers(0, 2, n)
    t = np.sort(r.integers(0, 20_000, n))
    x, y = r.integers(0, w, n), r.integers(0, h, n)
    tau = 3_000
    brute = []
    for i in range(n):
        s = 0
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dx == dy == 0:
                    continue
                m = (b == b[i]) & (x == x[i] + dx) & (y == y[i] + dy) & (t <= t[i])
                if m.any() and t[i] - t[m].max() <= tau:
                    s += 1
        brute.append(s)
    T = lambda a: torch.from_numpy(a)  # noqa: E731
    got = neighbour_support(T(b), T(t), T(x), T(y), (h, w), tau)
    assert got.tolist() == brute
    assert torch.equal(stcf_keep(T(b), T(t), T(x), T(y), (h, w), tau, 2), got >= 2)


def test_afk_drops_a_100hz_region_spares_the_source_and_keeps_an_edge():
    ev = []
    # source at region (0, 0) and flare at region (0, 3): both flicker at 100 Hz, 60 ms
    for x0, n_per in ((1, 6), (13, 2)):
        for k in range(6):
            for j in range(n_per):
                ev.append((k * 10_000 + 100 + j, x0, 1, 1))  # ON burst
                ev.append((k * 10_000 + 5_100 + j, x0, 1, -1))  # OFF burst
    # a moving edge: ON events sweeping along row 10, one per ms
    ev += [(1_000 * i, i % 20, 10, 1) for i in range(60)]
    t, x, y, p = (torch.tensor(c) for c in zip(*sorted(ev)))
    b = torch.zeros_like(t)
    keep = afk_keep(b, t, x, y, p, (16, 20), spare_radius=0)
    src, flare, edge = (x == 1) & (y == 1), (x == 13) & (y == 1), y == 10
    assert keep[src].all() and not keep[flare].any() and keep[edge].all()
    plain = afk_keep(b, t, x, y, p, (16, 20), spare_radius=-1)  # plain AFK drops the source too
    assert not plain[src].any()
