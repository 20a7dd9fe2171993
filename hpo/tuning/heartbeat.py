"""Optuna heartbeats for hpo's ask/tell batches: Optuna records them only inside
``study.optimize``, so a batch's trials get a thread of their own that records one every
interval until the batch is told; and how messages name the grace period after which other
workers count a silent trial or worker dead."""

from __future__ import annotations

import logging
import threading

import optuna

from hpo.errors import first_line

logger = logging.getLogger("hpo.tuning.runner")  # the name its lines have always carried


def heartbeat_interval(storage: optuna.storages.BaseStorage) -> int | None:
    getter = getattr(storage, "get_heartbeat_interval", None)
    interval = getter() if getter is not None else None
    return int(interval) if interval is not None else None


def grace_period(storage: optuna.storages.BaseStorage) -> str:
    """The storage's grace period, as messages say it (``"the grace period (60 s)"``): how long
    other workers wait without a heartbeat before they count a trial or a worker dead."""
    inner = getattr(storage, "_backend", storage)  # Optuna wraps an RDB storage in a cache
    seconds = getattr(inner, "grace_period", None)
    if seconds is None:
        interval = heartbeat_interval(storage)
        seconds = 2 * interval if interval is not None else None  # Optuna's default
    return f"the grace period ({seconds} s)" if seconds is not None else "the grace period"


def heartbeat_stopped(exc: BaseException, whose: str, then: str) -> None:
    """Say once, as a WARNING, that a heartbeat thread stopped on ``exc`` and what follows."""
    logger.warning(
        "the heartbeat of %s stopped (%s: %s); %s", whose, type(exc).__name__, first_line(exc, 200), then
    )


class Heartbeat:
    """Records Optuna heartbeats for a batch of ask/tell trials until the batch is told."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        trial_ids: list[int],
        interval: int | None,
        whose: str = "the batch's trials",
    ) -> None:
        self.storage = storage
        self.trial_ids = trial_ids
        self.interval = interval
        self.whose = whose
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="hpo-heartbeat")

    def _run(self) -> None:
        assert self.interval is not None
        while not self.stop.wait(self.interval):
            try:
                for trial_id in self.trial_ids:
                    self.storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
            except Exception as exc:  # an outage past its limit (the main thread reports it), or worse
                heartbeat_stopped(
                    exc,
                    self.whose,
                    f"other workers will count them stale after {grace_period(self.storage)} without one "
                    "and run their points again, whatever this worker's training reports",
                )
                return

    def __enter__(self) -> Heartbeat:
        if self.interval is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
