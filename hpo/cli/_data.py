"""``hpo data``: prepare a dataset, calibrate it, check its nonlinearity, write a synthetic file,
explore it as HTML, compute a synthetic draw's ceiling (the Bayes-optimal figure)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.cli._common import (
    Command,
    Group,
    _format_option,
    _non_negative_int,
    _pipeline,
    _pipeline_options,
    _positive_int,
)
from hpo.cli._present import Report
from hpo.errors import ConfigError
from hpo.tasks import CLASSIFICATION, TASK_KINDS, task_kind

if TYPE_CHECKING:
    from hpo.sections import DataSettings


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="take [data] from this study file (the flags below override it)")
    p.add_argument("--source", choices=("synthetic", "msd", "csv", "parquet"))
    p.add_argument("--task", choices=tuple(TASK_KINDS))
    p.add_argument("--file", type=Path, help="msd: a local YearPredictionMSD .zip or .txt")
    p.add_argument("--path", type=Path, help="csv / parquet: the table")
    p.add_argument("--target", help="csv / parquet: the label column")
    p.add_argument("--rows", type=_positive_int, help="synthetic: rows to draw; msd: random subset")
    p.add_argument("--seed", type=int, help="split (and synthetic draw) seed (default 42)")
    p.add_argument("--split", choices=("stratified", "official", "head"))
    p.add_argument("--data-dir", type=Path, help="cache directory (default $HPO_DATA_DIR or ~/.cache/hpo)")
    _format_option(p)


def _data_settings(args: argparse.Namespace) -> DataSettings:
    """``[data]`` of ``--config``, with the data flags given on the command line applied."""
    from pydantic import ValidationError

    from hpo.sections import DataSettings
    from hpo.settings import describe_error, error_path

    base: dict[str, Any] = {}
    if getattr(args, "config", None):
        from hpo import pipeline, plan

        base = plan.load(pipeline.resolve_study_file(args.config)).data.model_dump()
    flags = {
        k: getattr(args, k, None)
        for k in ("source", "task", "file", "path", "target", "rows", "seed", "split")
    }
    update = {k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items() if v is not None}
    try:
        return DataSettings.model_validate({**base, **update})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = error_path(("data", *first["loc"]))
        raise ConfigError(f"{where}: {describe_error(first)}") from None


class Prepare(Command):
    name = "prepare"
    help = "read, validate, label, split, scale and cache a dataset"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        _data_options(parser)
        parser.add_argument("--force", action="store_true", help="prepare again even if cached")

    @classmethod
    def run(cls, args: argparse.Namespace) -> dict[str, Any]:
        from hpo import data

        prepared = data.prepare(
            _data_settings(args), data_dir=args.data_dir, force=args.force, progressbar=not args.quiet
        )
        return data.summary(prepared)

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        summary = result
        split = summary["split"]
        sizes = split["sizes"]
        lines = [
            f"prepared {summary['rows']:,} rows from {summary['source']} -> {summary['path']}",
            f"source {summary['source_file']} (sha256 {summary['source_sha256']})",
            f"{summary['features']} features, target {summary['target']} "
            f"({summary.get('task', CLASSIFICATION.name)})",
            "",
        ]
        target = summary.get("target_summary")
        if target:
            lines.append(
                f"target: mean {target['mean']:.4g}, sd {target['std']:.4g}, median {target['median']:.4g}, "
                f"range {target['min']:.4g}..{target['max']:.4g}"
            )
        else:
            lines.append(f"{'class':<16}{'count':>10}{'share':>9}")
            for row in summary["classes"]:
                lines.append(f"{row['class']:<16}{row['count']:>10,}{row['share']:>9.2%}")
            lines.append(f"majority class share: {summary['majority_share']:.2%}")
        lines.append(
            f"split {split['name']}: {sizes['train']:,} train, {sizes['val']:,} val, {sizes['test']:,} test"
        )
        if summary.get("dropped_target_rows"):
            lines.append(f"{summary['dropped_target_rows']:,} row(s) with an empty target left out")
        return "\n".join(lines)


class Nonlinearity(Command):
    name = "nonlinearity"
    help = (
        "how much of the decade signal only a nonlinear model reaches (boosting minus logistic "
        "regression), on synthetic draws and optionally on real rows"
    )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--draws", type=_positive_int, default=5)
        parser.add_argument(
            "--rows", type=_positive_int, default=7000, help="rows per draw (and of the real file)"
        )
        parser.add_argument("--real", type=Path, help="a file in UCI's layout to compare with")
        _format_option(parser)

    @classmethod
    def run(cls, args: argparse.Namespace) -> dict[str, Any]:
        from hpo.data import calibration

        config = calibration.NonlinearityConfig(draws=args.draws, rows=args.rows)
        return calibration.nonlinearity(config=config, real_file=args.real)

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        r = result
        gaps = ", ".join(f"{g:+.2%}" for g in r["gaps"])
        lines = [
            f"gradient boosting minus logistic regression, {r['folds']}-fold CV on {r['rows']:,} rows",
            f"synthetic ({r['draws']} draws) {r['gap_mean']:+.2%}  ({gaps})",
        ]
        if r["real_gap"] is not None:
            verdict = "within 1 point" if r["within_1_point"] else "NOT within 1 point"
            lines.append(f"real rows           {r['real_gap']:+.2%}  ({r['real_file']}; {verdict})")
        return "\n".join(lines)


class Calibrate(Command):
    name = "calibrate"
    help = "test accuracy of the majority class, logistic regression and the MLP"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        _data_options(parser)
        parser.add_argument("--epochs", type=_positive_int, default=15)
        parser.add_argument(
            "--draws",
            type=_non_negative_int,
            default=5,
            help="synthetic draws for the nonlinearity check (synthetic sources; 0 skips it)",
        )
        parser.add_argument(
            "--real", type=Path, help="real rows in UCI's layout for the nonlinearity check to compare with"
        )

    @classmethod
    def run(cls, args: argparse.Namespace) -> dict[str, Any]:
        from hpo.data import calibration

        config = calibration.CalibrationConfig(epochs=args.epochs)
        settings = _data_settings(args)
        out = calibration.calibrate(settings, config=config, data_dir=args.data_dir)
        out["nonlinearity"] = None
        if args.draws > 0 and settings.source == "synthetic" and task_kind(settings.task).has_classes:
            check = calibration.NonlinearityConfig(draws=args.draws)
            out["nonlinearity"] = calibration.nonlinearity(config=check, real_file=args.real)
        return out

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        r = result
        if not task_kind(str(r.get("task", CLASSIFICATION.name))).has_classes:
            head = (
                f"{r['source']}: {r['rows']:,} rows "
                f"({r['train_rows']:,} train, {r['test_rows']:,} test); test"
            )
            rows = [
                ("training mean", r["constant"], ""),
                ("ridge regression", r["ridge"], f" (alpha {r['ridge_alpha']:.3g})"),
                ("MLP", r["mlp"], f" ({r['mlp_model']})"),
            ]
            return "\n".join(
                [head]
                + [
                    f"{name:<19} RMSE {m['rmse']:.4g}, MAE {m['mae']:.4g}, R² {m['r2']:.4f}{how}"
                    for name, m, how in rows
                ]
            )
        lines = [
            f"{r['source']}: {r['rows']:,} rows ({r['train_rows']:,} train, {r['test_rows']:,} test)",
            f"majority class      {r['majority_accuracy']:.2%}",
            f"logistic regression {r['logreg_accuracy']:.2%}",
            f"MLP                 {r['mlp_accuracy']:.2%} (loss {r['mlp_loss']:.4f}; {r['mlp']})",
        ]
        if r.get("nonlinearity"):
            lines.append(Nonlinearity.render(r["nonlinearity"]))
        return "\n".join(lines)


class Synth(Command):
    name = "synth"
    help = "write a synthetic file in the UCI text layout"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, required=True, help="output .txt path")
        parser.add_argument("--rows", type=_positive_int, help="rows (default: the full 515,345)")
        parser.add_argument("--seed", type=int, default=42)
        _format_option(parser)

    @classmethod
    def run(cls, args: argparse.Namespace) -> dict[str, Any]:
        from hpo.data import synthetic

        spec = synthetic.SyntheticSpec(rows=args.rows or synthetic.FULL_ROWS, seed=args.seed)
        path = synthetic.write_uci_text(spec, args.out)
        return {"path": str(path), "rows": spec.rows, "seed": spec.seed}

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        return f"wrote {result['rows']:,} rows to {result['path']}"


class Explore(Command):
    name = "explore"
    help = "write the data section (classes, histograms, box plots, correlations) as HTML"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--out", type=Path, default=Path("data.html"), help="HTML file (default data.html)"
        )
        _pipeline_options(parser)

    @classmethod
    def run(cls, args: argparse.Namespace) -> dict[str, Any]:
        from hpo.present import report

        return report.write(_pipeline(args), args.out, stages=False)

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        return Report.render(result)


class Oracle(Command):
    name = "oracle"
    help = "the Bayes-optimal test figure of a synthetic draw (the ceiling no tuner can pass)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        _data_options(parser)
        parser.add_argument(
            "--no-linear", action="store_true", help="skip the linear model (minutes on a full-size draw)"
        )

    @classmethod
    def run(cls, args: argparse.Namespace) -> dict[str, Any]:
        from hpo.data import oracle

        settings = _data_settings(args)
        ceiling = oracle.oracle(settings, data_dir=args.data_dir)
        baselines = None if args.no_linear else oracle.baselines(settings, data_dir=args.data_dir)
        return {"ceiling": ceiling, "baselines": baselines}

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        c, b = result["ceiling"], result["baselines"]
        head = f"synthetic draw rows={c['rows']:,} seed={c['seed']}: {c['test_rows']:,} test rows"
        if "accuracy" in c:
            lines = [
                head,
                f"Bayes-optimal (the ceiling) accuracy {c['accuracy']:.2%}, loss {c['loss']:.4f} "
                f"(it expects {c['expected_accuracy']:.2%} of itself)",
            ]
            if b:
                lines += [
                    f"majority class               accuracy {b['majority_accuracy']:.2%}",
                    f"linear model                 accuracy {b['linear_accuracy']:.2%} ({b['linear']})",
                ]
            return "\n".join(lines)
        lines = [head, f"Bayes-optimal (the ceiling) RMSE {c['rmse']:.4g} years, MAE {c['mae']:.4g}"]
        if b:
            lines += [
                f"training mean                RMSE {b['mean_rmse']:.4g}",
                f"linear model                 RMSE {b['linear_rmse']:.4g} ({b['linear']})",
            ]
        return "\n".join(lines)


class Data(Group):
    name = "data"
    help = "prepare, generate and inspect data"
    dest = "data_command"
    metavar = "ACTION"
    actions = (Prepare, Calibrate, Nonlinearity, Synth, Explore, Oracle)
