"""Storage URLs: a bad one is one line naming it and the fix, exit 2, and the password is never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo import cli
from hpo.tuning.storage import redact

SECRET = "s3cr3t-pw"
BAD_URLS = [
    (f"postgresql+psycopg://hpo:{SECRET}@127.0.0.1:notaport/hpo", "is not a SQLAlchemy URL"),
    (f"postgresql+psycopg://hpo:{SECRET}@127.0.0.1:99999/hpo", "has port 99999; use 1-65535"),
    (f"oracle://hpo:{SECRET}@127.0.0.1:1521/hpo", "unsupported database 'oracle'"),
    ("not a url at all", "is not a SQLAlchemy URL"),
    (f"postgresql+psycopg://hpo:{SECRET}@127.0.0.1:1/hpo", "cannot open storage"),  # nothing listens on 1
    ("sqlite:////no/such/directory/hpo.db", "does not exist; create it first"),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_bad_storage_url_is_one_line_without_the_password(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code = cli.main(["status", "--config", "quick", "--storage", url])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert SECRET not in out + err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written: no database file, no artifacts


def test_storage_from_the_environment_is_checked_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_STORAGE", f"postgresql://hpo:{SECRET}@127.0.0.1:0/hpo")
    assert cli.main(["run", "--config", "quick"]) == 2
    err = capsys.readouterr().err
    assert "port 0" in err and SECRET not in err and len(err.strip().splitlines()) == 1


def test_redact_hides_the_password_even_when_the_url_does_not_parse() -> None:
    assert redact(f"postgresql://hpo:{SECRET}@db:5432/hpo") == "postgresql://hpo:***@db:5432/hpo"
    assert SECRET not in redact(f"postgresql://hpo:{SECRET}@db:port/hpo")
    assert redact(f"weird:{SECRET}") == "***"
    assert redact("sqlite:///hpo.db") == "sqlite:///hpo.db"
