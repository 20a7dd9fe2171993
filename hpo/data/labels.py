"""Classes from a target column: its categories as they are, or a numeric target cut into bins.

A :class:`Labeling` is stored with the prepared data and in the model file, so ``hpo predict``
maps a target column exactly as training did. MSD's decades are ``bins`` with the edges
1920, 1930, ..., 2020 and the names 1920s ... 2010s.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from hpo.errors import DataFileError

#: A numeric target with more distinct values than this is not taken as categories.
MAX_NUMERIC_CATEGORIES = 200


@dataclass(frozen=True)
class Labeling:
    kind: Literal["categorical", "bins"]
    class_names: list[str]
    values: list[Any] | None = None  # categorical: the target value of each class
    edges: list[float] | None = None  # bins: class i holds [edges[i], edges[i+1])
    closed_last: bool = False  # bins: the last bin also holds its upper edge

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def apply(
        self, target: npt.NDArray[Any], *, file: str, column: str, first_line: int
    ) -> npt.NDArray[np.int64]:
        """Class index of every row; a value with no class is an error naming its line."""
        if self.kind == "bins":
            assert self.edges is not None
            v = np.asarray(target, dtype=np.float64)
            edges = np.asarray(self.edges)
            idx = np.searchsorted(edges, v, side="right") - 1
            if self.closed_last:
                idx[v == edges[-1]] = len(edges) - 2
            bad = (idx < 0) | (idx >= len(edges) - 1) | ~np.isfinite(v)
            if bad.any():
                row = int(np.argmax(bad))
                raise DataFileError(
                    file,
                    f"{column} = {_py(target[row])!r} lies outside the bins {edges[0]:g}..{edges[-1]:g}",
                    line=row + first_line,
                    fix="widen bins (or origin/bin_width), or drop the row",
                )
            return idx.astype(np.int64)
        assert self.values is not None
        lookup = {v: i for i, v in enumerate(self.values)}
        codes = pd.Series(target).map(lookup)
        if codes.isna().any():
            row = int(np.flatnonzero(codes.isna().to_numpy())[0])
            raise DataFileError(
                file,
                f"{column} = {_py(target[row])!r} is not one of the classes {self.class_names}",
                line=row + first_line,
                fix="use rows whose target is one of the trained classes",
            )
        return codes.to_numpy(dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Labeling:
        return cls(**d)


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def decades() -> Labeling:
    """MSD's ten decades, 1920s ... 2010s."""
    return Labeling(
        kind="bins",
        class_names=[f"{1920 + 10 * d}s" for d in range(10)],
        edges=[float(1920 + 10 * d) for d in range(11)],
    )


def _fmt(x: float) -> str:
    return f"{x:g}"


def infer(
    target: npt.NDArray[Any],
    *,
    file: str,
    column: str,
    bins: list[float] | None,
    bin_width: float | None,
    origin: float | None,
    class_names: list[str] | None,
) -> Labeling:
    """The labeling a study file's ``[data]`` asks for, checked against the target's values."""
    numeric = pd.api.types.is_numeric_dtype(target) and not pd.api.types.is_bool_dtype(target)
    if bins is not None or bin_width is not None:
        if not numeric:
            raise DataFileError(
                file,
                f"target column {column!r} is not numeric, so it cannot be binned",
                fix="remove bins/bin_width",
            )
        v = np.asarray(target, dtype=np.float64)
        if bins is not None:
            edges = [float(e) for e in bins]
            if any(b <= a for a, b in itertools.pairwise(edges)):
                raise DataFileError(file, f"bins = {bins} must increase", fix="list the bin edges in order")
        else:
            assert bin_width is not None
            start = float(np.nanmin(v)) if origin is None else float(origin)
            count = max(1, math.floor((float(np.nanmax(v)) - start) / bin_width) + 1)
            edges = [start + i * bin_width for i in range(count + 1)]
        labeling = Labeling(
            kind="bins",
            class_names=[f"{_fmt(a)}-{_fmt(b)}" for a, b in itertools.pairwise(edges)],
            edges=edges,
            closed_last=bins is not None,
        )
    else:
        series = pd.Series(target)
        if numeric:
            distinct = np.unique(series.dropna().to_numpy())
            integral = bool(np.all(np.mod(distinct, 1) == 0))
            if not integral or len(distinct) > MAX_NUMERIC_CATEGORIES:
                raise DataFileError(
                    file,
                    f"target column {column!r} is numeric with {len(distinct):,} distinct values",
                    fix="make classes with bins = [edges...] or bin_width (+ origin) in [data]",
                )
            values: list[Any] = [int(x) if float(x).is_integer() else float(x) for x in distinct]
        else:
            values = sorted({str(x) for x in series.dropna()})
            if series.isna().any():
                row = int(np.flatnonzero(series.isna().to_numpy())[0])
                raise DataFileError(file, f"{column} is empty", line=row + 2, fix="give every row a class")
        labeling = Labeling(kind="categorical", class_names=[str(x) for x in values], values=values)
    if class_names is not None:
        if len(class_names) != labeling.n_classes:
            raise DataFileError(
                file,
                f"class_names has {len(class_names)} names for {labeling.n_classes} classes "
                f"({', '.join(labeling.class_names)})",
                fix="give one name per class, in class order",
            )
        labeling = Labeling(
            kind=labeling.kind,
            class_names=list(class_names),
            values=labeling.values,
            edges=labeling.edges,
            closed_last=labeling.closed_last,
        )
    return labeling


def check_classes(
    labels: npt.NDArray[np.integer[Any]], labeling: Labeling, *, file: str, column: str, allow_empty: bool
) -> None:
    """At least two classes with rows, and (for a user's bins) no empty bin."""
    counts = np.bincount(labels, minlength=labeling.n_classes)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        only = labeling.class_names[int(present[0])] if len(present) else "none"
        raise DataFileError(
            file,
            f"target column {column!r} has one class ({only}); a classifier needs at least two",
            fix="choose another target, or bins that split it",
        )
    if labeling.kind == "bins" and not allow_empty:
        empty = [labeling.class_names[i] for i in range(labeling.n_classes) if counts[i] == 0]
        if empty:
            raise DataFileError(
                file,
                f"bin {empty[0]} of {column!r} has no rows",
                fix="merge it into a neighbour with bins = [edges...]",
            )
