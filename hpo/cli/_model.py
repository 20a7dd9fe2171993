"""The final model: ``hpo predict`` (rows to predictions) and ``hpo export-model`` (the model
file, or an ONNX graph)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.cli._common import Command, _pipeline, _pipeline_options
from hpo.errors import HpoError

if TYPE_CHECKING:
    from hpo.model_file import ModelFile
    from hpo.pipeline import Pipeline
    from hpo.predict import Prediction


def _final_model(pipe: Pipeline, args: argparse.Namespace, path: Path) -> ModelFile:
    """The final model file, downloaded to ``path`` (one line if the store lacks it or it is not one)."""
    from hpo.model_file import read_model_artifact
    from hpo.tuning.storage import artifact_dir

    where = str(artifact_dir(args.artifacts))
    stage = next((s.name for s in pipe.stages if s.reads_test_rows), "final")
    return read_model_artifact(
        pipe.ctx.artifacts, pipe.final_model_artifact(), path, where=where, stage=stage
    )


def _os_problem(exc: OSError) -> str:
    """``strerror: the path it concerns`` of an OSError."""
    return f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)


class Predict(Command):
    name = "predict"
    help = "classes and class probabilities, or values, with the final model"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", type=Path, required=True, help="CSV of the model's feature columns")
        parser.add_argument("--output", type=Path, help="CSV to write (default: print)")
        _pipeline_options(parser)

    @classmethod
    def run(cls, args: argparse.Namespace) -> Prediction:
        import tempfile

        from hpo import predict

        pipe = _pipeline(args)
        with tempfile.TemporaryDirectory() as tmp:
            model_file = _final_model(pipe, args, Path(tmp) / "model.pt")
        return predict.predict(model_file, args.input, args.output, trusted=pipe.trusted())

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        r = result
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
            lines.append(
                f"against the target column: RMSE {m['rmse']:.4g}, MAE {m['mae']:.4g}, R² {m['r2']:.4f}"
            )
        return "\n".join(lines)


class ExportModel(Command):
    name = "export-model"
    help = "write the final model: hpo's model file (torch.load weights_only), or an ONNX graph"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument(
            "--format",
            dest="model_format",
            choices=("pt", "onnx"),
            default="pt",
            help="pt: the model file hpo predict reads (default); onnx: one graph from raw feature rows "
            "(float32 [N, n_features], the scaler inside) to class probabilities or values",
        )
        _pipeline_options(parser, output_format=False)  # its --format is the model's

    @classmethod
    def run(cls, args: argparse.Namespace) -> dict[str, Any]:
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

    @classmethod
    def render(cls, result: dict[str, Any]) -> str:
        r = result
        if r["format"] == "onnx":
            return f"wrote {r['path']} (ONNX: {r['input']} -> {r['output']}; artifact {r['artifact_id']})"
        return f"wrote {r['path']} (artifact {r['artifact_id']})"
