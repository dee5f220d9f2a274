"""The typer application object, its consoles and its global options (``--version``, ``--debug``).

Every other module of :mod:`neurotrain.cli` imports ``app``/``config_app`` to register verbs and
``out``/``err``/``say`` to print; nothing here imports a verb, so there is no import cycle.
"""

from __future__ import annotations

import typer
from rich.console import Console

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
STATE: dict[str, bool] = {"debug": False}
"""Process-wide flags set by the global options (``--debug`` before the verb)."""
DEBUG_HELP = "Show the full traceback of an error (for a bug report)."


def say(text: str, console: Console | None = None) -> None:
    """Print plain text: no Rich markup (``'x [nm]'`` stays as it is), no highlighting, no wrapping."""
    (console or out).print(text, markup=False, highlight=False, soft_wrap=True)


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
    STATE["debug"] = debug
