"""The verbs that use a trained checkpoint on its own: ``predict`` (field files -> results on disk) and
``export`` (ONNX, onnxruntime check, int8), plus ``config show`` (the resolved config).

Each is a plain function behind the error boundary; :mod:`neurotrain.cli` registers them on the app.
``predict`` checks the checkpoint and the inputs before torch is imported, so a wrong path answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from neurotrain.cli.app import DEBUG_HELP, say
from neurotrain.cli.arguments import load, parse_options
from neurotrain.cli.boundary import handle_errors
from neurotrain.cli.display import print_deploy_report
from neurotrain.errors import ConfigError


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

    options = parse_options(opt)
    if debug:
        options["debug"] = True
    written = api.predict(ckpt, files, output, overrides, **options)
    for p in written:
        say(f"wrote {p}")


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
    print_deploy_report(report)


@handle_errors
def config_show(
    config: Path = typer.Argument(..., help="YAML or TOML config file."),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value overrides."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Print the resolved config (defaults filled in, overrides applied)."""
    from neurotrain.config import dump_yaml

    typer.echo(dump_yaml(load(config, overrides)), nl=False)
