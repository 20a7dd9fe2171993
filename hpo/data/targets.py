"""A regression target: its values read as numbers (one line naming the column and the line where
one is not), and its deciles, the strata its split and CV folds keep balanced."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from hpo.data import sources
from hpo.errors import DataFileError

#: deciles of a regression target stratify its split and CV folds
STRATA = 10


def regression_target(table: sources.Table) -> npt.NDArray[np.float64]:
    """The target's values as numbers; a target that is not numeric, or a missing or infinite
    value, is one line naming the column (and the line)."""
    raw = np.asarray(table.target)
    if raw.dtype == np.bool_ or not np.issubdtype(raw.dtype, np.number):
        shown = next((v for v in raw if not _is_number(v)), raw[0] if raw.size else "")
        raise DataFileError(
            table.file,
            f'target column {table.target_name!r} is not numeric (e.g. {shown!r}); task = "regression" '
            "predicts a number",
            fix='use a numeric target column, or task = "classification"',
        )
    values = raw.astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataFileError(
            table.file,
            f"{table.target_name} is empty or not finite",
            line=row + table.first_line,
            fix="give every row a numeric target, or drop the row",
        )
    if np.ptp(values) == 0:
        raise DataFileError(
            table.file,
            f"target column {table.target_name!r} has one value ({values[0]:g}); there is nothing to predict",
            fix="choose another target column",
        )
    return values


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool | np.bool_)


def regression_strata(values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """The target's deciles (fewer where values tie), as classes to stratify by."""
    codes = pd.qcut(values, q=STRATA, labels=False, duplicates="drop")
    return np.asarray(codes, dtype=np.int64)
