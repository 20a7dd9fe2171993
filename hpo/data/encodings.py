"""Which encoding a model gets (:data:`~hpo.data.preprocess.MATRIX` or
:data:`~hpo.data.preprocess.NATIVE`) and how each column reaches it, as ``hpo validate``, ``hpo
data explore`` and the report list it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hpo.data.columns import CATEGORICAL, DATETIME, Column
from hpo.data.preprocess import MATRIX, NATIVE, ONEHOT, TARGET, Preprocessor


def encoding_for(estimator: Any | None) -> str:
    """NATIVE for an estimator that takes categorical columns and NaN itself (a
    ``categorical_features`` parameter: HistGradientBoosting*; LightGBM's estimators, given
    ``categorical_feature=`` at fit), else MATRIX."""
    if estimator is None:
        return MATRIX
    try:
        params = estimator.get_params(deep=False)
    except Exception:  # an estimator whose get_params needs arguments: refused elsewhere
        return MATRIX
    if "categorical_features" in params or type(estimator).__module__.startswith("lightgbm."):
        return NATIVE
    return MATRIX


def describe_columns(
    columns: Sequence[Column], left_out: Sequence[Mapping[str, str]], prep: Preprocessor, rows: int
) -> list[dict[str, Any]]:
    """Every column as read and what the model gets of it (``hpo validate``, ``hpo data
    explore``, the report): kind, Arrow type, empty share, levels, and its encoding as fit on
    the training rows; the columns left out, with why."""
    out: list[dict[str, Any]] = []
    by_name = {c.name: c for c in prep.categorical}
    for c in columns:
        row: dict[str, Any] = {
            "column": c.name,
            "kind": c.kind,
            "type": c.arrow_type,
            "missing": c.missing / rows if rows else 0.0,
            "levels": c.levels if c.kind == CATEGORICAL else None,
        }
        if c.kind == CATEGORICAL:
            spec = by_name[c.name]
            k = len(spec.levels)
            rare = f", {c.levels - k} rare or test-only level(s) infrequent" if c.levels > k else ""
            empty = " + empty" if spec.missing_slot else ""
            if spec.mode == ONEHOT:
                row["encoding"] = f"one-hot: {k} level(s) + infrequent{empty}{rare}"
            elif spec.mode == TARGET:
                row["encoding"] = (
                    f"target encoded (cross-fitted, {prep.n_target} column(s)): {k} level(s) "
                    f"+ infrequent{empty}{rare}"
                )
            else:
                row["encoding"] = f"native categorical codes: {k} level(s) + infrequent, empty NaN{rare}"
        else:
            names = [f"{c.name}.{p}" for p in c.parts] if c.kind == DATETIME else [c.name]
            gaps = [prep.indicator[prep.numeric_names.index(n)] for n in names]
            if prep.encoding == NATIVE:
                how = "standardised, empty cells NaN (the estimator's own)"
            elif any(gaps):
                how = "standardised, empty cells the training median + an indicator column"
            else:
                how = "standardised (an empty cell at predict time: the training median)"
            if prep.normal is not None:  # scaling = "quantile"
                how = how.replace("standardised", "normal scores by the training quantiles, standardised", 1)
            row["encoding"] = (f"parts {', '.join(c.parts)}: " if c.kind == DATETIME else "") + how
        out.append(row)
    for gone in left_out:
        out.append(
            {"column": gone["name"], "kind": "left out", "type": "", "missing": None, "levels": None}
            | {"encoding": gone["reason"]}
        )
    return out
