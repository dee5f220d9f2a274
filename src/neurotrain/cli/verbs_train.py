"""The verbs that make data and models: ``simulate``, ``prepare``, ``train``, ``tune``, ``analyze``.

Each is a plain function behind the error boundary; :mod:`neurotrain.cli` registers them on the app.
The engine (and with it torch) is imported inside each verb, after the cheap checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from neurotrain.cli.app import DEBUG_HELP, say
from neurotrain.cli.arguments import load, parse_options, split_names, task_or_config
from neurotrain.cli.boundary import handle_errors
from neurotrain.cli.display import print_metrics
from neurotrain.errors import ConfigError


@handle_errors
def train(
    config: Path = typer.Argument(..., help="YAML or TOML config file."),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value overrides (value parsed as YAML)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from checkpoints/last.ckpt of this run."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of the same name."),
    debug: bool = typer.Option(False, "--debug", help="Write the task's debug figures for the first steps; show the "
                               "traceback of an error."),
    elements: Optional[list[str]] = typer.Option(
        None, "--elements", help="Train one model per label, element by element (stellar: C_FE,MG_FE or repeat the flag); "
        "each run is named <run.name>_<LABEL>.",
    ),
) -> None:
    """Train a model; writes runs/<task>/<name>/ (config, checkpoints, logs, metrics.json)."""
    cfg = load(config, overrides)
    from neurotrain.engine import api

    labels = split_names(elements)
    if not labels:
        run_dir = api.train(cfg, resume=resume, overwrite=overwrite, debug=debug)
        say(f"run: {run_dir}")
        return
    if "labels" not in type(cfg).model_fields:
        raise ConfigError(f"config error in {config}: --elements: task {cfg.task!r} has no labels section")
    for label in labels:
        one = load(config, list(overrides or []) + [f"labels.names=[{label}]", f"run.name={cfg.run.name}_{label}"])
        run_dir = api.train(one, resume=resume, overwrite=overwrite, debug=debug)
        say(f"run {label}: {run_dir}")


@handle_errors
def prepare(
    config: Path = typer.Argument(..., help="YAML or TOML config file (its catalog section names the inputs)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value overrides."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Read and preprocess the field's files into training-ready HDF5 (resumable: rerun to continue)."""
    cfg = load(config, overrides)
    from neurotrain.engine import api

    summary = api.prepare(cfg)
    print_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))}, f"prepare {cfg.task}")


@handle_errors
def analyze(
    config: Path = typer.Argument(..., help="YAML or TOML config file."),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value overrides."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint (default: the run's best.ckpt)."),
    opt: Optional[list[str]] = typer.Option(None, "--opt", help="Task option key=value (repeatable)."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Feature importance and residual analysis of a trained model; writes <run>/analysis/."""
    cfg = load(config, overrides)
    from neurotrain.engine import api

    summary = api.analyze(cfg, ckpt, **parse_options(opt))
    say(f"analysis: {cfg.run_dir / 'analysis'}")
    print_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))}, f"analyze {cfg.task}")


@handle_errors
def simulate(
    target: str = typer.Argument(..., help="Task name or config file."),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value overrides."),
    output: Path = typer.Option(..., "--out", "--output", "-o", help="Output file or folder."),
    n: int = typer.Option(1000, "-n", help="Number of samples (spectra, movies, recordings)."),
    opt: Optional[list[str]] = typer.Option(None, "--opt", help="Task option key=value (repeatable)."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Write simulated data from the task's physics simulator."""
    from neurotrain.engine.api import get_task
    from neurotrain.task import check_options

    cfg = task_or_config(target, overrides)
    if n < 1:
        raise ConfigError(f"config error in simulate: -n: expected at least 1 sample (got {n})")
    task = get_task(cfg)
    path = task.simulate(cfg, output, n, **check_options(task, "simulate", parse_options(opt)))
    say(f"wrote {path}")


@handle_errors
def tune(
    config: Path = typer.Argument(..., help="Base config file."),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value overrides."),
    trials: int = typer.Option(20, "--trials", "-n", help="Trials for this worker."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL (default: SQLite in the run dir)."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="Study name (shared by workers)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop after this many seconds."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Hyper-parameter search with Optuna over the task's search space."""
    from neurotrain import tune as tuning

    cfg = load(config, overrides)
    study = tuning.tune(cfg, trials, storage=storage, study_name=study_name, timeout_s=timeout)
    say(f"best {cfg.trainer.checkpoint.monitor} = {study.best_value:.6g} with {study.best_params}")
