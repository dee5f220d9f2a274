"""DataModule: HDF5 datasets split by fraction, or batches simulated on the fly.

On-the-fly simulation hands the training loop one *seed* per batch; the
:class:`~neurotrain.engine.module.TaskModule` turns it into a batch on the training
device. With ``data.simulate_on_device: false`` the batch is simulated on the CPU in
the loader workers instead (for simulators that are CPU-bound).

Seeds under data parallelism (DDP, one process per GPU): a :class:`SimSeedSampler` gives every
rank its own *draw numbers*, so no two ranks, epochs or steps ever simulate from the same seed:

- training: step ``s`` of rank ``r`` (of ``W``) in epoch ``e`` draws ``e * EPOCH_STRIDE + s * W + r``;
  every rank takes ``ceil(n_batches / W)`` steps an epoch (DDP needs the same count on every rank), so
  ``W`` GPUs see at least as many fresh samples an epoch as one GPU;
- validation / test: the same ``n_batches`` batches (seeds ``0 .. n_batches-1``) whatever the number of
  ranks, dealt round-robin (rank ``r`` takes ``r, r + W, ...``) without padding, so each batch is scored
  exactly once; Lightning's ``sync_dist`` and torchmetrics then reduce over the ranks, weighted by samples.

With one rank the seeds are the ones earlier neurotrain versions used, so single-GPU runs reproduce.
HDF5 and task-owned map-style datasets train under Lightning's own ``DistributedSampler``; their evaluation
splits go through :class:`EvalShardSampler`, which deals the rows round-robin like the simulated batches
(Lightning's would pad them with repeats). A task that passes its own ``sampler`` keeps it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data.distributed import DistributedSampler

from neurotrain.config import Config
from neurotrain.engine.module import SIM_SEED_KEY, SIM_SIZE_KEY
from neurotrain.errors import ConfigError
from neurotrain.task import Task

SPLITS = ("train", "val", "test")

#: Draw numbers of one training epoch lie in ``[e * EPOCH_STRIDE, (e + 1) * EPOCH_STRIDE)``: a prime larger
#: than any realistic count of batches per epoch (x ranks), and the stride earlier versions added per epoch.
EPOCH_STRIDE = 1_000_003
#: Seed spacing between configs' ``seed`` values and between splits (primes, so the streams never meet in
#: practice: train draws of 1e4 epochs stay below the next split's offset of ~1.05e11).
SEED_STRIDE, SPLIT_STRIDE = 7919, 104_729


class SimulatedBatches(Dataset):
    """A map-style dataset whose item ``d`` (a draw number, see :class:`SimSeedSampler`) is one whole simulated
    batch, or its seed when the batch is simulated on the training device.

    The seed depends only on (``cfg.seed``, split, ``d``): the same draw is the same batch on every machine,
    in every run, on the CPU loader path and on the device path alike.
    """

    def __init__(
        self, task: Task, cfg: Config, split: str, n_samples: int, batch_size: int, on_device: bool
    ) -> None:
        self.task, self.cfg, self.split = task, cfg, split
        self.batch_size = batch_size
        self.n_batches = max(1, -(-n_samples // batch_size))
        self.on_device = on_device
        self.base = (cfg.seed * SEED_STRIDE + SPLITS.index(split) * SPLIT_STRIDE) * EPOCH_STRIDE

    def __len__(self) -> int:
        return self.n_batches

    def seed_of(self, draw: int) -> int:
        """Generator seed of draw number ``draw``."""
        return (self.base + draw) % (2**62)

    def __getitem__(self, draw: int) -> dict[str, Any]:
        if draw < 0:
            raise IndexError(draw)
        seed = self.seed_of(draw)
        if self.on_device:
            # plain ints, not tensors: Lightning moves only tensors to the device, so the module reads the seed
            # on the host instead of waiting for a GPU round trip every step
            return {SIM_SEED_KEY: seed, SIM_SIZE_KEY: self.batch_size}
        gen = torch.Generator()
        gen.manual_seed(seed)
        with torch.no_grad():
            return self.task.simulate_batch(self.cfg, self.batch_size, gen, torch.device("cpu"))


class SimSeedSampler(DistributedSampler):
    """Draw numbers of one rank for a :class:`SimulatedBatches` split (see the module docstring).

    A ``DistributedSampler`` subclass, so Lightning keeps it under DDP instead of putting its own sampler in;
    Lightning calls :meth:`set_epoch` before every training epoch.

    Args:
        dataset: the split's batches.
        num_replicas: world size (processes over all nodes).
        rank: this process's global rank.
        training: fresh draws every epoch, the same step count on every rank; otherwise the split's fixed
            batches, each on one rank.
        limit: the first ``limit`` batches only (``trainer.limit_val_batches`` as a count), counted over all
            ranks so that the evaluated set does not depend on the number of ranks; ``None``: all.
    """

    def __init__(
        self, dataset: SimulatedBatches, num_replicas: int = 1, rank: int = 0, *, training: bool,
        limit: int | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.training = training
        n = dataset.n_batches if limit is None else min(limit, dataset.n_batches)
        split = dataset.split
        if training:
            self.steps = -(-n // num_replicas)
            if self.steps * num_replicas >= EPOCH_STRIDE:
                raise ConfigError(
                    f"config error: data.sim_{split}_size: expected fewer than {EPOCH_STRIDE} batches per epoch "
                    f"over all ranks (got {self.steps * num_replicas})"
                )
            self.draws = range(0)
        else:
            if n < num_replicas:
                # DDP syncs buffers at each rank's first evaluation forward: a rank without a batch would hang
                raise ConfigError(
                    f"config error: data.sim_{split}_size: expected at least {num_replicas} batches of "
                    f"data.batch_size for {num_replicas} ranks (got {n})"
                )
            self.draws = range(rank, n, num_replicas)
            self.steps = len(self.draws)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[int]:
        if not self.training:
            return iter(self.draws)
        start = self.epoch * EPOCH_STRIDE + self.rank
        return iter(range(start, start + self.steps * self.num_replicas, self.num_replicas))


class EvalShardSampler(DistributedSampler):
    """Rows ``rank, rank + W, ...`` of an evaluation dataset: every row on exactly one rank, no padding.

    Ranks may differ by one batch: evaluation steps hold no collective (Lightning reduces the logged means
    and torchmetrics their states once, at the epoch end). Each rank needs at least one row, because DDP
    syncs buffers at a rank's first evaluation forward.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, *, field: str = "data") -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        n = len(dataset)  # type: ignore[arg-type]
        if n < num_replicas:
            raise ConfigError(f"config error: {field}: expected at least {num_replicas} rows for {num_replicas} ranks (got {n})")
        self.rows = range(rank, n, num_replicas)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[int]:
        return iter(self.rows)


def _count_limit(limit: int | float) -> int | None:
    """A ``trainer.limit_*_batches`` given as a positive count; fractions are left to Lightning."""
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None


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

    def rank_and_world(self) -> tuple[int, int]:
        """(global rank, world size) of the trainer this data feeds; ``(0, 1)`` outside a trainer."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _seed_sampler(self, split: str, ds: SimulatedBatches) -> SimSeedSampler:
        rank, world = self.rank_and_world()
        t = self.cfg.trainer
        limit = None if split == "train" else _count_limit(t.limit_val_batches if split == "val" else t.limit_test_batches)
        return SimSeedSampler(ds, world, rank, training=split == "train", limit=limit)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        d = self.cfg.data
        ds = self.sets[split]
        workers = d.num_workers
        if isinstance(ds, SimulatedBatches):
            # whole batches: no collation; the sampler, not shuffling, decides which batches this rank draws
            extra: dict[str, Any] = {"batch_size": None, "sampler": self._seed_sampler(split, ds)}
            shuffle = False
        else:
            extra = {"batch_size": d.batch_size, **self.task.loader_options(self.cfg, split, ds)}
            if extra.get("sampler") is not None:
                shuffle = False  # the task's sampler decides the order
            elif split != "train" and not isinstance(ds, IterableDataset):
                rank, world = self.rank_and_world()
                if world > 1:
                    field = "data.path" if self.cfg.data.path is not None else f"task {self.cfg.task} {split} set"
                    extra["sampler"] = EvalShardSampler(ds, world, rank, field=field)
        opts: dict[str, Any] = {"shuffle": shuffle, "num_workers": workers, "pin_memory": d.pin_memory,
                                "persistent_workers": d.persistent_workers and workers > 0, "drop_last": False}
        opts.update(extra)  # a task's options win (e.g. no workers for vision's device-resident training cache)
        opts["persistent_workers"] = bool(opts["persistent_workers"]) and opts["num_workers"] > 0
        return DataLoader(ds, **opts)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
