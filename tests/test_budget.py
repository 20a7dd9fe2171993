"""Time limits: a search's ``timeout`` and a pipeline's ``time_budget`` stop a search asking
batches that would not fit (shared by every worker through the stored trials), keep the final
stage's estimated share, and show in ``hpo status``; bad values are refused before any write."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpo import cli
from hpo.pipeline import Pipeline
from hpo.sections import parse_duration
from hpo.tuning import budget, records, runner

SEARCH = """
[stages.search]
kind = "search"
sampler = "random"
pruner = "none"
n_trials = 10000
batch = 4
epochs = 1
{extra}
[stages.search.space]
lr = {{ low = 1e-4, high = 1e-2, log = true }}
"""


def _study(tmp_path: Path, *, pipeline: str = "", search: str = "", final: bool = False) -> Path:
    cfg = tmp_path / "budget.toml"
    cfg.write_text(
        f'[pipeline]\nname = "budget"\n{pipeline}\n\n'
        '[data]\nsource = "synthetic"\nrows = 12000\nseed = 42\n\n'
        '[defaults]\nhidden = [64]\nbatch_size = 128\nprecision = "fp32"\n'
        + SEARCH.format(extra=search)
        + ('\n[stages.final]\nkind = "final"\nepochs = 2\n' if final else "")
    )
    return cfg


def _pipe(tmp_path: Path, cfg: Path) -> Pipeline:
    return Pipeline.load(cfg, storage=f"sqlite:///{tmp_path / 'hpo.db'}", artifacts=tmp_path / "artifacts")


def _span(trials: list[optuna.trial.FrozenTrial]) -> tuple[float, float]:
    """The stage's run time and its longest trial (a batch)."""
    seconds = budget.busy(trials)
    assert seconds is not None
    longest = max(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_start is not None and t.datetime_complete is not None
    )
    return seconds, longest


def test_durations_take_seconds_or_a_string() -> None:
    assert [parse_duration(v) for v in (60, 2.5, "90m", "1h30m", "45s", "1.5h", " 2h 5m ")] == [
        60.0,
        2.5,
        5400.0,
        5400.0,
        45.0,
        5400.0,
        7500.0,
    ]
    for bad in ("soon", "", "5 min", 0, -1, True):
        with pytest.raises(ValueError, match=r"duration|above zero"):
            parse_duration(bad)


def test_the_clock_waits_for_a_first_batch_then_counts_the_longest() -> None:
    limit = budget.TimeLimit(60.0, "timeout = 60 s")
    assert not budget.Clock(elapsed=100.0, batch=0.0, finished=0, running=0).passes(limit)  # must select
    assert budget.Clock(elapsed=61.0, batch=0.0, finished=0, running=4).passes(limit)  # wait for them
    assert not budget.Clock(elapsed=40.0, batch=19.0, finished=4, running=0).passes(limit)
    assert budget.Clock(elapsed=40.0, batch=21.0, finished=4, running=0).passes(limit)


@pytest.mark.slow
def test_a_search_with_a_60_s_timeout_stops_within_60_s_and_one_batch(tmp_path: Path) -> None:
    cfg = _study(tmp_path, search="timeout = 60")
    pipe = _pipe(tmp_path, cfg)
    pipe.run_stage("search")
    study = pipe.ctx.find_study(pipe.ctx.study_name("search"))
    assert study is not None and records.is_complete(study)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 4 <= len(done) < 10000 and not [t for t in trials if t.state == TrialState.RUNNING]
    seconds, batch = _span(trials)
    assert seconds <= 60 + batch + 2.0, (seconds, batch)  # 2 s: telling the last batch
    stopped = study.user_attrs[records.STOPPED_ASKING]
    assert stopped["why"] == "timeout = 60 s" and stopped["trials"] == len(done)
    assert stopped["elapsed_seconds"] + stopped["next_batch_seconds"] >= 60 - 0.1  # each rounded to 0.1 s
    selection = records.read_selection(study.user_attrs)
    assert selection is not None and f"stopped asking after {len(done)} of 10000 trials" in selection.reason
    # another worker arriving now asks nothing: the limit is read from the stored trials
    again = _pipe(tmp_path, cfg)
    search = again.plan.stage("search")
    runner.run(
        study,
        again.ctx.storage,
        work=runner.Budget(10000, limit=lambda t: search.time_limit(again.ctx, t)),  # type: ignore[attr-defined]
        distributions=search.distributions(),  # type: ignore[attr-defined]
        objective=lambda claims: pytest.fail("a batch was asked past the timeout"),
        batch_size=4,
    )
    assert len(study.get_trials(deepcopy=False)) == len(trials)


@pytest.mark.slow
def test_a_time_budget_shorter_than_the_stages_still_ends_with_a_tested_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _study(tmp_path, pipeline="time_budget = 40", final=True)
    pipe = _pipe(tmp_path, cfg)
    pipe.run()
    status = pipe.status()
    assert status.test_metrics is not None  # the final stage ran and read the test rows
    search = pipe.ctx.find_study(pipe.ctx.study_name("search"))
    assert search is not None
    stopped = search.user_attrs[records.STOPPED_ASKING]
    assert stopped["why"].startswith("time_budget = 40 s: 0 s spent before it, ")
    assert "kept for final" in stopped["why"] and stopped["trials"] < 10000
    assert status.time_budget is not None and status.time_budget["seconds"] == 40.0
    spent = status.time_budget["spent"]
    _, batch = _span(search.get_trials(deepcopy=False))
    assert 0 < spent <= 40 + batch + 5.0, (spent, batch)  # the final fitted in the share it kept
    code = cli.main(["-q", "status", "--config", str(cfg), "--storage", f"sqlite:///{tmp_path / 'hpo.db'}"])
    out = capsys.readouterr().out
    assert code == 0 and f"time budget: {budget.describe(spent)} of 40 s spent (" in out
    assert f"stopped asking after {stopped['trials']} of 10000 trials (time_budget = 40 s: " in out


def test_running_time_is_the_union_of_the_trials_intervals() -> None:
    t0 = dt.datetime(2026, 1, 1, 12, 0, 0)

    def trial(start: float, end: float | None) -> optuna.trial.FrozenTrial:
        if end is None:
            t = optuna.trial.create_trial(state=TrialState.RUNNING)
        else:
            t = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.0)
        t.datetime_start = t0 + dt.timedelta(seconds=start)
        t.datetime_complete = None if end is None else t0 + dt.timedelta(seconds=end)
        return t

    # a batch of two (0-10, 2-9), 5 s of claiming, one (15-20), a night without trials, then one
    # running for 30 s
    trials = [trial(0, 10), trial(2, 9), trial(15, 20), trial(86400, None)]
    assert budget.busy(trials, now=t0 + dt.timedelta(seconds=86430)) == 50.0
    assert budget.busy([]) is None
    assert budget.describe(59.6) == "60 s" and budget.describe(725) == "12 min 5 s"
    assert budget.describe(5400) == "1 h 30 min"


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("pipeline", 'time_budget = "soon"', "pipeline.time_budget"),
        ("search", "timeout = -5", "stages.search.timeout"),
    ],
)
def test_a_bad_time_limit_is_one_line_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _study(tmp_path, pipeline=value) if where == "pipeline" else _study(tmp_path, search=value)
    db = tmp_path / "hpo.db"
    code = cli.main(["-q", "run", "--config", str(cfg), "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not db.exists()


def test_a_search_resumes_under_another_timeout() -> None:
    """A timeout decides how long a search asks, not what its trials mean: give it more time."""

    def search(n_trials: int, timeout: float | None) -> dict[str, Any]:
        stage: dict[str, Any] = {"kind": "search", "n_trials": n_trials}
        if timeout is not None:
            stage["timeout"] = timeout
        return {"stage": stage}

    assert records.settings_drift(search(24, 600.0), search(24, 1200.0)) is None
    assert records.settings_drift(search(24, None), search(24, 600.0)) is None
    assert records.settings_drift(search(24, 600.0), search(30, 600.0)) == ("stage.n_trials", 24, 30)
