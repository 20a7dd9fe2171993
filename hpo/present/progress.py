"""Progress of long work: what trainers report as they train, shown live or as log lines.

Stages ask for one callback per model they train (:meth:`Progress.member`); the callback hears of
every epoch trained (:class:`~hpo.training.EpochCallback`, so the k-fold stage, evaluated only
after its last epoch, advances as it trains) and receives each evaluation record. The pipeline
announces the stages it will run with their planned work (:meth:`Progress.pipeline`, from each
stage's :meth:`~hpo.stages.Stage.planned`) and each stage it finishes (:meth:`Progress.stage_done`),
so both kinds show the whole pipeline's progress and time left, not only the current trial's.

:class:`LiveProgress` (a terminal) draws two kinds of rich progress rows, sized for an 80-column
terminal (the earlier five-column row was cut to "2/5 model-epoc… 6k samples…" there, with no bar
or ETA): the pipeline (stage k of n, share of its planned model-samples done, time left at its rate
so far) and the stage in hand (trials in training, model-epochs done of the stage's plan,
model-samples per second, best validation score, time left). :class:`LogProgress` (not a terminal)
writes a log line per evaluation and one per finished stage with the pipeline's share and time
left. Either way it goes to stderr, never into ``--format json`` output.

Times left are estimates: the rate so far (per stage, and over the pipeline) applied to the planned
work, which counts every model trained to its last epoch (early stopping and pruning end stages
sooner) and only this process's training (with other workers on the stage it ends sooner). A
search under a time limit (its ``timeout``, or its share of the pipeline's ``time_budget``) says
how long it may still run (:meth:`Progress.limit`, whenever it works the limit out, before each
batch): its row's time left is the smaller of the estimate and that, and the pipeline's counts
no more than that for it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, TaskID, TextColumn
from rich.progress import Progress as RichProgress
from rich.table import Column

from hpo.tasks import greater_is_better
from hpo.training import EvalRecord

logger = logging.getLogger("hpo.progress")
_TRIAL = re.compile(r"\btrial (\d+)\b")
SHORT = {"accuracy": "acc"}  # the metric names shown, kept short for an 80-column terminal


class Progress(Protocol):
    def member(self, label: str, *, epochs: int, rows: int = 0) -> _Member: ...

    def pipeline(self, name: str, stages: Sequence[tuple[str, int, int]], complete: Sequence[str]) -> None:
        """The pipeline's stages in order, each with its planned model-epochs and model-samples;
        ``complete``: those already done (not run again)."""
        ...

    def stage_done(self, name: str) -> None: ...

    def limit(self, stage: str, seconds: float) -> None:
        """Search ``stage`` may run at most ``seconds`` more (its time limit less the time it has
        run): its time left and the pipeline's count no more than that for it."""
        ...


#: the pipeline's time left is estimated once this share of its planned work is done (the first
#: stages are small and pay start-up costs: after the faithful baseline, 0.004 % of the work,
#: the rate so far said 164 hours)
MIN_SHARE_FOR_ETA = 0.01


def clock(seconds: float | None) -> str:
    """``h:mm:ss`` (at most 7 characters), or ``-:--:--`` when there is no estimate yet."""
    if seconds is None:
        return "-:--:--"
    if seconds >= 100 * 3600:
        return "> 99 h"
    s = max(round(seconds), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _rate(samples_per_second: float | None) -> str:
    """Model-samples per second in at most 7 characters."""
    if not samples_per_second:
        return ""
    if samples_per_second < 999_500:
        return f"{samples_per_second / 1e3:.0f}k/s"
    if samples_per_second < 99_950_000:
        return f"{samples_per_second / 1e6:.1f}M/s"
    return f"{samples_per_second / 1e6:.0f}M/s"


def _stage_of(label: str) -> str:
    """The stage of a member label such as ``msd_decade.weight_decay trial 3 fold 1``."""
    return label.split(" ", 1)[0].rsplit(".", 1)[-1]


def _trial_of(label: str) -> int | None:
    match = _TRIAL.search(label)
    return int(match.group(1)) if match else None


Heard = Callable[["_Member", EvalRecord | None], None]


class _Member:
    """One model's callback: counts its epochs as they are trained (and as evaluations report
    them, since an evaluation may follow several epochs) into its :class:`_Tally`, then tells
    ``heard`` (the display) of the epoch or the evaluation record."""

    def __init__(self, tally: _Tally, label: str, stage: str, epochs: int, rows: int, heard: Heard) -> None:
        self.tally, self.label, self.stage, self.epochs, self.rows = tally, label, stage, epochs, rows
        self.heard = heard
        self.seen = 0
        tally.registered(stage)

    def epoch_done(self, epoch: int) -> None:
        self._advance(epoch)
        self.heard(self, None)

    def __call__(self, record: EvalRecord) -> None:
        self._advance(record.epoch)
        self.tally.evaluated(self, record)
        self.heard(self, record)

    def _advance(self, epoch: int) -> None:
        done = epoch - self.seen
        if done > 0:
            self.seen = epoch
            self.tally.trained(self, done)


class _Tally:
    """What has been trained, by stage and over the pipeline, against the planned work."""

    def __init__(self) -> None:
        self.name = ""
        self.order: list[str] = []  # every stage of the pipeline, in order
        self.plan: dict[str, tuple[int, int]] = {}  # stages to run -> (model-epochs, model-samples)
        self.done: set[str] = set()
        self.samples: dict[str, int] = {}  # model-samples trained per stage
        self.epochs: dict[str, int] = {}  # model-epochs trained per stage
        self.stage_start: dict[str, float] = {}
        self.started = time.perf_counter()
        self.best: dict[str, float] = {}
        self.limits: dict[str, float] = {}  # stage -> when its time limit ends (the clock's time)

    def pipeline(self, name: str, stages: Sequence[tuple[str, int, int]], complete: Sequence[str]) -> None:
        self.name, self.order = name, [s for s, _, _ in stages]
        self.plan = {s: (e, n) for s, e, n in stages if s not in complete}
        self.started = time.perf_counter()

    def registered(self, stage: str) -> None:
        """A model of ``stage`` is about to train (the stage's clock starts with its first)."""
        self.stage_start.setdefault(stage, time.perf_counter())

    def trained(self, member: _Member, epochs: int) -> None:
        stage = member.stage
        self.epochs[stage] = self.epochs.get(stage, 0) + epochs
        self.samples[stage] = self.samples.get(stage, 0) + epochs * member.rows

    def limit(self, stage: str, seconds: float) -> None:
        self.limits[stage] = time.perf_counter() + max(seconds, 0.0)

    def limit_left(self, stage: str) -> float | None:
        """Seconds the stage's time limit leaves it (None without a limit, or once it is done)."""
        end = self.limits.get(stage)
        if end is None or stage in self.done:
            return None
        return max(end - time.perf_counter(), 0.0)

    def evaluated(self, member: _Member, record: EvalRecord) -> None:
        better = max if greater_is_better(record.metric) else min
        old = self.best.get(member.stage)
        self.best[member.stage] = record.val_score if old is None else better(old, record.val_score)

    # ---------------------------------------------------------------- the pipeline's figures

    def pipeline_done(self) -> int:
        """Model-samples of the planned work done: whole plans of finished stages, the trained
        part (at most the plan) of the others."""
        return sum(n if s in self.done else min(self.samples.get(s, 0), n) for s, (_, n) in self.plan.items())

    def pipeline_total(self) -> int:
        return sum(n for _, n in self.plan.values())

    def pipeline_left(self) -> float | None:
        """The planned work left at the pipeline's rate so far, each time-limited stage's part of
        it at most what its limit leaves."""
        done, elapsed = self.pipeline_done(), time.perf_counter() - self.started
        if done <= MIN_SHARE_FOR_ETA * self.pipeline_total() or elapsed <= 0:
            return None
        rate = done / elapsed
        left = (self.pipeline_total() - done) / rate
        for stage, (_, planned) in self.plan.items():
            limit = self.limit_left(stage)
            if limit is not None:
                own = max(planned - self.samples.get(stage, 0), 0) / rate
                left -= own - min(own, limit)
        return left

    def position(self, stage: str) -> str:
        return f"{self.order.index(stage) + 1}/{len(self.order)}" if stage in self.order else ""

    # ---------------------------------------------------------------- a stage's figures

    def stage_total(self, stage: str, registered: int) -> int:
        """The stage's planned model-epochs (those of the models registered so far, without a plan)."""
        planned = self.plan.get(stage)
        return max(planned[0], registered) if planned else registered

    def stage_left(self, stage: str, total: int) -> float | None:
        """The stage's planned model-epochs left at its rate so far, at most what its time limit
        leaves (that alone before there is a rate)."""
        limit = self.limit_left(stage)
        done, start = self.epochs.get(stage, 0), self.stage_start.get(stage)
        elapsed = time.perf_counter() - start if start is not None else 0.0
        if not done or elapsed <= 0:
            return limit
        left = max(total - done, 0) / (done / elapsed)
        return left if limit is None else min(left, limit)

    def rate(self, stage: str) -> float | None:
        start = self.stage_start.get(stage)
        if start is None or not self.samples.get(stage):
            return None
        elapsed = time.perf_counter() - start
        return self.samples[stage] / elapsed if elapsed > 0 else None


class LogProgress:
    """One log line per evaluation of every model, and one per finished stage with the
    pipeline's share done and time left."""

    def __init__(self) -> None:
        self.tally = _Tally()

    def pipeline(self, name: str, stages: Sequence[tuple[str, int, int]], complete: Sequence[str]) -> None:
        self.tally.pipeline(name, stages, complete)
        if self.tally.plan:
            logger.info(
                "pipeline %s: %d stage(s) to run, %s model-samples planned",
                name,
                len(self.tally.plan),
                f"{self.tally.pipeline_total():,}",
            )

    def stage_done(self, name: str) -> None:
        t = self.tally
        t.done.add(name)
        if name in t.plan:
            total = t.pipeline_total()
            logger.info(
                "pipeline %s: stage %s %s done; %.0f%% of the planned work, about %s left",
                t.name,
                t.position(name),
                name,
                100 * t.pipeline_done() / max(total, 1),
                clock(t.pipeline_left()),
            )

    def member(self, label: str, *, epochs: int, rows: int = 0) -> _Member:
        return _Member(self.tally, label, _stage_of(label), epochs, rows, self._heard)

    def limit(self, stage: str, seconds: float) -> None:
        self.tally.limit(stage, seconds)

    @staticmethod
    def _heard(member: _Member, record: EvalRecord | None) -> None:
        if record is None:
            return
        logger.info(
            "%s epoch %d/%d step %d: train loss %.4f, val loss %.4f, val %s %.4f",
            member.label,
            record.epoch,
            member.epochs,
            record.step,
            record.train_loss,
            record.val_loss,
            record.metric,
            record.val_score,
        )


def _col(width: int, justify: str = "left") -> Column:
    return Column(width=width, no_wrap=True, overflow="crop", justify=justify)  # type: ignore[arg-type]


class LiveProgress:
    """Live rows for the pipeline and the stage in hand (a context manager around the work),
    at most 76 columns wide."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._bar = RichProgress(
            TextColumn("{task.fields[label]}", table_column=_col(22)),
            BarColumn(bar_width=16),
            TextColumn("{task.fields[count]}", table_column=_col(11, "right")),
            TextColumn("{task.fields[rate]}", table_column=_col(7, "right")),
            TextColumn("{task.fields[best]}", table_column=_col(10)),
            TextColumn("{task.fields[eta]}", table_column=_col(7, "right")),
            console=self.console,
            transient=False,
            expand=False,
        )
        self.tally = _Tally()
        self._pipeline_task: TaskID | None = None
        self._stages: dict[str, TaskID] = {}
        self._registered: dict[str, int] = {}  # model-epochs of the members registered, by stage
        self._batch: dict[str, set[int]] = {}  # trials of the batch in training, by stage
        self._fresh: dict[str, bool] = {}  # no record since the batch's last member registered
        self._metric: dict[str, str] = {}  # the metric of the stage's evaluations

    def __enter__(self) -> LiveProgress:
        self._bar.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.stop()

    def pipeline(self, name: str, stages: Sequence[tuple[str, int, int]], complete: Sequence[str]) -> None:
        self.tally.pipeline(name, stages, complete)
        if self.tally.plan and self._pipeline_task is None:
            self._pipeline_task = self._bar.add_task(
                "", total=self.tally.pipeline_total(), label=name, count="", rate="", best="", eta=""
            )
            self._refresh_pipeline("")

    def stage_done(self, name: str) -> None:
        self.tally.done.add(name)
        task = self._stages.get(name)
        if task is not None:
            total = self._bar.tasks[task].total or 0
            self._bar.update(task, completed=total, eta=clock(0))
        self._refresh_pipeline(name)

    def member(self, label: str, *, epochs: int, rows: int = 0) -> _Member:
        stage = _stage_of(label)
        if stage not in self._stages:
            self._stages[stage] = self._bar.add_task(
                "", total=0, label=f" {stage}", count="", rate="", best="", eta=""
            )
            self._refresh_pipeline(stage)
        if not self._fresh.get(stage, False):
            self._batch[stage] = set()
            self._fresh[stage] = True
        trial = _trial_of(label)
        if trial is not None:
            self._batch[stage].add(trial)
        self._registered[stage] = self._registered.get(stage, 0) + epochs
        self._refresh_stage(stage)
        return _Member(self.tally, label, stage, epochs, rows, self._heard)

    def limit(self, stage: str, seconds: float) -> None:
        self.tally.limit(stage, seconds)
        if stage in self._stages:
            self._refresh_stage(stage)
        self._refresh_pipeline(stage)

    def _trials(self, stage: str) -> str:
        trials = sorted(self._batch.get(stage, ()))
        if not trials:
            return ""
        if trials == list(range(trials[0], trials[-1] + 1)) and len(trials) > 1:
            return f" t{trials[0]}-{trials[-1]}"
        return " t" + ",".join(map(str, trials))

    def _refresh_stage(self, stage: str) -> None:
        task = self._stages[stage]
        t = self.tally
        total = t.stage_total(stage, self._registered.get(stage, 0))
        done = t.epochs.get(stage, 0)
        rate = t.rate(stage)
        best = t.best.get(stage)
        metric = self._metric.get(stage, "")
        self._bar.update(
            task,
            total=total,
            completed=min(done, total),
            label=f" {stage}{self._trials(stage)}",
            count=f"{min(done, total)}/{total} ep",
            rate=_rate(rate),
            best=f"{SHORT.get(metric, metric)} {best:.4f}" if best is not None else "",
            eta=clock(t.stage_left(stage, total)),
        )

    def _refresh_pipeline(self, stage: str) -> None:
        if self._pipeline_task is None:
            return
        t = self.tally
        total = t.pipeline_total()
        done = t.pipeline_done()
        position = t.position(stage) if stage else ""
        self._bar.update(
            self._pipeline_task,
            total=total,
            completed=done,
            label=f"{t.name} {position}".rstrip(),
            count=f"{100 * done / max(total, 1):.0f}%",
            eta=clock(t.pipeline_left()),
        )

    def _heard(self, member: _Member, record: EvalRecord | None) -> None:
        stage = member.stage
        if record is not None:
            self._metric[stage] = record.metric
        self._fresh[stage] = False
        self._refresh_stage(stage)
        self._refresh_pipeline(stage)
