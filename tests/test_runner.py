"""The grid runner on its own: claims, batches, duplicates, heartbeats, storage errors. No pipeline,
no torch: studies, a storage, and objectives made of plain functions. Against SQLite and the
local PostgreSQL (``HPO_REQUIRE_POSTGRES=1`` turns a missing server into a failure)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from hpo.errors import StorageError
from hpo.tuning import records, runner
from hpo.tuning.storage import ResilientRDBStorage, open_storage, outages_of

POINTS: list[runner.Point] = [{"x": v} for v in (1, 2, 3, 4, 5)]
DISTS: dict[str, BaseDistribution] = {"x": CategoricalDistribution([1, 2, 3, 4, 5])}


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'r.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("HPO_GRACE_PERIOD", "2")


def _study(storage: optuna.storages.BaseStorage, name: str = "s") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)


def _objective(log: list[list[runner.Point]]) -> runner.BatchObjective:
    def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
        log.append([c.point for c in claims])
        return [float(c.point["x"]) * 10 for c in claims]  # type: ignore[arg-type]

    return objective


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_every_point_runs_once_in_batches(url: str, batch: int) -> None:
    storage = open_storage(url)
    study = _study(storage)
    log: list[list[runner.Point]] = []
    runner.run(
        study,
        storage,
        work=runner.Grid(POINTS),
        distributions=DISTS,
        objective=_objective(log),
        batch_size=batch,
    )
    assert [len(b) for b in log] == [min(batch, 5 - i * batch) for i in range(len(log))]
    assert sorted(p["x"] for b in log for p in b) == [1, 2, 3, 4, 5]  # type: ignore[type-var]
    trials = study.get_trials()
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.params["x"]: t.value for t in trials} == {1: 10.0, 2: 20.0, 3: 30.0, 4: 40.0, 5: 50.0}
    assert all(records.POINT in t.user_attrs and records.WORKER in t.user_attrs for t in trials)
    log.clear()
    runner.run(study, storage, work=runner.Grid(POINTS), distributions=DISTS, objective=_objective(log))
    assert log == [] and len(study.get_trials()) == 5  # done: nothing runs again


def test_a_point_another_worker_holds_is_left_to_it(tmp_path: Path) -> None:
    """Another worker's trial is RUNNING (its point known from the attribute set when it was
    queued) before its objective has even looked at its params: that point counts as taken."""
    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}")
    study = _study(storage)
    study.enqueue_trial({"x": 1}, user_attrs={records.POINT: records.point_key({"x": 1})})
    foreign = study.ask()  # claimed by "another worker", params not suggested yet
    assert foreign.params == {}

    def finish_foreign() -> None:
        time.sleep(1.5)
        foreign.suggest_categorical("x", [1, 2, 3])
        study.tell(foreign, 0.5)

    finisher = threading.Thread(target=finish_foreign)
    finisher.start()
    log: list[list[runner.Point]] = []
    three: list[runner.Point] = [{"x": v} for v in (1, 2, 3)]
    runner.run(
        study,
        storage,
        work=runner.Grid(three),
        distributions={"x": CategoricalDistribution([1, 2, 3])},
        objective=_objective(log),
        poll_seconds=0.2,
    )
    finisher.join()
    assert sorted(p["x"] for b in log for p in b) == [2, 3]  # type: ignore[type-var]
    assert len(study.trials) == 3 and all(t.state == TrialState.COMPLETE for t in study.trials)


def test_queued_duplicates_and_lost_claims_step_aside(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'd.db'}")
    study = _study(storage)
    key1, key2 = records.point_key({"x": 1}), records.point_key({"x": 2})
    # point 1 finished; point 2 runs (its owner)
    study.enqueue_trial({"x": 1}, user_attrs={records.POINT: key1})
    study.tell(study.ask(fixed_distributions=DISTS), 10.0)
    study.enqueue_trial({"x": 2}, user_attrs={records.POINT: key2})
    owner = study.ask(fixed_distributions=DISTS)
    # a stale retry of point 1 is still queued (e.g. a lost claim lock queued it twice)
    study.enqueue_trial({"x": 1}, user_attrs={records.POINT: key1})
    r = runner._Runner(study, storage, runner.Grid(POINTS), DISTS, _objective([]), runner._fixed(5))
    claims = r.claim()
    assert claims is not None
    queued = [c for c in claims if c.point == {"x": 1}]
    assert queued == []  # the queued duplicate of a finished point was retired, not run
    study.enqueue_trial({"x": 2}, user_attrs={records.POINT: key2})
    twin = study.ask(fixed_distributions=DISTS)
    kept = r.keep_owned([runner.Claim(twin, {"x": 2})])
    assert kept == []
    frozen = storage.get_trial(twin._trial_id)
    assert frozen.state == TrialState.FAIL and frozen.user_attrs[records.DUPLICATE_OF] == owner.number
    dups = [t for t in study.get_trials() if records.DUPLICATE_OF in t.user_attrs]
    assert len(dups) == 2


def test_pruned_failed_and_interrupted_trials(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'p.db'}")
    study = _study(storage)

    def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
        return [runner.Pruned() if c.point["x"] == 2 else 1.0 for c in claims]

    runner.run(
        study, storage, work=runner.Grid(POINTS[:3]), distributions=DISTS, objective=objective, batch_size=3
    )
    states = {t.params["x"]: t.state for t in study.get_trials()}
    assert states == {1: TrialState.COMPLETE, 2: TrialState.PRUNED, 3: TrialState.COMPLETE}

    broken = _study(storage, "broken")

    def failing(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
        raise RuntimeError("CUDA out of memory")

    for _ in range(runner.MAX_FAILURES_PER_POINT):
        with pytest.raises(RuntimeError):
            runner.run(broken, storage, work=runner.Grid(POINTS[:1]), distributions=DISTS, objective=failing)
    with pytest.raises(runner.PointFailed, match=r"failed 3 times \(last, trial 2: CUDA out of memory\)"):
        runner.run(broken, storage, work=runner.Grid(POINTS[:1]), distributions=DISTS, objective=failing)
    assert [t.user_attrs[records.ERROR] for t in broken.trials] == ["CUDA out of memory"] * 3

    stopped = _study(storage, "stopped")

    def interrupted(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(
            stopped,
            storage,
            work=runner.Grid(POINTS[:2]),
            distributions=DISTS,
            objective=interrupted,
            batch_size=2,
        )
    assert [t.state for t in stopped.trials] == [TrialState.FAIL] * 2
    assert all(t.user_attrs[records.INTERRUPTED] for t in stopped.trials)
    # interruptions are not held against a point: it runs again
    runner.run(stopped, storage, work=runner.Grid(POINTS[:2]), distributions=DISTS, objective=_objective([]))
    assert sorted(t.state.name for t in stopped.trials) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]


@pytest.mark.slow
def test_a_batch_beats_while_it_trains(url: str, fast_heartbeats: None) -> None:
    """A batch that trains for longer than the grace period is not failed as stale by a second
    worker: its thread records the batch's heartbeats (ask/tell gets none from Optuna)."""
    storage = open_storage(url)
    other = open_storage(url)
    study = _study(storage)
    checks: list[int] = []

    def slow(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
        for _ in range(5):
            time.sleep(1)
            optuna.storages.fail_stale_trials(optuna.load_study(study_name="s", storage=other))
            checks.append(len(claims))
        return [1.0 for _ in claims]

    with runner._quiet_optuna():
        runner.run(
            study, storage, work=runner.Grid(POINTS[:2]), distributions=DISTS, objective=slow, batch_size=2
        )
    assert checks == [2] * 5
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2


def test_a_dead_workers_trial_is_failed_requeued_and_rerun(url: str, fast_heartbeats: None) -> None:
    storage = open_storage(url)
    study = _study(storage)
    # a worker claimed point 3, beat once, and died
    r = runner._Runner(study, storage, runner.Grid([{"x": 3}]), DISTS, _objective([]), runner._fixed(1))
    with runner._quiet_optuna():
        (dead,) = r.claim() or []
    time.sleep(3)
    log: list[list[runner.Point]] = []
    runner.run(
        study, storage, work=runner.Grid(POINTS), distributions=DISTS, objective=_objective(log), batch_size=5
    )
    trials = study.get_trials()
    failed = storage.get_trial(dead.trial._trial_id)
    assert failed.state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == dead.trial.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE and retried[0].params == {"x": 3}
    assert sorted(t.params["x"] for t in trials if t.state == TrialState.COMPLETE) == [1, 2, 3, 4, 5]


@pytest.mark.postgres
def test_three_workers_share_a_grid(postgres_url: str) -> None:
    """Three workers (threads with their own connections) on one PostgreSQL study, claiming under
    the advisory lock: every point runs once."""
    errors: list[BaseException] = []
    ran: list[runner.Point] = []
    lock = threading.Lock()
    many: list[runner.Point] = [{"x": v} for v in range(12)]
    dists: dict[str, BaseDistribution] = {"x": CategoricalDistribution(list(range(12)))}

    def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
        time.sleep(0.05)
        with lock:
            ran.extend(c.point for c in claims)
        return [1.0 for _ in claims]

    def work() -> None:
        try:
            storage = open_storage(postgres_url)
            study = _study(storage)
            runner.run(
                study, storage, work=runner.Grid(many), distributions=dists, objective=objective, batch_size=2
            )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p["x"] for p in ran) == list(range(12))  # type: ignore[type-var]
    study = optuna.load_study(study_name="s", storage=postgres_url)
    assert len(study.trials) == 12


def test_budget_runs_sampler_trials(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'b.db'}")
    study = optuna.create_study(
        storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1)
    )
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}
    seen: list[int] = []

    def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
        seen.append(len(claims))
        return [float(c.point["lr"]) for c in claims]  # type: ignore[arg-type]

    runner.run(study, storage, work=runner.Budget(7), distributions=dists, objective=objective, batch_size=3)
    assert seen == [3, 3, 1]
    trials = study.get_trials()
    assert len(trials) == 7 and all(
        t.state == TrialState.COMPLETE and 1e-4 <= t.params["lr"] <= 0.1 for t in trials
    )
    assert len({t.params["lr"] for t in trials}) == 7


@pytest.mark.slow
def test_storage_calls_wait_out_an_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Calls that fail because the database is unreachable are retried (one warning per
    outage); past the limit, one StorageError line."""
    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}")
    study = _study(storage)
    real = optuna.storages.RDBStorage.set_trial_state_values
    failures = {"left": 3}

    def flaky(self: ResilientRDBStorage, *args: object, **kwargs: object) -> bool:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise optuna.exceptions.StorageInternalError(
                "commit failed"
            ) from sqlalchemy.exc.OperationalError(
                "SELECT 1", {}, Exception("server closed the connection unexpectedly")
            )
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", flaky)
    with caplog.at_level(logging.WARNING, logger="hpo.tuning.storage"):
        runner.run(
            study, storage, work=runner.Grid(POINTS[:2]), distributions=DISTS, objective=_objective([])
        )
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in w for w in warnings) == 1 and any("reachable again" in w for w in warnings)
    outages = outages_of(storage)
    assert outages is not None and outages.count == 1

    outages.limit = 0.5
    failures["left"] = 100
    with pytest.raises(StorageError, match=r"unreachable for \d+ s .*HPO_STORAGE_OUTAGE_LIMIT"):
        runner.run(
            study, storage, work=runner.Grid(POINTS[:3]), distributions=DISTS, objective=_objective([])
        )


def test_a_tell_that_landed_before_its_error_is_not_repeated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna's tell can fail after the state was written (a lost reply); the runner re-reads
    the trial instead of telling twice or giving up."""
    storage = open_storage(f"sqlite:///{tmp_path / 't.db'}")
    study = _study(storage)
    real = optuna.study.Study.tell
    calls = {"n": 0}

    def tell_then_fail(self: optuna.Study, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        out = real(self, *args, **kwargs)  # type: ignore[arg-type]
        if calls["n"] == 1:
            raise UnboundLocalError("cannot access local variable 'frozen_trial'")
        return out

    monkeypatch.setattr(optuna.study.Study, "tell", tell_then_fail)
    runner.run(study, storage, work=runner.Grid(POINTS[:2]), distributions=DISTS, objective=_objective([]))
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2 and calls["n"] == 2


def _failing_heartbeats(
    monkeypatch: pytest.MonkeyPatch, storage: optuna.storages.BaseStorage, thread: str
) -> None:
    """``storage``'s heartbeats fail in the thread named ``thread`` (a database error that is not
    an outage: it does not heal), and work elsewhere."""
    record = storage.record_heartbeat  # type: ignore[attr-defined]

    def beat(trial_id: int) -> None:
        if threading.current_thread().name == thread:
            raise sqlalchemy.exc.OperationalError("UPDATE trial_heartbeats", {}, Exception("disk I/O error"))
        record(trial_id)

    monkeypatch.setattr(storage, "record_heartbeat", beat)


def test_a_batch_whose_heartbeat_stops_says_so_once(
    tmp_path: Path, fast_heartbeats: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'r.db'}")
    study = _study(storage)
    _failing_heartbeats(monkeypatch, storage, "hpo-heartbeat")

    def slow(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
        time.sleep(2.5)  # the thread beats at 1 s (and fails), and would at 2 s
        return [1.0 for _ in claims]

    with caplog.at_level(logging.WARNING, logger="hpo"), runner._quiet_optuna():
        runner.run(
            study, storage, work=runner.Grid(POINTS[:2]), distributions=DISTS, objective=slow, batch_size=2
        )
    warnings = [r.getMessage() for r in caplog.records if "heartbeat" in r.getMessage()]
    assert warnings == [
        "the heartbeat of s's trial(s) [0, 1] stopped (OperationalError: (builtins.Exception) disk I/O "
        "error); other workers will count them stale after the grace period (2 s) without one and run "
        "their points again, whatever this worker's training reports"
    ], warnings


def test_a_worker_whose_heartbeat_stops_says_so_once(
    tmp_path: Path, fast_heartbeats: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from hpo.tuning.workers import Registry

    storage = open_storage(f"sqlite:///{tmp_path / 'r.db'}")
    _failing_heartbeats(monkeypatch, storage, "hpo-worker-heartbeat")
    with caplog.at_level(logging.WARNING, logger="hpo"), Registry(storage, "p"):
        time.sleep(2.5)
    warnings = [r for r in caplog.records if "heartbeat" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert message.startswith(
        f"the heartbeat of worker {runner.WORKER_ID} in the registry p.workers stopped (OperationalError: "
    ), message
    assert message.endswith(
        "other workers will count this worker dead after the grace period (2 s) without one and split the "
        "points left among themselves"
    ), message
