"""Hyper-parameter search with Optuna.

Each trial asks the task for overrides (:meth:`Task.search_space`), trains a run
``<run.name>/trial_<n>`` and reports the checkpoint monitor's best value. The study
lives in an RDB: SQLite in the run directory by default, or any SQLAlchemy URL
(PostgreSQL, MySQL) so that many workers on a cluster share one study.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna

from neurotrain.config import Config, apply_overrides, config_to_dict, validate_config
from neurotrain.engine import api
from neurotrain.errors import NeurotrainError


def default_storage(cfg: Config) -> str:
    path = Path(cfg.run_dir) / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def trial_config(cfg: Config, trial_number: int, overrides: dict[str, Any]) -> Config:
    """The base config with one trial's overrides and its own run name."""
    items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    items.append(f"run.name={json.dumps(f'{cfg.run.name}/trial_{trial_number:04d}')}")
    data = apply_overrides(config_to_dict(cfg), items, source="tune trial")
    return validate_config(data, source=f"tune trial {trial_number}")


def tune(
    cfg: Config,
    n_trials: int,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    timeout_s: float | None = None,
) -> optuna.Study:
    """Run ``n_trials`` trials (this worker's share when several share ``storage``)."""
    task = api.get_task(cfg)
    monitor = cfg.trainer.checkpoint.monitor
    direction = "minimize" if cfg.trainer.checkpoint.mode == "min" else "maximize"
    study = optuna.create_study(
        study_name=study_name or f"{cfg.task}-{cfg.run.name}",
        storage=storage or default_storage(cfg),
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        load_if_exists=True,
    )

    def objective(trial: optuna.Trial) -> float:
        tcfg = trial_config(cfg, trial.number, task.search_space(trial))
        run_dir = api.train(tcfg, overwrite=True)
        metrics = json.loads((run_dir / "metrics.json").read_text())["train"]
        value = metrics.get("best_score", metrics.get(monitor))
        if value is None:
            raise NeurotrainError(f"{run_dir}: trial logged no {monitor!r}; set trainer.checkpoint.monitor")
        return float(value)

    study.optimize(objective, n_trials=n_trials, timeout=timeout_s, catch=())
    best = {"best_value": study.best_value, "best_params": study.best_params, "n_trials": len(study.trials)}
    api.update_metrics_json(cfg.run_dir, "tune", best)
    return study
