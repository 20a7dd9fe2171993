"""Tasks: what a pipeline predicts (``[data] task``) and how predictions are scored.

``classification`` (class indices, cross-entropy, accuracy / balanced accuracy / macro-F1) and
``regression`` (one value, the mean squared error of the standardised target, RMSE / MAE / R² in
the target's units). What each task is before data is read (whether it has classes, its metrics
with their directions, its default metric) is data in :mod:`hpo.tasks._kinds`, importable
without torch: the task classes themselves (torch, scikit-learn's metrics) load on first use
(PEP 562), so the data cache and the study-file checks stay light and :mod:`hpo.settings` may
read the kinds at load.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hpo.tasks._kinds import (
    CLASSIFICATION,
    METRICS,
    REGRESSION,
    TASK_KINDS,
    Metric,
    TaskKind,
    better,
    greater_is_better,
    metrics_of,
    task_kind,
)

if TYPE_CHECKING:
    from hpo.tasks._protocol import Evaluation, Task
    from hpo.tasks.classification import Classification, Metrics, balanced_class_weights
    from hpo.tasks.regression import Regression

__all__ = [
    "CLASSIFICATION",
    "METRICS",
    "REGRESSION",
    "TASK_KINDS",
    "Classification",
    "Evaluation",
    "Metric",
    "Metrics",
    "Regression",
    "Task",
    "TaskKind",
    "balanced_class_weights",
    "better",
    "from_record",
    "greater_is_better",
    "metrics_of",
    "task_kind",
]

_LAZY = {
    "Evaluation": "hpo.tasks._protocol",
    "Task": "hpo.tasks._protocol",
    "Classification": "hpo.tasks.classification",
    "Metrics": "hpo.tasks.classification",
    "balanced_class_weights": "hpo.tasks.classification",
    "Regression": "hpo.tasks.regression",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpo.tasks' has no attribute {name!r}")


def from_record(record: Mapping[str, Any]) -> Task:
    """The task a stored record describes (:meth:`Task.to_record`)."""
    from hpo.tasks.classification import Classification
    from hpo.tasks.regression import Regression

    name = record.get("kind")
    if name == CLASSIFICATION.name:
        return Classification(tuple(str(c) for c in record["class_names"]))
    if name == REGRESSION.name:
        return Regression(mean=float(record["mean"]), std=float(record["std"]))
    raise KeyError(f"unknown task {name!r}; tasks are: {', '.join(TASK_KINDS)}")
