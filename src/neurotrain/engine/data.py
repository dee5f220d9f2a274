"""DataModule: HDF5 datasets split by fraction, or batches simulated on the fly.

On-the-fly simulation hands the training loop one *seed* per batch; the
:class:`~neurotrain.engine.module.TaskModule` turns it into a batch on the training
device. With ``data.simulate_on_device: false`` the batch is simulated on the CPU in
the loader workers instead (for simulators that are CPU-bound).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from neurotrain.config import Config
from neurotrain.engine.module import SIM_SEED_KEY, SIM_SIZE_KEY
from neurotrain.task import Task

SPLITS = ("train", "val", "test")


class SimulatedBatches(Dataset):
    """A map-style dataset whose item ``i`` is one whole simulated batch (or its seed).

    Seeds depend only on (``seed``, split, ``i``), so validation and test batches are the
    same in every epoch and every run with the same seed; training batches are varied per
    epoch by the module.
    """

    def __init__(
        self, task: Task, cfg: Config, split: str, n_samples: int, batch_size: int, on_device: bool
    ) -> None:
        self.task, self.cfg, self.split = task, cfg, split
        self.batch_size = batch_size
        self.n_batches = max(1, -(-n_samples // batch_size))
        self.on_device = on_device
        self.base = (cfg.seed * 7919 + SPLITS.index(split) * 104_729) * 1_000_003
        self._epoch_salt = 0

    def __len__(self) -> int:
        return self.n_batches

    def seed_of(self, i: int) -> int:
        return (self.base + i) % (2**62)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < 0 or i >= self.n_batches:
            raise IndexError(i)
        seed = self.seed_of(i)
        if self.on_device:
            return {SIM_SEED_KEY: torch.tensor(seed), SIM_SIZE_KEY: torch.tensor(self.batch_size)}
        if self.split == "train":
            # loader workers get a fresh base seed every epoch from the (seeded) main process
            seed = (seed ^ torch.initial_seed() ^ self._epoch_salt) % (2**62)
            self._epoch_salt += 1
        gen = torch.Generator()
        gen.manual_seed(seed)
        with torch.no_grad():
            return self.task.simulate_batch(self.cfg, self.batch_size, gen, torch.device("cpu"))


class TaskDataModule(L.LightningDataModule):
    """Train/val/test loaders for a task, built from the config."""

    def __init__(self, cfg: Config, task: Task) -> None:
        super().__init__()
        self.cfg, self.task = cfg, task
        self.sets: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        own = self.task.datasets(self.cfg)
        if own is not None:
            self.sets = dict(own)
        elif self.cfg.data.path is not None:
            self.sets = self._h5_splits()
        else:
            d = self.cfg.data
            sizes = {"train": d.sim_train_size, "val": d.sim_val_size, "test": d.sim_test_size}
            self.sets = {
                s: SimulatedBatches(self.task, self.cfg, s, sizes[s], d.batch_size, d.simulate_on_device)
                for s in SPLITS
            }

    def _h5_splits(self) -> dict[str, Dataset]:
        from neurotrain.io.hdf5 import H5Dataset, dataset_length, split_indices

        path = self.cfg.data.path
        assert path is not None
        keys = self.task.h5_keys(self.cfg)
        n = dataset_length(path, next(iter(keys.values())))
        parts = split_indices(n, self.cfg.data.splits, self.cfg.data.split_seed)
        return {s: H5Dataset(path, keys, indices=idx) for s, idx in zip(SPLITS, parts)}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        d = self.cfg.data
        ds = self.sets[split]
        whole_batches = isinstance(ds, SimulatedBatches)
        workers = d.num_workers
        extra = {} if whole_batches else dict(self.task.loader_options(self.cfg, split, ds))
        if extra.get("sampler") is not None:
            shuffle = False  # the task's sampler decides the order
        return DataLoader(
            ds,
            batch_size=None if whole_batches else d.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=d.pin_memory,
            persistent_workers=d.persistent_workers and workers > 0,
            drop_last=False,
            **extra,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
