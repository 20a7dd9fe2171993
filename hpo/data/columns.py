"""A table's columns as hpo reads them: each feature column typed once, then turned into numbers
the same way when the table is prepared and when ``hpo predict`` reads raw rows.

Kinds (decided on the whole column when the table is read, listed by ``hpo validate`` and
``hpo data explore``):

* ``numeric``: integer, float or decimal columns (``NaN`` for an empty cell);
* ``categorical``: strings, booleans, Parquet dictionary / pandas categorical columns, and any
  column named in ``[data] categorical`` (integer codes such as a zip code). Values are kept as
  their text (:func:`category_strings`: ``true``/``false``, ``94103``), so the same spelling
  maps to the same level at predict time;
* ``datetime``: timestamps and dates (Parquet, or ISO-8601 text, which pyarrow's CSV reader
  types itself; a text column whose sampled distinct values are at least 95 % ISO dates is
  parsed too), turned into numeric parts (:func:`datetime_parts`): year, month, day of week,
  day of year, hour (where any value has a time of day) and the instant as days since
  1970-01-01 UTC.

Left out, each with a log line naming it and why: a string column whose values are nearly all
distinct (an identifier or free text; listing it in ``categorical`` keeps it), and columns of
other Arrow types (lists, structs, binary). ``exclude`` drops columns by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

NUMERIC, CATEGORICAL, DATETIME = "numeric", "categorical", "datetime"
#: a text column is an identifier or free text when more than this share of its values are
#: distinct and it has more than ID_MIN_DISTINCT of them (a small table's few names stay levels)
ID_DISTINCT_SHARE = 0.9
ID_MIN_DISTINCT = 50
#: a text column is a date-time column when this share of (up to DATE_SAMPLE) distinct values
#: parse as ISO-8601; the rest must parse too, else one line names the value
DATE_SHARE = 0.95
DATE_SAMPLE = 500
#: a text column is a numeric column with a stray spelling when this share of its distinct
#: values are numbers (the stray is named, rather than the column silently turned categorical)
NUMERIC_SHARE = 0.95
DATE_PARTS = ("year", "month", "dayofweek", "dayofyear", "hour", "days")


@dataclass(frozen=True)
class Column:
    """One raw feature column as read: its kind, Arrow type, and what it became."""

    name: str
    kind: str  # NUMERIC, CATEGORICAL or DATETIME
    arrow_type: str  # as read (str(pa.DataType)); predict reads the column as this type
    missing: int = 0  # empty cells, all rows
    levels: int = 0  # categorical: distinct values, all rows
    parts: list[str] = field(default_factory=list)  # datetime: the numeric columns it became

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "arrow_type": self.arrow_type,
            "missing": self.missing,
            "levels": self.levels,
            "parts": list(self.parts),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Column:
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            arrow_type=str(d["arrow_type"]),
            missing=int(d.get("missing", 0)),
            levels=int(d.get("levels", 0)),
            parts=[str(p) for p in d.get("parts", [])],
        )


def is_numeric_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


def is_datetime_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_timestamp(t) or pa.types.is_date(t))


def is_text_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def arrow_type(name: str) -> pa.DataType | None:
    """The Arrow type a column was read as, from its ``str()`` (None for one predict cannot pin:
    it reads that column as pyarrow infers it)."""
    simple = {
        "bool": pa.bool_(),
        "int8": pa.int8(),
        "int16": pa.int16(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "uint8": pa.uint8(),
        "uint16": pa.uint16(),
        "uint32": pa.uint32(),
        "uint64": pa.uint64(),
        "float": pa.float32(),
        "double": pa.float64(),
        "string": pa.string(),
        "large_string": pa.large_string(),
        "date32[day]": pa.date32(),
    }
    return simple.get(name)


def numeric_values(col: pa.ChunkedArray | pa.Array) -> npt.NDArray[np.float32]:
    """float32 values, NaN for an empty cell (the same conversion for every numeric column at
    prepare and predict time: a complete column converts exactly as before missing values were
    allowed)."""
    if pa.types.is_decimal(col.type) or pa.types.is_null(col.type):
        col = pc.cast(col, pa.float64())
    return np.asarray(col.to_numpy(zero_copy_only=False)).astype(np.float32)


def category_strings(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A categorical column's values as text (null stays null): a dictionary column decoded,
    booleans as ``true``/``false``, integers as written."""
    if pa.types.is_dictionary(col.type):
        col = (
            col.dictionary_decode()
            if isinstance(col, pa.Array)
            else pa.chunked_array([c.dictionary_decode() for c in col.chunks], type=col.type.value_type)
        )
    if not pa.types.is_string(col.type):
        col = pc.cast(col, pa.string())
    return col


def codes_of(values: pa.ChunkedArray | pa.Array, vocab: list[str]) -> npt.NDArray[np.int32]:
    """Each value's index in ``vocab``; -1 for an empty cell or a value not in it."""
    idx = pc.index_in(values, value_set=pa.array(vocab, type=pa.string()))
    return np.asarray(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False), dtype=np.int32)


def vocabulary(values: pa.ChunkedArray | pa.Array) -> list[str]:
    """The sorted distinct non-empty values (labels only: no statistic is fit here)."""
    unique = pc.unique(pc.drop_null(values))
    return sorted(str(v) for v in unique.to_pylist())


def looks_numeric(values: pa.ChunkedArray | pa.Array) -> tuple[bool, str | None]:
    """Whether a text column is numbers with a stray spelling: (at least NUMERIC_SHARE of its
    distinct values are numbers, the first that is not)."""
    distinct = [v for v in pc.unique(pc.drop_null(values)).to_pylist()[:DATE_SAMPLE] if v is not None]
    if not distinct:
        return False, None
    parsed = pd.to_numeric(pd.Series(distinct, dtype=object), errors="coerce")
    ok = parsed.notna().to_numpy()
    if ok.mean() >= NUMERIC_SHARE and not ok.all():
        return True, str(distinct[int(np.flatnonzero(~ok)[0])])
    return False, None


def looks_datetime(values: pa.ChunkedArray | pa.Array) -> bool:
    """Whether at least DATE_SHARE of (up to DATE_SAMPLE) distinct values parse as ISO-8601."""
    distinct = [v for v in pc.unique(pc.drop_null(values)).to_pylist()[:DATE_SAMPLE] if v is not None]
    if not distinct:
        return False
    parsed = pd.to_datetime(pd.Series(distinct, dtype=object), format="ISO8601", errors="coerce", utc=True)
    return bool(parsed.notna().mean() >= DATE_SHARE)


def parse_datetime(values: pa.ChunkedArray | pa.Array) -> tuple[pd.Series, int | None]:
    """Instants in UTC (NaT for an empty cell) and the first row whose text does not parse."""
    if is_datetime_type(values.type):
        series = values.to_pandas()
        stamps = pd.to_datetime(series, utc=True)
        return stamps, None
    series = values.to_pandas()
    stamps = pd.to_datetime(series, format="ISO8601", errors="coerce", utc=True)
    bad = stamps.isna().to_numpy() & series.notna().to_numpy()
    return stamps, (int(np.flatnonzero(bad)[0]) if bad.any() else None)


def datetime_parts(
    stamps: pd.Series, name: str, parts: list[str] | None = None
) -> tuple[list[str], npt.NDArray[np.float32]]:
    """The numeric parts of a date-time column (NaN where empty): ``parts`` as chosen when the
    table was prepared, else year, month, day of week, day of year, hour (only where some value
    has a time of day) and days since 1970-01-01 UTC."""
    dt = stamps.dt
    days = (stamps - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds() / 86400.0
    every = {
        "year": dt.year,
        "month": dt.month,
        "dayofweek": dt.day_of_week,
        "dayofyear": dt.day_of_year,
        "hour": dt.hour + dt.minute / 60.0,
        "days": days,
    }
    if parts is None:
        has_time = bool(((dt.hour.fillna(0) != 0) | (dt.minute.fillna(0) != 0)).any())
        parts = [p for p in DATE_PARTS if p != "hour" or has_time]
    out = np.empty((len(stamps), len(parts)), dtype=np.float32)
    for j, p in enumerate(parts):
        out[:, j] = np.asarray(pd.to_numeric(every[p], errors="coerce"), dtype=np.float64)
    return [f"{name}.{p}" for p in parts], out


def identifier_like(values: pa.ChunkedArray | pa.Array) -> tuple[bool, int, int]:
    """(nearly every value distinct, distinct count, non-empty count)."""
    n = len(values) - values.null_count
    u = len(pc.unique(pc.drop_null(values)))
    return (n > 0 and u > ID_DISTINCT_SHARE * n and u > ID_MIN_DISTINCT), u, n
