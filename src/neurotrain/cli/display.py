"""How the verbs print their results: metric tables, the network-vs-baseline headline, the export report."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from neurotrain.cli.app import out, say


def fmt(x: float | None) -> str:
    """A headline number in 4 significant digits, ``-`` when missing."""
    return "-" if x is None else f"{x:.4g}"


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    """A two-column table of the numeric ``metrics`` (sorted by name)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value")
    for k, v in sorted(metrics.items()):
        if isinstance(v, (int, float)):
            table.add_row(Text(str(k)), f"{v:.6g}")
    out.print(table)


def print_result(result: Any, task: str) -> None:
    """One line: the task's headline metric for the network and the baseline; then the report's path."""
    out.print(
        f"[bold]{escape(task)}[/]: {escape(str(result.headline_name))}: network {fmt(result.headline_network)}, "
        f"baseline {fmt(result.headline_baseline)}", highlight=False, soft_wrap=True,
    )
    if result.report_path is not None:
        say(f"report: {result.report_path}")


def print_deploy_report(report: Any) -> None:
    """The export summary, then the before/after table (one row per ONNX file), files written and notes."""
    from rich import box

    out.print(escape(report.export.summary()), highlight=False)
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
