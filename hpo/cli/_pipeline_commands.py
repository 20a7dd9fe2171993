"""Working on a pipeline: ``hpo validate``, ``run``, ``run-stage``, ``worker``, ``init`` and
``status``."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from hpo.cli._common import (
    Command,
    _format_option,
    _pipeline,
    _pipeline_options,
    _set_option,
    _work_options,
    _working,
)
from hpo.cli._data import Prepare
from hpo.cli._render import _headline, _render_state, _render_status

if TYPE_CHECKING:
    from hpo.pipeline import PipelineStatus, RunResult, StageRun


def _render_columns(d: dict[str, Any]) -> list[str]:
    lines = [
        f"data: {d['rows']:,} rows"
        + (
            f" ({d['dropped_target_rows']:,} with an empty target left out)"
            if d["dropped_target_rows"]
            else ""
        )
        + f"; {d['model_inputs']} model inputs ({d['encoding']} encoding)",
        f"  {'column':<22}{'kind':<13}{'type':<14}{'empty':>7}{'levels':>8}  encoding",
    ]
    for c in d["columns"]:
        empty = f"{c['missing']:.1%}" if c["missing"] is not None else ""
        levels = f"{c['levels']:,}" if c["levels"] is not None else ""
        lines.append(
            f"  {c['column']:<22}{c['kind']:<13}{c['type'][:13]:<14}{empty:>7}{levels:>8}  {c['encoding']}"
        )
    return lines


class Validate(Command):
    name = "validate"
    help = "check a study file; writes nothing"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", help="study file or name (default: msd_decade)")
        _set_option(parser)
        _format_option(parser)

    @classmethod
    def run(cls, args: argparse.Namespace) -> dict[str, Any]:
        from hpo import pipeline, plan

        p = plan.load(pipeline.resolve_study_file(args.config), overrides=args.overrides)
        from hpo.families import family_of

        out: dict[str, Any] = {
            "study_file": p.path,
            "pipeline": p.name,
            "task": p.data.task,
            "family": family_of(p.defaults).describe(p.defaults),
            "stages": [
                {"stage": s.name, "kind": s.kind, "requires": list(p.requires[s.name])}
                | ({"track": p.track_of(s.name)} if len(p.track_bases()) > 1 else {})
                for s in p.stages
            ],
        }
        if p.data.source in ("csv", "parquet"):  # a user's table: every column as read, if it is here
            assert p.data.path is not None
            if Path(p.data.path).expanduser().exists():
                from hpo import data
                from hpo.families.sklearn_api import data_encoding, native_levels
                from hpo.stages._context import column_listing

                prepared = data.cache.inspect(p.data, folds=p.folds())
                out["data"] = column_listing(
                    prepared,
                    data_encoding(*p.track_bases()),
                    native_levels(p.track_bases(), p.stages),
                    p.data.scaling,
                )
            else:
                out["data_note"] = (
                    f"data.path {p.data.path!r} is not in {Path.cwd()}, so its columns are not listed "
                    "(run validate where the table is)"
                )
        return out

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        r = result
        lines = [
            f"{r['study_file']}: pipeline {r['pipeline']} ({r['task']}, {r['family']}), "
            f"{len(r['stages'])} stages, valid"
        ]
        for s in r["stages"]:
            after = f" (after {', '.join(s['requires'])})" if s["requires"] else ""
            track = f" [{s['track']}]" if s.get("track") else ""
            lines.append(f"  {s['stage']:<24}{s['kind']}{after}{track}")
        if r.get("data"):
            lines += _render_columns(r["data"])
        elif r.get("data_note"):
            lines.append(r["data_note"])
        return "\n".join(lines)


class RunStage(Command):
    name = "run-stage"
    help = "run one stage of the pipeline"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("stage", help="a stage name of the study file (hpo validate lists them)")
        parser.add_argument(
            "--force", action="store_true", help="start this stage over (other stages untouched)"
        )
        _work_options(parser)
        _pipeline_options(parser)

    @classmethod
    def run(cls, args: argparse.Namespace) -> StageRun:
        return _working(args, lambda pipe: pipe.run_stage(args.stage, force=args.force))

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        r = result
        head = f"stage {r['stage']}: {r['status']}"
        if r["status"] == "already complete":
            head += " (use --force to run it again)"
        elif r.get("seconds") is not None:
            head += f" in {r['seconds']:.1f} s"
        return "\n".join([head, *_render_state(r["state"])])


class Run(Command):
    name = "run"
    help = "run every stage in order, skipping completed ones"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--force", action="store_true", help="start every stage over")
        _work_options(parser)
        _pipeline_options(parser)

    @classmethod
    def run(cls, args: argparse.Namespace) -> RunResult:
        return _working(args, lambda pipe: pipe.run(force=args.force))

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        r = result
        lines = [
            f"{s['stage']}: {s['status']}"
            + (f" in {s['seconds']:.1f} s" if s.get("seconds") is not None else "")
            for s in r["runs"]
        ]
        lines.append(f"total {r['seconds']:.1f} s")
        return "\n".join([*lines, "", _render_status(r["status"])])


class Worker(Command):
    """``hpo run`` without ``--force``, one of any number of workers on the same storage."""

    name = "worker"
    help = "work on the pipeline wherever it is, with any number of other workers; exit when it is done"
    defaults: ClassVar[Mapping[str, Any]] = {"force": False}  # no --force: never starts a stage over

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        _work_options(parser)
        _pipeline_options(parser)

    @classmethod
    def run(cls, args: argparse.Namespace) -> RunResult:
        return Run.run(args)

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        r = result
        done = [s["stage"] for s in r["runs"] if s["status"] == "completed"]
        metrics = r["status"].get("test_metrics") or {}
        tail = f"; test {_headline(metrics)}" if metrics else ""
        return f"worker done in {r['seconds']:.0f} s: ran {', '.join(done) or 'nothing (all complete)'}{tail}"


class Init(Command):
    name = "init"
    help = "prepare the pipeline's data (before starting many workers)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        _pipeline_options(parser)

    @classmethod
    def run(cls, args: argparse.Namespace) -> dict[str, Any]:
        from hpo import data

        pipe = _pipeline(args)
        return {
            "data": data.summary(pipe.dataset()),
            "storage": pipe.ctx.storage_url,
            "stages": [s.name for s in pipe.stages],
        }

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        r = result
        return Prepare.render(r["data"]) + f"\n\nstages: {', '.join(r['stages'])} ({r['storage']})"


class Status(Command):
    name = "status"
    help = "each stage's state, trials and selection; final metrics"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        _pipeline_options(parser)

    @classmethod
    def run(cls, args: argparse.Namespace) -> PipelineStatus:
        return _pipeline(args).status()

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        return _render_status(result)
