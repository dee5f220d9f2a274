"""``HybridDataset``: several datasets mixed by ratios in epochs of a set length (seed 003: HybridDataset)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from neurotrain.errors import DataError


class HybridDataset(torch.utils.data.Dataset):
    """Several datasets mixed by ``ratios`` in epochs of ``epoch_length`` samples.

    Per epoch, dataset k contributes ``round(ratio_k * epoch_length)`` samples (largest
    remainders make the counts sum to ``epoch_length``), drawn without replacement from a
    fresh permutation (cycled when it needs more than it has), then all are shuffled together.
    ``set_epoch(e)``, or an index ``(e, i)`` (``samplers.EpochSampler``), makes the draw of epoch e. Samples
    carry ``source`` (the dataset's position).
    """

    def __init__(self, datasets: Sequence[torch.utils.data.Dataset], ratios: Sequence[float] | None = None,
                 epoch_length: int | None = None, seed: int = 0) -> None:
        if not datasets:
            raise DataError("hybrid: datasets: expected at least one dataset (got none)")
        kinds = {getattr(d, "kind", None) for d in datasets}
        if len(kinds) > 1:
            raise DataError(f"hybrid: datasets: expected one kind of target (got {sorted(map(str, kinds))})")
        self.kind = kinds.pop()
        self.datasets = list(datasets)
        r = np.asarray(ratios if ratios is not None else [1.0] * len(datasets), dtype=np.float64)
        if len(r) != len(self.datasets) or (r < 0).any() or r.sum() <= 0:
            raise DataError(f"hybrid: ratios: expected {len(self.datasets)} values >= 0 with a positive sum (got {r.tolist()})")
        self.ratios = r / r.sum()
        self.epoch_length = int(epoch_length or sum(len(d) for d in self.datasets))
        self.seed = seed
        self.class_names = getattr(self.datasets[0], "class_names", [])
        self.set_epoch(0)

    def counts(self) -> np.ndarray:
        exact = self.ratios * self.epoch_length
        c = np.floor(exact).astype(int)
        for k in np.argsort(-(exact - c))[: self.epoch_length - c.sum()]:
            c[k] += 1
        return c

    def set_epoch(self, epoch: int) -> None:
        """New draw for ``epoch``; passed on to member datasets that draw per epoch (3D patches). Training loaders
        give the epoch with every index instead (``samplers.EpochSampler``), which reaches the workers' copies."""
        self.epoch = epoch
        for d in getattr(self, "datasets", []):
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        src, idx = [], []
        for k, (d, n) in enumerate(zip(self.datasets, self.counts(), strict=True)):
            reps = -(-n // len(d)) if n else 0
            draw = np.concatenate([rng.permutation(len(d)) for _ in range(reps)])[:n] if n else np.zeros(0, int)
            src.append(np.full(n, k))
            idx.append(draw)
        order = rng.permutation(self.epoch_length)
        self._src = np.concatenate(src)[order]
        self._idx = np.concatenate(idx)[order]

    def __len__(self) -> int:
        return self.epoch_length

    def __getitem__(self, i: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(i, tuple):  # (epoch, position) from samplers.EpochSampler: the draw of that epoch
            epoch, i = i
            if epoch != self.epoch:
                self.set_epoch(epoch)
        k = int(self._src[i])
        sample = dict(self.datasets[k][int(self._idx[i])])
        sample["source"] = k
        return sample

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [s for d in self.datasets for s in getattr(d, "skipped", [])]

    def sample_labels(self) -> torch.Tensor:
        per = [d.sample_labels() for d in self.datasets]  # type: ignore[attr-defined]
        return torch.stack([per[int(k)][int(j)] for k, j in zip(self._src, self._idx, strict=True)])
