"""Storage URLs: a bad one is one line naming it and the fix, exit 2, and the password is never shown."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import threading
import warnings
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import PrivatePostgres, skip_or_fail

from hpo import cli
from hpo.errors import StorageError, first_line
from hpo.tuning.storage import parse_url, redact

INITDB_SCRIPT = Path(__file__).resolve().parents[1] / "docker" / "initdb" / "10-hpo-reader.sh"

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


# --------------------------------------------------------------------------- passwords with @ / % :

#: Passwords as written in a URL: each special character alone, then together (the tail after an
#: ``@`` is what SQLAlchemy's parser took for the host), at the ends, doubled. Their parts are long
#: and unlike anything else in a URL or a message, so finding one in a text means it leaked.
PASSWORDS = [
    "Qx7pw@Zr4kq",
    "Qx7pw/Zr4kq",
    "Qx7pw%Zr4kq",
    "Qx7pw:Zr4kq",
    "Qx7pw@Zr4kq:Wm2vb/Ty8nc%40Hb3jd",
    "@Qx7pw:Zr4kq/",
    "Qx7pw@@Zr4kq//Wm2vb::Ty8nc",
    "Qx7pw%2FZr4kq%3AWm2vb%40",  # percent-escapes, decoded as in any URL
    "p@ss:w/rd%40",  # short parts: checked by the exact expected text only
]
SPECIAL = re.compile(r"[@/%:]+")


def _parts(password: str) -> list[str]:
    """The password, its decoded form and the pieces between its special characters (those of
    at least 4 characters: shorter ones like "ss" or "40" occur in any text)."""
    pieces = [*SPECIAL.split(password), *SPECIAL.split(unquote(password))]
    return [password, unquote(password), *(p for p in pieces if len(p) >= 4)]


def _assert_hidden(text: str, password: str) -> None:
    for part in _parts(password):
        assert part not in text, (part, text)


@pytest.mark.parametrize("password", PASSWORDS)
def test_redact_hides_everything_up_to_the_last_at(password: str) -> None:
    url = f"postgresql+psycopg://hpo:{password}@db.example:5432/hpo?sslmode=require&application_name=x"
    shown = redact(url)
    assert shown == "postgresql+psycopg://hpo:***@db.example:5432/hpo?sslmode=require&application_name=x"
    _assert_hidden(shown, password)
    for scheme in ("postgresql", "mysql+pymysql", "anything"):  # any scheme, parsed or not
        assert redact(f"{scheme}://hpo:{password}@h/db") == f"{scheme}://hpo:***@h/db"


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_password_with_special_characters_connects_where_the_url_says(password: str) -> None:
    parsed = parse_url(f"postgresql+psycopg://hpo:{password}@db.example:5432/hpo?sslmode=require")
    assert (parsed.username, parsed.host, parsed.port, parsed.database) == ("hpo", "db.example", 5432, "hpo")
    assert parsed.password == unquote(password)
    assert dict(parsed.query) == {"sslmode": "require"}


def test_redact_keeps_urls_without_a_password_and_hides_a_query_password() -> None:
    for url in (
        "postgresql+psycopg://hpo@db:5432/hpo",
        "postgresql+psycopg://db/hpo?options=a:b@c",  # an @ in the query, no user: nothing to hide
        "sqlite:////tmp/with:colon@at.db",
        "sqlite://",
    ):
        assert redact(url) == url
    assert redact("postgresql://db/hpo?user=hpo&password=Qx7pw@Zr4kq&x=1") == (
        "postgresql://db/hpo?user=hpo&password=***&x=1"
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens there


def _status_error(capsys: pytest.CaptureFixture[str], url: str) -> str:
    code = cli.main(["status", "--config", "quick", "--storage", url])
    out, err = capsys.readouterr()
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("password", [p for p in PASSWORDS if p != "p@ss:w/rd%40"])
def test_cannot_open_storage_line_shows_no_part_of_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], password: str
) -> None:
    monkeypatch.chdir(tmp_path)
    port = _closed_port()
    err = _status_error(capsys, f"postgresql+psycopg://hpo:{password}@127.0.0.1:{port}/hpo")
    assert f"cannot open storage postgresql+psycopg://hpo:***@127.0.0.1:{port}/hpo (" in err, err
    _assert_hidden(err, password)
    # the same from the environment: the URL without the password, the password beside it
    monkeypatch.setenv("HPO_STORAGE_PASSWORD", password)
    err = _status_error(capsys, f"postgresql+psycopg://hpo@127.0.0.1:{port}/hpo")
    assert "cannot open storage" in err
    _assert_hidden(err, password)


def test_a_password_in_the_url_and_in_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_STORAGE_PASSWORD", "Ty8nc:Hb3jd")
    err = _status_error(capsys, "postgresql+psycopg://hpo:Qx7pw@Zr4kq@127.0.0.1:1/hpo")
    assert "HPO_STORAGE_PASSWORD is set too" in err
    _assert_hidden(err, "Qx7pw@Zr4kq")
    _assert_hidden(err, "Ty8nc:Hb3jd")
    assert not list(tmp_path.iterdir())


def test_a_library_message_quoting_the_password_is_hidden() -> None:
    """A driver's exception text that quotes the connection string, as it reaches an error line,
    an outage warning or a failed trial's record (all go through first_line or HpoError)."""
    password = "Qx7pw@Zr4kq:Wm2vb/Ty8nc%40Hb3jd"
    parse_url(f"postgresql+psycopg://hpo:{password}@db:5432/hpo")  # registers it, as opening does
    quoting = RuntimeError(f"invalid dsn: password={unquote(password)} host=db; raw {password}")
    _assert_hidden(first_line(quoting), password)
    _assert_hidden(first_line(quoting, limit=20), password)  # hidden before it is cut
    _assert_hidden(str(StorageError(f"cannot open storage ({quoting})")), password)


# --------------------------------------------------------------------------- on a real server


def _http(port: int, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.postgres
def test_passwords_and_the_dashboards_read_only_role_on_a_real_server(
    private_postgres: PrivatePostgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Compose's database on a private server that checks passwords (scram-sha-256): the workers'
    role ``hpo`` owns it, ``docker/initdb/10-hpo-reader.sh`` made ``hpo_reader``. Passwords with
    ``@ : / %`` connect from the URL and from HPO_STORAGE_PASSWORD; a wrong one is one line that
    shows none of it; hpo_reader reads the tables hpo made later and may change nothing, even
    through a dashboard started with writes allowed."""
    import shutil
    import subprocess

    import optuna
    import psycopg
    from psycopg import sql

    from hpo.present import dashboard
    from hpo.tuning import storage

    if shutil.which("psql") is None:
        skip_or_fail("psql (the init script's client) is missing", "HPO_REQUIRE_POSTGRES")
    monkeypatch.chdir(tmp_path)
    owner_password = "Qx7pw@Zr4kq:Wm2vb/Ty8nc%40Hb3jd"  # literal: its "%40" is three characters
    reader_password = "Rd3rx@Yq5mz:Zz9wk/Pp4t%"
    where = f"127.0.0.1:{private_postgres.port}/hpo"
    with psycopg.connect(f"postgresql://postgres@{where}", autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE hpo LOGIN SUPERUSER PASSWORD {}").format(sql.Literal(owner_password))
        )
        admin.execute("ALTER DATABASE hpo OWNER TO hpo")
        subprocess.run(
            ["sh", str(INITDB_SCRIPT)],
            env={
                "PATH": os.environ["PATH"],
                "POSTGRES_USER": "hpo",
                "POSTGRES_DB": "hpo",
                "HPO_READER_PASSWORD": reader_password,
                "PGHOST": "127.0.0.1",
                "PGPORT": str(private_postgres.port),
            },
            check=True,
            capture_output=True,
        )
        (private_postgres.dir / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        admin.execute("SELECT pg_reload_conf()")

    # a wrong password: one line, none of it shown
    monkeypatch.setenv("HPO_STORAGE_PASSWORD", "Wr0ngq@Kx7pv:Wd9zj/x%")
    assert cli.main(["status", "--config", "quick", "--storage", f"postgresql+psycopg://hpo@{where}"]) == 2
    err = capsys.readouterr().err
    assert "password authentication failed" in err and len(err.strip().splitlines()) == 1, err
    _assert_hidden(err, "Wr0ngq@Kx7pv:Wd9zj/x%")
    monkeypatch.delenv("HPO_STORAGE_PASSWORD")

    # the owner's password written into the URL as it is (only its % encoded), then from the
    # environment; the tables are made now, after hpo_reader was
    st = storage.open_storage(f"postgresql+psycopg://hpo:{owner_password.replace('%', '%25')}@{where}")
    study = optuna.create_study(study_name="look", storage=st)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # heartbeats are meant for optimize; a test asks
        trial = study.ask()
    trial.set_user_attr("kept", "original")
    monkeypatch.setenv("HPO_STORAGE_PASSWORD", owner_password)
    assert [
        s.study_name for s in storage.open_storage(f"postgresql+psycopg://hpo@{where}").get_all_studies()
    ] == ["look"]

    monkeypatch.setenv("HPO_STORAGE_PASSWORD", reader_password)
    reader = storage.open_storage(f"postgresql+psycopg://hpo_reader@{where}")
    assert reader.get_trial(trial._trial_id).user_attrs == {"kept": "original"}
    with pytest.raises(optuna.exceptions.StorageInternalError) as refused:
        reader.set_trial_user_attr(trial._trial_id, "kept", "changed")
    assert "permission denied for table" in str(refused.value.__cause__)
    server = dashboard.make_server(reader, artifacts=None, host="127.0.0.1", port=0, allow_writes=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = int(server.server_address[1])
        status, body = _http(port, "GET", "/api/studies")
        assert status == 200 and json.loads(body)["study_summaries"][0]["study_name"] == "look"
        status, _ = _http(port, "DELETE", f"/api/studies/{study._study_id}")
        assert status == 500  # the database refused: the role, not the middleware, said no
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert [s.study_name for s in st.get_all_studies()] == ["look"]
    assert st.get_trial(trial._trial_id).user_attrs == {"kept": "original"}
    for s in (st, reader):
        s.engine.dispose()
