"""The CLI's error boundary: which failures a user can cause, and how they are shown (one line, an exit code).

:func:`handle_errors` wraps every verb; :func:`expected_failure` decides what is expected (bad input,
I/O, memory, Ctrl-C) and what is a bug (keeps its traceback).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
import typer
from rich.text import Text

from neurotrain.cli.app import DEBUG_ENV, STATE, err
from neurotrain.errors import NeurotrainError, describe_os_error

F = TypeVar("F", bound=Callable[..., Any])


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
            debug = STATE["debug"] or bool(kwargs.get("debug")) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
            if found is None or debug:
                raise
            lines, code = found
            for line in lines:
                err.print(Text.assemble(("error:", "bold red"), " ", line), highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]
