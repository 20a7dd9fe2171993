"""Who is working on a pipeline: a registry of live workers, kept with Optuna's heartbeats.

Each worker holds one RUNNING trial of the study ``<pipeline>.workers`` for as long as it runs
and records that trial's heartbeat; a worker that dies stops beating, its trial goes stale and
Optuna's ``fail_stale_trials`` retires it. So the live workers are the registry's RUNNING trials,
counted afresh whenever a stage decides how to split its points (:func:`share`), with no table or
service of hpo's own. A lone worker (or a SQLite storage, which serves one) counts 1.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import warnings
from collections.abc import Callable
from types import TracebackType

import optuna
from optuna.trial import TrialState

from hpo.tuning import records
from hpo.tuning.heartbeat import grace_period, heartbeat_stopped
from hpo.tuning.runner import WORKER_ID

logger = logging.getLogger(__name__)


class Registry:
    """This worker's entry in the registry (a context manager), and the count of live ones."""

    def __init__(self, storage: optuna.storages.BaseStorage, pipeline: str) -> None:
        self.storage = storage
        self.name = f"{pipeline}.workers"
        getter = getattr(storage, "get_heartbeat_interval", None)
        self.interval = getter() if getter is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trial: optuna.Trial | None = None
        self._study: optuna.Study | None = None

    def __enter__(self) -> Registry:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeats outside study.optimize: recorded here
            self._study = optuna.create_study(study_name=self.name, storage=self.storage, load_if_exists=True)
            self._trial = self._study.ask()
        self._trial.set_user_attr(records.WORKER, WORKER_ID)
        self._trial.set_user_attr(records.WORKER_PLACE, place())
        logger.info("worker %s joined pipeline %s (%s)", WORKER_ID, self.name.rsplit(".", 1)[0], place())
        if self.interval is not None:
            self.storage.record_heartbeat(self._trial._trial_id)  # type: ignore[attr-defined]
            self._thread = threading.Thread(target=self._beat, daemon=True, name="hpo-worker-heartbeat")
            self._thread.start()
        return self

    def _beat(self) -> None:
        assert self._trial is not None and self.interval is not None
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self._trial._trial_id)  # type: ignore[attr-defined]
            except Exception as exc:  # an outage past its limit (the main thread reports it), or worse
                heartbeat_stopped(
                    exc,
                    f"worker {WORKER_ID} in the registry {self.name}",
                    f"other workers will count this worker dead after {grace_period(self.storage)} "
                    "without one and split the points left among themselves",
                )
                return

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._study is not None and self._trial is not None:
            try:
                state = TrialState.COMPLETE if exc_type is None else TrialState.FAIL
                self._study.tell(self._trial, 0.0 if state == TrialState.COMPLETE else None, state=state)
            except Exception as err:  # the storage is gone: the entry goes stale instead
                logger.debug("could not leave the worker registry: %s", err)

    def live(self) -> int:
        """Workers beating now (this one included)."""
        return max(1, len(self._running()))

    def on_host(self) -> int:
        """Workers beating now on this host (this one included): they share its cores."""
        host = _host_prefix()
        here = [
            t for t in self._running() if str(t.user_attrs.get(records.WORKER_PLACE, "")).startswith(host)
        ]
        return max(1, len(here))

    def _running(self) -> list[optuna.trial.FrozenTrial]:
        if self._study is None:
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(self._study)
        return self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def _host_prefix() -> str:
    return f"host {socket.gethostname()},"


def place() -> str:
    """Where this worker runs: host, process and, under Slurm, the job (array task)."""
    where = f"{_host_prefix()} pid {os.getpid()}"
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{where}, Slurm job {array}_{task}"
    job = os.environ.get("SLURM_JOB_ID")
    return f"{where}, Slurm job {job}" if job else where


def share(stack: int, live: Callable[[], int]) -> Callable[[int], int]:
    """A claim's size: this worker's share of the points left unclaimed, at most ``stack``."""

    def size(unclaimed: int) -> int:
        return max(1, min(stack, math.ceil(unclaimed / live())))

    return size
