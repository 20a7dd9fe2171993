"""One exception hierarchy. Every message is one line that names the thing and the fix.

Secrets (a storage password) are registered with :func:`keep_secret` where they are read, and
every one-line error (:class:`HpoError`) and every quoted library message (:func:`first_line`)
has them replaced by ``***``: a driver's exception may quote the connection string it was given,
and the code that prints the line (the command line, a log warning, a failed trial's record)
cannot know which URL the text came from.
"""

from __future__ import annotations

import threading

HIDDEN = "***"
#: Shorter secrets are not hidden in text: replacing every "a" of a message would garble it, and
#: a password of one or two characters is no secret anyway.
MIN_SECRET_LENGTH = 3

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def keep_secret(*values: str | None) -> None:
    """Never show these strings in an error line or a quoted exception text (see the module)."""
    with _secrets_lock:
        _secrets.update(v for v in values if v is not None and len(v) >= MIN_SECRET_LENGTH)


def hide_secrets(text: str) -> str:
    """``text`` with every registered secret replaced by ``***`` (the longest first, so a secret
    that contains another is hidden whole)."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, HIDDEN)
    return text


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name when it has none), for logs
    and one-line errors that quote a library's exception; secrets hidden before it is cut, so a
    cut never leaves the start of one."""
    text = hide_secrets(str(exc)).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class HpoError(Exception):
    """Base of every error ``hpo`` reports to its user (exit status 2, no traceback)."""

    exit_code = 2

    def __str__(self) -> str:
        return hide_secrets(super().__str__())


class DataError(HpoError):
    """A data file or the prepared-data cache is missing or malformed."""


class DataFileError(DataError):
    """A problem at a place in a data file: ``FILE:LINE: problem. fix``."""

    def __init__(self, file: str, problem: str, *, line: int | None = None, fix: str = "") -> None:
        self.file = file
        self.line = line
        self.problem = problem
        self.fix = fix
        where = f"{file}:{line}" if line is not None else file
        message = f"{where}: {problem}"
        if fix:
            message += f"; {fix}"
        super().__init__(message)


class ConfigError(HpoError):
    """A study file or a command-line setting is invalid."""


class StorageError(HpoError):
    """The Optuna storage cannot be opened or used."""


class PrerequisiteError(HpoError):
    """A stage was asked to run before the stages it builds on are complete."""
