"""How a trial's evaluations become its score, and the trainer callbacks that report them to Optuna.

A :class:`Scorer` turns one evaluation record into the stage's metric (accuracy, balanced
accuracy, macro-F1 or the validation loss); :func:`trial_callbacks` reports it as the trial's
intermediate value, asks the pruner, and feeds the progress display.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import optuna
import torch

from hpo.present.progress import Progress
from hpo.training import Callback, EvalRecord, FitResult, score


class Scorer:
    """The stage's metric of an evaluation; larger is better except for ``loss``."""

    def __init__(self, metric: str, y_val: torch.Tensor, n_classes: int) -> None:
        self.metric = metric
        self.y_val = y_val.numpy()
        self.n_classes = n_classes
        self.maximize = metric != "loss"

    def __call__(self, record: EvalRecord) -> float:
        if self.metric == "accuracy":
            return record.val_accuracy
        if self.metric == "loss":
            return record.val_loss
        assert record.val_pred is not None
        return score(self.metric, self.y_val, record.val_pred.numpy(), n_classes=self.n_classes)

    def peak(self, history: Sequence[EvalRecord]) -> tuple[int, float]:
        """The index and value of the best evaluation (the first, on a tie)."""
        values = np.array([self(r) for r in history])
        i = int(np.argmax(values) if self.maximize else np.argmin(values))
        return i, float(values[i])


@dataclass
class Watch:
    """What the callbacks of one trial saw: whether its pruner stopped it."""

    pruned: bool = False
    pruned_at: int | None = None
    values: list[float] = field(default_factory=list)


def trial_callbacks(
    trial: optuna.Trial,
    *,
    scorer: Scorer,
    progress: Progress,
    label: str,
    epochs: int,
    step: str = "epoch",
    report: bool = True,
    prune: bool = False,
    watch: Watch | None = None,
) -> list[Callback]:
    """Report the metric at every evaluation (step = the epoch, or the optimizer step), stop the
    model when the pruner says so (``watch.pruned``), and show progress."""
    seen = watch or Watch()

    def report_value(record: EvalRecord) -> bool:
        value = scorer(record)
        seen.values.append(value)
        at = record.epoch if step == "epoch" else record.step
        if report:
            trial.report(value, at)
        if prune and trial.should_prune():
            seen.pruned = True
            seen.pruned_at = at
            return True
        return False

    return [report_value, progress.member(label, epochs=epochs)]


def last(result: FitResult) -> EvalRecord:
    return result.history[-1]
