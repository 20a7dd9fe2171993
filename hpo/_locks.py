"""Locks that let several workers share a stage.

* PostgreSQL: a session-level advisory lock (``pg_advisory_lock``) keyed by the study name,
  held only while a worker decides which grid point to take and claims it.
* SQLite: one stage-running process per database file (a non-blocking ``flock`` on
  ``<db>.workers.lock``). SQLite serialises writers with a file lock and several worker
  processes end in "database is locked" in the middle of a run; a second process is told so at
  once, with what to use instead.
* Anything else (in-memory SQLite in tests): a process-local lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import optuna
import sqlalchemy

from hpo.errors import StorageError

_LOCAL = threading.Lock()
_HELD: dict[str, IO[bytes]] = {}


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def claim_lock(storage: optuna.storages.BaseStorage, name: str) -> Iterator[None]:
    """Held while a worker picks and claims the next point of study ``name``."""
    engine = getattr(storage, "engine", None)
    if engine is not None and engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _key(name)})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _key(name)})
        return
    with _LOCAL:
        yield


def sqlite_file(storage: optuna.storages.BaseStorage) -> Path | None:
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database).resolve()


def exclusive_sqlite_worker(storage: optuna.storages.BaseStorage, shown_url: str) -> None:
    """Make this process the only one running stages on a SQLite file, or say what to do."""
    db = sqlite_file(storage)
    if db is None or str(db) in _HELD:
        return
    handle = open(f"{db}.workers.lock", "wb")  # noqa: SIM115 (held for the life of the process)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StorageError(
            f"another hpo process is already running a stage on {shown_url}; SQLite cannot serve "
            "several workers (they end in 'database is locked'): run one worker, or give every "
            "worker a PostgreSQL storage (--storage postgresql+psycopg://user@host/db)"
        ) from None
    _HELD[str(db)] = handle
