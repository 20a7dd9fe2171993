"""Tasks: what a pipeline predicts (``[data] task``) and how predictions are scored.

``classification`` (class indices, cross-entropy, accuracy / balanced accuracy / macro-F1) and
``regression`` (one value, the mean squared error of the standardised target, RMSE / MAE / R² in
the target's units). The metrics themselves, with the tasks they fit and their directions, are
data in :data:`hpo.settings.METRIC_SPECS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpo.tasks._protocol import Evaluation, Task
from hpo.tasks.classification import Classification, Metrics, balanced_class_weights
from hpo.tasks.regression import Regression

__all__ = [
    "Classification",
    "Evaluation",
    "Metrics",
    "Regression",
    "Task",
    "balanced_class_weights",
    "from_record",
]


def from_record(record: Mapping[str, Any]) -> Task:
    """The task a stored record describes (:meth:`Task.to_record`)."""
    kind = record.get("kind")
    if kind == "classification":
        return Classification(tuple(str(c) for c in record["class_names"]))
    if kind == "regression":
        return Regression(mean=float(record["mean"]), std=float(record["std"]))
    raise KeyError(f"unknown task {kind!r}; tasks are: classification, regression")
