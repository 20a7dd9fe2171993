"""The ``hpo`` command line. The only module that prints: it parses, calls, and renders.

Commands call the Python API (:class:`hpo.pipeline.Pipeline`, :mod:`hpo.data`, ...) and render
the typed results it returns, as a table or as JSON (``--format json``). Errors of the
:class:`~hpo.errors.HpoError` family become one line on stderr and exit status 2 (a traceback
only with ``--debug``); Ctrl-C exits 130; SIGTERM releases a worker's claimed trials and exits 143;
a worker that stops because its next batch would not end before ``--stop-at`` exits 75.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpo import __version__
from hpo.errors import ConfigError, HpoError
from hpo.tuning.stopping import EXIT_TERMINATED, Terminated

logger = logging.getLogger("hpo")

Handler = Callable[[argparse.Namespace], Any]


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


def _as_dict(result: Any) -> Any:
    to_dict = getattr(result, "to_dict", None)
    return to_dict() if callable(to_dict) else result


# --------------------------------------------------------------------------- data commands


def _data_settings(args: argparse.Namespace) -> Any:
    """``[data]`` of ``--config``, with the data flags given on the command line applied."""
    from pydantic import ValidationError

    from hpo.settings import DataSettings, describe_error, error_path

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


def _cmd_data_prepare(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import data

    prepared = data.prepare(
        _data_settings(args), data_dir=args.data_dir, force=args.force, progressbar=not args.quiet
    )
    return data.summary(prepared)


def _render_prepare(summary: dict[str, Any]) -> str:
    split = summary["split"]
    sizes = split["sizes"]
    lines = [
        f"prepared {summary['rows']:,} rows from {summary['source']} -> {summary['path']}",
        f"source {summary['source_file']} (sha256 {summary['source_sha256']})",
        f"{summary['features']} features, target {summary['target']} "
        f"({summary.get('task', 'classification')})",
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


def _cmd_data_synth(args: argparse.Namespace) -> dict[str, Any]:
    from hpo.data import synthetic

    spec = synthetic.SyntheticSpec(rows=args.rows or synthetic.FULL_ROWS, seed=args.seed)
    path = synthetic.write_uci_text(spec, args.out)
    return {"path": str(path), "rows": spec.rows, "seed": spec.seed}


def _cmd_data_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    from hpo.data import calibration

    config = calibration.CalibrationConfig(epochs=args.epochs)
    settings = _data_settings(args)
    out = calibration.calibrate(settings, config=config, data_dir=args.data_dir)
    out["nonlinearity"] = None
    if args.draws > 0 and settings.source == "synthetic" and settings.task == "classification":
        check = calibration.NonlinearityConfig(draws=args.draws)
        out["nonlinearity"] = calibration.nonlinearity(config=check, real_file=args.real)
    return out


def _render_calibrate(r: dict[str, Any]) -> str:
    if r.get("task") == "regression":
        head = f"{r['source']}: {r['rows']:,} rows ({r['train_rows']:,} train, {r['test_rows']:,} test); test"
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
        lines.append(_render_nonlinearity(r["nonlinearity"]))
    return "\n".join(lines)


def _cmd_data_nonlinearity(args: argparse.Namespace) -> dict[str, Any]:
    from hpo.data import calibration

    config = calibration.NonlinearityConfig(draws=args.draws, rows=args.rows)
    return calibration.nonlinearity(config=config, real_file=args.real)


def _render_nonlinearity(r: dict[str, Any]) -> str:
    gaps = ", ".join(f"{g:+.2%}" for g in r["gaps"])
    lines = [
        f"gradient boosting minus logistic regression, {r['folds']}-fold CV on {r['rows']:,} rows",
        f"synthetic ({r['draws']} draws) {r['gap_mean']:+.2%}  ({gaps})",
    ]
    if r["real_gap"] is not None:
        verdict = "within 1 point" if r["within_1_point"] else "NOT within 1 point"
        lines.append(f"real rows           {r['real_gap']:+.2%}  ({r['real_file']}; {verdict})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- pipeline commands


def _pipeline(args: argparse.Namespace, progress: Any = None) -> Any:
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


def _working(args: argparse.Namespace, work: Callable[[Any], Any]) -> Any:
    """Run ``work(pipeline)`` with the live display on a terminal, log lines otherwise; SIGTERM
    as a polite stop, the threads set, and the deadline (``--stop-at``) handed to the stages."""
    from hpo.training import threads
    from hpo.tuning import stopping

    chosen = threads.resolve(args.threads)
    deadline = stopping.deadline(args.stop_at)
    stopping.handle_sigterm()

    def start(pipe: Any) -> Any:
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


def _cmd_validate(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import pipeline, plan

    p = plan.load(pipeline.resolve_study_file(args.config), overrides=args.overrides)
    from hpo.families import family_of

    out: dict[str, Any] = {
        "study_file": p.path,
        "pipeline": p.name,
        "task": p.data.task,
        "family": family_of(p.defaults).describe(p.defaults),
        "stages": [{"stage": s.name, "kind": s.kind, "requires": list(p.requires[s.name])} for s in p.stages],
    }
    if p.data.source in ("csv", "parquet"):  # a user's table: every column as read, if it is here
        assert p.data.path is not None
        if Path(p.data.path).expanduser().exists():
            from hpo import data
            from hpo.families.sklearn_api import data_encoding, native_levels
            from hpo.stages._context import column_listing

            prepared = data.cache.inspect(p.data, folds=p.folds())
            out["data"] = column_listing(
                prepared, data_encoding(p.defaults), native_levels(p.defaults, p.stages)
            )
        else:
            out["data_note"] = (
                f"data.path {p.data.path!r} is not in {Path.cwd()}, so its columns are not listed "
                "(run validate where the table is)"
            )
    return out


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


def _render_validate(r: dict[str, Any]) -> str:
    lines = [
        f"{r['study_file']}: pipeline {r['pipeline']} ({r['task']}, {r['family']}), "
        f"{len(r['stages'])} stages, valid"
    ]
    for s in r["stages"]:
        after = f" (after {', '.join(s['requires'])})" if s["requires"] else ""
        lines.append(f"  {s['stage']:<24}{s['kind']}{after}")
    if r.get("data"):
        lines += _render_columns(r["data"])
    elif r.get("data_note"):
        lines.append(r["data_note"])
    return "\n".join(lines)


def _cmd_run_stage(args: argparse.Namespace) -> Any:
    return _working(args, lambda pipe: pipe.run_stage(args.stage, force=args.force))


def _cmd_run(args: argparse.Namespace) -> Any:
    return _working(args, lambda pipe: pipe.run(force=args.force))


def _render_worker(r: dict[str, Any]) -> str:
    done = [s["stage"] for s in r["runs"] if s["status"] == "completed"]
    metrics = r["status"].get("test_metrics") or {}
    tail = f"; test {_headline(metrics)}" if metrics else ""
    return f"worker done in {r['seconds']:.0f} s: ran {', '.join(done) or 'nothing (all complete)'}{tail}"


def _cmd_init(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import data

    pipe = _pipeline(args)
    return {
        "data": data.summary(pipe.dataset()),
        "storage": pipe.ctx.storage_url,
        "stages": [s.name for s in pipe.stages],
    }


def _cmd_status(args: argparse.Namespace) -> Any:
    return _pipeline(args).status()


def _final_model(pipe: Any, args: argparse.Namespace, path: Path) -> Any:
    """The final model file, downloaded to ``path`` (one line if the store lacks it or it is not one)."""
    from hpo.model_file import read_model_artifact
    from hpo.tuning.storage import artifact_dir

    where = str(artifact_dir(args.artifacts))
    stage = next((s.name for s in pipe.stages if s.reads_test_rows), "final")
    return read_model_artifact(
        pipe.ctx.artifacts, pipe.final_model_artifact(), path, where=where, stage=stage
    )


def _cmd_predict(args: argparse.Namespace) -> Any:
    import tempfile

    from hpo import predict

    pipe = _pipeline(args)
    with tempfile.TemporaryDirectory() as tmp:
        model_file = _final_model(pipe, args, Path(tmp) / "model.pt")
    return predict.predict(model_file, args.input, args.output, trusted=pipe.trusted())


def _cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    import shutil
    import tempfile

    pipe = _pipeline(args)
    artifact_id = pipe.final_model_artifact()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        model_file = _final_model(pipe, args, path)
        model_file.models(trusted=pipe.trusted())  # export only a model that restores
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            if args.model_format == "onnx":
                from hpo import onnx_export

                written = onnx_export.export(model_file, args.out, trusted=pipe.trusted())
                return {**written, "artifact_id": artifact_id, "format": "onnx"}
            shutil.copyfile(path, args.out)
        except OSError as exc:
            raise HpoError(
                f"--out {args.out}: cannot be written ({_os_problem(exc)}); pass a file path in a "
                "writable directory"
            ) from None
    return {
        "path": str(args.out),
        "artifact_id": artifact_id,
        "format": "pt",
        "members": len(model_file.payloads),
    }


def _os_problem(exc: OSError) -> str:
    """``strerror: the path it concerns`` of an OSError."""
    return f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)


def _render_export(r: dict[str, Any]) -> str:
    if r["format"] == "onnx":
        return f"wrote {r['path']} (ONNX: {r['input']} -> {r['output']}; artifact {r['artifact_id']})"
    return f"wrote {r['path']} (artifact {r['artifact_id']})"


def _cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from hpo.pipeline import Pipeline
    from hpo.present import report

    if args.compare:
        others = [
            Pipeline.load(c, storage=args.storage, artifacts=args.artifacts, data_dir=args.data_dir)
            for c in args.compare
        ]
        return report.write_comparison([_pipeline(args), *others], args.out)
    return report.write(_pipeline(args), args.out)


def _cmd_data_explore(args: argparse.Namespace) -> dict[str, Any]:
    from hpo.present import report

    return report.write(_pipeline(args), args.out, stages=False)


def _render_report(r: dict[str, Any]) -> str:
    figs = ", ".join(f"{k} {v}" for k, v in r["figures"].items())
    return f"wrote {r['path']} ({r['bytes'] / 1e6:.1f} MB; figures: {figs})"


def _cmd_dashboard(args: argparse.Namespace) -> None:
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
            f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); choose another with --port"
        ) from None
    shown = "[" + args.host + "]" if ":" in args.host else args.host
    mode = "writes allowed" if args.allow_writes else "read-only; --allow-writes to change studies"
    print(
        f"optuna-dashboard for {storage.redact(url)} on http://{shown}:{args.port}/ ({mode}; Ctrl-C to stop)"
    )
    sys.stdout.flush()
    with server:
        server.serve_forever()


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt_selected(selected: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in selected.items())


def _render_state(st: dict[str, Any]) -> list[str]:
    trials = ", ".join(f"{n} {s.lower()}" for s, n in sorted(st["trials"].items())) or "no trials"
    line = f"{st['study']:<40}{st['state']:<13}{trials}"
    if st.get("precision"):
        line += f" ({'/'.join(st['precision'])})"
    sel = st.get("selection")
    if sel:
        line += f"  -> {_fmt_selected(sel['selected'])}"
        ev = sel.get("evidence")
        if ev:
            verdict = "within noise" if ev["within_noise"] else "beyond noise"
            low, high = ev["interval"]
            line += (
                f"  [{verdict}: {ev['difference']:+.4f}, 95% CI {low:+.4f}..{high:+.4f} "
                f"vs {_fmt_selected(ev['runner_up'])}]"
            )
    stopped = st.get("stopped")
    if stopped:
        return [
            line,
            f"{'':<40}stopped asking after {stopped['trials']} of {stopped['n_trials']} trials "
            f"({stopped['why']})",
        ]
    return [line]


def _render_status(r: dict[str, Any]) -> str:
    lines = [f"pipeline {r['pipeline']} ({r['study_file']}) in {r['storage']}", ""]
    if r.get("numerics"):
        from hpo.tuning.numerics import Numerics

        lines[-1:] = [f"numerics: {Numerics.from_dict(r['numerics']).describe()}", ""]
    for st in r["stages"]:
        lines.extend(_render_state(st))
    m = r.get("test_metrics")
    if m:
        lines += ["", f"final test: {_test_line(m)}"]
        if m.get("dropped_target_rows"):
            lines.append(f"({m['dropped_target_rows']:,} row(s) of the table with an empty target left out)")
    tb = r.get("time_budget")
    if tb:
        from hpo.tuning.budget import describe

        lines += [
            "",
            f"time budget: {describe(tb['spent'])} of {describe(tb['seconds'])} spent "
            f"({tb['spent'] / tb['seconds']:.0%}; the stages' run time, from their trials)",
        ]
    return "\n".join(lines)


def _headline(m: dict[str, Any]) -> str:
    if m.get("task") == "regression":
        return f"RMSE {m['rmse']:.4g}"
    return f"accuracy {m['accuracy']:.2%}"


def _test_line(m: dict[str, Any]) -> str:
    if m.get("task") == "regression":
        line = (
            f"RMSE {m['rmse']:.4g}, MAE {m['mae']:.4g}, R² {m['r2']:.4f}, loss {m['loss']:.4f} "
            f"(predicting the training mean: RMSE {m['constant_rmse']:.4g})"
        )
        member = f"RMSE {m.get('rmse_mean', 0.0):.4g} ± {m.get('rmse_sd', 0.0):.2g}"
    else:
        line = (
            f"accuracy {m['accuracy']:.2%}, loss {m['loss']:.4f}, balanced accuracy "
            f"{m['balanced_accuracy']:.2%}, macro-F1 {m['macro_f1']:.4f}"
        )
        member = f"accuracy {m.get('accuracy_mean', 0.0):.2%} ± {m.get('accuracy_sd', 0.0):.2%}"
    if m.get("ensemble"):
        return f"{line}; an ensemble of {m['ensemble']} models (the members: {member})"
    if m.get("seeds", 1) > 1:
        return f"{line}; the mean of {m['seeds']} seeds ({member})"
    return line


def _render_run_stage(r: dict[str, Any]) -> str:
    head = f"stage {r['stage']}: {r['status']}"
    if r["status"] == "already complete":
        head += " (use --force to run it again)"
    elif r.get("seconds") is not None:
        head += f" in {r['seconds']:.1f} s"
    return "\n".join([head, *_render_state(r["state"])])


def _render_run(r: dict[str, Any]) -> str:
    lines = [
        f"{s['stage']}: {s['status']}" + (f" in {s['seconds']:.1f} s" if s.get("seconds") is not None else "")
        for s in r["runs"]
    ]
    lines.append(f"total {r['seconds']:.1f} s")
    return "\n".join([*lines, "", _render_status(r["status"])])


def _render_predict(r: dict[str, Any]) -> str:
    if r.get("output") is None:
        rows = r.get("predictions") or []
        lines = [",".join(rows[0].keys())] if rows else []
        for row in rows:
            lines.append(",".join(v if isinstance(v, str) else f"{v:.6f}" for v in row.values()))
    else:
        lines = [f"wrote {r['rows']:,} predictions to {r['output']}"]
    if r.get("unscored_rows"):
        lines.append(f"{r['unscored_rows']:,} row(s) with an empty target predicted but not scored")
    if r.get("extra_columns"):
        lines.append(f"ignored columns the model does not use: {', '.join(r['extra_columns'])}")
    if r.get("accuracy") is not None:
        lines.append(f"accuracy against the target column: {r['accuracy']:.2%}")
    if r.get("metrics"):
        m = r["metrics"]
        lines.append(f"against the target column: RMSE {m['rmse']:.4g}, MAE {m['mae']:.4g}, R² {m['r2']:.4f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser) -> None:
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
        _common(p)


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


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="take [data] from this study file (the flags below override it)")
    p.add_argument("--source", choices=("synthetic", "msd", "csv", "parquet"))
    p.add_argument("--task", choices=("classification", "regression"))
    p.add_argument("--file", type=Path, help="msd: a local YearPredictionMSD .zip or .txt")
    p.add_argument("--path", type=Path, help="csv / parquet: the table")
    p.add_argument("--target", help="csv / parquet: the label column")
    p.add_argument("--rows", type=_positive_int, help="synthetic: rows to draw; msd: random subset")
    p.add_argument("--seed", type=int, help="split (and synthetic draw) seed (default 42)")
    p.add_argument("--split", choices=("stratified", "official", "head"))
    p.add_argument("--data-dir", type=Path, help="cache directory (default $HPO_DATA_DIR or ~/.cache/hpo)")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpo", description="Staged, reproducible hyperparameter optimisation on Optuna."
    )
    parser.add_argument("--version", action="version", version=f"hpo {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data_parser = commands.add_parser("data", help="prepare, generate and inspect data")
    data_commands = data_parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    prepare = data_commands.add_parser(
        "prepare", help="read, validate, label, split, scale and cache a dataset"
    )
    _data_options(prepare)
    prepare.add_argument("--force", action="store_true", help="prepare again even if cached")
    prepare.set_defaults(handler=_cmd_data_prepare, render=_render_prepare)

    calibrate = data_commands.add_parser(
        "calibrate", help="test accuracy of the majority class, logistic regression and the MLP"
    )
    _data_options(calibrate)
    calibrate.add_argument("--epochs", type=_positive_int, default=15)
    calibrate.add_argument(
        "--draws",
        type=_non_negative_int,
        default=5,
        help="synthetic draws for the nonlinearity check (synthetic sources; 0 skips it)",
    )
    calibrate.add_argument(
        "--real", type=Path, help="real rows in UCI's layout for the nonlinearity check to compare with"
    )
    calibrate.set_defaults(handler=_cmd_data_calibrate, render=_render_calibrate)

    nonlin = data_commands.add_parser(
        "nonlinearity",
        help="how much of the decade signal only a nonlinear model reaches (boosting minus logistic "
        "regression), on synthetic draws and optionally on real rows",
    )
    nonlin.add_argument("--draws", type=_positive_int, default=5)
    nonlin.add_argument(
        "--rows", type=_positive_int, default=7000, help="rows per draw (and of the real file)"
    )
    nonlin.add_argument("--real", type=Path, help="a file in UCI's layout to compare with")
    _common(nonlin)
    nonlin.set_defaults(handler=_cmd_data_nonlinearity, render=_render_nonlinearity)

    synth = data_commands.add_parser("synth", help="write a synthetic file in the UCI text layout")
    synth.add_argument("--out", type=Path, required=True, help="output .txt path")
    synth.add_argument("--rows", type=_positive_int, help="rows (default: the full 515,345)")
    synth.add_argument("--seed", type=int, default=42)
    _common(synth)
    synth.set_defaults(handler=_cmd_data_synth, render=lambda r: f"wrote {r['rows']:,} rows to {r['path']}")

    explore = data_commands.add_parser(
        "explore", help="write the data section (classes, histograms, box plots, correlations) as HTML"
    )
    explore.add_argument("--out", type=Path, default=Path("data.html"), help="HTML file (default data.html)")
    _pipeline_options(explore)
    explore.set_defaults(handler=_cmd_data_explore, render=_render_report)

    validate = commands.add_parser("validate", help="check a study file; writes nothing")
    validate.add_argument("--config", help="study file or name (default: msd_decade)")
    _set_option(validate)
    _common(validate)
    validate.set_defaults(handler=_cmd_validate, render=_render_validate)

    run_stage = commands.add_parser("run-stage", help="run one stage of the pipeline")
    run_stage.add_argument("stage", help="a stage name of the study file (hpo validate lists them)")
    run_stage.add_argument(
        "--force", action="store_true", help="start this stage over (other stages untouched)"
    )
    _work_options(run_stage)
    _pipeline_options(run_stage)
    run_stage.set_defaults(handler=_cmd_run_stage, render=_render_run_stage)

    run = commands.add_parser("run", help="run every stage in order, skipping completed ones")
    run.add_argument("--force", action="store_true", help="start every stage over")
    _work_options(run)
    _pipeline_options(run)
    run.set_defaults(handler=_cmd_run, render=_render_run)

    worker = commands.add_parser(
        "worker",
        help="work on the pipeline wherever it is, with any number of other workers; exit when it is done",
    )
    _work_options(worker)
    _pipeline_options(worker)
    worker.set_defaults(handler=_cmd_run, render=_render_worker, force=False)

    init = commands.add_parser("init", help="prepare the pipeline's data (before starting many workers)")
    _pipeline_options(init)
    init.set_defaults(
        handler=_cmd_init,
        render=lambda r: (
            _render_prepare(r["data"]) + f"\n\nstages: {', '.join(r['stages'])} ({r['storage']})"
        ),
    )

    status = commands.add_parser("status", help="each stage's state, trials and selection; final metrics")
    _pipeline_options(status)
    status.set_defaults(handler=_cmd_status, render=_render_status)

    predict = commands.add_parser(
        "predict", help="classes and class probabilities, or values, with the final model"
    )
    predict.add_argument("--input", type=Path, required=True, help="CSV of the model's feature columns")
    predict.add_argument("--output", type=Path, help="CSV to write (default: print)")
    _pipeline_options(predict)
    predict.set_defaults(handler=_cmd_predict, render=_render_predict)

    report = commands.add_parser(
        "report", help="one self-contained HTML page: data, every stage, results, provenance"
    )
    report.add_argument("--out", type=Path, default=Path("report.html"), help="default report.html")
    report.add_argument(
        "--compare", nargs="+", metavar="STUDY_FILE", help="put these pipelines of the same storage beside it"
    )
    _pipeline_options(report)
    report.set_defaults(handler=_cmd_report, render=_render_report)

    dash = commands.add_parser("dashboard", help="start optuna-dashboard on the storage and artifacts")
    dash.add_argument("--storage", help="SQLAlchemy URL (default $HPO_STORAGE or sqlite:///hpo.db)")
    dash.add_argument(
        "--artifacts", type=Path, help="artifact directory (default $HPO_ARTIFACTS or ./artifacts)"
    )
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, local only)")
    dash.add_argument("--port", type=_positive_int, default=8080)
    dash.add_argument(
        "--allow-writes",
        action="store_true",
        help="let the dashboard delete studies, tell trials and edit notes and attributes "
        "(default: read-only, every method but GET and HEAD answered 405)",
    )
    dash.set_defaults(handler=_cmd_dashboard, render=str)

    export = commands.add_parser(
        "export-model",
        help="write the final model: hpo's model file (torch.load weights_only), or an ONNX graph",
    )
    export.add_argument("--out", type=Path, required=True)
    export.add_argument(
        "--format",
        dest="model_format",
        choices=("pt", "onnx"),
        default="pt",
        help="pt: the model file hpo predict reads (default); onnx: one graph from raw feature rows "
        "(float32 [N, n_features], the scaler inside) to class probabilities or values",
    )
    _pipeline_options(export, output_format=False)  # its --format is the model's
    export.set_defaults(handler=_cmd_export, render=_render_export)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(quiet=args.quiet, verbose=args.verbose)
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
