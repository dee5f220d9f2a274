"""The ``neurotrain`` command line."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from neurotrain.errors import ConfigError, NeurotrainError, describe_os_error

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="neurotrain",
    help="Train, evaluate and deploy deep networks on scientific measurements.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

out = Console()
err = Console(stderr=True)

DEBUG_ENV = "NEUROTRAIN_DEBUG"
"""Set to 1 to show the traceback of every error (as ``--debug`` does)."""
_STATE: dict[str, bool] = {"debug": False}
DEBUG_HELP = "Show the full traceback of an error (for a bug report)."


def say(text: str, console: Console | None = None) -> None:
    """Print plain text: no Rich markup (``'x [nm]'`` stays as it is), no highlighting, no wrapping."""
    (console or out).print(text, markup=False, highlight=False, soft_wrap=True)


def expected_failure(exc: BaseException) -> tuple[list[str], int] | None:
    """The one-line message(s) and exit code of a failure a user can cause, or ``None`` for a bug.

    Expected: our :class:`NeurotrainError` (its code), I/O and permissions (``OSError``: the path and what
    went wrong), undecodable text, memory exhaustion (host or CUDA), a pydantic validation that escaped a
    reader (exit 2), Ctrl-C (130). Everything else is an internal error and keeps its traceback.
    """
    if isinstance(exc, NeurotrainError):
        return (str(exc).splitlines() or [type(exc).__name__]), exc.exit_code
    if isinstance(exc, OSError):
        return [describe_os_error(exc)], 1
    if isinstance(exc, UnicodeError):
        return [f"cannot decode text ({exc}); is a binary file given where a text file is expected?"], 1
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return ["out of memory: the input or the batch does not fit; lower inference.max_memory_gb or "
                "data.batch_size, or split the input"], 1
    if isinstance(exc, KeyboardInterrupt):
        return ["interrupted"], 130
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, ValidationError):
        from neurotrain.config import _format_validation_error

        return _format_validation_error(exc, exc.title).splitlines(), 2
    return None


def handle_errors(fn: F) -> F:
    """The CLI's one boundary: an expected failure (see :func:`expected_failure`) becomes its one-line
    message on stderr and an exit code (1; 2 for config/usage errors), no traceback. ``--debug`` (before or
    after the command) or ``NEUROTRAIN_DEBUG=1`` re-raises it with the traceback; internal bugs always do."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except BaseException as exc:
            found = expected_failure(exc)
            debug = _STATE["debug"] or bool(kwargs.get("debug")) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
            if found is None or debug:
                raise
            lines, code = found
            for line in lines:
                err.print(Text.assemble(("error:", "bold red"), " ", line), highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("neurotrain")
        except PackageNotFoundError:  # pragma: no cover  (running from a source tree)
            from neurotrain import __version__ as v
        typer.echo(f"neurotrain {v}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Train, evaluate and deploy deep networks on scientific measurements."""
    _STATE["debug"] = debug


def options_help(command: str) -> Table | None:
    """Every task's ``--opt`` keys for ``command``: name, type, default, meaning (from the schemas)."""
    from neurotrain.registry import TASKS
    import neurotrain.tasks  # noqa: F401  (tasks register on import)

    table = Table(title=f"task options: --opt key=value ({command})", title_justify="left", show_lines=False)
    for col in ("task", "key", "type", "default", "meaning"):
        table.add_column(col, overflow="fold")
    rows = 0
    for name in TASKS.names():
        schema = TASKS.get(name).options_schema(command)
        if schema is None:
            continue
        if not schema.model_fields:
            table.add_row(name, "(none)", "", "", "")
            rows += 1
        for key, f in schema.model_fields.items():
            ann = type_name(f.annotation)
            default = "from config" if f.default is None else repr(f.default)
            table.add_row(Text(name), Text(key), Text(ann), Text(default), Text(f.description or ""))
            rows += 1
    return table if rows else None


def type_name(annotation: Any) -> str:
    """``int | None`` -> ``int``; ``Literal['a', 'b'] | None`` -> ``a|b``; for the options table."""
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if args and typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(type_name(a) for a in args)
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


class OptionsHelpCommand(TyperCommand):
    """A command whose ``--help`` ends with the table of every task's ``--opt`` keys (imported lazily)."""

    option_command = "predict"

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help(ctx, formatter)
        table = options_help(self.option_command)
        if table is not None:
            Console(width=max(out.width, 120)).print(table)


def _options_cls(command: str) -> type[OptionsHelpCommand]:
    return type(f"{command.title()}HelpCommand", (OptionsHelpCommand,), {"option_command": command})


def _load(config: Path, overrides: list[str] | None):
    from neurotrain.config import load_config

    return load_config(config, overrides or [])


def _parse_options(items: list[str] | None) -> dict[str, Any]:
    """``--opt key=value`` task options; values parsed as YAML."""
    import yaml

    opts: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"config error in --opt: {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        if not k.strip():
            raise ConfigError(f"config error in --opt: {item!r} has an empty key")
        try:
            opts[k.strip()] = yaml.safe_load(v) if v.strip() else None
        except yaml.YAMLError:
            opts[k.strip()] = v  # a plain string such as a path with a colon
    return opts


def _task_or_config(target: str, overrides: list[str] | None):
    """A config file path, or a task name (its schema defaults, or its quickstart config)."""
    from neurotrain.config import apply_overrides, validate_config

    path = Path(target)
    if path.suffix.lower() in (".yaml", ".yml", ".toml") or path.is_file():
        return _load(path, overrides)
    quick = find_quickstart(target)
    if quick is not None:
        return _load(quick, overrides)
    return validate_config(apply_overrides({"task": target}, overrides or []), source=f"task {target}")


def repo_configs_dir() -> Path:
    """``configs/`` of the current directory, else of the source checkout neurotrain runs from."""
    here = Path.cwd() / "configs"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "configs"


def find_quickstart(task: str) -> Path | None:
    p = repo_configs_dir() / task / "quickstart.yaml"
    return p if p.is_file() else None


# ----------------------------------------------------------------------------- commands


@app.command()
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
    cfg = _load(config, overrides)
    from neurotrain.engine import api

    labels = split_names(elements)
    if not labels:
        run_dir = api.train(cfg, resume=resume, overwrite=overwrite, debug=debug)
        say(f"run: {run_dir}")
        return
    if "labels" not in type(cfg).model_fields:
        raise ConfigError(f"config error in {config}: --elements: task {cfg.task!r} has no labels section")
    for label in labels:
        one = _load(config, list(overrides or []) + [f"labels.names=[{label}]", f"run.name={cfg.run.name}_{label}"])
        run_dir = api.train(one, resume=resume, overwrite=overwrite, debug=debug)
        say(f"run {label}: {run_dir}")


def split_names(items: list[str] | None) -> list[str]:
    """``["C_FE,MG_FE", "CA_FE"]`` -> ``["C_FE", "MG_FE", "CA_FE"]`` (commas or spaces separate)."""
    names: list[str] = []
    for item in items or []:
        names += [n for n in item.replace(",", " ").split() if n]
    return names


@app.command()
@handle_errors
def prepare(
    config: Path = typer.Argument(..., help="YAML or TOML config file (its catalog section names the inputs)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value overrides."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Read and preprocess the field's files into training-ready HDF5 (resumable: rerun to continue)."""
    cfg = _load(config, overrides)
    from neurotrain.engine import api

    summary = api.prepare(cfg)
    _print_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))}, f"prepare {cfg.task}")


@app.command(cls=_options_cls("analyze"))
@handle_errors
def analyze(
    config: Path = typer.Argument(..., help="YAML or TOML config file."),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value overrides."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint (default: the run's best.ckpt)."),
    opt: Optional[list[str]] = typer.Option(None, "--opt", help="Task option key=value (repeatable)."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Feature importance and residual analysis of a trained model; writes <run>/analysis/."""
    cfg = _load(config, overrides)
    from neurotrain.engine import api

    summary = api.analyze(cfg, ckpt, **_parse_options(opt))
    say(f"analysis: {cfg.run_dir / 'analysis'}")
    _print_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))}, f"analyze {cfg.task}")


@app.command(cls=_options_cls("test"))
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
    cfg = _load(config, overrides)
    from neurotrain.engine import api

    metrics = api.test(cfg, ckpt, baseline=baseline, debug=debug, **_parse_options(opt))
    _print_metrics(metrics, f"test {cfg.task}")


@app.command(cls=_options_cls("predict"))
@handle_errors
def predict(
    ckpt: Path = typer.Argument(..., help="Trained checkpoint (its config is embedded)."),
    inputs: Optional[list[Path]] = typer.Argument(None, help="Input files or folders."),
    input_: Optional[list[Path]] = typer.Option(None, "--input", "-i", help="Input file or folder (repeatable)."),
    output: Optional[Path] = typer.Option(None, "--output", "--out", "-o", help="Output file or folder."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override the embedded config, a.b=c."),
    opt: Optional[list[str]] = typer.Option(None, "--opt", help="Task option key=value (repeatable; the keys of "
                                            "each task are listed below)."),
    debug: bool = typer.Option(False, "--debug", help="Write the task's debug figures; show the traceback of an error."),
) -> None:
    """Run a trained network on field files; the checkpoint alone is enough."""
    from neurotrain.engine.checkpoint import check_checkpoint_file
    from neurotrain.errors import DataError

    files = list(inputs or []) + list(input_ or [])
    if not files:
        raise ConfigError("config error in predict: no input files given")
    # before torch is imported (seconds): a wrong checkpoint or a missing input answers at once
    check_checkpoint_file(ckpt)
    for f in files:
        if not Path(f).exists():
            raise DataError(f"{f}: input file or folder not found")
    from neurotrain.engine import api


    options = _parse_options(opt)
    if debug:
        options["debug"] = True
    written = api.predict(ckpt, files, output, overrides, **options)
    for p in written:
        say(f"wrote {p}")


@app.command(cls=_options_cls("simulate"))
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

    cfg = _task_or_config(target, overrides)
    if n < 1:
        raise ConfigError(f"config error in simulate: -n: expected at least 1 sample (got {n})")
    task = get_task(cfg)
    path = task.simulate(cfg, output, n, **check_options(task, "simulate", _parse_options(opt)))
    say(f"wrote {path}")


@app.command(cls=_options_cls("evaluate"))
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
    cfg = _task_or_config(target, overrides)
    options = _parse_options(opt)
    if pred is not None:
        options.update(pred=pred, truth=truth)
        baseline_only = True
    result = api.evaluate(cfg, ckpt, baseline_only=baseline_only, output=output, **options)
    _print_result(result, cfg.task)


@app.command()
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

    cfg = _load(config, overrides)
    study = tuning.tune(cfg, trials, storage=storage, study_name=study_name, timeout_s=timeout)
    say(f"best {cfg.trainer.checkpoint.monitor} = {study.best_value:.6g} with {study.best_params}")


@app.command()
@handle_errors
def export(
    ckpt: Path = typer.Argument(..., help="Trained checkpoint."),
    output: Path = typer.Option(..., "--out", "--output", "-o", help="ONNX file to write."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
    quantize: bool = typer.Option(False, "--quantize", help="Also write a dynamic int8 model (<name>.int8.onnx)."),
    static: bool = typer.Option(False, "--static", help="Static int8 instead, calibrated on the validation data."),
    qat: bool = typer.Option(False, "--qat", help="Quantisation-aware fine-tuning before the int8 export."),
    atol: float = typer.Option(1e-4, "--atol", help="Largest allowed |onnxruntime - torch|."),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="Override the embedded config, a.b=c (e.g. export.calibration_batches=16)."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Export to ONNX, check onnxruntime against torch, optionally quantise to int8; writes a sidecar
    <name>.json (pre/post-processing) and <name>.report.json (accuracy, size, CPU latency before and after)."""
    from neurotrain.engine.api import get_task
    from neurotrain.engine.checkpoint import load_model
    from neurotrain.export_report import export_for_deploy

    cfg, model = load_model(ckpt, overrides)
    if static:
        cfg.export.quantize = "static"
    elif quantize and cfg.export.quantize == "none":
        cfg.export.quantize = "dynamic"
    if qat:
        cfg.export.qat = True
    report = export_for_deploy(get_task(cfg), cfg, model, output, opset=opset, atol=atol)
    _print_deploy_report(report)


def _print_deploy_report(report: Any) -> None:
    """The export summary, then the before/after table (one row per ONNX file), files written and notes."""
    from rich.markup import escape

    out.print(escape(report.export.summary()), highlight=False)
    from rich import box

    table = Table(title=report.title(), box=box.SIMPLE_HEAD, pad_edge=False)
    rows = report.table()
    for i, col in enumerate(report.columns()):  # numbers never wrap or clip; headers may wrap
        width = max((len(r[i]) for r in rows), default=1)
        table.add_column(col, justify="left" if i == 0 else "right", min_width=width)
    for row in rows:
        table.add_row(*row)
    out.print(table)
    for p in [*report.sidecars, report.report_path]:
        if p is not None:
            out.print(f"wrote {escape(str(p))}", highlight=False)
    for n in report.notes:
        out.print(f"note: {escape(n)}", highlight=False)


@app.command()
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


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def run_demo(task: str) -> list[tuple[str, ...]]:
    """One task's quickstart: train from simulation, then evaluate against the baseline. A quickstart whose
    evaluation also ran companion configs (``extra["companions"]``, e.g. vision's classifier) adds a row each."""
    from neurotrain.engine import api

    quick = find_quickstart(task)
    if quick is None:
        raise NeurotrainError(f"{repo_configs_dir() / task / 'quickstart.yaml'}: no quickstart config for task {task!r}")
    out.rule(escape(f"demo {task}: {quick}"))
    t0 = time.perf_counter()
    cfg = _load(quick, [])
    api.train(cfg, overwrite=True)
    result = api.evaluate(cfg)
    dt = time.perf_counter() - t0
    _print_result(result, task)
    arrow = "lower is better" if result.lower_is_better else "higher is better"
    rows = [(
        task,
        f"{result.headline_name} ({arrow})",
        _fmt(result.headline_network),
        _fmt(result.headline_baseline),
        f"{dt:.0f}",
        str(result.report_path or cfg.run_dir),
    )]
    for path, c in (result.extra or {}).get("companions", {}).items():
        rows.append((f"{task} ({c.get('kind', Path(path).stem)})", str(c.get("headline")), _fmt(c.get("network")),
                     _fmt(c.get("baseline")), "", str(c.get("report") or path)))
    return rows


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value")
    for k, v in sorted(metrics.items()):
        if isinstance(v, (int, float)):
            table.add_row(Text(str(k)), f"{v:.6g}")
    out.print(table)


def _print_result(result: Any, task: str) -> None:
    out.print(
        f"[bold]{escape(task)}[/]: {escape(str(result.headline_name))}: network {_fmt(result.headline_network)}, "
        f"baseline {_fmt(result.headline_baseline)}", highlight=False, soft_wrap=True,
    )
    if result.report_path is not None:
        say(f"report: {result.report_path}")


@config_app.command("show")
@handle_errors
def config_show(
    config: Path = typer.Argument(..., help="YAML or TOML config file."),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value overrides."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Print the resolved config (defaults filled in, overrides applied)."""
    from neurotrain.config import dump_yaml

    typer.echo(dump_yaml(_load(config, overrides)), nl=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
