"""Where rows come from: a table of numeric features, a target column and (optionally) groups.

* ``csv`` and ``parquet``: a user's table, read with pyarrow (CSV: its multi-threaded reader,
  measured about 1.5 s for a 515,345 x 91 file with a header here; Parquet: its native reader).
  Features default to every numeric column but the target and the group column.
* ``msd``: UCI's ``YearPredictionMSD.txt`` (downloaded with pooch, or a local .zip/.txt), a
  preset of the same machinery: target column 0 (the year), decade classes, the timbre feature
  names (the file has none), and UCI's train/test boundary for ``split = "official"``.
* ``synthetic``: the project's MSD-shaped stand-in (:mod:`hpo.data.synthetic`), written in UCI's
  text layout and read back through the same parser as the real file.

Every problem with a file is one :class:`~hpo.errors.DataFileError` naming the file, the column
or line, and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from hpo.data import _download, _parse, _uci_format, synthetic
from hpo.data import columns as cols
from hpo.data.columns import Column
from hpo.data.labels import Labeling, decades
from hpo.errors import DataFileError
from hpo.sections import DataSettings

logger = logging.getLogger(__name__)

TIMBRE_AVERAGES = 12


def timbre_names() -> list[str]:
    """Names of UCI's 90 features: 12 timbre averages, then the 78 upper-triangle covariances."""
    avg = [f"timbre_avg_{i + 1}" for i in range(TIMBRE_AVERAGES)]
    cov = [f"timbre_cov_{i + 1}_{j + 1}" for i in range(TIMBRE_AVERAGES) for j in range(i, TIMBRE_AVERAGES)]
    return avg + cov


@dataclass(frozen=True)
class Table:
    """Rows as read from a source, before labels and splits."""

    features: npt.NDArray[np.float32]
    feature_names: list[str]
    target: npt.NDArray[Any]  # raw target values, one per row
    target_name: str
    groups: npt.NDArray[np.int64] | None  # group codes (rows of a group share one)
    file: str  # what to name in messages
    first_line: int  # the file line of row 0 (2 below a header line)
    preset_labeling: Labeling | None = None  # msd / synthetic: the decades
    official_train_rows: int | None = None  # msd / synthetic: UCI's train block
    generated_sha256: str | None = None  # synthetic: SHA-256 of the drawn years and values
    # a user's table (hpo.data.columns): the raw feature columns as read, and what was left out
    codes: npt.NDArray[np.int32] | None = None  # [rows, n_categorical]: index into vocab, -1 empty
    categorical_names: list[str] = field(default_factory=list)
    vocab: list[list[str]] = field(default_factory=list)  # per categorical column, sorted levels
    columns: list[Column] = field(default_factory=list)  # every feature column, in file order
    left_out: list[dict[str, str]] = field(default_factory=list)  # {"name", "reason"}
    dropped_target_rows: int = 0  # rows whose target was empty (not read)
    row_lines: npt.NDArray[np.int64] | None = None  # each row's file line, where rows were dropped


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def check_readable(path: Path, *, key: str) -> None:
    """A file that exists, is a file, and can be opened; else one line naming the path and fix."""
    name = str(path)
    if not path.exists():
        raise DataFileError(
            name, "no such file", fix=f"check {key} (relative paths start at the working directory)"
        )
    if path.is_dir():
        raise DataFileError(name, "is a directory, not a data file", fix=f"point {key} at the file itself")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise DataFileError(name, f"cannot be read ({exc.strerror})", fix="check its permissions") from None


def source_file(settings: DataSettings, data_dir: Path, *, progressbar: bool) -> Path | None:
    """The file a source reads (downloading MSD if needed); None for synthetic."""
    if settings.source == "synthetic":
        return None
    if settings.source == "msd":
        if settings.file is None:
            return _download.fetch_msd(cache_dir=data_dir / "downloads", progressbar=progressbar)
        path = Path(settings.file).expanduser()
        check_readable(path, key="data.file (or --file)")
        return path
    assert settings.path is not None
    path = Path(settings.path).expanduser()
    check_readable(path, key="data.path")
    return path


def read(settings: DataSettings, path: Path | None) -> Table:
    """Read the rows of ``settings``' source."""
    if settings.source == "synthetic":
        return _read_synthetic(settings)
    assert path is not None
    if settings.source == "msd":
        return _read_msd(settings, path)
    return _read_table(settings, path)


# --------------------------------------------------------------------------- presets


def _read_synthetic(settings: DataSettings) -> Table:
    """A draw with the values UCI's text layout carries (five decimals), as parsing the written
    file gives them (tested bit for bit) without writing and parsing 447 MB (15 s of 29)."""
    spec = synthetic.SyntheticSpec(rows=settings.rows or synthetic.FULL_ROWS, seed=settings.seed)
    draw = synthetic.draw(spec)
    values = _uci_format.as_written(draw.features)
    digest = hashlib.sha256(draw.years.astype(np.int16).tobytes() + values.tobytes()).hexdigest()
    return Table(
        features=values.astype(np.float32),
        feature_names=timbre_names(),
        target=draw.years,
        target_name="year",
        groups=None,
        file="synthetic (hpo.data.synthetic)",
        first_line=1,
        preset_labeling=decades(),
        official_train_rows=spec.uci_train_rows,
        generated_sha256=digest,
    )


def check_full_msd(raw: _parse.RawData, *, name: str, strict: bool) -> None:
    """The real file has 515,345 rows with years 1922-2011. A downloaded file that differs is
    an error (an incomplete or wrong download); a local ``--file`` that differs (a sample, a
    subset) is only logged, and the official split's boundary is capped at its row count."""
    rows = int(raw.years.shape[0])
    lo, hi = int(raw.years.min()), int(raw.years.max())
    if rows == synthetic.FULL_ROWS and (lo, hi) == (1922, 2011):
        return
    problem = f"{rows:,} rows with years {lo}-{hi}; the full YearPredictionMSD has 515,345 rows, 1922-2011"
    if strict:
        raise DataFileError(name, problem, fix="delete it from the cache and download it again")
    logger.warning("%s: %s (using it as given)", name, problem)


def _read_msd(settings: DataSettings, path: Path) -> Table:
    raw = _parse.parse_uci(path)
    check_full_msd(raw, name=str(path), strict=settings.file is None)
    n_file = raw.years.shape[0]
    train_rows = min(synthetic.UCI_TRAIN_ROWS, n_file)
    if settings.rows and settings.rows < n_file:
        keep = np.sort(np.random.default_rng(settings.seed).choice(n_file, settings.rows, replace=False))
        train_rows = int(np.searchsorted(keep, train_rows))
        raw = _parse.RawData(years=raw.years[keep], features=raw.features[keep])
    return Table(
        features=raw.features,
        feature_names=timbre_names(),
        target=raw.years,
        target_name="year",
        groups=None,
        file=str(path),
        first_line=1,
        preset_labeling=decades(),
        official_train_rows=train_rows,
    )


# --------------------------------------------------------------------------- a user's table


def _read_arrow(settings: DataSettings, path: Path) -> pa.Table:
    name = str(path)
    if settings.source == "parquet":
        try:
            return pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataFileError(
                name,
                f"is not a readable Parquet file ({str(exc).splitlines()[0][:120]})",
                fix='for a text table use source = "csv"',
            ) from None
    if path.stat().st_size == 0:
        raise DataFileError(name, "file is empty", fix="export the table again, with a header line")
    try:
        return pacsv.read_csv(path, convert_options=CSV_CONVERT)
    except pa.ArrowInvalid as exc:
        raise _csv_problem(path, exc) from None


#: empty cells, NA, NaN, null (pyarrow's null spellings) are missing in text columns too
CSV_CONVERT = pacsv.ConvertOptions(strings_can_be_null=True)


def _csv_problem(path: Path, exc: Exception) -> DataFileError:
    """The slow path, only after pyarrow refused the file: the first line whose cell count
    differs from the header's."""
    name = str(path)
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return DataFileError(name, "file is empty", fix="export the table again, with a header line")
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(header):
                return DataFileError(
                    name,
                    f"{len(row)} cells, the header has {len(header)}",
                    line=line_no,
                    fix="every row needs one value per header column",
                )
    return DataFileError(
        name, f"cannot be parsed as CSV ({str(exc).splitlines()[0][:120]})", fix="check the format"
    )


def _is_numeric(t: pa.DataType) -> bool:
    return cols.is_numeric_type(t)


def _listed(names: list[str]) -> str:
    return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")


def _target_present(col: pa.ChunkedArray) -> npt.NDArray[np.bool_]:
    """Rows whose target has a value (not empty, not NaN)."""
    present = np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_floating(col.type):
        present &= ~np.isnan(np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64))
    return present


def _feature_columns(settings: DataSettings, table: pa.Table, name: str) -> list[str]:
    """The candidate feature columns: ``features`` as listed, else every column but the target,
    the group and ``exclude``; names in ``exclude`` and ``categorical`` must be columns."""
    columns = list(table.column_names)
    shown = _listed(columns)
    skip = {settings.target, settings.group}
    for key in ("exclude", "categorical"):
        for c in getattr(settings, key) or []:
            if c not in columns:
                raise DataFileError(
                    name,
                    f"data.{key} names {c!r}, which is not a column; columns are: {shown}",
                    fix=f"fix data.{key}",
                )
            if c in skip:
                raise DataFileError(
                    name,
                    f"data.{key} names {c!r}, the target or group column",
                    fix=f"remove it from data.{key}",
                )
    if settings.features is not None:
        features = list(settings.features)
        for f in features:
            if f not in columns:
                raise DataFileError(
                    name, f"feature {f!r} is not a column; columns are: {shown}", fix="fix data.features"
                )
            if f in skip:
                raise DataFileError(
                    name, f"feature {f!r} is the target or group column", fix="remove it from data.features"
                )
    else:
        features = [c for c in columns if c not in skip]
    excluded = set(settings.exclude or [])
    return [f for f in features if f not in excluded]


def _read_table(settings: DataSettings, path: Path) -> Table:
    """A user's table, typed column by column (:mod:`hpo.data.columns`). Rows whose target is
    empty are left out and counted; every other problem is one line naming the column (and the
    line), raised before anything is written."""
    name = str(path)
    table = _read_arrow(settings, path)
    columns = list(table.column_names)
    shown = _listed(columns)
    if table.num_rows == 0:
        raise DataFileError(name, "has a header but no rows", fix="export the rows too")
    target = settings.target
    assert target is not None
    if target not in columns:
        raise DataFileError(
            name, f"no target column {target!r}; columns are: {shown}", fix="set data.target to one"
        )
    if settings.group is not None and settings.group not in columns:
        raise DataFileError(
            name, f"no group column {settings.group!r}; columns are: {shown}", fix="set data.group to one"
        )
    candidates = _feature_columns(settings, table, name)
    present = _target_present(table.column(target))
    dropped = int((~present).sum())
    if not present.any():
        raise DataFileError(
            name,
            f"target column {target!r} has no values (every cell is empty)",
            fix="set data.target to a filled column",
        )
    line_of: npt.NDArray[np.int64] = np.arange(table.num_rows, dtype=np.int64) + 2
    if dropped:
        logger.info("%s: %d row(s) with an empty target %r left out", name, dropped, target)
        keep = np.flatnonzero(present)
        table = table.take(pa.array(keep))
        line_of = line_of[keep]
    forced = set(settings.categorical or [])
    numeric_blocks: list[npt.NDArray[np.float32]] = []
    numeric_names: list[str] = []
    code_blocks: list[npt.NDArray[np.int32]] = []
    cat_names: list[str] = []
    vocab: list[list[str]] = []
    typed: list[Column] = []
    left_out: list[dict[str, str]] = []
    for f in candidates:
        col = table.column(f)
        t = col.type
        missing = int(col.null_count)
        if f in forced or pa.types.is_dictionary(t) or pa.types.is_boolean(t):
            kind = cols.CATEGORICAL
        elif cols.is_numeric_type(t) or pa.types.is_null(t):
            kind = cols.NUMERIC
        elif cols.is_datetime_type(t):
            kind = cols.DATETIME
        elif cols.is_text_type(t):
            stray_numeric, stray = cols.looks_numeric(col)
            if stray_numeric:
                row = int(
                    np.flatnonzero(pc.equal(col, stray).fill_null(False).to_numpy(zero_copy_only=False))[0]
                )
                raise DataFileError(
                    name,
                    f"column {f!r} is numbers but one cell is {stray!r}",
                    line=int(line_of[row]),
                    fix="fix or empty that cell, or list the column in data.categorical",
                )
            if cols.looks_datetime(col):
                kind = cols.DATETIME
            else:
                many, u, n = cols.identifier_like(col)
                if many:
                    reason = (
                        f"{u:,} distinct values in {n:,} rows: an identifier or free text "
                        "(list it in data.categorical to keep it)"
                    )
                    logger.info("%s: column %r left out: %s", name, f, reason)
                    left_out.append({"name": f, "reason": reason})
                    continue
                kind = cols.CATEGORICAL
        else:
            reason = f"type {t} is not a feature type (numbers, text, booleans, dates)"
            logger.info("%s: column %r left out: %s", name, f, reason)
            left_out.append({"name": f, "reason": reason})
            continue
        if kind == cols.NUMERIC:
            values = cols.numeric_values(col)
            inf = np.isinf(values)
            if inf.any():
                row = int(np.argmax(inf))
                raise DataFileError(
                    name,
                    f"column {f!r} is {values[row]}; values must be finite numbers or empty",
                    line=int(line_of[row]),
                    fix="fix or empty that cell",
                )
            numeric_blocks.append(values[:, None])
            numeric_names.append(f)
            typed.append(Column(f, kind, str(t), missing=missing))
        elif kind == cols.DATETIME:
            stamps, bad = cols.parse_datetime(col)
            if bad is not None:
                raise DataFileError(
                    name,
                    f"date-time column {f!r} has {col[bad].as_py()!r}, which is not an ISO-8601 date",
                    line=int(line_of[bad]),
                    fix="write it as YYYY-MM-DD[THH:MM:SS], empty it, or exclude the column",
                )
            part_names, parts = cols.datetime_parts(stamps, f)
            numeric_blocks.append(parts)
            numeric_names.extend(part_names)
            typed.append(
                Column(f, kind, str(t), missing=missing, parts=[p.removeprefix(f + ".") for p in part_names])
            )
        else:
            strings = cols.category_strings(col)
            levels = cols.vocabulary(strings)
            code_blocks.append(cols.codes_of(strings, levels)[:, None])
            cat_names.append(f)
            vocab.append(levels)
            typed.append(Column(f, kind, str(t), missing=missing, levels=len(levels)))
    if not typed:
        raise DataFileError(name, "has no feature columns besides the target", fix="add feature columns")
    rows = table.num_rows
    x = np.concatenate(numeric_blocks, axis=1) if numeric_blocks else np.empty((rows, 0), np.float32)
    codes = np.concatenate(code_blocks, axis=1) if code_blocks else None
    groups = None
    if settings.group is not None:
        import pandas as pd

        series = table.column(settings.group).to_pandas()
        if series.isna().any():
            row = int(np.flatnonzero(series.isna().to_numpy())[0])
            raise DataFileError(
                name, f"group column {settings.group!r} is empty", line=int(line_of[row]), fix="fill it"
            )
        groups = pd.factorize(series)[0].astype(np.int64)
    target_values = table.column(target).to_numpy(zero_copy_only=False)
    return Table(
        features=np.ascontiguousarray(x, dtype=np.float32),
        feature_names=numeric_names,
        target=target_values,
        target_name=target,
        groups=groups,
        file=name,
        first_line=2,
        codes=codes,
        categorical_names=cat_names,
        vocab=vocab,
        columns=typed,
        left_out=left_out,
        dropped_target_rows=dropped,
        row_lines=line_of if dropped else None,
    )
