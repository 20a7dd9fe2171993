"""What each task is before any data is read: its name, whether it has classes, its metrics (name,
direction, meaning) and the metric a stage selects by when its table names none.

Constraints as data, as scikit-learn keeps ``_parameter_constraints``: the study file's checks,
the stages' directions and the reports read these, and nothing outside :mod:`hpo.tasks` names a
task. Adding a task is one :class:`TaskKind` here and one :class:`~hpo.tasks.Task` beside it.
This module imports nothing of hpo, so :mod:`hpo.settings` may read it at load.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A metric a stage may select by: its name, direction and meaning."""

    name: str
    greater_is_better: bool
    what: str


@dataclass(frozen=True)
class TaskKind:
    """A task as a study file names it (``[data] task``)."""

    name: str
    has_classes: bool  # class indices and their names (labels, bins, weights, smoothing apply)
    metrics: tuple[Metric, ...]
    default_metric: str  # what a stage selects by when its table names none
    what: str
    trivial: str  # the model that learned nothing, as a sentence names its score

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)


_LOSS = Metric("loss", False, "the task's loss on the validation rows")

CLASSIFICATION = TaskKind(
    "classification",
    True,
    (
        Metric("accuracy", True, "share of rows whose class is predicted"),
        Metric("balanced_accuracy", True, "mean recall over the classes"),
        Metric("macro_f1", True, "unweighted mean F1 over the classes"),
        _LOSS,
    ),
    "accuracy",
    "class indices, cross-entropy",
    "the majority class's",
)
REGRESSION = TaskKind(
    "regression",
    False,
    (
        _LOSS,
        Metric("rmse", False, "root mean squared error, in the target's units"),
        Metric("mae", False, "mean absolute error, in the target's units"),
        Metric("r2", True, "coefficient of determination"),
    ),
    "rmse",
    "one value, the mean squared error of the standardised target",
    "predicting the training mean,",
)

#: Every task by name, in the order a study file's reference lists them.
TASK_KINDS: dict[str, TaskKind] = {k.name: k for k in (CLASSIFICATION, REGRESSION)}

#: Every metric a stage may select by. ``loss`` is the task's own training loss on the
#: validation rows (cross-entropy; the mean squared error of the standardised target).
METRICS: dict[str, Metric] = {m.name: m for k in TASK_KINDS.values() for m in k.metrics}
assert all(k.default_metric in k.metric_names for k in TASK_KINDS.values())


def task_kind(name: str) -> TaskKind:
    """The task named ``name`` (KeyError naming the tasks if unknown)."""
    try:
        return TASK_KINDS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; tasks are: {', '.join(TASK_KINDS)}") from None


def greater_is_better(metric: str) -> bool:
    """Whether larger values of ``metric`` are better (KeyError naming the metrics if unknown)."""
    try:
        return METRICS[metric].greater_is_better
    except KeyError:
        raise KeyError(f"unknown metric {metric!r}; metrics are: {', '.join(METRICS)}") from None


def better(metric: str, a: float, b: float) -> bool:
    """Whether score ``a`` of ``metric`` is better than ``b``."""
    return a > b if greater_is_better(metric) else a < b


def metrics_of(task: str) -> tuple[str, ...]:
    """The metrics that fit the task named ``task``."""
    return task_kind(task).metric_names
