"""The dashboard is read-only unless told otherwise: optuna-dashboard's API deletes studies, tells
trials and rewrites attributes and notes, unauthenticated, so `hpo dashboard` answers every method
but GET and HEAD with 405 and the storage stays as it was; `--allow-writes` lets them through."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo import cli
from hpo.present import dashboard
from hpo.tuning import storage


@dataclass
class Served:
    url: str  # the storage's URL
    port: int
    study_id: int
    done_id: int  # a COMPLETE trial
    running_id: int  # a RUNNING trial with a user attribute


def _populate(url: str) -> tuple[int, int, int]:
    study = optuna.create_study(study_name="look", storage=url)
    done = study.ask()
    study.tell(done, 0.5)
    running = study.ask()
    running.set_user_attr("kept", "original")  # a finished trial's attributes cannot change at all
    return study._study_id, done._trial_id, running._trial_id


@contextlib.contextmanager
def _serve(tmp_path: Path, *, allow_writes: bool) -> Iterator[Served]:
    """The real server (``dashboard.make_server``) on a free 127.0.0.1 port, in a thread, over a
    SQLite storage with one study, a finished trial and a running one."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    ids = _populate(url)
    server = dashboard.make_server(
        storage.open_storage(url),
        artifacts=storage.artifact_store(tmp_path / "artifacts"),
        host="127.0.0.1",
        port=0,
        allow_writes=allow_writes,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(url, int(server.server_address[1]), *ids)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Served]:
    with _serve(tmp_path, allow_writes=False) as served:
        yield served


@pytest.fixture
def writable(tmp_path: Path) -> Iterator[Served]:
    with _serve(tmp_path, allow_writes=True) as served:
        yield served


def _request(port: int, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _writes(s: Served) -> list[tuple[str, str, Any]]:
    """One request per kind of write optuna-dashboard's API offers on these studies and trials."""
    return [
        ("POST", f"/api/trials/{s.running_id}/user-attrs", {"user_attrs": {"kept": "changed"}}),
        ("PUT", f"/api/studies/{s.study_id}/{s.done_id}/note", {"version": 1, "body": "changed"}),
        ("PUT", f"/api/studies/{s.study_id}/note", {"version": 1, "body": "changed"}),
        ("POST", f"/api/trials/{s.running_id}/tell", {"state": "Fail"}),
        ("POST", f"/api/studies/{s.study_id}/rename", {"study_name": "renamed"}),
        ("POST", "/api/studies", {"study_name": "new", "directions": ["minimize"]}),
        ("delete", f"/api/studies/{s.study_id}", None),  # bottle upper-cases the method itself
        ("DELETE", f"/api/studies/{s.study_id}", None),
    ]


def _snapshot(url: str) -> list[tuple[str, dict[str, Any], list[tuple[str, Any, Any, Any]]]]:
    """Every study of the storage: its name, system attributes (notes live there) and trials."""
    rdb = optuna.storages.RDBStorage(url)
    try:
        return [
            (
                s.study_name,
                s.system_attrs,
                [
                    (t.state.name, t.values, t.user_attrs, t.system_attrs)
                    for t in rdb.get_all_trials(s._study_id)
                ],
            )
            for s in rdb.get_all_studies()
        ]
    finally:
        rdb.engine.dispose()


@pytest.mark.parametrize("allow_writes", [False, True], ids=["read-only", "allow-writes"])
def test_reads_are_served(tmp_path: Path, allow_writes: bool) -> None:
    with _serve(tmp_path, allow_writes=allow_writes) as served:
        status, _, body = _request(served.port, "GET", "/api/studies")
        assert status == 200
        assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["look"]
        status, _, body = _request(served.port, "GET", f"/api/studies/{served.study_id}")
        assert status == 200 and len(json.loads(body)["trials"]) == 2
        status, _, _ = _request(served.port, "HEAD", "/api/studies")
        assert status == 200
        status, _, body = _request(served.port, "GET", f"/csv/{served.study_id}")
        assert status == 200 and body.startswith(b"Number,State")


def test_read_only_answers_405_and_changes_nothing(read_only: Served) -> None:
    before = _snapshot(read_only.url)
    for method, path, body in _writes(read_only):
        status, headers, text = _request(read_only.port, method, path, body)
        assert status == 405, (method, path, status, text)
        assert headers["allow"] == "GET, HEAD"
        assert headers["content-type"].startswith("text/plain")
        lines = text.decode().strip().splitlines()
        assert len(lines) == 1 and "--allow-writes" in lines[0], text
    assert _snapshot(read_only.url) == before
    study = optuna.load_study(study_name="look", storage=read_only.url)
    assert study.get_trials()[1].user_attrs == {"kept": "original"}
    assert study.get_trials()[1].state == optuna.trial.TrialState.RUNNING


def test_allow_writes_lets_the_api_change_the_storage(writable: Served) -> None:
    """The same requests pass with ``allow_writes=True``: the read-only test can fail."""
    status, _, _ = _request(
        writable.port,
        "POST",
        f"/api/trials/{writable.running_id}/user-attrs",
        {"user_attrs": {"kept": "changed"}},
    )
    assert status == 204
    trial = optuna.load_study(study_name="look", storage=writable.url).get_trials()[1]
    assert trial.user_attrs == {"kept": "changed"}
    status, _, _ = _request(writable.port, "DELETE", f"/api/studies/{writable.study_id}")
    assert status == 204
    assert _snapshot(writable.url) == []


@pytest.mark.parametrize("flag", [[], ["--allow-writes"]])
def test_the_command_passes_allow_writes_through(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: list[str],
) -> None:
    seen: dict[str, Any] = {}

    def fake_make_server(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise OSError(98, "Address already in use")  # stops the command before it serves

    monkeypatch.setattr(dashboard, "make_server", fake_make_server)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    code = cli.main(["dashboard", "--storage", url, "--artifacts", str(tmp_path / "a"), *flag])
    assert code == 2 and "--port" in capsys.readouterr().err
    assert seen["allow_writes"] is bool(flag)
    assert seen["host"] == "127.0.0.1"
