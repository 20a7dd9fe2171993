"""Showing a pipeline: ``hpo report`` (one HTML page) and ``hpo dashboard`` (optuna-dashboard)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hpo.cli._common import Command, _pipeline, _pipeline_options, _positive_int
from hpo.errors import HpoError


class Report(Command):
    name = "report"
    help = "one self-contained HTML page: data, every stage, results, provenance"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, default=Path("report.html"), help="default report.html")
        parser.add_argument(
            "--compare",
            nargs="+",
            metavar="STUDY_FILE",
            help="put these pipelines of the same storage beside it",
        )
        _pipeline_options(parser)

    @classmethod
    def run(cls, args: argparse.Namespace) -> dict[str, Any]:
        from hpo.pipeline import Pipeline
        from hpo.present import report

        if args.compare:
            others = [
                Pipeline.load(c, storage=args.storage, artifacts=args.artifacts, data_dir=args.data_dir)
                for c in args.compare
            ]
            return report.write_comparison([_pipeline(args), *others], args.out)
        return report.write(_pipeline(args), args.out)

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        figs = ", ".join(f"{k} {v}" for k, v in result["figures"].items())
        return f"wrote {result['path']} ({result['bytes'] / 1e6:.1f} MB; figures: {figs})"


class Dashboard(Command):
    """Serves until stopped; prints the address it serves on instead of returning a result."""

    name = "dashboard"
    help = "start optuna-dashboard on the storage and artifacts"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--storage", help="SQLAlchemy URL (default $HPO_STORAGE or sqlite:///hpo.db)")
        parser.add_argument(
            "--artifacts", type=Path, help="artifact directory (default $HPO_ARTIFACTS or ./artifacts)"
        )
        parser.add_argument(
            "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, local only)"
        )
        parser.add_argument("--port", type=_positive_int, default=8080)
        parser.add_argument(
            "--allow-writes",
            action="store_true",
            help="let the dashboard delete studies, tell trials and edit notes and attributes "
            "(default: read-only, every method but GET and HEAD answered 405)",
        )

    @classmethod
    def run(cls, args: argparse.Namespace) -> None:
        from hpo.present import dashboard
        from hpo.tuning import storage

        url = storage.storage_url(args.storage)
        st = storage.open_storage(url)
        artifacts = storage.artifact_store(args.artifacts)
        try:
            server = dashboard.make_server(
                st, artifacts=artifacts, host=args.host, port=args.port, allow_writes=args.allow_writes
            )
        except OSError as exc:
            raise HpoError(
                f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
                "choose another with --port"
            ) from None
        shown = "[" + args.host + "]" if ":" in args.host else args.host
        mode = "writes allowed" if args.allow_writes else "read-only; --allow-writes to change studies"
        print(
            f"optuna-dashboard for {storage.redact(url)} on http://{shown}:{args.port}/ "
            f"({mode}; Ctrl-C to stop)"
        )
        sys.stdout.flush()
        with server:
            server.serve_forever()

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        return str(result)
