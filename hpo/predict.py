"""Using the final model: load it from the artifact store, predict decades, export the file."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from optuna.artifacts import download_artifact

from hpo import data, models
from hpo.errors import DataFileError, PrerequisiteError
from hpo.stages import StageContext, _base
from hpo.stages.final import MODEL_FORMAT


def _artifact_id(ctx: StageContext) -> str:
    study = _base.find_study(ctx, _base.study_name(ctx.pipeline, "final"))
    if not _base.is_complete(study):
        raise PrerequisiteError(
            f"no final model in {ctx.storage_url} for pipeline {ctx.pipeline.name!r}; "
            f"run first: hpo run-stage final --config {ctx.pipeline.path}"
        )
    assert study is not None
    return str(study.user_attrs["model_artifact_id"])


def export_model(ctx: StageContext, out: Path) -> dict[str, Any]:
    artifact_id = _artifact_id(ctx)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        download_artifact(artifact_store=ctx.artifacts, file_path=str(path), artifact_id=artifact_id)
        shutil.copyfile(path, out)
    payload = load_model_file(out)
    return {"path": str(out), "artifact_id": artifact_id, "config": payload["config"]}


def load_model_file(path: Path) -> dict[str, Any]:
    payload = torch.load(path, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise DataFileError(
            str(path), f"is not an hpo model file ({MODEL_FORMAT})", fix="export it with hpo export-model"
        )
    return payload


def model_from_payload(payload: dict[str, Any]) -> torch.nn.Module:
    model = models.MLP(models.ModelConfig.from_dict(payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model


def _read_features(
    path: Path,
) -> tuple[np.ndarray[Any, np.dtype[np.float64]], np.ndarray[Any, np.dtype[np.int64]] | None]:
    name = str(path)
    if not path.is_file():
        raise DataFileError(
            name, "no such file", fix="pass a CSV of 90 feature columns (optionally year first)"
        )
    try:
        first = path.open().readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(name, f"cannot be read ({exc})", fix="pass a text CSV file") from None
    cells = first.strip().split(",")
    has_header = bool(cells) and not _is_number(cells[0])
    try:
        frame = pd.read_csv(path, header=0 if has_header else None)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataFileError(
            name, f"cannot be parsed as CSV ({exc})", fix="one row per song, comma separated"
        ) from None
    if frame.shape[1] not in (90, 91):
        raise DataFileError(
            name,
            f"{frame.shape[1]} columns, expected 90 features or year + 90 features",
            fix="use UCI's column order",
        )
    try:
        values = frame.to_numpy(dtype=np.float64)
    except ValueError:
        bad = int(np.flatnonzero(frame.apply(pd.to_numeric, errors="coerce").isna().any(axis=1))[0])
        raise DataFileError(
            name, "a cell is not a number", line=bad + 1 + int(has_header), fix="fix that row"
        ) from None
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise DataFileError(
            name, "a value is missing or not finite", line=bad + 1 + int(has_header), fix="fix that row"
        )
    if values.shape[1] == 91:
        return values[:, 1:], data.decade_of(values[:, 0]).astype(np.int64)
    return values, None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def predict(ctx: StageContext, input_path: Path, output_path: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        download_artifact(artifact_store=ctx.artifacts, file_path=str(path), artifact_id=_artifact_id(ctx))
        payload = load_model_file(path)
    return predict_with(payload, input_path, output_path)


def predict_with(payload: dict[str, Any], input_path: Path, output_path: Path | None) -> dict[str, Any]:
    features, decades = _read_features(input_path)
    scaler = data.Scaler(mean=payload["scaler_mean"].numpy(), scale=payload["scaler_scale"].numpy())
    model = model_from_payload(payload)
    with torch.no_grad():
        probs = torch.softmax(model(torch.as_tensor(scaler.transform(features))), dim=1).numpy()
    names: list[str] = payload["class_names"]
    pred = probs.argmax(axis=1)
    frame = pd.DataFrame({"decade": [names[i] for i in pred]})
    for j, n in enumerate(names):
        frame[f"p_{n}"] = probs[:, j]
    if output_path is not None:
        frame.to_csv(output_path, index=False, float_format="%.6f")
    out: dict[str, Any] = {"rows": len(frame), "output": str(output_path) if output_path else None}
    if decades is not None:
        out["accuracy"] = float(np.mean(pred == decades))
    if output_path is None:
        out["predictions"] = frame.to_dict(orient="records")
    return out
