"""Time limits on searches: a search stage's ``timeout`` and the pipeline's ``time_budget``.

A search is the elastic part of a pipeline: its trials are suggestions, and fewer of them still
select something. So both limits act there, as Optuna's ``optimize(timeout=)`` does, but on
hpo's ask/tell batches and shared by every worker: a :class:`TimeLimit` counts the time the
search's stored trials have been running (the union of their intervals, gaps of up to a minute
bridged; the same for every worker; a search stopped overnight is not charged for the night),
and the runner asks no further batch when that plus the longest finished trial (a batch's trials
train together) would pass it; trials already running finish and are told. The first batch always runs, so a
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

#: A gap longer than this with no trial running is a pause (the pipeline was stopped), not
#: charged; shorter ones (claiming, telling, a worker starting) are.
PAUSE_SECONDS = 60.0

_DONE = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class TimeLimit:
    """Ask no batch that would take the search's running time (:func:`busy`) past ``seconds``."""

    seconds: float
    why: str  # "timeout = 60 s", "time_budget = 600 s: ..."


@dataclass(frozen=True)
class Clock:
    """Where a search stands against its limit (from its stored trials)."""

    elapsed: float  # seconds some trial of it was running (:func:`busy`)
    batch: float  # the longest finished trial: what the next batch is expected to take
    finished: int
    running: int

    def passes(self, limit: TimeLimit) -> bool:
        """Whether the next batch would end past ``limit`` (never before a first trial finished,
        unless the limit has passed while others run the first batch)."""
        if self.finished == 0:
            return self.running > 0 and self.elapsed >= limit.seconds
        return self.elapsed + self.batch > limit.seconds


def busy(trials: Sequence[FrozenTrial], now: dt.datetime | None = None) -> float | None:
    """Seconds in which ``trials`` were running: the union of their intervals (a running one's
    to now), gaps of up to :data:`PAUSE_SECONDS` between them counted too (claiming and telling
    between batches); None before any started."""
    now = now or dt.datetime.now()  # Optuna stores naive local times
    intervals = sorted(
        (t.datetime_start, t.datetime_complete or now) for t in trials if t.datetime_start is not None
    )
    if not intervals:
        return None
    total = 0.0
    start, end = intervals[0]
    for a, b in intervals[1:]:
        if (a - end).total_seconds() > PAUSE_SECONDS:
            total += (end - start).total_seconds()
            start, end = a, b
        else:
            end = max(end, b)
    return total + max(0.0, (end - start).total_seconds())


def clock(trials: Sequence[FrozenTrial], now: dt.datetime | None = None) -> Clock | None:
    """The search's clock; None before any of its trials started."""
    now = now or dt.datetime.now()
    elapsed = busy(trials, now)
    if elapsed is None:
        return None
    spans = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.state in _DONE and t.datetime_start is not None and t.datetime_complete is not None
    ]
    return Clock(
        elapsed=elapsed,
        batch=max(spans, default=0.0),
        finished=len(spans),
        running=sum(t.state == TrialState.RUNNING for t in trials),
    )


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
