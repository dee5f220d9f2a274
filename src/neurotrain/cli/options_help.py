"""``--help`` of the verbs that take ``--opt``: it ends with every task's option keys, read from the tasks'
option schemas (the tasks are imported only when the help is shown)."""

from __future__ import annotations

import typing
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from neurotrain.cli.app import out


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
    import types

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if args and typing.get_origin(annotation) in (typing.Union, getattr(types, "UnionType", None)):
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


def options_cls(command: str) -> type[OptionsHelpCommand]:
    """The :class:`OptionsHelpCommand` subclass whose help lists the options of ``command``."""
    return type(f"{command.title()}HelpCommand", (OptionsHelpCommand,), {"option_command": command})
