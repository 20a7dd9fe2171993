"""The ``hpo`` command line. The only module that prints: it parses, calls, and renders.

Errors of the :class:`~hpo.errors.HpoError` family become one line on stderr and exit status 2
(a traceback only with ``--debug``); Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpo import __version__
from hpo.errors import HpoError

logger = logging.getLogger("hpo")

Handler = Callable[[argparse.Namespace], Any]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


# --------------------------------------------------------------------------- data commands


def _cmd_data_prepare(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import data

    spec = data.DataSpec(source=args.source, rows=args.rows, seed=args.seed, file=args.file)
    prepared = data.prepare(spec, data_dir=args.data_dir, force=args.force, progressbar=not args.quiet)
    return data.summary(prepared)


def _render_prepare(summary: dict[str, Any]) -> str:
    lines = [
        f"prepared {summary['rows']:,} rows from {summary['source']} -> {summary['path']}",
        f"source sha256 {summary['source_sha256']}",
        "",
        f"{'decade':<8}{'count':>10}{'share':>9}",
    ]
    for row in summary["decades"]:
        lines.append(f"{row['decade']:<8}{row['count']:>10,}{row['share']:>9.2%}")
    lines.append(f"majority class share: {summary['majority_share']:.2%}")
    lines.append("")
    lines.append(f"{'split':<12}{'train':>10}{'val':>10}{'test':>10}")
    for name, sizes in summary["splits"].items():
        lines.append(f"{name:<12}{sizes['train']:>10,}{sizes['val']:>10,}{sizes['test']:>10,}")
    return "\n".join(lines)


def _cmd_data_synth(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import synthetic

    spec = synthetic.SyntheticSpec(rows=args.rows or synthetic.FULL_ROWS, seed=args.seed)
    path = synthetic.write_uci_text(spec, args.out)
    return {"path": str(path), "rows": spec.rows, "seed": spec.seed}


def _cmd_data_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import calibration, data

    spec = data.DataSpec(source=args.source, rows=args.rows, seed=args.seed, file=args.file)
    config = calibration.CalibrationConfig(epochs=args.epochs)
    return calibration.calibrate(spec, config=config, data_dir=args.data_dir)


def _render_calibrate(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{r['source']}: {r['rows']:,} rows ({r['train_rows']:,} train, {r['test_rows']:,} test)",
            f"majority class      {r['majority_accuracy']:.2%}",
            f"logistic regression {r['logreg_accuracy']:.2%}",
            f"MLP                 {r['mlp_accuracy']:.2%} (loss {r['mlp_loss']:.4f}; {r['mlp']})",
        ]
    )


# --------------------------------------------------------------------------- pipeline commands


def _context(args: argparse.Namespace) -> Any:
    from hpo import pipeline

    return pipeline.context(
        config_path=args.config, storage_url=args.storage, artifacts=args.artifacts, data_dir=args.data_dir
    )


def _cmd_run_stage(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import stages

    return stages.run_stage(_context(args), args.stage, force=args.force)


def _cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import pipeline

    return pipeline.run_all(_context(args), force=args.force)


def _cmd_init(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import data, stages

    ctx = _context(args)
    prepared = ctx.prepared()
    created = stages.create_studies(ctx)
    return {"data": data.summary(prepared), "storage": ctx.storage_url, "studies": created}


def _cmd_status(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import pipeline

    return pipeline.status(_context(args))


def _cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import predict

    return predict.predict(_context(args), args.input, args.output)


def _cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import predict

    return predict.export_model(_context(args), args.out)


def _cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import report

    return report.write(_context(args), args.out)


def _cmd_data_explore(args: argparse.Namespace) -> dict[str, Any]:
    from hpo import report

    return report.write(_context(args), args.out, stages=False)


def _render_report(r: dict[str, Any]) -> str:
    figs = ", ".join(f"{k} {v}" for k, v in r["figures"].items())
    return f"wrote {r['path']} ({r['bytes'] / 1e6:.1f} MB; figures: {figs})"


def _cmd_dashboard(args: argparse.Namespace) -> None:
    from hpo import dashboard, storage

    url = storage.storage_url(args.storage)
    st = storage.open_storage(url)
    artifacts = storage.artifact_store(args.artifacts)
    try:
        server = dashboard.make_server(st, artifacts=artifacts, host=args.host, port=args.port)
    except OSError as exc:
        raise HpoError(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); choose another with --port"
        ) from None
    shown = "[" + args.host + "]" if ":" in args.host else args.host
    print(f"optuna-dashboard for {storage._redact(url)} on http://{shown}:{args.port}/ (Ctrl-C to stop)")
    sys.stdout.flush()
    with server:
        server.serve_forever()


def _fmt_selected(selected: dict[str, Any]) -> str:
    parts = []
    for k, v in selected.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def _render_stage_lines(name: str, st: dict[str, Any]) -> list[str]:
    lines = []
    for study in st["studies"]:
        trials = ", ".join(f"{n} {s.lower()}" for s, n in sorted(study["trials"].items())) or "no trials"
        sel = f"  -> {_fmt_selected(study['selected'])}" if "selected" in study else ""
        lines.append(f"{study['study']:<40}{study['state']:<13}{trials}{sel}")
    return lines


def _render_status(r: dict[str, Any]) -> str:
    lines = [f"pipeline {r['pipeline']} ({r['config']}) in {r['storage']}", ""]
    for name, st in r["stages"].items():
        lines.extend(_render_stage_lines(name, st))
    m = r.get("test_metrics")
    if m:
        lines.append("")
        lines.append(
            f"final test: accuracy {m['accuracy']:.2%}, loss {m['loss']:.4f}, balanced accuracy "
            f"{m['balanced_accuracy']:.2%}, macro-F1 {m['macro_f1']:.4f} (write-up: 66.05 %, 0.8993)"
        )
    return "\n".join(lines)


def _render_run_stage(r: dict[str, Any]) -> str:
    head = f"stage {r['stage']}: {r['status']}"
    if r["status"] == "already complete":
        head += " (use --force to run it again)"
    elif "seconds" in r:
        head += f" in {r['seconds']:.1f} s"
    lines = [head, *_render_stage_lines(r["stage"], r)]
    if r.get("test_metrics"):
        m = r["test_metrics"]
        lines.append(f"test accuracy {m['accuracy']:.2%}, loss {m['loss']:.4f}")
    return "\n".join(lines)


def _render_run(r: dict[str, Any]) -> str:
    lines = [
        f"{s['stage']}: {s['status']}" + (f" in {s['seconds']:.1f} s" if "seconds" in s else "")
        for s in r["runs"]
    ]
    return "\n".join([*lines, "", _render_status(r)])


def _render_predict(r: dict[str, Any]) -> str:
    if r["output"] is None:
        lines = [",".join(r["predictions"][0].keys())] if r["predictions"] else []
        for row in r["predictions"]:
            lines.append(",".join(v if isinstance(v, str) else f"{v:.6f}" for v in row.values()))
    else:
        lines = [f"wrote {r['rows']:,} predictions to {r['output']}"]
    if "accuracy" in r:
        lines.append(f"accuracy against the year column: {r['accuracy']:.2%}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- parser


def _pipeline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help="study file, or a name in studies/ such as quick (default: msd_decade, the faithful protocol)",
    )
    p.add_argument("--storage", help="SQLAlchemy URL (default $HPO_STORAGE or sqlite:///hpo.db)")
    p.add_argument(
        "--artifacts", type=Path, help="artifact directory (default $HPO_ARTIFACTS or ./artifacts)"
    )
    p.add_argument("--data-dir", type=Path, help="data cache (default $HPO_DATA_DIR or ~/.cache/hpo)")
    p.add_argument("--format", choices=("table", "json"), default="table")


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
        "prepare", help="parse, validate, split, scale and cache a dataset; print a summary"
    )
    prepare.add_argument("--source", choices=("msd", "synthetic"), default="synthetic")
    prepare.add_argument("--file", type=Path, help="msd: a local YearPredictionMSD .zip or .txt")
    prepare.add_argument("--rows", type=_positive_int, help="synthetic: rows to draw; msd: random subset")
    prepare.add_argument("--seed", type=int, default=42, help="split (and synthetic draw) seed")
    prepare.add_argument(
        "--data-dir", type=Path, help="cache directory (default $HPO_DATA_DIR or ~/.cache/hpo)"
    )
    prepare.add_argument("--force", action="store_true", help="prepare again even if cached")
    prepare.add_argument("--format", choices=("table", "json"), default="table")
    prepare.set_defaults(handler=_cmd_data_prepare, render=_render_prepare)

    calibrate = data_commands.add_parser(
        "calibrate", help="test accuracy of the majority class, logistic regression and the MLP"
    )
    calibrate.add_argument("--source", choices=("msd", "synthetic"), default="synthetic")
    calibrate.add_argument("--file", type=Path, help="msd: a local YearPredictionMSD .zip or .txt")
    calibrate.add_argument("--rows", type=_positive_int)
    calibrate.add_argument("--seed", type=int, default=42)
    calibrate.add_argument("--epochs", type=_positive_int, default=15)
    calibrate.add_argument("--data-dir", type=Path)
    calibrate.add_argument("--format", choices=("table", "json"), default="table")
    calibrate.set_defaults(handler=_cmd_data_calibrate, render=_render_calibrate)

    synth = data_commands.add_parser("synth", help="write a synthetic file in the UCI text layout")
    synth.add_argument("--out", type=Path, required=True, help="output .txt path")
    synth.add_argument("--rows", type=_positive_int, help="rows (default: the full 515,345)")
    synth.add_argument("--seed", type=int, default=42)
    synth.add_argument("--format", choices=("table", "json"), default="table")
    synth.set_defaults(handler=_cmd_data_synth, render=lambda r: f"wrote {r['rows']:,} rows to {r['path']}")

    explore = data_commands.add_parser(
        "explore", help="write the data section (decades, histograms, box plots, correlations) as HTML"
    )
    explore.add_argument("--out", type=Path, default=Path("data.html"), help="HTML file (default data.html)")
    _pipeline_options(explore)
    explore.set_defaults(handler=_cmd_data_explore, render=_render_report)
    from hpo.config import STAGE_ORDER

    run_stage = commands.add_parser("run-stage", help="run one stage of the pipeline")
    run_stage.add_argument("stage", choices=STAGE_ORDER)
    run_stage.add_argument(
        "--force", action="store_true", help="start this stage over (other stages untouched)"
    )
    _pipeline_options(run_stage)
    run_stage.set_defaults(handler=_cmd_run_stage, render=_render_run_stage)

    run = commands.add_parser("run", help="run every stage in order, skipping completed ones")
    run.add_argument("--force", action="store_true", help="start every stage over")
    _pipeline_options(run)
    run.set_defaults(handler=_cmd_run, render=_render_run)

    init = commands.add_parser(
        "init", help="prepare the pipeline's data and create its studies (before starting many workers)"
    )
    _pipeline_options(init)
    init.set_defaults(
        handler=_cmd_init,
        render=lambda r: (
            _render_prepare(r["data"]) + f"\n\ncreated {len(r['studies'])} studies in {r['storage']}"
        ),
    )

    status = commands.add_parser("status", help="each stage's state, trials and selection; final metrics")
    _pipeline_options(status)
    status.set_defaults(handler=_cmd_status, render=_render_status)

    predict = commands.add_parser("predict", help="decade and class probabilities with the final model")
    predict.add_argument(
        "--input", type=Path, required=True, help="CSV of 90 features (optionally year first)"
    )
    predict.add_argument("--output", type=Path, help="CSV to write (default: print)")
    _pipeline_options(predict)
    predict.set_defaults(handler=_cmd_predict, render=_render_predict)

    report = commands.add_parser(
        "report", help="one self-contained HTML page: data, every stage's figures, results, provenance"
    )
    report.add_argument("--out", type=Path, default=Path("report.html"), help="default report.html")
    _pipeline_options(report)
    report.set_defaults(handler=_cmd_report, render=_render_report)

    dash = commands.add_parser("dashboard", help="start optuna-dashboard on the storage and artifacts")
    dash.add_argument("--storage", help="SQLAlchemy URL (default $HPO_STORAGE or sqlite:///hpo.db)")
    dash.add_argument(
        "--artifacts", type=Path, help="artifact directory (default $HPO_ARTIFACTS or ./artifacts)"
    )
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, local only)")
    dash.add_argument("--port", type=_positive_int, default=8080)
    dash.set_defaults(handler=_cmd_dashboard, render=str)

    export = commands.add_parser("export-model", help="write the final model file (torch.load weights_only)")
    export.add_argument("--out", type=Path, required=True)
    _pipeline_options(export)
    export.set_defaults(
        handler=_cmd_export, render=lambda r: f"wrote {r['path']} (artifact {r['artifact_id']})"
    )
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
        result = args.handler(args)
    except HpoError as exc:
        if args.debug:
            raise
        print(f"hpo: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("hpo: interrupted", file=sys.stderr)
        return 130
    if result is not None:
        if getattr(args, "format", "table") == "json":
            print(json.dumps(result, indent=2))
        else:
            print(args.render(result))
    return 0
