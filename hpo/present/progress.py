"""Progress of long work: what trainers report after every evaluation, shown live or as log lines.

Stages ask for one callback per model they train (:meth:`Progress.member`); the callback receives
each evaluation record. :class:`LiveProgress` (a terminal) draws one rich progress bar for the
work in hand: stage and trials, epochs done over all models of the batch, model-samples per
second and the time left. :class:`LogProgress` (not a terminal) writes a log line per evaluation
instead. Either way it goes to stderr, never into ``--format json`` output.
"""

from __future__ import annotations

import logging
import re
import time
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, TaskID, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from hpo.settings import greater_is_better
from hpo.training import Callback, EvalRecord

logger = logging.getLogger("hpo.progress")
SHORT = {"accuracy": "acc"}  # the bar's metric names, kept short for an 80-column terminal
_TRIAL = re.compile(r"^(?P<study>\S+) trial (?P<trial>\d+)")


class Progress(Protocol):
    def member(self, label: str, *, epochs: int, rows: int = 0) -> Callback: ...


class LogProgress:
    """One log line per evaluation of every model."""

    def member(self, label: str, *, epochs: int, rows: int = 0) -> Callback:
        def log(record: EvalRecord) -> None:
            logger.info(
                "%s epoch %d/%d step %d: train loss %.4f, val loss %.4f, val %s %.4f",
                label,
                record.epoch,
                epochs,
                record.step,
                record.train_loss,
                record.val_loss,
                record.metric,
                record.val_score,
            )

        return log


class LiveProgress:
    """A live bar for the models in training (a context manager around the work)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._bar = RichProgress(
            TextColumn("[bold]{task.fields[study]}[/bold] {task.fields[trials]}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} model-epochs"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("best val {task.fields[metric]} {task.fields[best]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task: TaskID | None = None
        self._study = ""
        self._members: dict[str, tuple[int, int]] = {}  # label -> (epochs, rows)
        self._trials: set[str] = set()
        self._started = 0.0
        self._samples = 0
        self._best: float | None = None

    def __enter__(self) -> LiveProgress:
        self._bar.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.stop()

    def member(self, label: str, *, epochs: int, rows: int = 0) -> Callback:
        match = _TRIAL.match(label)
        study = match.group("study") if match else label
        if study != self._study or self._task is None:
            if self._task is not None:
                self._bar.update(self._task, completed=self._bar.tasks[self._task].total)
            self._study, self._members, self._trials = study, {}, set()
            self._started, self._samples, self._best = time.perf_counter(), 0, None
            self._task = self._bar.add_task(
                "", total=0, study=study, trials="", rate="", best="-", metric="acc"
            )
        self._members[label] = (epochs, rows)
        if match:
            self._trials.add(match.group("trial"))
        task = self._task
        self._bar.update(
            task,
            total=sum(e for e, _ in self._members.values()),
            trials=f"trials {', '.join(sorted(self._trials, key=int))}" if self._trials else "",
        )

        seen = [0]

        def advance(record: EvalRecord) -> None:
            done = record.epoch - seen[0]  # an evaluation may follow several epochs (k-fold CV)
            seen[0] = record.epoch
            self._samples += rows * done
            better = max if greater_is_better(record.metric) else min
            self._best = record.val_score if self._best is None else better(self._best, record.val_score)
            seconds = max(time.perf_counter() - self._started, 1e-9)
            rate = f"{self._samples / seconds / 1000:,.0f}k samples/s" if rows else ""
            shown = SHORT.get(record.metric, record.metric)
            self._bar.update(task, advance=done, rate=rate, best=f"{self._best:.4f}", metric=shown)

        return advance
