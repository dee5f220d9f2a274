"""Programmatic entry points behind the CLI: train, test, evaluate, predict.

A run directory ``<run.output_dir>/<task>/<run.name>/`` holds ``config.yaml`` (resolved),
``checkpoints/{best,last}.ckpt`` (config embedded), ``tb/`` and ``csv/`` logs,
``metrics.json`` and ``report/``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch

from neurotrain.config import Config, config_to_dict, dump_yaml
from neurotrain.engine.checkpoint import checkpoint_config, load_checkpoint, load_model, model_from_checkpoint
from neurotrain.engine.data import TaskDataModule
from neurotrain.engine.module import TaskModule
from neurotrain.engine.trainer import build_trainer, checkpoint_dir
from neurotrain.errors import CheckpointError, DataError, NeurotrainError
from neurotrain.io.atomic import atomic_path
from neurotrain.registry import TASKS
from neurotrain.task import EvalResult, Task, check_options

KEEP_ALL_ROWS = 2**62
"""``resume_step`` for a trainer that only adds rows to a run's CSV log (``test``): keep every earlier row."""


def get_task(cfg: Config) -> Task:
    return TASKS.get(cfg.task)


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write JSON atomically (temp name, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_plain(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def update_metrics_json(run_dir: Path, section: str, metrics: dict[str, Any]) -> Path:
    """Merge ``metrics`` under ``section`` into ``run_dir/metrics.json``."""
    path = Path(run_dir) / "metrics.json"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = {}
    data[section] = metrics
    return write_json(path, data)


def _write_config(cfg: Config, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(dump_yaml(cfg), encoding="utf-8")


def seed_everything(cfg: Config) -> None:
    L.seed_everything(cfg.seed, workers=True, verbose=False)


class _DebugDir:
    def __init__(self, path: Path, steps: int) -> None:
        self.path, self.steps = path, steps


def _is_secondary_rank() -> bool:
    """True in a process that a distributed launcher (Lightning, torchrun, SLURM) started as rank > 0:
    the run folder belongs to rank 0, which has already checked and prepared it."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if int(os.environ.get(var, "0") or 0) > 0:
            return True
    return False


def train(cfg: Config, *, resume: bool = False, overwrite: bool = False, debug: bool = False) -> Path:
    """Train ``cfg``'s task; returns the run directory.

    ``resume`` continues from ``checkpoints/last.ckpt`` (optimiser, scheduler, epoch,
    global step and AMP scaler state). Without it, an existing run of the same name is an
    error unless ``overwrite``. ``debug`` writes the task's debug figures for the first two
    steps to ``<run_dir>/debug_output``.
    """
    task = get_task(cfg)
    run_dir = cfg.run_dir
    last = checkpoint_dir(run_dir) / "last.ckpt"
    resume_step: int | None = None
    if resume:
        if not last.is_file():
            raise CheckpointError(f"{last}: nothing to resume (no last.ckpt in this run)")
        # our safe reader first: a damaged or code-carrying last.ckpt stops here with one line, before
        # Lightning unpickles it
        state = load_checkpoint(last, mmap=True)
        resume_step = int(state.get("global_step", 0) or 0)
        del state
    if _is_secondary_rank() or resume:
        pass
    elif checkpoint_dir(run_dir).exists():
        if not overwrite:
            raise NeurotrainError(
                f"{run_dir}: run exists; pass --resume to continue it, --overwrite to replace it, "
                "or choose run.name=..."
            )
        shutil.rmtree(run_dir)
    if not _is_secondary_rank():
        _write_config(cfg, run_dir)
    seed_everything(cfg)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    module = TaskModule(config_to_dict(cfg))
    if debug:
        module.debug_dir = run_dir / "debug_output"
        module.debug_dir.mkdir(parents=True, exist_ok=True)
        module._debug_steps_left = cfg.logging.debug_steps
    data = TaskDataModule(cfg, task)
    trainer = build_trainer(cfg, run_dir, task.callbacks(cfg), resume_step=resume_step)
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    ckpt_cb = trainer.checkpoint_callback
    summary: dict[str, Any] = {k: _plain(v) for k, v in trainer.callback_metrics.items()}
    summary["epoch"] = trainer.current_epoch
    summary["global_step"] = trainer.global_step
    if ckpt_cb is not None and getattr(ckpt_cb, "best_model_score", None) is not None:
        summary["best_score"] = _plain(ckpt_cb.best_model_score)
        summary["best_monitor"] = cfg.trainer.checkpoint.monitor
    if trainer.is_global_zero:
        update_metrics_json(run_dir, "train", summary)
    return run_dir


def default_checkpoint(cfg: Config) -> Path:
    """``best.ckpt`` of the config's run, falling back to ``last.ckpt``."""
    d = checkpoint_dir(cfg.run_dir)
    for name in ("best.ckpt", "last.ckpt"):
        if (d / name).is_file():
            return d / name
    raise CheckpointError(f"{d}: no best.ckpt or last.ckpt; train first or pass --ckpt")


def test(cfg: Config, ckpt: Path | None = None, **options: Any) -> dict[str, Any]:
    """Score a checkpoint on the test split; writes ``metrics.json``'s ``test`` section."""
    task = get_task(cfg)
    internal = {k: options.pop(k) for k in ("baseline", "debug") if k in options}
    options = check_options(task, "test", options)
    options.update(internal)
    needs_model = not options.get("baseline", False)
    model = None
    if needs_model:
        ckpt = Path(ckpt) if ckpt is not None else default_checkpoint(cfg)
        _, model = load_model(ckpt)
    own = task.test(cfg, model, **options)
    if own is not None:
        metrics = own
    else:
        if model is None:
            raise NeurotrainError(f"task {cfg.task!r} has no baseline test; drop --baseline")
        seed_everything(cfg)
        module = TaskModule(config_to_dict(cfg))
        module.model.load_state_dict(model.state_dict())
        trainer = build_trainer(cfg, cfg.run_dir, resume_step=KEEP_ALL_ROWS)
        results = trainer.test(module, datamodule=TaskDataModule(cfg, task), verbose=False)
        metrics = _plain(results[0]) if results else {}
    update_metrics_json(cfg.run_dir, "test", metrics)
    return metrics


def check_output_dir(path: Path, what: str = "-o") -> Path:
    """``path`` can be a folder we write into: not an existing file, and its nearest existing ancestor is a
    writable folder. One :class:`DataError` line otherwise; nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: {what} names an existing file; a folder is written here (choose a new name)")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise DataError(f"{probe}: is a file, so {path} cannot be created as a folder ({what})")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise DataError(f"{probe}: permission denied: cannot write here ({what} {path}); choose another folder")
    return path


def evaluation_dir(pred: Path, output: Path | None) -> Path:
    """Where ``evaluate --pred FILE`` writes: ``output``, else ``<pred stem>_evaluation/`` beside the prediction."""
    pred = Path(pred)
    return Path(output) if output is not None else pred.with_name(f"{pred.stem}_evaluation")


def evaluate(cfg: Config, ckpt: Path | None = None, *, baseline_only: bool = False, output: Path | None = None,
             **options: Any) -> EvalResult:
    """Network and classical baseline side by side: ``metrics.json`` + report + figures in the config's run.

    With ``pred=FILE`` (a result file scored against ``truth=FILE``) nothing touches a run: everything goes
    to ``output``, by default a new folder ``<pred stem>_evaluation/`` beside the prediction.
    """
    task = get_task(cfg)
    internal = {k: options.pop(k) for k in ("pred", "truth") if k in options}
    options = check_options(task, "evaluate", options)
    options.update(internal)
    if options.get("pred") is not None:
        out_dir = check_output_dir(evaluation_dir(Path(options["pred"]), output))
        for key in ("pred", "truth"):
            if options.get(key) is not None and not Path(options[key]).is_file():
                raise DataError(f"{options[key]}: --{key} file not found")
        result = task.evaluate(cfg, None, out_dir, **options)
        update_metrics_json(out_dir, "evaluate", result.metrics)
        return result
    run_dir = Path(output) if output is not None else cfg.run_dir
    check_output_dir(run_dir)
    model = None
    if not baseline_only:
        ckpt = Path(ckpt) if ckpt is not None else default_checkpoint(cfg)
        _, model = load_model(ckpt)
    run_dir.mkdir(parents=True, exist_ok=True)
    result = task.evaluate(cfg, model, run_dir, **options)
    update_metrics_json(run_dir, "evaluate", result.metrics)
    return result


def predict(ckpt: Path, inputs: list[Path], output: Path | None, overrides: list[str] | None = None, **options: Any) -> list[Path]:
    """Run a trained network on field files; needs only the checkpoint.

    Order, so that a bad input fails in a second: the checkpoint's structure and embedded config (tensors
    memory-mapped), the ``--opt`` options against the task's schema, the task's cheap input checks
    (:meth:`Task.check_predict_inputs`), then the network is built and run. ``debug``/``progress`` are the
    CLI's own keys and bypass the schema.
    """
    ckpt_data, cfg = checkpoint_config(ckpt, overrides)
    task = get_task(cfg)
    internal = {k: options.pop(k) for k in ("debug", "progress") if k in options}
    options = check_options(task, "predict", options)
    options.update(internal)
    inputs = [Path(p) for p in inputs]
    task.check_predict_inputs(cfg, inputs, output, **options)
    model = model_from_checkpoint(ckpt_data, cfg, ckpt)
    del ckpt_data
    return task.predict(cfg, model, inputs, output, **options)


def prepare(cfg: Config, **options: Any) -> dict[str, Any]:
    """The task's data preparation (field files -> training-ready HDF5)."""
    return get_task(cfg).prepare(cfg, **options)


def analyze(cfg: Config, ckpt: Path | None = None, **options: Any) -> dict[str, Any]:
    """Feature importance and residual analysis of a trained checkpoint; writes under the run's ``analysis/``."""
    task = get_task(cfg)
    options = check_options(task, "analyze", options)
    ckpt = Path(ckpt) if ckpt is not None else default_checkpoint(cfg)
    _, model = load_model(ckpt)
    out_dir = cfg.run_dir / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = task.analyze(cfg, model, out_dir, **options)
    update_metrics_json(cfg.run_dir, "analyze", summary)
    return summary
