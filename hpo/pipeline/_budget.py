"""Time: how long the pipeline's stages ran, and a search's share of ``[pipeline] time_budget``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from hpo.stages import Stage
from hpo.tuning import budget, records

if TYPE_CHECKING:
    from hpo.pipeline._pipeline import Pipeline


def _trials(pipe: Pipeline, stage: Stage) -> list[FrozenTrial]:
    study = pipe.ctx.find_study(pipe.ctx.study_name(stage.name))
    return study.get_trials(deepcopy=False) if study is not None else []


def time_spent(pipe: Pipeline) -> float:
    """Seconds some trial of the pipeline's stages was running."""
    return sum(budget.busy(_trials(pipe, s)) or 0.0 for s in pipe.plan.stages)


def search_budget(pipe: Pipeline, name: str, trials: Sequence[FrozenTrial]) -> budget.TimeLimit | None:
    """Search ``name``'s share of the time budget (see :meth:`hpo.pipeline.Pipeline.search_budget`)."""
    total = pipe.plan.pipeline.time_budget
    if total is None:
        return None
    names = [s.name for s in pipe.plan.stages]
    i = names.index(name)
    stage, before, after = pipe.plan.stages[i], pipe.plan.stages[:i], pipe.plan.stages[i + 1 :]
    done = [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and t.datetime_start is not None
        and t.datetime_complete is not None
    ]
    seconds = budget.busy(done)
    if not done or not seconds:
        return None
    rows = pipe.ctx.data().train_rows
    seeds = int(getattr(stage.settings, "seeds", 1))
    trained = sum(len(t.user_attrs.get(records.HISTORY, [])) for t in done) * seeds * rows
    if trained == 0:
        return None
    spent = sum(budget.busy(_trials(pipe, s)) or 0.0 for s in before)
    later = sum(s.planned(pipe.plan.base(s.name), rows).samples for s in after)
    keep = later * seconds / trained * budget.RESERVE_FACTOR
    return budget.TimeLimit(
        total - spent - keep,
        f"time_budget = {total:g} s: {spent:.0f} s spent before it, "
        f"{keep:.{0 if keep >= 10 else 1}f} s kept for {', '.join(names[i + 1 :]) or 'nothing after it'}",
    )


def trial_seconds(pipe: Pipeline, stage: Stage) -> float | None:
    """Seconds from ``stage``'s first trial's start to its last one's end."""
    study = pipe.ctx.find_study(pipe.ctx.study_name(stage.name))
    if study is None:
        return None
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.datetime_start and t.datetime_complete
    ]
    if not trials:
        return None
    start = min(t.datetime_start for t in trials if t.datetime_start)
    end = max(t.datetime_complete for t in trials if t.datetime_complete)
    return (end - start).total_seconds()
