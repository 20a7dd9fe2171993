"""Run a study's trials to completion with any number of workers: claim, heartbeat, train, tell.

Knows Optuna and SQLAlchemy, not torch or the data layer. A stage hands it the work (a fixed
:class:`Grid` of points, or a :class:`Budget` of sampler-suggested trials), the parameters'
distributions and a batch objective; the runner loops, in every worker:

1. **Claim** up to ``batch_size`` trials under the study's claim lock: first fail the trials of
   dead workers (Optuna's ``fail_stale_trials``; its retry callback queues them again as
   WAITING trials), then take queued trials, then queue (``enqueue_trial``) the grid points that
   no trial holds. Each trial's heartbeat is recorded *before* it is popped into RUNNING, so a
   worker that dies at any moment leaves trials that go stale, never ones that stay RUNNING.
   The point a trial holds is a user attribute set when it is queued, known to every worker.
2. **Check ownership**: the claim lock can be lost with its connection; a trial whose point
   another live or finished trial already holds steps aside (FAIL, ``hpo:duplicate_of``).
3. **Run** the batch objective while a thread records the batch's heartbeats (Optuna records
   them only inside ``study.optimize``; ask/tell batches must do it themselves).
4. **Tell** each trial COMPLETE with its value or PRUNED. A failed tell re-reads the trial's
   state before trying again (Optuna's tell can surface a storage error as another exception).

A worker with nothing to claim while others' trials run waits and polls (failing stale trials,
so a dead worker's points come back). Optuna's GridSampler is not used: it counts a failed
point as visited and repeats running points under concurrency; here completion is planned.
Storage outages are ridden out by the storage itself (:mod:`hpo.tuning.storage`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError, StorageError, first_line
from hpo.tuning import budget, records, stopping
from hpo.tuning.heartbeat import Heartbeat, heartbeat_interval
from hpo.tuning.locks import claim_lock
from hpo.tuning.storage import outages_of

logger = logging.getLogger(__name__)

ParamValue = str | int | float | bool | None
Point = dict[str, ParamValue]
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILURES_PER_POINT = 3
POLL_SECONDS = 1.0
#: After an outage, other workers need a moment to beat again before their trials may be judged stale.
STALE_HOLDOFF_SECONDS = 15.0
WORKER_ID = uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Claim:
    """A trial this worker runs, and its parameters."""

    trial: optuna.Trial
    point: Point


@dataclass(frozen=True)
class Pruned:
    """The outcome of a trial its objective stopped because the pruner said so."""


Outcome = float | Pruned
BatchObjective = Callable[[Sequence[Claim]], Sequence[Outcome]]


@dataclass(frozen=True)
class Grid:
    """Run every point once (a COMPLETE or PRUNED trial per point)."""

    points: Sequence[Point]


@dataclass(frozen=True)
class Budget:
    """Run ``n_trials`` trials suggested by the study's sampler; ``limit`` (given the study's
    trials): ask no batch past it (:mod:`hpo.tuning.budget`), and call the search done."""

    n_trials: int
    limit: Callable[[Sequence[FrozenTrial]], budget.TimeLimit | None] | None = None


class PointFailed(HpoError):
    """A grid point failed by error too often to try again."""


def run(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    *,
    work: Grid | Budget,
    distributions: Mapping[str, BaseDistribution],
    objective: BatchObjective,
    batch_size: int | Callable[[int], int] = 1,
    poll_seconds: float = POLL_SECONDS,
    on_wait: Callable[[int], None] | None = None,
    deadline: stopping.Deadline | None = None,
    before_claim: Callable[[], None] | None = None,
) -> None:
    """Work on ``study`` until ``work`` is done (by this worker or others). ``batch_size``: the
    most trials a claim takes, or a function of how many are left unclaimed (to split a stage
    among live workers). ``deadline``: claim no batch that would not finish before it
    (:class:`~hpo.tuning.stopping.OutOfTime`). SIGTERM stops the loop at the next safe point.
    ``before_claim``: called before each claim (the CLI shares the host's cores among workers)."""
    size = batch_size if callable(batch_size) else _fixed(batch_size)
    runner = _Runner(study, storage, work, dict(distributions), objective, size, deadline)
    waited = False
    with _quiet_optuna():
        while True:
            stopping.check()
            if before_claim is not None:
                before_claim()
            claims = runner.claim()
            if claims is None:
                return
            if not claims:
                running = runner.count(TrialState.RUNNING)
                if on_wait is not None:
                    on_wait(running)
                elif not waited:
                    logger.info(
                        "waiting for stage %s: %d trial(s) running elsewhere",
                        study.study_name,
                        running,
                    )
                waited = True
                with stopping.interruptible():
                    time.sleep(poll_seconds)
                continue
            waited = False
            claims = runner.keep_owned(claims)
            if claims:
                runner.execute(claims)


def _fixed(n: int) -> Callable[[int], int]:
    if n < 1:
        raise ValueError(f"batch_size must be at least 1, got {n}")
    return lambda unclaimed: n


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for Study.optimize and that fail_stale_trials
        # is experimental; this runner records the heartbeats of its ask/tell trials itself.
        warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        yield


def _key(t: FrozenTrial) -> str | None:
    value = t.user_attrs.get(records.POINT)
    return str(value) if value is not None else None


class _Runner:
    def __init__(
        self,
        study: optuna.Study,
        storage: optuna.storages.BaseStorage,
        work: Grid | Budget,
        distributions: dict[str, BaseDistribution],
        objective: BatchObjective,
        batch_size: Callable[[int], int],
        deadline: stopping.Deadline | None = None,
    ) -> None:
        self.study = study
        self.deadline = deadline
        self.storage = storage
        self.work = work
        self.distributions = distributions
        self.objective = objective
        self.batch_size = batch_size
        self.name = study.study_name
        self.heartbeats = heartbeat_interval(storage)

    def count(self, state: TrialState) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(state,)))

    # ------------------------------------------------------------------ claiming

    def claim(self) -> list[Claim] | None:
        """Claimed trials; ``[]`` when others' trials must finish first; None when all is done."""
        with claim_lock(self.storage, self.name):
            self._fail_stale()
            trials = self.study.get_trials(deepcopy=False)
            if isinstance(self.work, Budget) and self._out_of_time(trials, self.work):
                return self._stop_asking(trials, self.work)
            self._check_time(trials)
            if isinstance(self.work, Grid):
                return self._claim_points(trials, self.work.points)
            return self._claim_budget(trials, self.work.n_trials)

    def _out_of_time(self, trials: list[FrozenTrial], work: Budget) -> bool:
        if work.limit is None or sum(t.state in DONE for t in trials) >= work.n_trials:
            return False
        limit = work.limit(trials)
        now = budget.clock(trials)
        return limit is not None and now is not None and now.passes(limit)

    def _stop_asking(self, trials: list[FrozenTrial], work: Budget) -> list[Claim] | None:
        """The time limit is reached: wait for running trials, then call the search done and
        record why (once, by the worker that finds nothing left running)."""
        if any(t.state == TrialState.RUNNING for t in trials):
            return []
        self._retire_waiting(trials)
        if records.STOPPED_ASKING not in self.study.user_attrs:
            limit = work.limit(trials) if work.limit is not None else None
            now = budget.clock(trials)
            assert limit is not None and now is not None
            finished = sum(t.state in DONE for t in trials)
            self.study.set_user_attr(
                records.STOPPED_ASKING,
                {
                    "why": limit.why,
                    "limit_seconds": round(limit.seconds, 1),
                    "elapsed_seconds": round(now.elapsed, 1),
                    "next_batch_seconds": round(now.batch, 1),
                    "trials": finished,
                    "n_trials": work.n_trials,
                },
            )
            logger.info(
                "%s: stopped asking after %d of %d trials (%s): %.0f s so far, a batch takes about %.0f s",
                self.name,
                finished,
                work.n_trials,
                limit.why,
                now.elapsed,
                now.batch,
            )
        return None

    def _check_time(self, trials: list[FrozenTrial]) -> None:
        """Raise OutOfTime when work is left and the next batch would not end before the deadline
        (estimated by the longest finished trial of this stage: a batch's trials run together)."""
        if self.deadline is None:
            return
        done = [t for t in trials if t.state in DONE]
        if isinstance(self.work, Grid):
            keys = {records.point_key(p) for p in self.work.points}
            if keys <= {_key(t) for t in done}:
                return
        elif len(done) >= self.work.n_trials:
            return
        seconds = [
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in done
            if t.datetime_start is not None and t.datetime_complete is not None
        ]
        estimate = max(seconds) if seconds else None
        if not self.deadline.fits(estimate):
            raise stopping.OutOfTime(
                f"stage {self.name}: its next batch (about {estimate:.0f} s) would not finish before "
                f"{self.deadline.describe()}, {max(0.0, self.deadline.left()):.0f} s from now; nothing "
                "claimed, nothing lost: start a worker again (a new job) to go on"
            )

    def _fail_stale(self) -> None:
        if self.heartbeats is None:
            return
        outages = outages_of(self.storage)
        if outages is not None and outages.recovered_within(STALE_HOLDOFF_SECONDS):
            return  # live workers have not had the chance to beat since the database came back
        optuna.storages.fail_stale_trials(self.study)

    def _claim_points(self, trials: list[FrozenTrial], points: Sequence[Point]) -> list[Claim] | None:
        keys = [records.point_key(p) for p in points]
        done = {_key(t) for t in trials if t.state in DONE}
        if all(k in done for k in keys):
            self._retire_waiting(trials)
            return None
        running = {_key(t) for t in trials if t.state == TrialState.RUNNING}
        unclaimed = sum(k not in done and k not in running for k in keys)
        limit = max(1, self.batch_size(unclaimed))
        claims: list[Claim] = []
        queued: set[str | None] = set()
        # Queued trials pop in number order, so they are taken (or retired) in that order.
        for t in sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number):
            if len(claims) >= limit:
                break
            key = _key(t)
            if key in done or key in running or key in queued:
                self._pop_as_duplicate(t)
            else:
                claims.append(self._pop(t))
                queued.add(key)
        queued |= {_key(t) for t in trials if t.state == TrialState.WAITING}
        for point, key in zip(points, keys, strict=True):
            if len(claims) >= limit:
                break
            if key in done or key in running or key in queued:
                continue
            self._raise_if_failing(trials, point, key)
            self.study.enqueue_trial(dict(point), user_attrs={records.POINT: key, records.WORKER: WORKER_ID})
            waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            mine = max((t for t in waiting if _key(t) == key), key=lambda t: t.number)
            claims.append(self._pop(mine))
            queued.add(key)
        return claims

    def _claim_budget(self, trials: list[FrozenTrial], n_trials: int) -> list[Claim] | None:
        done = sum(t.state in DONE for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number)
        if done >= n_trials:
            self._retire_waiting(trials)
            return None
        room = min(max(1, self.batch_size(n_trials - done - running)), n_trials - done - running)
        claims: list[Claim] = []
        for t in waiting[:room]:
            claims.append(self._pop(t))
        while len(claims) < room:
            self.study.enqueue_trial({}, user_attrs={records.WORKER: WORKER_ID})
            queued = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            claims.append(self._pop(max(queued, key=lambda t: t.number)))
        return claims

    def _pop(self, waiting: FrozenTrial) -> Claim:
        """Record the trial's heartbeat, then pop it into RUNNING with its parameters set."""
        if self.heartbeats is not None:
            self.storage.record_heartbeat(waiting._trial_id)  # type: ignore[attr-defined]
        trial = self.study.ask(fixed_distributions=self.distributions)
        if trial._trial_id != waiting._trial_id:  # someone outside hpo queued a trial: run it too
            logger.warning("%s: popped trial %d, expected %d", self.name, trial.number, waiting.number)
            if self.heartbeats is not None:
                self.storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
        if records.WORKER not in waiting.user_attrs or waiting.user_attrs[records.WORKER] != WORKER_ID:
            trial.set_user_attr(records.WORKER, WORKER_ID)
        point: Point = {name: trial.params[name] for name in self.distributions}
        return Claim(trial, point)

    def _pop_as_duplicate(self, waiting: FrozenTrial) -> None:
        """A queued trial for a point that is taken (queued twice when a claim lock was lost)."""
        trial = self.study.ask()
        owner = _owner(self.study.get_trials(deepcopy=False), _key(waiting))
        trial.set_user_attr(records.DUPLICATE_OF, owner if owner is not None else -1)
        self._tell_fail(trial)
        logger.info("%s: trial %d duplicated a taken point; failed it", self.name, trial.number)

    def _retire_waiting(self, trials: list[FrozenTrial]) -> None:
        """Nothing is left to run: queued trials (retries of points finished since) step aside."""
        for t in sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number):
            self._pop_as_duplicate(t)

    def _raise_if_failing(self, trials: list[FrozenTrial], point: Point, key: str) -> None:
        """Stop a point that failed by error MAX_FAILURES_PER_POINT times (interruptions, dead
        workers, storage errors and stepped-aside duplicates are not held against it)."""
        failures = [
            t
            for t in trials
            if t.state == TrialState.FAIL and _key(t) == key and records.ERROR in t.user_attrs
        ]
        if len(failures) >= MAX_FAILURES_PER_POINT:
            last = failures[-1]
            raise PointFailed(
                f"study {self.name}: point {key} failed {len(failures)} times (last, trial {last.number}: "
                f"{last.user_attrs[records.ERROR]}); fix the cause, then re-run the stage with --force"
            )

    def keep_owned(self, claims: list[Claim]) -> list[Claim]:
        """Step aside from a point another trial holds (possible only if the lock was lost)."""
        if not isinstance(self.work, Grid):
            return claims
        trials = self.study.get_trials(deepcopy=False)
        kept = []
        for claim in claims:
            owner = _owner(trials, records.point_key(claim.point))
            if owner is None or owner == claim.trial.number:
                kept.append(claim)
                continue
            claim.trial.set_user_attr(records.DUPLICATE_OF, owner)
            self._tell_fail(claim.trial)
            logger.warning(
                "%s: trial %d duplicates trial %d; stepped aside", self.name, claim.trial.number, owner
            )
        return kept

    # ------------------------------------------------------------------ running

    def execute(self, claims: list[Claim]) -> None:
        numbers = [c.trial.number for c in claims]
        logger.info("%s: trial(s) %s: %s", self.name, numbers, [c.point for c in claims])
        whose = f"{self.name}'s trial(s) {numbers}"
        with Heartbeat(self.storage, [c.trial._trial_id for c in claims], self.heartbeats, whose):
            try:
                with stopping.interruptible():
                    outcomes = list(self.objective(claims))
            except StorageError:
                raise  # the database stayed away; its trials go stale and are run again
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (stopping.Terminated)
                for c in claims:
                    c.trial.set_user_attr(
                        records.INTERRUPTED, "SIGTERM" if isinstance(exc, stopping.Terminated) else True
                    )
                    self._tell_fail(c.trial)
                if isinstance(exc, stopping.Terminated):
                    logger.warning("%s: released trial(s) %s (SIGTERM)", self.name, numbers)
                raise
            except Exception as exc:
                message = first_line(exc)
                for c in claims:
                    c.trial.set_user_attr(records.ERROR, message)
                    self._tell_fail(c.trial)
                raise
            if len(outcomes) != len(claims):
                raise RuntimeError(f"objective returned {len(outcomes)} outcomes for {len(claims)} trials")
            for claim, outcome in zip(claims, outcomes, strict=True):
                if isinstance(outcome, Pruned):
                    self._tell(claim.trial, state=TrialState.PRUNED)
                else:
                    self._tell(claim.trial, value=float(outcome))

    def _tell_fail(self, trial: optuna.Trial) -> None:
        self._tell(trial, state=TrialState.FAIL)

    def _tell(
        self, trial: optuna.Trial, *, value: float | None = None, state: TrialState | None = None
    ) -> None:
        """Tell, and on an error see whether the trial was finished after all before retrying."""
        for attempt in range(1, 4):
            try:
                self.study.tell(trial, value, state=state)
                return
            except Exception as exc:
                current = self.storage.get_trial(trial._trial_id).state
                if current.is_finished():
                    if current != (state or TrialState.COMPLETE):
                        logger.warning(
                            "%s: trial %d was marked %s by another worker while this one finished it "
                            "(its heartbeat lapsed); its point runs again",
                            self.name,
                            trial.number,
                            current.name,
                        )
                    return
                if attempt == 3:
                    raise
                logger.warning(
                    "%s: telling trial %d failed (%s); trying again",
                    self.name,
                    trial.number,
                    first_line(exc),
                )


def _owner(trials: Sequence[FrozenTrial], key: str | None) -> int | None:
    """The trial that holds a point: a finished one, else the lowest-numbered running one."""
    if key is None:
        return None
    same = [t for t in trials if _key(t) == key and records.DUPLICATE_OF not in t.user_attrs]
    done = [t.number for t in same if t.state in DONE]
    if done:
        return min(done)
    running = [t.number for t in same if t.state == TrialState.RUNNING]
    return min(running) if running else None
