"""When a worker stops early: SIGTERM taken as a polite stop, and a deadline it does not claim past.

Batch schedulers end workers with SIGTERM: Slurm at a job's time limit (then SIGKILL after
``KillWait``, 30 s by default), on preemption and on ``scancel``; Kubernetes and docker stop
too. :func:`handle_sigterm` turns SIGTERM into :class:`Terminated` (a ``KeyboardInterrupt``, so
the runner's interruption path applies: the claimed trials are told FAIL, marked interrupted and
not held against their points, and the next claim of any worker runs them again, with no wait
for their heartbeats to go stale). The exception is raised only where that is safe: inside an
:func:`interruptible` region (the runner's training of a batch, whose only writes belong to the
trials it then fails, and its idle waits). Anywhere else (claiming, telling, writing a stage's
results) the request is remembered and :func:`check` raises it at the next safe point, which
comes within a batch's bookkeeping.

A :class:`Deadline` is the time by which the worker must be done (its job's end): the runner
does not claim a batch that its stage's longest finished trial says would not fit before it,
less :data:`MARGIN_SECONDS` for telling and leaving, and raises :class:`OutOfTime` instead. A
stage with no finished trial yet has no estimate and claims; SIGTERM at the time limit is the
backstop. Exit statuses (``hpo`` CLI): :data:`EXIT_TERMINATED` and :data:`EXIT_OUT_OF_TIME`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

from hpo.errors import ConfigError, HpoError

logger = logging.getLogger(__name__)

#: 128 + SIGTERM, the shell's status for a process ended by SIGTERM.
EXIT_TERMINATED = 143
#: EX_TEMPFAIL (sysexits.h): stopped before its deadline with nothing claimed; start it again later.
EXIT_OUT_OF_TIME = 75
#: Seconds kept before a deadline for telling a batch, leaving the registry and exiting.
MARGIN_SECONDS = 30.0


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop now, releasing the claimed trials for other workers."""


class OutOfTime(HpoError):
    """The next batch would not finish before the worker's deadline; nothing was claimed."""

    exit_code = EXIT_OUT_OF_TIME


class _State:
    requested = False
    depth = 0


_state = _State()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if not _state.requested:
        logger.warning("SIGTERM: stopping; trials this worker claimed are released for other workers")
    _state.requested = True
    if _state.depth > 0:
        raise Terminated


def handle_sigterm() -> None:
    """Take SIGTERM as a polite stop in this process (call from the main thread)."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def check() -> None:
    """Raise :class:`Terminated` if SIGTERM arrived while it could not be raised."""
    if _state.requested:
        raise Terminated


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A region where SIGTERM raises at once. The runner's training region writes only what
    belongs to the claimed trials (their attributes; the final stage's model artifact), and
    those trials are told FAIL when it raises: a write it cuts short leaves nothing that is
    read (at most an unreferenced artifact file)."""
    check()
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1


def reset() -> None:
    """Forget a SIGTERM already handled (tests; a process that goes on after one)."""
    _state.requested = False
    _state.depth = 0


@dataclass(frozen=True)
class Deadline:
    """The time (``time.time()`` seconds) by which this worker must be done, and where it came from."""

    at: float
    source: str

    def left(self) -> float:
        return self.at - time.time()

    def fits(self, seconds: float | None) -> bool:
        """Whether work estimated at ``seconds`` ends before the deadline, less the margin
        (unknown work fits: the first batch of a stage is the estimate of the rest)."""
        return seconds is None or time.time() + seconds + MARGIN_SECONDS <= self.at

    def describe(self) -> str:
        return f"{dt.datetime.fromtimestamp(self.at).isoformat(timespec='seconds')} ({self.source})"


def parse_time(value: str, *, source: str) -> float:
    """UNIX seconds, or an ISO 8601 time (local time unless it carries an offset), as ``squeue
    -o %e`` prints a job's end."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(
            f"{source}: {value!r} is not a time; give UNIX seconds or an ISO 8601 time such as "
            "2026-11-30T18:00:00"
        ) from None


def deadline(stop_at: str | None) -> Deadline | None:
    """The deadline from ``--stop-at``, else ``$HPO_STOP_AT``, else Slurm's ``$SLURM_JOB_END_TIME``
    (Slurm 23.02 and later; the shipped sbatch file sets HPO_STOP_AT from squeue before that)."""
    for source, value in (
        ("--stop-at", stop_at),
        ("HPO_STOP_AT", os.environ.get("HPO_STOP_AT")),
        ("SLURM_JOB_END_TIME", os.environ.get("SLURM_JOB_END_TIME")),
    ):
        if value:
            return Deadline(parse_time(value, source=source), source)
    return None
