"""Time limits on searches: a search stage's ``timeout`` and the pipeline's ``time_budget``.

A search is the elastic part of a pipeline: its trials are suggestions, and fewer of them still
select something. So both limits act there, as Optuna's ``optimize(timeout=)`` does, but on
hpo's ask/tell batches and shared by every worker: a :class:`TimeLimit` is counted from the
search's first trial's start (stored, the same for every worker), and the runner asks no further
batch when the time since then plus the longest finished trial (a batch's trials train together)
would pass it; trials already running finish and are told. The first batch always runs, so a
search always selects. Grid stages (every point is needed to select) and the final stage are not
cut: a pipeline's budget keeps the estimated time of the stages after a search (their planned
model-samples at the rate measured so far, with :data:`RESERVE_FACTOR` to spare), so the pipeline
still ends with a tested model, and where fixed stages overrun it the status shows it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

#: A budget keeps this multiple of the later stages' estimated time: the estimate is a rate
#: measured on stacked batches, and a final stage trains fewer models at once (a slower rate).
RESERVE_FACTOR = 1.5

_DONE = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class TimeLimit:
    """Ask no batch that would end more than ``seconds`` after the search's first trial started."""

    seconds: float
    why: str  # "timeout = 60 s", "time_budget = 600 s: ..."


@dataclass(frozen=True)
class Clock:
    """Where a search stands against its limit (from its stored trials)."""

    elapsed: float  # seconds since its first trial started
    batch: float  # the longest finished trial: what the next batch is expected to take
    finished: int
    running: int

    def passes(self, limit: TimeLimit) -> bool:
        """Whether the next batch would end past ``limit`` (never before a first trial finished,
        unless the limit has passed while others run the first batch)."""
        if self.finished == 0:
            return self.running > 0 and self.elapsed >= limit.seconds
        return self.elapsed + self.batch > limit.seconds


def clock(trials: Sequence[FrozenTrial], now: dt.datetime | None = None) -> Clock | None:
    """The search's clock; None before any of its trials started."""
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    if not starts:
        return None
    now = now or dt.datetime.now()  # Optuna stores naive local times
    spans = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.state in _DONE and t.datetime_start is not None and t.datetime_complete is not None
    ]
    return Clock(
        elapsed=(now - min(starts)).total_seconds(),
        batch=max(spans, default=0.0),
        finished=len(spans),
        running=sum(t.state == TrialState.RUNNING for t in trials),
    )


def span(trials: Sequence[FrozenTrial], now: dt.datetime | None = None) -> float | None:
    """Seconds from a stage's first trial's start to its last one's end (to now while some run)."""
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    if not starts:
        return None
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    if any(t.state == TrialState.RUNNING for t in trials) or not ends:
        ends.append(now or dt.datetime.now())
    return max(0.0, (max(ends) - min(starts)).total_seconds())


def tightest(*limits: TimeLimit | None) -> TimeLimit | None:
    given = [x for x in limits if x is not None]
    return min(given, key=lambda x: x.seconds) if given else None


def describe(seconds: float) -> str:
    """``90 s``, ``12 min 5 s``, ``1 h 30 min``."""
    s = round(seconds)
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
