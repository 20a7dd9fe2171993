"""What the commands share: the :class:`Command` base, the options several commands take, the
pipeline a command works on (and the live display while it works), logging, and calling a
command: its result printed, its errors one line on stderr and an exit status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from hpo.errors import HpoError
from hpo.tuning.stopping import EXIT_TERMINATED, Terminated

if TYPE_CHECKING:
    from hpo.pipeline import Pipeline
    from hpo.present.progress import Progress

logger = logging.getLogger("hpo")

T = TypeVar("T")


class Command:
    """One ``hpo`` command: its arguments, its action and its rendering.

    ``run`` returns the command's typed result (or ``None``: nothing to print); the command line
    prints it as JSON (``--format json``) or as ``render`` writes it, given the result as a dict
    (its ``to_dict()``, what JSON shows)."""

    name: ClassVar[str]
    help: ClassVar[str]
    defaults: ClassVar[Mapping[str, Any]] = {}  # values set on the namespace beside the handler

    @classmethod
    def register(cls, commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        """Add the command to ``commands`` (a parser's sub-commands)."""
        parser = commands.add_parser(cls.name, help=cls.help)
        cls.add_arguments(parser)
        parser.set_defaults(handler=cls.run, render=cls.render, **cls.defaults)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Declare the command's arguments and options on its parser."""

    @classmethod
    def run(cls, args: argparse.Namespace) -> object:
        """Do what the command does; its typed result."""
        raise NotImplementedError

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        """The result (as a dict) as the table the command prints."""
        raise NotImplementedError


class Group:
    """A command whose actions are commands of their own (``hpo data prepare``)."""

    name: ClassVar[str]
    help: ClassVar[str]
    dest: ClassVar[str]
    metavar: ClassVar[str]
    actions: ClassVar[tuple[type[Command], ...]]

    @classmethod
    def register(cls, commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = commands.add_parser(cls.name, help=cls.help)
        actions = parser.add_subparsers(dest=cls.dest, required=True, metavar=cls.metavar)
        for action in cls.actions:
            action.register(actions)


# --------------------------------------------------------------------------- options


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json"), default="table")


def _set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one key of the study file, e.g. --set defaults.precision=fp32 (repeatable)",
    )


def _pipeline_options(p: argparse.ArgumentParser, *, output_format: bool = True) -> None:
    p.add_argument(
        "--config",
        help="study file, or a name in studies/ such as quick (default: msd_decade, the faithful protocol)",
    )
    _set_option(p)
    p.add_argument("--storage", help="SQLAlchemy URL (default $HPO_STORAGE or sqlite:///hpo.db)")
    p.add_argument(
        "--artifacts", type=Path, help="artifact directory (default $HPO_ARTIFACTS or ./artifacts)"
    )
    p.add_argument("--data-dir", type=Path, help="data cache (default $HPO_DATA_DIR or ~/.cache/hpo)")
    if output_format:
        _format_option(p)


def _work_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plain", action="store_true", help="log lines instead of the live display")
    p.add_argument(
        "--threads",
        type=_positive_int,
        help="torch threads (default $HPO_THREADS, else $OMP_NUM_THREADS, else the usable cores)",
    )
    p.add_argument(
        "--stop-at",
        metavar="TIME",
        help="claim no batch that would not finish by TIME (UNIX seconds or ISO 8601; default "
        "$HPO_STOP_AT, else $SLURM_JOB_END_TIME); exits 75 when it stops for it",
    )


# --------------------------------------------------------------------------- the pipeline


def _pipeline(args: argparse.Namespace, progress: Progress | None = None) -> Pipeline:
    from hpo.pipeline import Pipeline

    return Pipeline.load(
        args.config,
        storage=args.storage,
        artifacts=args.artifacts,
        data_dir=args.data_dir,
        progress=progress,
        overrides=args.overrides,
    )


def _live(args: argparse.Namespace) -> bool:
    """The live display: on a terminal, unless -q (JSON goes to stdout, the display to stderr)."""
    return sys.stderr.isatty() and not args.quiet and not getattr(args, "plain", False)


def _working(args: argparse.Namespace, work: Callable[[Pipeline], T]) -> T:
    """Run ``work(pipeline)`` with the live display on a terminal, log lines otherwise; SIGTERM
    as a polite stop, the threads set, and the deadline (``--stop-at``) handed to the stages."""
    from hpo.training import threads
    from hpo.tuning import stopping

    chosen = threads.resolve(args.threads)
    deadline = stopping.deadline(args.stop_at)
    stopping.handle_sigterm()

    def start(pipe: Pipeline) -> T:
        threads.apply(chosen)
        if deadline is not None:
            logger.info("claiming only work that ends before %s", deadline.describe())
        pipe.ctx.deadline = deadline
        pipe.ctx.before_claim = lambda: threads.rebalance(chosen, pipe.ctx.workers_on_host())
        return work(pipe)

    if not _live(args):
        return start(_pipeline(args))
    from rich.logging import RichHandler

    from hpo.present.progress import LiveProgress

    with LiveProgress() as live:
        handler = RichHandler(console=live.console, show_path=False, log_time_format="%H:%M:%S")
        logging.getLogger().handlers[:] = [handler]
        logging.getLogger("hpo.progress").setLevel(logging.WARNING)  # the bar shows what they would
        return start(_pipeline(args, progress=live))


# --------------------------------------------------------------------------- calling a command


def _configure_logging(*, quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("hpo").setLevel(level)
    import optuna

    optuna.logging.set_verbosity(logging.INFO if verbose else logging.WARNING)


def _as_dict(result: Any) -> Any:
    to_dict = getattr(result, "to_dict", None)
    return to_dict() if callable(to_dict) else result


def _call(args: argparse.Namespace) -> int:
    """Call the parsed command and print its result; the exit status (an error: one line on
    stderr, a traceback only with ``--debug``)."""
    try:
        if hasattr(args, "artifacts"):  # before any command opens the storage or writes
            from hpo.model_file import check_artifact_dir
            from hpo.tuning.storage import artifact_dir

            check_artifact_dir(artifact_dir(args.artifacts))
        result = args.handler(args)
    except HpoError as exc:
        if args.debug:
            raise
        print(f"hpo: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        if args.debug:
            raise
        print(
            "hpo: terminated (SIGTERM); the trials it had claimed were released for other workers",
            file=sys.stderr,
        )
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("hpo: interrupted", file=sys.stderr)
        return 130
    if result is not None:
        data = _as_dict(result)
        text = json.dumps(data, indent=2) if getattr(args, "format", "table") == "json" else args.render(data)
        try:
            print(text, flush=True)
        except BrokenPipeError:  # `hpo ... | head`: the reader left; not an error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
