"""Drawn class ratios of the samplers, checked statistically (binomial 5-sigma bands)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from neurotrain.errors import ConfigError
from neurotrain.tasks.vision.data_config import DatasetSpec, SamplerSection
from neurotrain.tasks.vision.datasets import build_dataset
from neurotrain.tasks.vision.samplers import ClassBalancedSampler, PrioritySampler, WeightedSampler, build_sampler

N_DRAWS = 20000


class Labelled:
    """A stand-in dataset: only ``sample_labels`` and ``len`` matter to the samplers."""

    def __init__(self, labels: list[int]) -> None:
        self.labels = torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def sample_labels(self) -> torch.Tensor:
        return self.labels


def shares(sampler, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    drawn = labels[torch.tensor(list(iter(sampler)))]
    return torch.bincount(drawn, minlength=n_classes).double() / len(drawn)


def within(observed: float, p: float, n: int = N_DRAWS) -> bool:
    return abs(observed - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12


IMBALANCED = [0] * 90 + [1] * 9 + [2] * 1


def test_class_balanced_draws_classes_equally() -> None:
    ds = Labelled(IMBALANCED)
    s = build_sampler(SamplerSection(kind="class_balanced", num_samples=N_DRAWS, seed=1), ds)
    assert isinstance(s, ClassBalancedSampler)
    got = shares(s, ds.labels, 3)
    assert all(within(float(g), 1 / 3) for g in got), got


def test_weighted_follows_class_weights() -> None:
    ds = Labelled(IMBALANCED)
    s = build_sampler(SamplerSection(kind="weighted", class_weights=[1.0, 10.0, 0.0], num_samples=N_DRAWS), ds)
    assert isinstance(s, WeightedSampler)
    expect = torch.tensor([90 * 1.0, 9 * 10.0, 0.0]) / 180.0  # 0.5, 0.5, 0
    got = shares(s, ds.labels, 3)
    assert all(within(float(g), float(e)) for g, e in zip(got, expect)), got
    assert got[2] == 0


def test_priority_by_class_and_by_loss_updates() -> None:
    ds = Labelled([0] * 50 + [1] * 50)
    sec = SamplerSection(kind="priority", priority_key="class", class_priorities=[1.0, 3.0], priority_alpha=1.0,
                         priority_eps=1e-9, num_samples=N_DRAWS)
    s = build_sampler(sec, ds)
    assert within(float(shares(s, ds.labels, 2)[1]), 0.75)
    s = build_sampler(SamplerSection(kind="priority", priority_alpha=1.0, num_samples=N_DRAWS, priority_eps=1e-9), ds)
    assert isinstance(s, PrioritySampler)
    assert within(float(shares(s, ds.labels, 2)[1]), 0.5)  # uniform before any loss
    s.update(torch.arange(50), torch.full((50,), 0.0))  # class 0 learnt: its loss ~ 0
    s.update(torch.arange(50, 100), torch.full((50,), 2.0))
    assert float(shares(s, ds.labels, 2)[1]) > 0.99


def test_seeded_and_epoch_dependent() -> None:
    ds = Labelled(IMBALANCED)
    a = build_sampler(SamplerSection(kind="class_balanced", seed=5), ds)
    b = build_sampler(SamplerSection(kind="class_balanced", seed=5), ds)
    assert list(a) == list(b) and len(a) == len(ds)
    a.set_epoch(1)
    b.set_epoch(2)
    assert list(a) != list(b)


def test_errors_and_none() -> None:
    ds = Labelled(IMBALANCED)
    assert build_sampler(SamplerSection(), ds) is None
    with pytest.raises(ConfigError, match="class_weights"):
        build_sampler(SamplerSection(kind="weighted"), ds)
    with pytest.raises(ConfigError, match=r"one weight per class \(3\) \(got 2\)"):
        build_sampler(SamplerSection(kind="weighted", class_weights=[1, 1]), ds)


def test_segmentation_balances_foreground_presence(seg_folder: Path) -> None:
    from .conftest import write_image
    import numpy as np

    for i in range(10):  # make 8 of 10 masks empty: foreground images are rare
        if i not in (0, 2):
            write_image(seg_folder / "masks" / f"im{i:02d}.png", np.zeros((8, 8), np.uint8))
    ds = build_dataset(DatasetSpec(name="seg_folder", root=seg_folder, split_fractions=(1, 0, 0)), "train")
    labels = ds.sample_labels()
    assert labels.tolist().count(1) == 2
    s = build_sampler(SamplerSection(kind="class_balanced", num_samples=4000), ds)
    got = shares(s, labels, 2)
    assert within(float(got[1]), 0.5, 4000)
    batch = next(iter(DataLoader(ds, batch_size=64, sampler=s)))
    assert batch["mask"].flatten(1).any(1).float().mean() > 0.3  # a plain shuffle would give 0.2
