"""A study file's TOML read into tables, with ``--set KEY=VALUE`` overrides applied (before
:mod:`hpo.plan` validates them): each problem one :class:`~hpo.errors.ConfigError` line naming the
file and the fix."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpo.errors import ConfigError

TOP_LEVEL = ("pipeline", "data", "defaults", "report", "stages")


def read_toml(path: Path) -> dict[str, Any]:
    shown = str(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such study file; see studies/ for the shipped ones") from None
    except IsADirectoryError:
        raise ConfigError(f"{shown}: is a directory; pass a study file (.toml)") from None
    except PermissionError:
        raise ConfigError(f"{shown}: cannot be read (permission denied); check its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{shown}: is not a text file; pass a TOML study file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{shown}: not valid TOML ({exc}); fix the syntax") from None


def _override_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string (fp32, tpe, ...)


def apply_overrides(shown: str, raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The study file's tables with each ``KEY=VALUE`` (a dotted key path) set."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(
                f"--set {item}: expected KEY=VALUE with a dotted key, e.g. --set defaults.precision=fp32"
            )
        if parts[0] not in TOP_LEVEL:
            raise ConfigError(
                f"--set {item}: {parts[0]!r} is not a table; top-level tables: {', '.join(TOP_LEVEL)}"
            )
        table = raw
        for i, part in enumerate(parts[:-1]):
            nxt = table.setdefault(part, {})
            if not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"--set {item}: {where} in {shown} is a value, not a table; set it directly"
                )
            table = nxt
        table[parts[-1]] = _override_value(value.strip())
    return raw
