"""Choosing among a stage's candidates under its policy, with the evidence for the choice.

``best`` is the write-up's rule: the best score wins (the first candidate on a tie).
``keep_unless_better`` keeps the configuration the stage was handed unless a challenger beats it
beyond noise (the 95 % interval of challenger-minus-incumbent lies above 0), so a pipeline's
result stops depending on rounding. Either way the stored evidence compares the selected
candidate with the best of the rest: the difference (larger is better, also for the loss), its
interval and the method (:mod:`hpo.evidence`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from optuna.trial import FrozenTrial

from hpo import evidence
from hpo.tasks import Classification, Task, from_record, greater_is_better
from hpo.tuning import records
from hpo.tuning.records import Evidence

How = Literal["folds", "seeds", "rows"]


@dataclass(frozen=True)
class Candidate:
    """One option of a stage: its trial, how the evidence names it, and its score."""

    trial: FrozenTrial
    label: dict[str, Any]
    score: float


def best_word(metric: str) -> str:
    return "highest" if greater_is_better(metric) else "lowest"


def study_task(study_attrs: Mapping[str, Any]) -> Task:
    """The task a study's candidates were scored for (a study made before tasks existed:
    classification with ``hpo:n_classes`` classes)."""
    record = study_attrs.get(records.TASK)
    if record is not None:
        return from_record(record)
    return Classification(tuple(str(i) for i in range(int(study_attrs[records.N_CLASSES]))))


def how_compared(*, cv: bool, seeds: int) -> How:
    if cv:
        return "folds"
    return "seeds" if seeds > 1 else "rows"


def compare(
    a: Candidate, b: Candidate, *, metric: str, how: How, study_attrs: Mapping[str, Any], folds: int = 0
) -> Evidence:
    """``a`` against ``b`` (difference oriented so that larger favours ``a``)."""
    sign = 1.0 if greater_is_better(metric) else -1.0
    if how == "folds":
        fa, fb = a.trial.user_attrs[records.FOLD_SCORES], b.trial.user_attrs[records.FOLD_SCORES]
        diffs = [sign * (x - y) for x, y in zip(fa, fb, strict=True)]
        mean, low, high = evidence.corrected_t(diffs, test_over_train=1 / max(folds - 1, 1))
        method = f"corrected resampled t-test over {len(diffs)} CV folds (Nadeau & Bengio)"
        n = len(diffs)
    elif how == "seeds":
        sa, sb = a.trial.user_attrs[records.SEED_SCORES], b.trial.user_attrs[records.SEED_SCORES]
        diffs = [sign * (x - y) for x, y in zip(sa, sb, strict=True)]
        mean, low, high = evidence.paired_t(diffs)
        method = f"paired t-interval over {len(diffs)} seeds"
        n = len(diffs)
    else:
        task = study_task(study_attrs)
        y = task.unpack_predictions(study_attrs[records.VAL_LABELS])
        if metric == "loss":
            la = records.unpack_floats(a.trial.user_attrs[records.VAL_LOSSES])
            lb = records.unpack_floats(b.trial.user_attrs[records.VAL_LOSSES])
            mean, low, high = evidence.paired_mean_bootstrap(lb - la)
        else:
            pa = task.unpack_predictions(a.trial.user_attrs[records.VAL_PREDICTIONS])
            pb = task.unpack_predictions(b.trial.user_attrs[records.VAL_PREDICTIONS])
            mean, low, high = task.paired_bootstrap(metric, y, pa, pb)
            if sign < 0:  # smaller is better: orient so that larger favours a
                mean, low, high = -mean, -high, -low
        method = (
            f"paired bootstrap over {y.size:,} validation rows ({evidence.BOOTSTRAP_RESAMPLES:,} resamples)"
        )
        n = int(y.size)
    return Evidence(runner_up=b.label, metric=metric, difference=mean, low=low, high=high, method=method, n=n)


def choose(
    candidates: Sequence[Candidate],
    *,
    metric: str,
    policy: str,
    incumbent: Mapping[str, Any] | None,
    how: How,
    study_attrs: Mapping[str, Any],
    folds: int = 0,
) -> tuple[Candidate, Evidence | None, str]:
    """The chosen candidate, the evidence for it, and a note on the policy's decision."""
    maximize = greater_is_better(metric)
    order = sorted(
        range(len(candidates)), key=lambda i: (-candidates[i].score if maximize else candidates[i].score, i)
    )
    ranked = [candidates[i] for i in order]
    best = ranked[0]

    def versus(chosen: Candidate) -> Evidence | None:
        others = [c for c in ranked if c is not chosen]
        return (
            compare(chosen, others[0], metric=metric, how=how, study_attrs=study_attrs, folds=folds)
            if others
            else None
        )

    if policy == "best":
        return best, versus(best), ""
    held = next((c for c in candidates if incumbent is not None and _same(c.label, incumbent)), None)
    if held is None:
        return best, versus(best), "; the carried-in value is not among the candidates, so the best is taken"
    challenger = next((c for c in ranked if c is not held), None)
    if challenger is None:
        return held, None, "; the carried-in value is the only candidate"
    duel = compare(challenger, held, metric=metric, how=how, study_attrs=study_attrs, folds=folds)
    label = ", ".join(f"{k} = {v}" for k, v in challenger.label.items())
    if duel.low > 0:
        return challenger, versus(challenger), f"; {label} beats the carried-in value beyond noise"
    return held, versus(held), f"; kept the carried-in value: the best challenger ({label}) is within noise"


def _same(label: Mapping[str, Any], incumbent: Mapping[str, Any]) -> bool:
    return all(
        np.isclose(label[k], incumbent[k]) if isinstance(label[k], float) else label[k] == incumbent[k]
        for k in label
    )
