"""The Optuna storage every stage shares, and the artifact store beside it.

Default: a SQLite file ``hpo.db`` in the working directory and artifacts in ``./artifacts``.
Any SQLAlchemy URL (PostgreSQL for many workers) via ``--storage`` or ``$HPO_STORAGE``; the
artifact directory via ``--artifacts`` or ``$HPO_ARTIFACTS``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import make_url

from hpo.errors import StorageError

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///hpo.db"
DEFAULT_ARTIFACTS = "artifacts"
HEARTBEAT_INTERVAL = 20  # seconds; $HPO_HEARTBEAT_INTERVAL
GRACE_PERIOD = 60  # seconds without a heartbeat before a RUNNING trial is stale; $HPO_GRACE_PERIOD
MAX_RETRY = 3  # re-runs of a trial whose worker died


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise StorageError(f"{name}={text!r} is not a whole number of seconds; unset it or fix it") from None
    if value < 1:
        raise StorageError(f"{name}={value} must be at least 1 second")
    return value


def storage_url(url: str | None = None) -> str:
    return url or os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE


def artifact_dir(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("HPO_ARTIFACTS") or DEFAULT_ARTIFACTS)


def _redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_storage(url: str | None = None) -> optuna.storages.RDBStorage:
    """Open (and create the schema of) an RDB storage, with heartbeats for stale-trial recovery."""
    url = storage_url(url)
    shown = _redact(url)
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(
            f"storage URL {shown!r} is not a SQLAlchemy URL; use e.g. sqlite:///hpo.db or "
            "postgresql+psycopg://user@127.0.0.1:5432/db"
        ) from None
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            parent = Path(parsed.database).expanduser().resolve().parent
            if not parent.is_dir():
                raise StorageError(f"storage {shown}: directory {parent} does not exist; create it first")
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    try:
        with warnings.catch_warnings():
            # Heartbeats are marked experimental; they are what recovers trials of killed workers.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=_env_int("HPO_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL),
                grace_period=_env_int("HPO_GRACE_PERIOD", GRACE_PERIOD),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ModuleNotFoundError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(
            f"cannot open storage {shown} ({reason}); check the URL, that the server is running, "
            "and the --storage / HPO_STORAGE setting"
        ) from None


def artifact_store(path: str | Path | None = None) -> FileSystemArtifactStore:
    directory = artifact_dir(path)
    directory.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(directory))
