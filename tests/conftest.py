from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpo import data
from hpo.settings import DataSettings

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO.parent / "shared" / "data" / "msd-sample"


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test gets its own cache directory (nothing written to ~/.cache)."""
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "hpo-data"))
    yield


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory: pytest.TempPathFactory) -> data.Prepared:
    """A 6,000-row synthetic dataset prepared once for the session."""
    root = tmp_path_factory.mktemp("prepared")
    return data.prepare(DataSettings(source="synthetic", rows=6000, seed=7), data_dir=root, progressbar=False)


def skip_or_fail(reason: str, switch: str) -> None:
    """Skip, unless the environment variable ``switch`` is 1 (CI sets it): then fail loudly."""
    if os.environ.get(switch) == "1":
        pytest.fail(f"{reason} (and {switch}=1 asks for this test to run)")
    pytest.skip(reason)


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
    psycopg = pytest.importorskip("psycopg")
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
