"""The Optuna storage every stage shares, the artifact store beside it, and riding out outages.

Default: a SQLite file ``hpo.db`` in the working directory and artifacts in ``./artifacts``.
Any SQLAlchemy URL (PostgreSQL for many workers) via ``--storage`` or ``$HPO_STORAGE``; the
artifact directory via ``--artifacts`` or ``$HPO_ARTIFACTS``.

**Passwords.** A URL may carry its password (``user:PASSWORD@host``; percent-escapes decoded, any
other character as written, ``@`` included), or be written without one and take it from
``$HPO_STORAGE_PASSWORD`` (taken literally: the compose file and the Kubernetes manifest pass it
so, and no one has to percent-encode a generated password). Either way the password reaches the
driver as a connection argument and is registered with :func:`hpo.errors.keep_secret`, and every
URL shown is :func:`redact`-ed, so it is never printed, logged or stored.

**Outages.** :class:`ResilientRDBStorage` is Optuna's ``RDBStorage`` whose every storage call
waits out a lost database: a call that fails because the server is unreachable (a connection
refused or dropped, the server restarting) is retried by tenacity with back-off (0.5 s doubling
to 5 s), with one warning per outage for the whole process (all threads share :class:`Outages`)
and a note when it ends. So every layer above it
(Optuna's ``ask``/``tell``/``report``, heartbeat threads, hpo's records, the dashboard figures)
carries on after a restart without code of its own. Past ``$HPO_STORAGE_OUTAGE_LIMIT`` seconds
(default 180) the call fails with one :class:`~hpo.errors.StorageError` line. A retried write
may have committed before its connection died: Optuna's state changes are compare-and-set
(``set_trial_state_values``), and the grid runner re-reads a trial's state before it tells it
again, so a repeated write is detected rather than applied twice.

Errors that are not outages (a constraint violated, a bad value) are raised at once.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import optuna
import sqlalchemy
import tenacity
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import make_url

from hpo.errors import HIDDEN, StorageError, first_line, keep_secret

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///hpo.db"
DEFAULT_ARTIFACTS = "artifacts"
HEARTBEAT_INTERVAL = 20  # seconds; $HPO_HEARTBEAT_INTERVAL
GRACE_PERIOD = 60  # seconds without a heartbeat before a RUNNING trial is stale; $HPO_GRACE_PERIOD
MAX_RETRY = 3  # re-runs of a trial whose worker died
PASSWORD_ENV = "HPO_STORAGE_PASSWORD"  # the password of a URL written without one
OUTAGE_LIMIT = 180.0  # seconds a storage call waits for an unreachable database; $HPO_STORAGE_OUTAGE_LIMIT
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 5.0

T = TypeVar("T")


def env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise StorageError(f"{name}={text!r} is not a number of seconds; unset it or fix it") from None
    if not value > 0:
        raise StorageError(f"{name}={value} must be more than 0 seconds")
    return value


def storage_url(url: str | None = None) -> str:
    return url or os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE


def artifact_dir(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("HPO_ARTIFACTS") or DEFAULT_ARTIFACTS)


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password of ``url`` is written: everything between ``scheme://user:`` and the
    last ``@``, or None when it has none.

    Read by hand, not with SQLAlchemy's parser: that parser ends the password at its first ``@``
    and reads the rest as the host, so a password with an unencoded ``@`` was partly shown (and
    connected to as a host name). A password may hold ``@ : / ? %``; the user holds no ``:``,
    ``/`` or ``?``; a URL with no user (``sqlite:///...``) has none. A query value with an
    unencoded ``@`` behind a user and a ``:`` is read as part of a password, which hides too much
    rather than too little: write such an ``@`` as ``%40``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or rest.startswith("/"):
        return None
    at = rest.rfind("@")
    if at < 0:
        return None
    user, colon, _ = rest[:at].partition(":")
    if not colon or "/" in user or "?" in user:
        return None
    start = len(scheme) + len(sep) + len(user) + 1
    return start, len(scheme) + len(sep) + at


_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd|pwd)=)[^&]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL with its password hidden (and a ``password=`` query value); the user, host, port,
    database and the rest of the query stay. Text without ``://`` is hidden whole: it is no URL,
    so nothing says which part of it is secret."""
    if "://" not in url:
        return HIDDEN
    span = _password_span(url)
    if span is not None:
        url = url[: span[0]] + HIDDEN + url[span[1] :]
    return _QUERY_PASSWORD.sub(lambda m: m.group(1) + HIDDEN, url)


def _without_password(url: str) -> tuple[str, str | None]:
    """``url`` with its password (and the ``:`` before it) taken out, and the password as written."""
    span = _password_span(url)
    if span is None:
        return url, None
    return url[: span[0] - 1] + url[span[1] :], url[span[0] : span[1]]


# --------------------------------------------------------------------------- outages


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the database could not be reached."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if type(current).__module__.startswith("psycopg") and type(current).__name__ in (
            "OperationalError",
            "InterfaceError",
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


class Outages:
    """One process's view of the database's availability: retries calls through an outage,
    logs one warning per outage, and remembers when the last one ended."""

    def __init__(self, shown_url: str, limit: float) -> None:
        self.shown_url = shown_url
        self.limit = limit
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self.last_recovery: float | None = None  # time.monotonic() when the last outage ended
        self.count = 0

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, retried with tenacity (exponential back-off) while the database is away."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_outage),
            wait=tenacity.wait_exponential(multiplier=_BACKOFF_FIRST, max=_BACKOFF_MAX),
            before_sleep=lambda state: self._failed(state.outcome.exception() if state.outcome else None),
            reraise=True,
        )
        result = retrying(fn)
        self._succeeded()
        return result

    def _failed(self, exc: BaseException | None) -> None:
        assert exc is not None
        now = time.monotonic()
        with self._lock:
            if self._down_since is None:
                self._down_since = now
                self.count += 1
                logger.warning(
                    "storage %s unreachable (%s); waiting up to %.0f s for it to return",
                    self.shown_url,
                    _first_line(exc),
                    self.limit,
                )
            down_for = now - self._down_since
        if down_for > self.limit:
            raise StorageError(
                f"storage {self.shown_url} unreachable for {down_for:.0f} s ({_first_line(exc)}); "
                "start the database, then start the workers again (HPO_STORAGE_OUTAGE_LIMIT sets the wait)"
            ) from None

    def _succeeded(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            took = time.monotonic() - self._down_since
            self._down_since = None
            self.last_recovery = time.monotonic()
        logger.warning("storage %s reachable again after %.0f s; carrying on", self.shown_url, took)

    def recovered_within(self, seconds: float) -> bool:
        """Whether an outage ended less than ``seconds`` ago (or is going on now)."""
        if self._down_since is not None:
            return True
        return self.last_recovery is not None and time.monotonic() - self.last_recovery < seconds


def _first_line(exc: BaseException) -> str:
    """The first line of the root cause (the driver's message, not SQLAlchemy's wrapper)."""
    root: BaseException = exc
    while root.__cause__ is not None:
        root = root.__cause__
    return first_line(root, 160)


_RETRIED = (
    "check_trial_is_updatable",
    "create_new_study",
    "create_new_trial",
    "delete_study",
    "get_all_studies",
    "get_all_trials",
    "get_best_trial",
    "get_n_trials",
    "get_study_directions",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_system_attrs",
    "get_study_user_attrs",
    "get_trial",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "get_trial_params",
    "get_trial_system_attrs",
    "get_trial_user_attrs",
    "record_heartbeat",
    "set_study_system_attr",
    "set_study_user_attr",
    "set_trial_intermediate_value",
    "set_trial_param",
    "set_trial_state_values",
    "set_trial_system_attr",
    "set_trial_user_attr",
    # private ones Optuna's own callers use: fail_stale_trials, and the cache Optuna wraps an
    # RDB storage in (optuna/storages/_cached_storage.py calls these on its backend)
    "_create_new_trial",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
    "_get_trials",
    "_set_trial_param",
)


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose calls wait out database outages (see the module docstring)."""

    outages: Outages

    def __init__(self, url: str, *, outages: Outages, **kwargs: Any) -> None:
        self.outages = outages
        super().__init__(url, **kwargs)


def _retrying(name: str) -> Callable[..., Any]:
    @functools.wraps(getattr(optuna.storages.RDBStorage, name))
    def call(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        method = getattr(optuna.storages.RDBStorage, name)
        return self.outages.call(lambda: method(self, *args, **kwargs))

    return call


for _name in _RETRIED:
    setattr(ResilientRDBStorage, _name, _retrying(_name))


def outages_of(storage: optuna.storages.BaseStorage) -> Outages | None:
    """The outage tracker behind ``storage`` (Optuna wraps an RDB storage in a cache)."""
    inner = getattr(storage, "_backend", storage)
    return getattr(inner, "outages", None)


def engine_of(storage: optuna.storages.BaseStorage) -> sqlalchemy.engine.Engine | None:
    inner = getattr(storage, "_backend", storage)
    engine = getattr(inner, "engine", None)
    return engine if isinstance(engine, sqlalchemy.engine.Engine) else None


# --------------------------------------------------------------------------- opening


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


def _parse(url: str) -> tuple[sqlalchemy.engine.URL, str | None]:
    """The URL parsed without its password, and the password (decoded) it connects with: the
    URL's own, or ``$HPO_STORAGE_PASSWORD``; or one line naming the problem (never the password).

    SQLAlchemy parses only the password-less rest: what it parses of a password can be wrong (an
    ``@`` in it, see :func:`_password_span`), and its messages quote what they failed to parse.
    """
    shown = redact(url)
    bare, written = _without_password(url)
    password = unquote(written) if written is not None else None  # %40 is "@", as in any URL
    env_password = os.environ.get(PASSWORD_ENV) or None
    keep_secret(written, password, env_password)
    example = "use e.g. sqlite:///hpo.db or postgresql+psycopg://user@127.0.0.1:5432/db"
    try:
        parsed = make_url(bare)
        port = parsed.port  # a malformed port is only noticed here
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise StorageError(f"storage URL {shown!r} is not a SQLAlchemy URL; {example}") from None
    for key in ("password", "passwd", "pwd"):
        value = parsed.query.get(key)
        keep_secret(*((value,) if isinstance(value, str) else value or ()))
    if port is not None and not 0 < port < 65536:
        raise StorageError(f"storage URL {shown!r} has port {port}; use 1-65535")
    if parsed.get_backend_name() not in ("sqlite", "postgresql", "mysql"):
        raise StorageError(
            f"storage URL {shown!r}: unsupported database {parsed.get_backend_name()!r}; {example}"
        )
    if env_password is not None and parsed.get_backend_name() != "sqlite":
        if password is not None:
            raise StorageError(
                f"storage URL {shown!r} has a password and ${PASSWORD_ENV} is set too; "
                f"take the password out of the URL (or unset ${PASSWORD_ENV})"
            )
        password = env_password
    return parsed, password


def parse_url(url: str) -> sqlalchemy.engine.URL:
    """The URL parsed, with the password it connects with (see :func:`_parse`), or one line
    naming the problem (never the password)."""
    parsed, password = _parse(url)
    return parsed if password is None else parsed.set(password=password)


def open_storage(url: str | None = None) -> ResilientRDBStorage:
    """Open (and create the schema of) an RDB storage, with heartbeats for stale-trial recovery.

    The password goes to the driver as a connection argument, never inside the URL Optuna and
    SQLAlchemy hold: so no message of theirs that quotes the URL can show it."""
    url = storage_url(url)
    shown = redact(url)
    parsed, password = _parse(url)
    engine_kwargs: dict[str, Any] = {}
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            parent = Path(parsed.database).expanduser().resolve().parent
            if not parent.is_dir():
                raise StorageError(f"storage {shown}: directory {parent} does not exist; create it first")
        connect_args["timeout"] = 60
    else:
        engine_kwargs["pool_pre_ping"] = True
        if password is not None:
            connect_args["password"] = password
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = 10
    engine_kwargs["connect_args"] = connect_args
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    url = parsed.render_as_string(hide_password=False)  # has no password: it was parsed without
    outages = Outages(shown, env_seconds("HPO_STORAGE_OUTAGE_LIMIT", OUTAGE_LIMIT))
    for attempt in range(1, 6):
        try:
            with warnings.catch_warnings():
                # Heartbeats are marked experimental; they are what recovers trials of killed workers.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return ResilientRDBStorage(
                    url,
                    outages=outages,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=_env_int("HPO_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL),
                    grace_period=_env_int("HPO_GRACE_PERIOD", GRACE_PERIOD),
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                )
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ModuleNotFoundError, ValueError) as exc:
            if attempt < 5 and _schema_race(exc):
                # Workers started together on an empty database all create Optuna's tables; the
                # losers of that race find them made and open the storage on a second try.
                time.sleep(0.2 * attempt)
                continue
            raise StorageError(
                f"cannot open storage {shown} ({_first_line(exc)}); check the URL and its password "
                f"(or ${PASSWORD_ENV}), that the server is running, and the --storage / HPO_STORAGE setting"
            ) from None
    raise AssertionError("unreachable")


def _schema_race(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlalchemy.exc.IntegrityError | sqlalchemy.exc.ProgrammingError) and (
        "already exists" in text or "duplicate key" in text
    )


def artifact_store(path: str | Path | None = None) -> FileSystemArtifactStore:
    directory = artifact_dir(path)
    directory.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(directory))
