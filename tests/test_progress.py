"""The progress display: epochs counted as they are trained (the k-fold stage evaluates only after
its last), the pipeline's planned work and time left, and rows that fit an 80-column terminal."""

from __future__ import annotations

import io
import logging
import re
import time

import numpy as np
import pytest
from helpers import classes, fit_mlp
from rich.console import Console

from hpo import plan as plan_mod
from hpo import training as train
from hpo.families.mlp import stacked
from hpo.pipeline import resolve_study_file
from hpo.present.progress import LiveProgress, LogProgress, clock
from hpo.settings import ModelConfig, OptimConfig, TrainConfig
from hpo.training import EvalRecord

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
