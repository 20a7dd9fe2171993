"""Stopping early and the threads a process trains with: SIGTERM as a polite stop (raised only in
interruptible regions, remembered elsewhere), a deadline the runner does not claim past, the
``--stop-at`` / ``$HPO_STOP_AT`` / ``$SLURM_JOB_END_TIME`` order, and thread counts from the
affinity, the cgroup quota and the user's settings."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import optuna
import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState

from hpo import cli
from hpo.errors import ConfigError
from hpo.training import threads
from hpo.tuning import records, runner, stopping
from hpo.tuning.storage import open_storage

POINTS: list[runner.Point] = [{"x": v} for v in (1, 2, 3)]
DISTS: dict[str, BaseDistribution] = {"x": CategoricalDistribution([1, 2, 3])}


@pytest.fixture
def sigterm() -> Iterator[None]:
    """hpo's SIGTERM handler in this process for the test; the previous one back afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    stopping.reset()
    stopping.handle_sigterm()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        stopping.reset()


def _term() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # the handler runs in the main thread at the next bytecode


def test_sigterm_raises_only_inside_an_interruptible_region(sigterm: None) -> None:
    _term()  # outside: remembered, not raised
    with pytest.raises(stopping.Terminated):
        stopping.check()
    stopping.reset()
    with pytest.raises(stopping.Terminated), stopping.interruptible():
        _term()
        raise AssertionError("not reached: SIGTERM raises inside the region")
    stopping.reset()
    stopping.check()  # nothing pending


def test_sigterm_while_training_releases_the_batch(tmp_path: Path, sigterm: None) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")

    def trains_until_terminated(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
        _term()
        time.sleep(5)
        raise AssertionError("not reached")

    with pytest.raises(stopping.Terminated):
        runner.run(
            study, storage, work=runner.Grid(POINTS), distributions=DISTS, objective=trains_until_terminated,
            batch_size=2,
        )  # fmt: skip
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2  # released: nothing left RUNNING
    assert all(t.user_attrs[records.INTERRUPTED] == "SIGTERM" for t in trials)
    stopping.reset()
    done: list[runner.Point] = []

    def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
        done.extend(c.point for c in claims)
        return [1.0 for _ in claims]

    runner.run(study, storage, work=runner.Grid(POINTS), distributions=DISTS, objective=objective)
    assert sorted(p["x"] for p in done) == [1, 2, 3]  # type: ignore[type-var]  # each point once


def test_sigterm_outside_training_stops_at_the_next_claim(tmp_path: Path, sigterm: None) -> None:
    """A SIGTERM while a batch is told is not raised inside the tell: the batch is stored, and
    the runner stops before claiming the next one."""
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")

    def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
        return [float(c.point["x"]) for c in claims]  # type: ignore[arg-type]

    tell = study.tell

    def tell_during_sigterm(*args: object, **kwargs: object) -> object:
        _term()
        return tell(*args, **kwargs)  # type: ignore[arg-type]

    study.tell = tell_during_sigterm  # type: ignore[method-assign,assignment]
    with pytest.raises(stopping.Terminated):
        runner.run(study, storage, work=runner.Grid(POINTS), distributions=DISTS, objective=objective)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]


def _finished_trial(study: optuna.Study, seconds: float) -> None:
    """A COMPLETE trial of point 1 that took ``seconds`` (its duration is the runner's estimate)."""
    now = dt.datetime.now()
    study.add_trial(
        optuna.trial.FrozenTrial(
            number=0,
            trial_id=0,
            state=TrialState.COMPLETE,
            value=1.0,
            datetime_start=now - dt.timedelta(seconds=seconds),
            datetime_complete=now,
            params={"x": 1},
            distributions=DISTS,
            user_attrs={records.POINT: records.point_key({"x": 1})},
            system_attrs={},
            intermediate_values={},
        )
    )


def test_no_claim_past_the_deadline(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    _finished_trial(study, seconds=120.0)
    ran: list[runner.Point] = []

    def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
        ran.extend(c.point for c in claims)
        return [1.0 for _ in claims]

    soon = stopping.Deadline(time.time() + 100, "test")  # < 120 s + the margin
    with pytest.raises(stopping.OutOfTime, match=r"about 120 s\) would not finish before .* \(test\)"):
        runner.run(
            study, storage, work=runner.Grid(POINTS), distributions=DISTS, objective=objective, deadline=soon
        )
    assert ran == [] and len(study.get_trials()) == 1  # nothing claimed
    later = stopping.Deadline(time.time() + 120 + stopping.MARGIN_SECONDS + 60, "test")
    runner.run(
        study, storage, work=runner.Grid(POINTS), distributions=DISTS, objective=objective, deadline=later
    )
    assert sorted(p["x"] for p in ran) == [2, 3]  # type: ignore[type-var]
    # a finished stage needs no time: the deadline does not stop it
    runner.run(
        study, storage, work=runner.Grid(POINTS), distributions=DISTS, objective=objective, deadline=soon
    )


def test_a_stage_with_no_finished_trial_claims() -> None:
    assert stopping.Deadline(time.time() + 1, "t").fits(None)
    assert not stopping.Deadline(time.time() + 1, "t").fits(0.0)


def test_deadline_sources_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_STOP_AT", raising=False)
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    assert stopping.deadline(None) is None
    monkeypatch.setenv("SLURM_JOB_END_TIME", "1800000000")
    assert stopping.deadline(None) == stopping.Deadline(1800000000.0, "SLURM_JOB_END_TIME")
    monkeypatch.setenv("HPO_STOP_AT", "2026-11-30T18:00:00")  # squeue -o %e: local time
    got = stopping.deadline(None)
    assert got is not None and got.source == "HPO_STOP_AT"
    assert got.at == dt.datetime(2026, 11, 30, 18, 0, 0).timestamp()
    assert stopping.deadline("2026-11-30T17:00:00+00:00") == stopping.Deadline(
        dt.datetime(2026, 11, 30, 17, tzinfo=dt.UTC).timestamp(), "--stop-at"
    )
    with pytest.raises(
        ConfigError, match=r"--stop-at: 'tomorrow' is not a time; give UNIX seconds or an ISO"
    ):
        stopping.deadline("tomorrow")


def test_bad_stop_at_or_threads_exit_2_before_any_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "hpo.db"
    base = ["worker", "--config", "quick", "--storage", f"sqlite:///{db}", "--artifacts", str(tmp_path / "a")]
    assert cli.main([*base, "--stop-at", "noon"]) == 2
    assert "--stop-at: 'noon' is not a time" in capsys.readouterr().err
    monkeypatch.setenv("HPO_THREADS", "two")
    assert cli.main(base) == 2
    assert capsys.readouterr().err.strip() == (
        "hpo: error: HPO_THREADS='two': give a whole number of threads, 1 or more"
    )
    assert not db.exists() and not (tmp_path / "a").exists()


# --------------------------------------------------------------------------- threads


def test_threads_from_the_user_before_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.resolve() == threads.Threads(3, "$OMP_NUM_THREADS")
    monkeypatch.setenv("HPO_THREADS", "2")
    assert threads.resolve() == threads.Threads(2, "$HPO_THREADS")
    assert threads.resolve(1) == threads.Threads(1, "--threads")
    monkeypatch.delenv("HPO_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.resolve() == threads.available_cores()


def test_cgroup_quota_caps_the_affinity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_quota(v2) is None
    assert threads.available_cores(v2) == threads.Threads(8, "the cores this process may use", True)
    (v2 / "cpu.max").write_text("150000 100000\n")  # docker --cpus=1.5
    assert threads.available_cores(v2) == threads.Threads(2, "cgroup CPU quota 1.5 of 8 cores", True)
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert threads.available_cores(v1) == threads.Threads(3, "cgroup CPU quota 3 of 8 cores", True)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert threads.available_cores(v1) == threads.Threads(2, "the cores this process may use", True)


def test_apply_sets_torch_threads() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        threads.apply(threads.Threads(1, "test"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_worker_stops_before_its_deadline_and_a_later_one_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``hpo worker --stop-at`` 25 s ahead: the margin (30 s) leaves room for no batch whose
    length is known, so the worker stops at a stage's second claim with exit 75 and one line,
    nothing left RUNNING; a worker without a deadline then finishes the pipeline."""
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    base = ["worker", "--plain", "--config", "quick", "--storage", db, "--artifacts", str(tmp_path / "a")]
    base += ["--set", "stages.baseline.max_batches=3", "--threads", "1"]
    assert cli.main([*base, "--stop-at", str(time.time() + 25)]) == stopping.EXIT_OUT_OF_TIME
    err = capsys.readouterr().err.strip().splitlines()
    assert re.match(
        r"hpo: error: stage quick\.\w+: its next batch \(about \d+ s\) would not finish before ", err[-1]
    )
    assert "nothing claimed, nothing lost: start a worker again" in err[-1]
    storage = open_storage(db)
    studies = {s.study_name: s for s in storage.get_all_studies()}
    trials = [t for s in studies.values() for t in storage.get_all_trials(s._study_id)]
    assert trials and not [t for t in trials if t.state == TrialState.RUNNING]
    assert cli.main(base) == 0


def test_workers_on_one_host_share_its_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the user set no thread count, each worker takes its share of the host's cores,
    counted from the registry's live workers on this host (workers elsewhere do not count)."""
    import socket

    from hpo.tuning.workers import Registry

    cores = threads.Threads(4, "the cores this process may use", True)
    assert threads.shared(cores, 1) == cores
    assert threads.shared(cores, 2) == threads.Threads(2, "4 cores shared by 2 workers on this host", True)
    assert threads.shared(cores, 9).n == 1
    mine = threads.Threads(4, "$HPO_THREADS")
    assert threads.shared(mine, 3) == mine  # the user's count is kept
    storage = open_storage(f"sqlite:///{tmp_path / 'r.db'}")
    with Registry(storage, "p") as first:
        assert first.on_host() == 1
        with Registry(storage, "p"):
            assert first.on_host() == 2 and first.live() == 2
            monkeypatch.setattr(socket, "gethostname", lambda: "elsewhere")
            with Registry(storage, "p"):
                monkeypatch.undo()
                assert first.on_host() == 2 and first.live() == 3
        assert first.on_host() == 1
    import torch

    before = torch.get_num_threads()
    try:
        threads.rebalance(threads.Threads(2, "the cores this process may use", True), 2)
        assert torch.get_num_threads() == 1
        threads.rebalance(threads.Threads(2, "the cores this process may use", True), 1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
