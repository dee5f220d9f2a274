"""TaskModule: a task's model, loss and metrics as one LightningModule.

The module is built from the resolved config alone (plain data, stored in the
checkpoint's ``hyper_parameters``), so a checkpoint is enough to rebuild it.
On-the-fly training data is simulated here, on the training device, right after a
batch of seeds arrives from the data loader, so the GPU never waits on a CPU worker.
The seed arrives as a plain Python int (Lightning moves tensors only), so turning it
into a batch costs no device synchronisation; under DDP every rank gets its own seeds from
:class:`~neurotrain.engine.data.SimSeedSampler`.

:class:`StepThroughput` (installed by :meth:`TaskModule.configure_callbacks`) logs
``train/samples_per_sec`` over all ranks, which ``metrics.json`` then holds.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from neurotrain.config import Config, validate_config
from neurotrain.registry import TASKS
from neurotrain.task import Task

SIM_SEED_KEY = "_sim_seed"
SIM_SIZE_KEY = "_sim_batch_size"
#: Training batches a process runs before :class:`StepThroughput` starts its clock: the first steps pay for
#: cuDNN autotuning, ``torch.compile`` and the allocator's growth, which a steady-state rate must leave out.
THROUGHPUT_WARMUP_STEPS = 10


def split_loss(out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A loss module returns a scalar or a dict with ``"loss"``; other entries are logged."""
    if isinstance(out, dict):
        terms = {k: v for k, v in out.items() if k != "loss"}
        return out["loss"], terms
    return out, {}


def _flatten_metrics(prefix: str, value: Any) -> dict[str, torch.Tensor]:
    if isinstance(value, dict):
        flat: dict[str, torch.Tensor] = {}
        for k, v in value.items():
            flat.update(_flatten_metrics(f"{prefix}/{k}" if prefix else str(k), v))
        return flat
    t = torch.as_tensor(value)
    if t.numel() == 1:
        return {prefix: t.float().reshape(())}
    return {}


class TaskModule(L.LightningModule):
    """LightningModule for any registered task.

    Args:
        config: the resolved config as plain data (``config_to_dict(cfg)``).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg: Config = validate_config(config, source="checkpoint config")
        self.task: Task = TASKS.get(self.cfg.task)
        self.model: nn.Module = self.task.build_model(self.cfg)
        self.loss_fn: nn.Module = self.task.build_loss(self.cfg)
        metrics = self.task.build_metrics(self.cfg)
        self.val_metrics = metrics.clone(prefix="") if metrics is not None else None
        self.test_metrics = metrics.clone(prefix="") if metrics is not None else None
        self._forward_model: nn.Module = self.model
        self.debug_dir = None  # set by the engine for ``train --debug``
        self._debug_steps_left = 0

    # ------------------------------------------------------------------ compile
    def setup(self, stage: str) -> None:
        if self.cfg.trainer.compile and self._forward_model is self.model:
            # Compile a separate handle so state_dict keys stay un-prefixed and checkpoints
            # load into an uncompiled model.
            object.__setattr__(self, "_forward_model", torch.compile(self.model))

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.task.forward(self._forward_model, batch)

    def on_train_start(self) -> None:
        # a loss that schedules by epoch learns the real epoch length (per rank, after limit_train_batches)
        setter = getattr(self.loss_fn, "set_steps_per_epoch", None)
        n = self.trainer.num_training_batches
        if callable(setter) and isinstance(n, int) and n > 0:
            setter(n)

    # ------------------------------------------------------------------ data on device
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and SIM_SEED_KEY in batch:
            # the seed is final: the sampler already made it depend on the rank, the step and the epoch
            seed = int(batch[SIM_SEED_KEY])  # host ints (see SimulatedBatches): no device round trip
            size = int(batch[SIM_SIZE_KEY])
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed)
            with torch.no_grad():
                batch = self.task.simulate_batch(self.cfg, size, gen, self.device)
        training = self._trainer is not None and self._trainer.training
        return self.task.on_batch(self.cfg, batch, training)

    def configure_callbacks(self) -> list[Callback]:
        return [StepThroughput()]

    @staticmethod
    def _batch_size(batch: Any) -> int:
        if isinstance(batch, dict):
            for v in batch.values():
                if isinstance(v, torch.Tensor) and v.ndim > 0:
                    return int(v.shape[0])
        return 1

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pred = self(batch)
        loss, terms = split_loss(self.loss_fn(pred, batch))
        bs = self._batch_size(batch)
        # a progress-bar metric is read back to the host after every step (Lightning turns it into a number),
        # which stalls the queue of device work: only when a progress bar shows it
        self.log("train/loss", loss, prog_bar=self.cfg.trainer.progress_bar, on_step=True, on_epoch=True, batch_size=bs)
        for k, v in terms.items():
            self.log(f"train/{k}", v, on_step=True, on_epoch=True, batch_size=bs)
        if self.debug_dir is not None and self._debug_steps_left > 0:
            self._debug_steps_left -= 1
            # ``epoch`` only for tasks whose debug_outputs takes it (older ones stop at ``step``)
            takes_epoch = "epoch" in inspect.signature(self.task.debug_outputs).parameters
            extra = {"epoch": self.current_epoch} if takes_epoch else {}
            self.task.debug_outputs(self.cfg, batch, pred, self.debug_dir, step=self.global_step, **extra)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        pred = self(batch)
        loss, terms = split_loss(self.loss_fn(pred, batch))
        bs = self._batch_size(batch)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=bs)
        for k, v in terms.items():
            self.log(f"{stage}/{k}", v, on_epoch=True, sync_dist=True, batch_size=bs)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        if metrics is not None:
            self.task.update_metrics(metrics, pred, batch)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test")

    def _log_metrics(self, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        if metrics is None:
            return
        # compute() already reduces the metric states over DDP ranks, so every rank logs the same values;
        # sync_dist (a mean of equal numbers, once per epoch) only tells Lightning that they are global
        flat = _flatten_metrics(stage, metrics.compute())
        for k, v in flat.items():
            if torch.isfinite(v):
                self.log(k, v.to(self.device), sync_dist=True)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        if o.name == "adam":
            opt = torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        elif o.name == "adamw":
            opt = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(
                params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
            )
        s = self.cfg.sched
        if s.name == "none":
            return opt
        if s.name == "plateau":
            mode = self.cfg.trainer.checkpoint.mode if s.monitor == self.cfg.trainer.checkpoint.monitor else "min"
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode=mode, factor=s.factor, patience=s.patience, min_lr=s.min_lr
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": s.monitor, "interval": "epoch"}}
        if s.name == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_size, gamma=s.gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if s.name == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=o.lr, total_steps=total, pct_start=s.pct_start)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        # cosine with linear warm-up, stepped per optimiser step
        warm = min(s.warmup_steps, total - 1) if total > 1 else 0
        floor = s.min_lr / o.lr

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class StepThroughput(Callback):
    """Training samples per second over all ranks, logged as ``train/samples_per_sec`` at every epoch end.

    The clock runs in *stretches* of training steps: a stretch starts at the end of a step (after the first
    ``warmup_steps`` of the process, and after every validation and epoch boundary) and stops at the next
    validation or epoch end, so validation, checkpoint writing and loader start-up stay out of it. Each
    stretch costs two device synchronisations; none happens inside a step. The rate is the samples of the
    timed steps on this rank x the world size / the timed seconds (DDP ranks step in lock-step), cumulative
    over the whole run.
    """

    def __init__(self, warmup_steps: int = THROUGHPUT_WARMUP_STEPS) -> None:
        self.warmup_steps = warmup_steps
        self.steps = 0  # training batches this process has run
        self.samples = 0  # samples of the timed steps on this rank
        self.seconds = 0.0  # timed wall time
        self._since: float | None = None  # start of the running stretch

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.steps += 1
        if self._since is not None:
            self.samples += TaskModule._batch_size(batch)
        elif self.steps > self.warmup_steps:
            self._sync(pl_module)
            self._since = time.perf_counter()

    def _stop(self, pl_module: L.LightningModule) -> None:
        if self._since is not None:
            self._sync(pl_module)
            self.seconds += time.perf_counter() - self._since
            self._since = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(pl_module)
        if self.seconds > 0 and self.samples > 0:
            rate = self.samples * trainer.world_size / self.seconds
            pl_module.log("train/samples_per_sec", rate, on_step=False, on_epoch=True, sync_dist=True)
