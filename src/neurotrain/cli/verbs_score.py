"""The verbs that score models: ``test`` (metrics.json of a checkpoint or the baseline), ``evaluate``
(network and classical baseline side by side, with a report) and ``demo`` (every quickstart end to end).

Each is a plain function behind the error boundary; :mod:`neurotrain.cli` registers them on the app.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from neurotrain.cli.app import DEBUG_HELP, out
from neurotrain.cli.arguments import find_quickstart, load, parse_options, repo_configs_dir, task_or_config
from neurotrain.cli.boundary import handle_errors
from neurotrain.cli.display import fmt, print_metrics, print_result
from neurotrain.errors import ConfigError, NeurotrainError


@handle_errors
def test(
    config: Path = typer.Argument(..., help="YAML or TOML config file."),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value overrides."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint (default: the run's best.ckpt)."),
    baseline: bool = typer.Option(False, "--baseline", help="Run the classical baseline instead of the network."),
    debug: bool = typer.Option(False, "--debug", help="Write the task's debug figures; show the traceback of an error."),
    opt: Optional[list[str]] = typer.Option(None, "--opt", help="Task option key=value (repeatable)."),
) -> None:
    """Score a checkpoint (or the baseline) on the test data; writes metrics.json."""
    cfg = load(config, overrides)
    from neurotrain.engine import api

    metrics = api.test(cfg, ckpt, baseline=baseline, debug=debug, **parse_options(opt))
    print_metrics(metrics, f"test {cfg.task}")


@handle_errors
def evaluate(
    target: str = typer.Argument(..., help="Config file (or task name with --pred/--truth)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value overrides."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint (default: the run's best.ckpt)."),
    baseline_only: bool = typer.Option(False, "--baseline-only", help="Score only the classical baseline."),
    pred: Optional[Path] = typer.Option(None, "--pred", help="Score this result file instead of running a model."),
    truth: Optional[Path] = typer.Option(None, "--truth", help="Ground truth file for --pred."),
    output: Optional[Path] = typer.Option(
        None, "--output", "--out", "-o", help="Folder for metrics.json and report/ (default: the run's folder; "
        "with --pred, a new folder <pred>_evaluation beside the prediction)."),
    opt: Optional[list[str]] = typer.Option(None, "--opt", help="Task option key=value (repeatable)."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Network and classical baseline side by side: metrics.json, report and figures."""
    from neurotrain.engine import api

    if (pred is None) != (truth is None):
        raise ConfigError("config error in evaluate: give both --pred FILE and --truth FILE")
    cfg = task_or_config(target, overrides)
    options = parse_options(opt)
    if pred is not None:
        options.update(pred=pred, truth=truth)
        baseline_only = True
    result = api.evaluate(cfg, ckpt, baseline_only=baseline_only, output=output, **options)
    print_result(result, cfg.task)


@handle_errors
def demo(
    tasks: Optional[list[str]] = typer.Argument(None, help="Tasks to run (default: every task with a quickstart)."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Simulate -> train -> evaluate each task's quickstart config and summarise."""
    from neurotrain.registry import TASKS
    import neurotrain.tasks  # noqa: F401

    names = list(tasks or [t for t in TASKS.names() if find_quickstart(t) is not None])
    if not names:
        raise NeurotrainError("no task has a configs/<task>/quickstart.yaml yet; nothing to demo")
    rows = []
    for name in names:
        rows += run_demo(name)
    table = Table(title="neurotrain demo")
    for col in ("task", "metric", "network", "baseline", "time (s)"):
        table.add_column(col)
    table.add_column("report", overflow="fold")
    for r in rows:
        table.add_row(*(Text(str(x)) for x in r))
    out.print(table)


def run_demo(task: str) -> list[tuple[str, ...]]:
    """One task's quickstart: train from simulation, then evaluate against the baseline. A quickstart whose
    evaluation also ran companion configs (``extra["companions"]``, e.g. vision's classifier) adds a row each.
    Rows: task, headline metric, network, baseline, wall time (s), report path."""
    from neurotrain.engine import api

    quick = find_quickstart(task)
    if quick is None:
        raise NeurotrainError(f"{repo_configs_dir() / task / 'quickstart.yaml'}: no quickstart config for task {task!r}")
    out.rule(escape(f"demo {task}: {quick}"))
    t0 = time.perf_counter()
    cfg = load(quick, [])
    api.train(cfg, overwrite=True)
    result = api.evaluate(cfg)
    dt = time.perf_counter() - t0
    print_result(result, task)
    arrow = "lower is better" if result.lower_is_better else "higher is better"
    rows = [(
        task,
        f"{result.headline_name} ({arrow})",
        fmt(result.headline_network),
        fmt(result.headline_baseline),
        f"{dt:.0f}",
        str(result.report_path or cfg.run_dir),
    )]
    for path, c in (result.extra or {}).get("companions", {}).items():
        rows.append((f"{task} ({c.get('kind', Path(path).stem)})", str(c.get("headline")), fmt(c.get("network")),
                     fmt(c.get("baseline")), "", str(c.get("report") or path)))
    return rows
