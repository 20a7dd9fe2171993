"""The progress display: epochs counted as they are trained (the k-fold stage evaluates only after
its last), the pipeline's planned work and time left, and rows that fit an 80-column terminal."""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers import classes, fit_mlp
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from hpo import plan as plan_mod
from hpo import training as train
from hpo.families.mlp import stacked
from hpo.pipeline import resolve_study_file
from hpo.present.progress import LiveProgress, LogProgress, clock
from hpo.sections import DataSettings
from hpo.settings import ModelConfig, OptimConfig, TrainConfig
from hpo.stages._context import StageContext
from hpo.stages.search import Dimension, Search, SearchSettings
from hpo.training import EvalRecord
from hpo.tuning.budget import TimeLimit

TASK = classes(4)


def _data(seed: int) -> train.TensorData:
    r = np.random.default_rng(seed)
    x, xv = r.normal(size=(300, 8)).astype(np.float32), r.normal(size=(100, 8)).astype(np.float32)
    return train.TensorData.from_numpy(x, (x[:, 0] > 0).astype(int), xv, (xv[:, 0] > 0).astype(int))


class Heard:
    """A callback that hears of epochs (an :class:`~hpo.training.EpochCallback`)."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.records: list[int] = []

    def __call__(self, record: EvalRecord) -> None:
        self.records.append(record.epoch)

    def epoch_done(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_trainers_report_every_epoch_before_the_only_evaluation() -> None:
    assert isinstance(Heard(), train.EpochCallback) and not isinstance(print, train.EpochCallback)
    model = ModelConfig(hidden=(16,), n_features=8, n_outputs=4)
    cfg = TrainConfig(epochs=3, batch_size=64, seed=1, eval_last_only=True)
    one = Heard()
    fit_mlp(model, OptimConfig(), cfg, _data(1), task=TASK, callbacks=[one])
    assert one.epochs == [1, 2, 3] and one.records == [3]
    members = [stacked.Member(model, OptimConfig(), cfg, d) for d in (0, 1)]
    heard = [Heard(), Heard()]
    stacked.fit_stacked(members, [_data(1), _data(2)], task=TASK, callbacks=[[h] for h in heard])
    assert [h.epochs for h in heard] == [[1, 2, 3], [1, 2, 3]] and [h.records for h in heard] == [[3], [3]]


def test_a_member_stopped_early_hears_of_no_later_epoch() -> None:
    model = ModelConfig(hidden=(16,), n_features=8, n_outputs=4)
    cfg = TrainConfig(epochs=4, batch_size=64, seed=1)
    stopper, other = Heard(), Heard()
    members = [stacked.Member(model, OptimConfig(), cfg, 0)] * 2
    stacked.fit_stacked(
        members, [_data(1)], task=TASK, callbacks=[[stopper, lambda r: r.epoch >= 2], [other]]
    )
    assert stopper.epochs == [1, 2] and other.epochs == [1, 2, 3, 4]


def _record(epoch: int, score: float) -> EvalRecord:
    return EvalRecord(epoch=epoch, step=epoch, train_loss=1.0, train_score=0.5, val_loss=1.0, val_score=score)


def test_the_log_counts_epochs_and_states_the_pipelines_share_and_time_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = LogProgress()
    log.pipeline("p", [("a", 2, 2_000), ("b", 10, 8_000), ("c", 1, 500)], complete=["c"])
    a = log.member("p.a trial 0", epochs=2, rows=1000)
    b = log.member("p.b trial 0 fold 1", epochs=10, rows=800)
    with caplog.at_level(logging.INFO, logger="hpo.progress"):
        a.epoch_done(1)
        a(_record(2, 0.6))  # the evaluation after epoch 2 counts that epoch once
        a.epoch_done(2)
        log.stage_done("a")
        for epoch in range(1, 6):
            b.epoch_done(epoch)
    assert log.tally.epochs == {"a": 2, "b": 5} and log.tally.samples == {"a": 2000, "b": 4000}
    assert log.tally.pipeline_total() == 10_000 and log.tally.pipeline_done() == 6_000
    text = caplog.text
    assert "p.a trial 0 epoch 2/2" in text
    assert re.search(r"pipeline p: stage 1/3 a done; 20% of the planned work, about \d:\d\d:\d\d left", text)


def test_the_live_rows_fit_80_columns_with_bar_rate_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    with LiveProgress(console) as live:
        live.pipeline("msd_decade", [("baseline", 3, 45), ("weight_decay", 250, 72_148_000)], complete=[])
        live.stage_done("baseline")
        members = [
            live.member(f"msd_decade.weight_decay trial {t} fold {f}", epochs=10, rows=288_606)
            for t in range(5)
            for f in range(1, 6)
        ]
        for epoch in range(1, 5):
            now[0] += 10.0  # ten seconds an epoch of the stack
            for m in members:
                m.epoch_done(epoch)
        live._bar.refresh()
        shown = out.getvalue()
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    lines = [line for line in re.split(r"[\r\n]", plain) if line.strip()]
    assert lines and all(len(line) <= 80 for line in lines), max(lines, key=len)
    last_stage = [line for line in lines if "weight_decay" in line][-1]
    # 100 of 250 model-epochs in 40 s: 721,515 model-samples a second, 60 s left
    assert re.search(r"weight_decay t0-4 .* 100/250 ep +722k/s +0:01:00$", last_stage), last_stage
    last_pipeline = [line for line in lines if line.startswith("msd_decade")][-1]
    assert re.search(r"^msd_decade 2/2 .* 40% +0:01:00$", last_pipeline), last_pipeline
    assert "…" not in shown


def test_every_stage_of_the_faithful_study_plans_its_work() -> None:
    plan = plan_mod.load(resolve_study_file("msd_decade"))
    planned = {s.name: s.planned(plan.defaults, 100_000) for s in plan.stages}
    assert planned["baseline"].model_epochs == 3 and planned["baseline"].samples == 3 * 15 * 128
    assert planned["lr_range"].model_epochs == 5 and planned["lr_range"].samples == 6 * 100_000
    assert planned["weight_decay"].model_epochs == 250 and planned["weight_decay"].samples == 250 * 80_000
    assert planned["norm"].model_epochs == 3 * 15 and planned["norm"].samples == 45 * 100_000
    assert planned["final"].model_epochs == 15


def test_clock() -> None:
    assert clock(None) == "-:--:--" and clock(59.6) == "0:01:00" and clock(3 * 3600 + 61) == "3:01:01"
    assert clock(99 * 3600 + 3599) == "99:59:59" and clock(164 * 3600) == "> 99 h"


def test_no_pipeline_estimate_before_a_hundredth_of_its_work(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    log = LogProgress()
    log.pipeline("p", [("a", 1, 50), ("b", 10, 10_000)], complete=[])
    now[0] = 10.0
    log.stage_done("a")  # 0.5 % of the plan in 10 s: no estimate yet
    assert log.tally.pipeline_left() is None
    b = log.member("p.b trial 0", epochs=10, rows=1000)
    b.epoch_done(1)
    now[0] = 20.0  # 1,050 of 10,050 model-samples in 20 s: 9,000 left at 52.5 a second
    assert log.tally.pipeline_left() == pytest.approx(9_000 / 52.5)


def _limited(monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], LogProgress]:
    """A pipeline of a search (16 trials of 15 epochs, 1,000 rows) and a final stage, the search
    10 s into its first batch of 4 trials (one epoch each: 0.4 model-epochs a second)."""
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    log = LogProgress()
    log.pipeline("p", [("search", 240, 240_000), ("final", 10, 10_000)], complete=[])
    members = [log.member(f"p.search trial {t}", epochs=15, rows=1000) for t in range(4)]
    now[0] = 10.0
    for m in members:
        m.epoch_done(1)
    return now, log


def test_a_time_limited_search_counts_only_the_time_it_may_still_use(monkeypatch: pytest.MonkeyPatch) -> None:
    now, log = _limited(monkeypatch)
    t = log.tally
    # by its plan: 236 model-epochs left at 0.4 a second; the pipeline 246,000 model-samples at 400
    assert t.stage_left("search", 240) == pytest.approx(590.0)
    assert t.pipeline_left() == pytest.approx(615.0)
    log.limit("search", 110.0)  # e.g. timeout = 120 s, 10 s of it used
    assert t.stage_left("search", 240) == pytest.approx(110.0)
    # the search's 590 s of plan count 110 s; the final stage's 25 s stay
    assert t.pipeline_left() == pytest.approx(135.0)
    now[0] = 70.0  # the limit's clock runs on
    assert t.stage_left("search", 240) == pytest.approx(50.0)
    now[0] = 200.0  # past it (the batch in training still finishes): nothing left to count
    assert t.stage_left("search", 240) == 0.0
    log.limit("search", 20_000.0)  # a limit beyond the plan: the plan's estimate stands
    assert t.stage_left("search", 240) == pytest.approx((240 - 4) / (4 / 200))
    log.stage_done("search")  # a finished stage's limit counts no more
    assert t.limit_left("search") is None


def test_a_limit_told_before_any_epoch_is_the_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "perf_counter", lambda: 5.0)
    log = LogProgress()
    log.pipeline("p", [("search", 240, 240_000)], complete=[])
    assert log.tally.stage_left("search", 240) is None
    log.limit("search", 120.0)
    assert log.tally.stage_left("search", 240) == 120.0


def test_the_live_rows_show_a_searchs_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    with LiveProgress(console) as live:
        live.pipeline("p", [("search", 240, 240_000), ("final", 10, 10_000)], complete=[])
        members = [live.member(f"p.search trial {t}", epochs=15, rows=1000) for t in range(4)]
        now[0] = 10.0
        for m in members:
            m.epoch_done(1)
        live.limit("search", 110.0)
        live._bar.refresh()
        shown = out.getvalue()
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    lines = [line for line in re.split(r"[\r\n]", plain) if line.strip()]
    last_stage = [line for line in lines if line.startswith(" search")][-1]
    assert re.search(r" 4/240 ep .* 0:01:50$", last_stage), last_stage  # not the plan's 0:09:50
    last_pipeline = [line for line in lines if line.startswith("p ")][-1]
    assert re.search(r"^p 1/2 .* 0:02:15$", last_pipeline), last_pipeline  # not 0:10:15


def test_a_search_tells_the_display_the_time_its_limit_leaves(tmp_path: Path) -> None:
    told: list[tuple[str, float]] = []

    class Heard(LogProgress):
        def limit(self, stage: str, seconds: float) -> None:
            told.append((stage, seconds))

    start = dt.datetime(2026, 1, 1, 12, 0, 0)
    trials = [
        FrozenTrial(
            number=i,
            state=TrialState.COMPLETE,
            value=0.5,
            datetime_start=start,
            datetime_complete=start + dt.timedelta(seconds=30),
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=i,
        )
        for i in range(2)
    ]
    budget: list[TimeLimit | None] = [None]
    ctx = StageContext(
        pipeline="p",
        study_file="p.toml",
        data_settings=DataSettings(source="synthetic"),
        storage=optuna.storages.InMemoryStorage(),
        storage_url="",
        artifacts=FileSystemArtifactStore(str(tmp_path)),
        progress=Heard(),
        search_budget=lambda name, trials: budget[0],
    )
    space = {"lr": Dimension(low=1e-4, high=1e-2, log=True)}
    search = Search("search", SearchSettings(space=space, timeout=120.0))
    assert search.time_limit(ctx, []) is not None and told == [("search", 120.0)]  # nothing run yet
    search.time_limit(ctx, trials)  # the first batch took 30 s
    assert told[-1][0] == "search" and told[-1][1] == pytest.approx(90.0)
    budget[0] = TimeLimit(60.0, "time_budget = 600 s: ...")  # the pipeline's budget is tighter
    search.time_limit(ctx, trials)
    assert told[-1][1] == pytest.approx(30.0)
    told.clear()
    Search("search", SearchSettings(space=space)).time_limit(ctx, trials)  # budget only
    assert len(told) == 1 and told[0][1] == pytest.approx(30.0)
    budget[0] = None
    assert Search("search", SearchSettings(space=space)).time_limit(ctx, trials) is None
    assert len(told) == 1  # no limit: nothing to tell
