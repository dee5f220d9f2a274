"""The ``neurotrain`` command line (typer).

Modules, one job each:

* ``app.py``: the typer app, its consoles, ``--version``/``--debug``.
* ``boundary.py``: the error boundary (expected failure -> one line and an exit code).
* ``arguments.py``: configs, ``--opt`` options and name lists from the command line.
* ``options_help.py``: the ``--opt`` table at the end of a verb's ``--help``.
* ``display.py``: metric tables, headlines, the export report.
* ``verbs_train.py`` (simulate, prepare, train, tune, analyze), ``verbs_score.py`` (test, evaluate,
  demo), ``verbs_deploy.py`` (predict, export, config show): the verbs themselves.

This module registers the verbs on the app, in the order ``neurotrain --help`` lists them, and keeps
every name that ``neurotrain.cli`` always offered importable from here.
"""

from __future__ import annotations

from neurotrain.cli.app import DEBUG_ENV, DEBUG_HELP, app, config_app, err, out, say
from neurotrain.cli.arguments import find_quickstart, repo_configs_dir, split_names
from neurotrain.cli.boundary import expected_failure, handle_errors
from neurotrain.cli.options_help import OptionsHelpCommand, options_cls, options_help, type_name
from neurotrain.cli.verbs_deploy import config_show, export, predict
from neurotrain.cli.verbs_score import demo, evaluate, run_demo, test
from neurotrain.cli.verbs_train import analyze, prepare, simulate, train, tune

__all__ = [
    "DEBUG_ENV", "DEBUG_HELP", "OptionsHelpCommand", "analyze", "app", "config_app", "config_show", "demo", "err",
    "evaluate", "expected_failure", "export", "find_quickstart", "handle_errors", "main", "options_help", "out",
    "predict", "prepare", "repo_configs_dir", "run_demo", "say", "simulate", "split_names", "test", "train", "tune",
    "type_name",
]

# the verbs, in the order --help lists them (typer keeps the order of registration)
app.command()(train)
app.command()(prepare)
app.command(cls=options_cls("analyze"))(analyze)
app.command(cls=options_cls("test"))(test)
app.command(cls=options_cls("predict"))(predict)
app.command(cls=options_cls("simulate"))(simulate)
app.command(cls=options_cls("evaluate"))(evaluate)
app.command()(tune)
app.command()(export)
app.command()(demo)
config_app.command("show")(config_show)


def main() -> None:
    """Console-script entry point."""
    app()

