"""Build a ``lightning.Trainer`` from the config: precision, accumulation, checkpoints,
early stopping, loggers, progress bar and the distributed strategy.

Multi-node runs use Lightning's own cluster detection: under SLURM (``srun``) or
``torchrun`` the environment tells each process its rank; set ``trainer.num_nodes`` and
``trainer.devices`` to match the allocation.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from neurotrain.config import Config
from neurotrain.errors import ConfigError

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def _strategy(cfg: Config) -> Any:
    name = cfg.trainer.strategy
    if name == "deepspeed_stage_2" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "config error: trainer.strategy: deepspeed_stage_2 needs the optional extra "
            "(pip install 'neurotrain[deepspeed]')"
        )
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        # gradients as views into the all-reduce buckets: no copy per step and one gradient-sized buffer less;
        # static graph (every task trains the same graph each step): DDP skips its per-step graph checks and
        # rebuilds its buckets once in use order. Not with gradient accumulation (no_sync trips the reducer's
        # "expect_autograd_hooks_" assert, torch 2.14) nor torch.compile (issue 22)
        static = not cfg.trainer.compile and cfg.trainer.accumulate_grad_batches == 1
        return DDPStrategy(gradient_as_bucket_view=True, static_graph=static)
    return name


def _progress_bar() -> Callback | None:
    try:
        from lightning.pytorch.callbacks import RichProgressBar

        return RichProgressBar(leave=True)
    except (ImportError, ModuleNotFoundError):
        return None


def build_callbacks(cfg: Config, run_dir: Path) -> list[Callback]:
    t = cfg.trainer
    callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=checkpoint_dir(run_dir),
            filename="best",
            monitor=t.checkpoint.monitor,
            mode=t.checkpoint.mode,
            save_top_k=1,
            save_last=False,
            every_n_epochs=t.checkpoint.every_n_epochs,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        # last.ckpt has its own unmonitored callback: since Lightning 2.6, save_last=True writes last.ckpt only
        # when the monitored metric improves, so --resume would restart from the best epoch, not the last.
        ModelCheckpoint(
            dirpath=checkpoint_dir(run_dir),
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_epochs=t.checkpoint.every_n_epochs,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        LearningRateMonitor(logging_interval="step"),
    ]
    es = t.early_stopping
    if es.enabled:
        callbacks.append(
            EarlyStopping(monitor=es.monitor, patience=es.patience, mode=es.mode, min_delta=es.min_delta)
        )
    if t.progress_bar:
        bar = _progress_bar()
        if bar is not None:
            callbacks.append(bar)
    return callbacks


class ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer that continues an existing ``metrics.csv`` instead of deleting it.

    ``resume_step``: the global step of the checkpoint the run resumes from. Rows logged after it (by the
    interrupted part, past its last checkpoint) are dropped, so every step appears once; the header of the
    file is kept and widened when new metrics appear. ``None``: a fresh run, the file starts anew.
    """

    def __init__(self, log_dir: str, resume_step: int | None = None) -> None:
        self._resume_step = resume_step
        super().__init__(log_dir)
        if resume_step is not None and os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                keys = list(reader.fieldnames or [])
                rows = [r for r in reader if _step_of(r) <= resume_step]
            self.metrics_keys = sorted(keys)
            with open(self.metrics_file_path, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(rows)

    def _check_log_dir_exists(self) -> None:
        if self._resume_step is None:
            super()._check_log_dir_exists()


def _step_of(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


class ContinuingCSVLogger(CSVLogger):
    """One ``csv/metrics.csv`` per run: a resumed run appends to it (see :class:`ContinuingWriter`)."""

    def __init__(self, save_dir: str, resume_step: int | None = None) -> None:
        super().__init__(save_dir=save_dir, name="csv", version="")
        self._resume_step = resume_step

    @property
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuingWriter(self.log_dir, self._resume_step)
        return self._experiment


def build_loggers(cfg: Config, run_dir: Path, resume_step: int | None = None) -> list[Any]:
    """TensorBoard under ``tb/`` and CSV in ``csv/metrics.csv``; ``resume_step`` (the resumed checkpoint's
    global step) continues the CSV of the earlier part of the run."""
    loggers: list[Any] = []
    if cfg.logging.tensorboard:
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False))
    if cfg.logging.csv:
        loggers.append(ContinuingCSVLogger(str(run_dir), resume_step))
    return loggers


def build_trainer(cfg: Config, run_dir: Path, extra_callbacks: list[Callback] | None = None,
                  resume_step: int | None = None) -> L.Trainer:
    """A Trainer whose every knob comes from ``cfg.trainer`` / ``cfg.logging``; ``resume_step`` as in
    :func:`build_loggers`."""
    t = cfg.trainer
    loggers = build_loggers(cfg, run_dir, resume_step)
    return L.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time=t.max_time,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=_strategy(cfg),
        num_nodes=t.num_nodes,
        precision=t.precision,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        gradient_clip_algorithm=t.gradient_clip_algorithm if t.gradient_clip_val else None,
        deterministic=t.deterministic,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches,
        val_check_interval=t.val_check_interval,
        log_every_n_steps=cfg.logging.log_every_n_steps,
        logger=loggers if loggers else False,
        callbacks=build_callbacks(cfg, run_dir) + list(extra_callbacks or []),
        enable_progress_bar=t.progress_bar,
        enable_model_summary=t.progress_bar,
    )
