"""Predicting with a final model: for the rows of a CSV file, classes and class probabilities (a
classifier), or a numeric ``prediction`` column in the target's units (a regressor), whatever
the model's family.

The model file names its features, so a CSV with a header is matched by column name: a missing
feature is an error naming it, extra columns are ignored and reported, and when the target column
is present the predictions are scored against it (accuracy; RMSE, MAE and R²). A CSV without a
header must hold the features in the model's order (for the MSD preset, UCI's layout: optionally
the year first, then the 90 features).

A model of a table with categorical, date-time or incomplete columns (model file format 5) reads
raw rows in the training file's format (:func:`_read_raw`): a header, columns in any order,
each read with pyarrow as the training file's column was (its Arrow type), typed and converted
by the same code (:mod:`hpo.data.columns`), then preprocessed by the fit saved in the model
file: an empty cell is imputed (numeric) or its own level (categorical), an unseen level is the
infrequent level. A missing feature column, or text in a numeric column, is one line naming the
column and the line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from hpo.data import columns as cols
from hpo.data.labels import Labeling
from hpo.errors import DataFileError, first_line
from hpo.model_file import ModelFile
from hpo.tasks import CLASSIFICATION, Regression, task_kind


@dataclass(frozen=True)
class Prediction:
    rows: int
    output: str | None
    class_names: list[str]
    task: str = CLASSIFICATION.name
    accuracy: float | None = None  # a classifier, when the input has the target column
    metrics: dict[str, float] | None = None  # a regressor, when the input has the target column
    extra_columns: list[str] = field(default_factory=list)
    unscored_rows: int | None = None  # rows with an empty target, predicted but not scored
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


def _first_line(path: Path) -> str:
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
    return first


def _read(path: Path, model: ModelFile) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any] | None, list[str]]:
    """Features in the model's order, the target column if present, and ignored columns."""
    name = str(path)
    first = _first_line(path)
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
        numbers = frame.apply(pd.to_numeric, errors="coerce")
        bad_cells = numbers.isna().to_numpy() & frame.notna().to_numpy()
        bad, col = (int(v) for v in np.argwhere(bad_cells)[0])
        raise DataFileError(
            name,
            f"a feature cell is not a number (column {frame.columns[col]!r}: {frame.iat[bad, col]!r})",
            line=bad + line_offset,
            fix="fix that row",
        ) from None
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise DataFileError(
            name, "a feature value is missing or not finite", line=bad + line_offset, fix="fix that row"
        )
    return values, target, extra


@dataclass(frozen=True)
class RawRows:
    """Raw rows read for a format-5 model: numeric values (NaN empty, date parts included) and
    the categorical columns' slots, in the model's order."""

    numeric: npt.NDArray[np.float32]
    slots: npt.NDArray[np.int64]
    target: npt.NDArray[Any] | None
    extra: list[str]


def _read_raw(path: Path, model: ModelFile) -> RawRows:
    """Raw rows in the training file's format (a header; columns in any order; extra columns
    ignored and reported once), typed as the training file's columns were."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    name = str(path)
    first = _first_line(path)
    header = next(csv.reader([first]))
    columns = model.input_columns()
    prep = model.prep()
    assert prep is not None
    missing = [c.name for c in columns if c.name not in header]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise DataFileError(
            name,
            f"missing feature column(s) {shown} (the model reads rows with a header, as its training file)",
            fix="add them; the model was trained on them (an empty cell is allowed)",
        )
    types: dict[str, pa.DataType] = {}
    for c in columns:
        if c.kind == cols.NUMERIC:
            types[c.name] = pa.float64()
        elif c.kind == cols.CATEGORICAL:
            types[c.name] = cols.arrow_type(c.arrow_type) or pa.string()
        elif (typed := cols.arrow_type(c.arrow_type)) is not None and not cols.is_text_type(typed):
            types[c.name] = typed  # a date column read as a date, as pyarrow typed it
        else:
            types[c.name] = pa.string()  # date-times: parsed below (ISO-8601)
    options = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)
    try:
        table = pacsv.read_csv(path, convert_options=options)
    except pa.ArrowInvalid as exc:
        raise _cell_problem(path, header, types, exc) from None
    numeric: list[npt.NDArray[np.float32]] = []
    slots: list[npt.NDArray[np.int64]] = []
    by_name = {c.name: c for c in prep.categorical}
    for c in columns:
        col = table.column(c.name)
        if c.kind == cols.NUMERIC:
            numeric.append(cols.numeric_values(col)[:, None])
        elif c.kind == cols.DATETIME:
            stamps, bad = cols.parse_datetime(col)
            if bad is not None:
                raise DataFileError(
                    name,
                    f"date-time column {c.name!r} has {col[bad].as_py()!r}, which is not an ISO-8601 date",
                    line=bad + 2,
                    fix="write it as YYYY-MM-DD[THH:MM:SS], or empty the cell",
                )
            numeric.append(cols.datetime_parts(stamps, c.name, c.parts)[1])
        else:
            slots.append(by_name[c.name].slots_of_strings(cols.category_strings(col)))
    rows = table.num_rows
    x = np.concatenate(numeric, axis=1) if numeric else np.empty((rows, 0), dtype=np.float32)
    inf = np.isinf(x)
    if inf.any():
        row, j = (int(v) for v in np.argwhere(inf)[0])
        raise DataFileError(
            name,
            f"column {prep.numeric_names[j]!r} is {x[row, j]}",
            line=row + 2,
            fix="fix or empty that cell",
        )
    wanted = {c.name for c in columns} | {model.target}
    target = table.column(model.target).to_numpy(zero_copy_only=False) if model.target in header else None
    return RawRows(
        numeric=x,
        slots=np.stack(slots, axis=1) if slots else np.empty((rows, 0), dtype=np.int64),
        target=target,
        extra=[h for h in header if h not in wanted],
    )


def _cell_problem(path: Path, header: list[str], types: dict[str, Any], exc: Exception) -> DataFileError:
    """After pyarrow refused a cell: the first column and line whose text is not its type."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        index = {h: i for i, h in enumerate(header)}
        for line_no, row in enumerate(reader, start=2):
            for column, kind in types.items():
                i = index.get(column)
                if i is None or i >= len(row) or row[i].strip() in _NULLS:
                    continue
                if str(kind) in ("double", "float"):
                    if not _is_number(row[i]):
                        return DataFileError(
                            str(path),
                            f"column {column!r} is {row[i]!r}, not a number",
                            line=line_no,
                            fix="fix or empty that cell",
                        )
                    continue
                try:  # a boolean, integer or date column of the training file
                    pacsv.read_csv(
                        io.BytesIO(f"c\n{row[i]}\n".encode()),
                        convert_options=pacsv.ConvertOptions(column_types={"c": kind}),
                    )
                except pa.ArrowInvalid:
                    return DataFileError(
                        str(path),
                        f"column {column!r} is {row[i]!r}, not a {kind} as in the training file",
                        line=line_no,
                        fix="fix or empty that cell",
                    )
    return DataFileError(str(path), f"cannot be read ({first_line(exc, 160)})", fix="fix that cell")


#: pyarrow's default spellings of an empty cell
_NULLS = frozenset(
    ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN")
) | frozenset(("N/A", "NA", "NULL", "NaN", "n/a", "nan", "null"))


def predict(
    model: ModelFile, input_path: Path, output_path: Path | None, *, trusted: Sequence[str] = ()
) -> Prediction:
    """Predict the rows of ``input_path`` (``trusted``: import paths the study file vouches for,
    which a saved estimator's types may come from)."""
    task = model.task_of()
    scored: npt.NDArray[np.bool_] | None = None  # rows with a target to score against
    if model.preprocessor is not None:
        raw = _read_raw(input_path, model)
        target, extra = raw.target, raw.extra
        predicted = task.predictions(model.outputs(raw.numeric, trusted=trusted, slots=raw.slots))
        if target is not None:  # as in training: a row with an empty target is not scored
            scored = ~pd.isna(pd.Series(target)).to_numpy()
            target = target[scored] if scored.any() else None
    else:
        features, target, extra = _read(input_path, model)
        predicted = task.predictions(model.outputs(features, trusted=trusted))
    names = model.class_names
    accuracy = None
    scores = None
    if task_kind(task.kind).has_classes:
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
            accuracy = float(np.mean((pred if scored is None else pred[scored]) == truth))
    else:
        frame = pd.DataFrame({"prediction": predicted})
        if target is not None:
            assert isinstance(task, Regression)
            values = _numeric(target, file=str(input_path), column=model.target)
            standard = (
                task.standardise(values),
                task.standardise(predicted if scored is None else predicted[scored]),
            )
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
        unscored_rows=int((~scored).sum()) if scored is not None and not scored.all() else None,
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
