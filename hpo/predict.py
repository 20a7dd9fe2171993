"""Predicting with a final model: for the rows of a CSV file, classes and class probabilities (a
classifier), or a numeric ``prediction`` column in the target's units (a regressor), whatever
the model's family.

The model file names its features, so a CSV with a header is matched by column name: a missing
feature is an error naming it, extra columns are ignored and reported, and when the target column
is present the predictions are scored against it (accuracy; RMSE, MAE and R²). A CSV without a
header must hold the features in the model's order (for the MSD preset, UCI's layout: optionally
the year first, then the 90 features).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from hpo.data.labels import Labeling
from hpo.errors import DataFileError
from hpo.model_file import ModelFile
from hpo.tasks import Regression


@dataclass(frozen=True)
class Prediction:
    rows: int
    output: str | None
    class_names: list[str]
    task: str = "classification"
    accuracy: float | None = None  # a classifier, when the input has the target column
    metrics: dict[str, float] | None = None  # a regressor, when the input has the target column
    extra_columns: list[str] = field(default_factory=list)
    predictions: list[dict[str, Any]] | None = None  # when no output file was given

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read(path: Path, model: ModelFile) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any] | None, list[str]]:
    """Features in the model's order, the target column if present, and ignored columns."""
    name = str(path)
    if not path.exists():
        raise DataFileError(name, "no such file", fix="pass a CSV of the model's feature columns")
    if not path.is_file():
        raise DataFileError(name, "is not a file", fix="pass a CSV of the model's feature columns")
    try:
        with path.open(encoding="utf-8") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(name, f"cannot be read ({exc})", fix="pass a text CSV file") from None
    if not first.strip():
        raise DataFileError(name, "file is empty", fix="pass a CSV of the model's feature columns")
    cells = [c.strip() for c in first.split(",")]
    has_header = not all(_is_number(c) for c in cells)
    try:
        frame = pd.read_csv(path, header=0 if has_header else None)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataFileError(
            name, f"cannot be parsed as CSV ({exc})", fix="one row per line, comma separated"
        ) from None
    features = model.feature_names
    target: npt.NDArray[Any] | None = None
    extra: list[str] = []
    if has_header:
        columns = [str(c) for c in frame.columns]
        missing = [f for f in features if f not in columns]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DataFileError(
                name, f"missing feature column(s) {shown}", fix="add them; the model was trained on them"
            )
        if model.target in columns:
            target = frame[model.target].to_numpy()
        extra = [c for c in columns if c not in features and c != model.target]
        frame = frame[features]
    elif frame.shape[1] == len(features) + 1:
        target = frame.iloc[:, 0].to_numpy()
        frame = frame.iloc[:, 1:]
    elif frame.shape[1] != len(features):
        raise DataFileError(
            name,
            f"{frame.shape[1]} columns, expected {len(features)} features "
            f"or {model.target} + {len(features)} features",
            fix="add a header naming the columns, or use the training file's column order",
        )
    line_offset = 1 + int(has_header)
    try:
        values = frame.to_numpy(dtype=np.float64)
    except ValueError:
        bad = int(np.flatnonzero(frame.apply(pd.to_numeric, errors="coerce").isna().any(axis=1))[0])
        raise DataFileError(
            name, "a feature cell is not a number", line=bad + line_offset, fix="fix that row"
        ) from None
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise DataFileError(
            name, "a feature value is missing or not finite", line=bad + line_offset, fix="fix that row"
        )
    return values, target, extra


def predict(
    model: ModelFile, input_path: Path, output_path: Path | None, *, trusted: Sequence[str] = ()
) -> Prediction:
    """Predict the rows of ``input_path`` (``trusted``: import paths the study file vouches for,
    which a saved estimator's types may come from)."""
    features, target, extra = _read(input_path, model)
    task = model.task_of()
    predicted = task.predictions(model.outputs(features, trusted=trusted))
    names = model.class_names
    accuracy = None
    scores = None
    if task.kind == "classification":
        pred = predicted.argmax(axis=1)
        frame = pd.DataFrame({"class": [names[i] for i in pred]})
        for j, n in enumerate(names):
            frame[f"p_{n}"] = predicted[:, j]
        if target is not None:
            if model.labeling is None:
                raise DataFileError(
                    str(input_path), "the model file has no class labeling", fix="export it again"
                )
            labeling = Labeling.from_dict(model.labeling)
            truth = labeling.apply(target, file=str(input_path), column=model.target, first_line=2)
            accuracy = float(np.mean(pred == truth))
    else:
        frame = pd.DataFrame({"prediction": predicted})
        if target is not None:
            assert isinstance(task, Regression)
            values = _numeric(target, file=str(input_path), column=model.target)
            standard = task.standardise(values), task.standardise(predicted)
            scores = {name: task.metric(name, *standard) for name in ("rmse", "mae", "r2")}
    if output_path is not None:
        try:
            output_path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(output_path, index=False, float_format="%.6f")
        except OSError as exc:
            raise DataFileError(
                str(output_path),
                f"cannot be written ({exc.strerror}: {exc.filename})"
                if exc.strerror and exc.filename
                else f"cannot be written ({exc})",
                fix="pass --output a file path in a writable directory",
            ) from None
    return Prediction(
        rows=len(frame),
        output=str(output_path) if output_path else None,
        class_names=list(names),
        task=task.kind,
        accuracy=accuracy,
        metrics=scores,
        extra_columns=extra,
        predictions=[{str(k): v for k, v in row.items()} for row in frame.to_dict(orient="records")]
        if output_path is None
        else None,
    )


def _numeric(target: npt.NDArray[Any], *, file: str, column: str) -> npt.NDArray[np.float64]:
    """A regressor's target column as numbers (one line naming the row that is not one)."""
    try:
        truth = np.asarray(target, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataFileError(
            file, f"target column {column!r} is not numeric", fix="drop it, or fix its values"
        ) from None
    bad = ~np.isfinite(truth)
    if bad.any():
        raise DataFileError(
            file, f"{column} is empty or not finite", line=int(np.argmax(bad)) + 2, fix="fix or drop that row"
        )
    return truth
