from __future__ import annotations

import importlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from hpo import data
from hpo.sections import DataSettings

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO.parent / "shared" / "data" / "msd-sample"


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test gets its own cache directory (nothing written to ~/.cache)."""
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "hpo-data"))
    yield


@pytest.fixture(autouse=True)
def _numerics_without_timing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipeline decides its numerics by timing this machine (hpo.tuning.numerics); a test's
    outcome must not depend on a timing, so every test's probes answer "fp32, eager" (a 1.0x
    gain) without timing anything, unless it is marked ``real_probe`` (the tests of the probes
    themselves). A test that forces another answer monkeypatches the same functions."""
    if request.node.get_closest_marker("real_probe") is not None:
        return
    from hpo.families.mlp import stacked
    from hpo.training import precision

    monkeypatch.setattr(precision, "probe", lambda shape: precision.Probe(1.0, 1.0, "fp32", 1.0))
    monkeypatch.setattr(stacked, "measure_compile", lambda *a, **k: precision.Timing(1.0, 1.0, 1.0))


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory: pytest.TempPathFactory) -> data.Prepared:
    """A 6,000-row synthetic dataset prepared once for the session."""
    root = tmp_path_factory.mktemp("prepared")
    return data.prepare(DataSettings(source="synthetic", rows=6000, seed=7), data_dir=root, progressbar=False)


def skip_or_fail(reason: str, switch: str) -> NoReturn:
    """Skip, unless the environment variable ``switch`` is 1 (.ci/run sets it): then fail, with
    the reason as its one line."""
    if os.environ.get(switch) == "1":
        pytest.fail(f"{reason} (and {switch}=1 asks for this test to run)", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, switch: str) -> ModuleType:
    """``import name``, where it cannot be imported :func:`skip_or_fail` (``pytest.importorskip``
    would skip in CI too)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        reason = f"{name} cannot be imported ({exc})"
    skip_or_fail(reason, switch)  # outside the except: the reason alone, not the import's traceback


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not SAMPLE_DIR.is_dir():
        skip_or_fail(
            f"the real MSD sample rows are not at {SAMPLE_DIR} (only beside the project checkout)",
            "HPO_REQUIRE_SAMPLE",
        )
    return SAMPLE_DIR


@pytest.fixture
def postgres_url() -> Iterator[str]:
    psycopg = require_module("psycopg", "HPO_REQUIRE_POSTGRES")
    name = f"hpo_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=3
        )
    except psycopg.OperationalError as exc:
        skip_or_fail(f"no PostgreSQL server on 127.0.0.1:5432 ({exc})", "HPO_REQUIRE_POSTGRES")
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb + pg_ctl on a spare port, as user postgres),
    which the test may stop (``-m immediate``: a crash) and start again. Never the machine's own."""

    def __init__(self, root: Path) -> None:
        import shutil
        import socket
        import subprocess

        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if not bindir or not Path(bindir, "initdb").exists() or shutil.which("runuser") is None:
            skip_or_fail(
                "PostgreSQL's initdb/pg_ctl (pg_config --bindir) or runuser is missing",
                "HPO_REQUIRE_POSTGRES",
            )
        self.bin = Path(bindir)
        self.dir = root / "pg"
        self.dir.mkdir(mode=0o700)
        shutil.chown(self.dir, "postgres")
        shutil.chown(root, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.log = root / "pg.log"
        self.log.touch()
        shutil.chown(self.log, "postgres")
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres"])
        self.start()
        self._as_postgres([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "hpo"])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/hpo"

    def _as_postgres(self, command: list[str]) -> None:
        import subprocess

        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True)

    def start(self) -> None:
        self._as_postgres(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.dir),
                "-l",
                str(self.log),
                "-o",
                f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1",
                "-w",
                "start",
            ]
        )

    def stop(self) -> None:
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", "immediate", "-w", "stop"])


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    # not under pytest's tmp_path: its base directory is private to root (0700), and the server
    # runs as the postgres user
    import contextlib
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="hpo-private-pg-"))
    try:
        server = PrivatePostgres(root)
        try:
            yield server
        finally:
            with contextlib.suppress(Exception):
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
