"""Locks that let several workers share a study.

* PostgreSQL: a session-level advisory lock (``pg_advisory_lock``) keyed by the study name,
  held only while a worker decides which trials to take and claims them. It lives on its own
  connection; if that connection dies mid-claim the server releases the lock, which the
  runner's ownership check after every claim catches (a point claimed twice steps aside).
* SQLite: one working process per database file, held with ``filelock`` on ``<db>.workers.lock``
  for the life of the process. SQLite serialises writers with a file lock and several worker
  processes end in "database is locked" in the middle of a run; a second process is told so at
  once, with what to use instead.
* Anything else (in-memory SQLite in tests): a process-local lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import filelock
import optuna
import sqlalchemy

from hpo.errors import StorageError
from hpo.tuning.storage import engine_of, outages_of

_LOCAL = threading.Lock()
_HELD: dict[str, filelock.BaseFileLock] = {}


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def claim_lock(storage: optuna.storages.BaseStorage, name: str) -> Iterator[None]:
    """Held while a worker picks and claims the next trials of study ``name``."""
    engine = engine_of(storage)
    if engine is None or engine.dialect.name != "postgresql":
        with _LOCAL:
            yield
        return
    outages = outages_of(storage)

    def acquire() -> sqlalchemy.engine.Connection:
        conn = engine.connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _key(name)})
        except BaseException:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                conn.invalidate()
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                conn.close()
            raise
        return conn

    conn = outages.call(acquire) if outages is not None else acquire()
    try:
        yield
    finally:
        _release(conn, name)


def _release(conn: sqlalchemy.engine.Connection, name: str) -> None:
    """Unlock and close; a connection the server already ended took its lock with it.

    Closing can fail after the unlock succeeded (the server shut down in between: the rollback
    in ``close`` raises and leaves the connection closed), so each step tolerates the one before
    it having ended the connection.
    """
    try:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _key(name)})
    except sqlalchemy.exc.SQLAlchemyError:
        if not conn.closed and not conn.invalidated:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                conn.invalidate()
    with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
        conn.close()


def sqlite_file(storage: optuna.storages.BaseStorage) -> Path | None:
    engine = engine_of(storage)
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
    lock = filelock.FileLock(f"{db}.workers.lock", blocking=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise StorageError(
            f"another hpo process is already running a stage on {shown_url}; SQLite cannot serve "
            "several workers (they end in 'database is locked'): run one worker, or give every "
            "worker a PostgreSQL storage (--storage postgresql+psycopg://user@host/db)"
        ) from None
    _HELD[str(db)] = lock
