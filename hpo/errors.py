"""One exception hierarchy. Every message is one line that names the thing and the fix."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name when it has none), for logs
    and one-line errors that quote a library's exception."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class HpoError(Exception):
    """Base of every error ``hpo`` reports to its user (exit status 2, no traceback)."""

    exit_code = 2


class DataError(HpoError):
    """A data file or the prepared-data cache is missing or malformed."""


class DataFileError(DataError):
    """A problem at a place in a data file: ``FILE:LINE: problem. fix``."""

    def __init__(self, file: str, problem: str, *, line: int | None = None, fix: str = "") -> None:
        self.file = file
        self.line = line
        self.problem = problem
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
