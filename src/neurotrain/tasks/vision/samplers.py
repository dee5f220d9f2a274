"""Training samplers (seed: weighted / balanced / priority sampling), seeded torch ``Sampler``s.

All draw ``num_samples`` indices per epoch from a categorical distribution over the dataset
(with replacement by default) through a ``torch.Generator`` seeded with ``seed + epoch``, so
a run is reproducible and each epoch differs (``set_epoch`` is called by the training loop;
without it, successive iterations continue the generator's stream).

The per-sample group comes from ``dataset.sample_labels()``: the class for classification,
foreground presence (0/1) for segmentation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from neurotrain.errors import ConfigError
from neurotrain.tasks.vision.data_config import SamplerSection


class _Categorical(Sampler[int]):
    """Draws indices with probability proportional to ``self.weights`` (float64, (N,))."""

    def __init__(self, weights: torch.Tensor, num_samples: int | None = None, replacement: bool = True, seed: int = 0) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.ndim != 1 or len(w) == 0 or (w < 0).any() or not torch.isfinite(w).all() or w.sum() <= 0:
            raise ConfigError("sampler: weights: expected finite non-negative per-sample weights with a positive sum")
        self.weights = w
        self.num_samples = int(num_samples or len(w))
        self.replacement = replacement
        if not replacement and self.num_samples > int((w > 0).sum()):
            raise ConfigError(
                f"sampler: num_samples: expected <= {int((w > 0).sum())} samples of non-zero weight without replacement (got {self.num_samples})"
            )
        self.seed = seed
        self.epoch = 0
        self._gen = torch.Generator().manual_seed(seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._gen = torch.Generator().manual_seed(self.seed + epoch)

    def probabilities(self) -> torch.Tensor:
        return self.weights / self.weights.sum()

    def __iter__(self) -> Iterator[int]:
        idx = torch.multinomial(self.weights, self.num_samples, self.replacement, generator=self._gen)
        return iter(idx.tolist())

    def __len__(self) -> int:
        return self.num_samples


class WeightedSampler(_Categorical):
    """Sample i drawn with probability proportional to ``class_weights[labels[i]]``."""

    def __init__(self, labels: torch.Tensor, class_weights: Sequence[float], num_samples: int | None = None,
                 replacement: bool = True, seed: int = 0) -> None:
        labels = torch.as_tensor(labels, dtype=torch.int64)
        cw = torch.as_tensor(list(class_weights), dtype=torch.float64)
        if len(labels) and int(labels.max()) >= len(cw):
            raise ConfigError(f"sampler: class_weights: expected one weight per class ({int(labels.max()) + 1}) (got {len(cw)})")
        super().__init__(cw[labels], num_samples, replacement, seed)


class ClassBalancedSampler(_Categorical):
    """Weight 1 / count(class of i): every class present is drawn equally often on average."""

    def __init__(self, labels: torch.Tensor, num_samples: int | None = None, replacement: bool = True, seed: int = 0) -> None:
        labels = torch.as_tensor(labels, dtype=torch.int64)
        counts = torch.bincount(labels).to(torch.float64)
        super().__init__(1.0 / counts[labels], num_samples, replacement, seed)


class PrioritySampler(_Categorical):
    """Probability proportional to (priority + eps) ** alpha (prioritised replay, Schaul et al. 2016).

    ``update(indices, values)`` sets new priorities (e.g. per-sample losses, detached); with
    DataLoader workers, the sampler lives in the main process, so updates take effect at once.
    """

    def __init__(self, priorities: torch.Tensor, alpha: float = 0.6, eps: float = 1e-3, num_samples: int | None = None,
                 replacement: bool = True, seed: int = 0) -> None:
        self.alpha, self.eps = alpha, eps
        self.priorities = torch.as_tensor(priorities, dtype=torch.float64).clone()
        super().__init__(self._weights(), num_samples, replacement, seed)

    def _weights(self) -> torch.Tensor:
        return (self.priorities.clamp_min(0) + self.eps) ** self.alpha

    def update(self, indices: Sequence[int] | torch.Tensor, values: Sequence[float] | torch.Tensor) -> None:
        idx = torch.as_tensor(indices, dtype=torch.int64).cpu()
        self.priorities[idx] = torch.as_tensor(values, dtype=torch.float64).detach().cpu().reshape(-1)
        self.weights = self._weights()


def build_sampler(section: SamplerSection, dataset: Any) -> Sampler[int] | None:
    """The sampler ``section`` asks for over ``dataset`` (None for ``kind: none``: plain shuffling)."""
    if section.kind == "none":
        return None
    n = section.num_samples
    if section.kind == "priority" and section.priority_key == "loss":
        return PrioritySampler(torch.ones(len(dataset)), section.priority_alpha, section.priority_eps, n, section.replacement, section.seed)
    labels = dataset.sample_labels()
    if section.kind == "weighted":
        if section.class_weights is None:
            raise ConfigError("sampler.class_weights: expected one weight per class for kind 'weighted' (got none)")
        return WeightedSampler(labels, section.class_weights, n, section.replacement, section.seed)
    if section.kind == "class_balanced":
        return ClassBalancedSampler(labels, n, section.replacement, section.seed)
    if section.class_priorities is None:
        raise ConfigError("sampler.class_priorities: expected one priority per class for priority_key 'class' (got none)")
    cp = torch.as_tensor(section.class_priorities, dtype=torch.float64)
    if int(labels.max()) >= len(cp):
        raise ConfigError(f"sampler.class_priorities: expected one priority per class ({int(labels.max()) + 1}) (got {len(cp)})")
    return PrioritySampler(cp[labels], section.priority_alpha, section.priority_eps, n, section.replacement, section.seed)


class EpochSampler(Sampler[tuple[int, int]]):
    """Tags every index with its epoch: yields ``(epoch, i)`` for datasets that draw per epoch (``HybridDataset``'s
    mix, 3D patch positions), whose ``__getitem__`` takes such a pair and moves to that epoch first.

    Why not call ``dataset.set_epoch`` from the training loop: loader workers hold their own copies of the
    dataset (persistent workers keep them for the whole run), so a call in the main process never reaches them;
    the epoch has to travel with the index. Lightning calls :meth:`set_epoch` on the loader's sampler at the
    start of every epoch; without such a call, each new iteration is the next epoch.

    ``base`` (a weighted / balanced / priority sampler) chooses the indices; otherwise a permutation of
    ``range(n)`` seeded with ``seed + epoch``.
    """

    def __init__(self, n: int, base: Sampler[int] | None = None, seed: int = 0) -> None:
        self.n, self.base, self.seed = int(n), base, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.base is not None and hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        if self.base is not None:
            idx = list(self.base)
        else:
            idx = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        self.set_epoch(epoch + 1)  # the next iteration draws a new epoch unless set_epoch says otherwise
        return iter([(epoch, int(i)) for i in idx])

    def __len__(self) -> int:
        return len(self.base) if self.base is not None else self.n  # type: ignore[arg-type]
