"""The ``hpo`` command line. The only module that prints: it parses, calls, and renders.

Commands call the Python API (:class:`hpo.pipeline.Pipeline`, :mod:`hpo.data`, ...) and render
the typed results it returns, as a table or as JSON (``--format json``). Errors of the
:class:`~hpo.errors.HpoError` family become one line on stderr and exit status 2 (a traceback
only with ``--debug``); Ctrl-C exits 130; SIGTERM releases a worker's claimed trials and exits 143;
a worker that stops because its next batch would not end before ``--stop-at`` exits 75.

One class per command (:class:`~hpo.cli._common.Command`) holds its arguments
(``add_arguments``), its action (``run``, returning the typed result) and its rendering
(``render``); ``hpo data``'s actions are a :class:`~hpo.cli._common.Group`. The modules:
``_common`` (the base classes, shared options, the pipeline a command works on, logging, calling
a command and its errors), ``_data`` (``hpo data ...``), ``_pipeline_commands`` (validate, run,
run-stage, worker, init, status), ``_render`` (a pipeline's state as text), ``_model`` (predict,
export-model) and ``_present`` (report, dashboard).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from hpo import __version__
from hpo.cli._common import Command, Group, _call, _configure_logging
from hpo.cli._data import Data
from hpo.cli._model import ExportModel, Predict
from hpo.cli._pipeline_commands import Init, Run, RunStage, Status, Validate, Worker
from hpo.cli._present import Dashboard, Report
from hpo.cli._render import _test_line as _test_line

__all__ = ["COMMANDS", "Command", "Group", "build_parser", "main"]

#: the commands in the order ``hpo --help`` lists them
COMMANDS: tuple[type[Command] | type[Group], ...] = (
    Data,
    Validate,
    RunStage,
    Run,
    Worker,
    Init,
    Status,
    Predict,
    Report,
    Dashboard,
    ExportModel,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpo", description="Staged, reproducible hyperparameter optimisation on Optuna."
    )
    parser.add_argument("--version", action="version", version=f"hpo {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(quiet=args.quiet, verbose=args.verbose)
    return _call(args)
