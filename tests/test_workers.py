"""Several workers on one stage: the compose topology without Docker, crash recovery, SQLite."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo import cli
from hpo.tuning import records

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())

WORKERS_TOML = """
[pipeline]
name = "workers"

[data]
source = "synthetic"
rows = 3000
seed = 42

[defaults]
hidden = [32, 32]

[stages.baseline]
architectures = [[16, 16], [32, 32]]
max_batches = 6
eval_every = 3

[stages.lr_range]
verify_epochs = 1

[stages.weight_decay]
kind = "grid_cv"
grid = { weight_decay = [0.0, 1e-5, 1e-4, 1e-3, 1e-2] }
folds = 2
epochs = EPOCHS
stack = STACK
"""


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}."""

    def repl(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op == ":-" and not value:
            return arg or ""
        if op == ":?" and not value:
            raise KeyError(f"{name}: {arg}")
        return value or ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", repl, text)


def _service_command(service: str, env: dict[str, str]) -> list[str]:
    return [_interpolate(part, env) for part in COMPOSE["services"][service]["command"]]


# --------------------------------------------------------------------------- compose file


def test_compose_services_and_safety() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "prepare", "worker", "dashboard"}
    pg = services["postgres"]
    assert "healthcheck" in pg and pg["volumes"][0].startswith("pgdata:")
    assert "pgdata" in COMPOSE["volumes"]
    assert services["worker"]["deploy"]["replicas"] == "${HPO_WORKERS:-2}"
    assert services["worker"]["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
    assert services["prepare"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for port in services["dashboard"]["ports"]:
        assert port.startswith("127.0.0.1:"), port  # published on loopback only
    text = (REPO / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD:?" in text and not re.search(r"PASSWORD:\s*['\"]?\w", text)
    assert ".env" in (REPO / ".gitignore").read_text().split()
    example = (REPO / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", example, re.M)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in dockerfile


@pytest.mark.parametrize("service", ["prepare", "worker"])
def test_compose_commands_are_real_hpo_commands(service: str) -> None:
    env = {"POSTGRES_PASSWORD": "x", "HPO_STAGE": "weight_decay", "HPO_CONFIG": "quick"}
    command = _service_command(service, env)
    assert command[0] == "hpo"
    args = cli.build_parser().parse_args(command[1:])
    assert args.handler is not None
    dashboard = _service_command("dashboard", env)
    assert dashboard[0] == "optuna-dashboard" and dashboard[1].startswith(
        "postgresql+psycopg://hpo:x@postgres"
    )


# --------------------------------------------------------------------------- PostgreSQL workers


def _env(tmp_path: Path, storage: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env.update(
        HPO_STORAGE=storage,
        HPO_ARTIFACTS=str(tmp_path / "artifacts"),
        HPO_DATA_DIR=os.environ["HPO_DATA_DIR"],
        OMP_NUM_THREADS="1",
        **extra,
    )
    return env


def _start(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", *command[1:]],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _config(tmp_path: Path, epochs: int, stack: int = 1) -> Path:
    path = tmp_path / "workers.toml"
    path.write_text(WORKERS_TOML.replace("EPOCHS", str(epochs)).replace("STACK", str(stack)))
    return path


def _prepare_and_prerequisites(tmp_path: Path, cfg: Path, env: dict[str, str]) -> None:
    compose_env = {**env, "POSTGRES_PASSWORD": "unused", "HPO_CONFIG": str(cfg)}
    for command in (
        _service_command("prepare", compose_env),
        ["hpo", "run-stage", "baseline", "--config", str(cfg)],
        ["hpo", "run-stage", "lr_range", "--config", str(cfg)],
    ):
        proc = _start(command, env, tmp_path)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err


def _check_grid_done_once(storage: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="workers.weight_decay", storage=storage)
    trials = study.get_trials()
    complete = [t.params["weight_decay"] for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == [0.0, 1e-5, 1e-4, 1e-3, 1e-2]  # each grid point exactly once
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert study.user_attrs[records.COMPLETE] is True
    return trials


@pytest.mark.postgres
@pytest.mark.parametrize("stack", [1, 2])  # one trial at a time; batches of two stacked trials
def test_three_workers_share_a_grid_stage(tmp_path: Path, postgres_url: str, stack: int) -> None:
    cfg = _config(tmp_path, epochs=1, stack=stack)
    env = _env(tmp_path, postgres_url)
    _prepare_and_prerequisites(tmp_path, cfg, env)
    command = _service_command(
        "worker", {**env, "POSTGRES_PASSWORD": "unused", "HPO_STAGE": "weight_decay", "HPO_CONFIG": str(cfg)}
    )
    workers = [_start(command, env, tmp_path) for _ in range(3)]
    results = [w.communicate(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, results, strict=True):
        assert w.returncode == 0, err
    trials = _check_grid_done_once(postgres_url)
    # nothing failed, nothing repeated
    assert len(trials) == 5, [(t.number, t.state.name, t.params, t.user_attrs) for t in trials]


@pytest.mark.postgres
@pytest.mark.parametrize("stack", [1, 5])
def test_sigkilled_worker_trial_is_retried(tmp_path: Path, postgres_url: str, stack: int) -> None:
    cfg = _config(tmp_path, epochs=150, stack=stack)  # a trial lasts seconds, even on a quiet machine
    env = _env(tmp_path, postgres_url, HPO_HEARTBEAT_INTERVAL="1", HPO_GRACE_PERIOD="3")
    _prepare_and_prerequisites(tmp_path, cfg, env)
    command = ["hpo", "run-stage", "weight_decay", "--config", str(cfg)]
    victim = _start(command, env, tmp_path)
    storage = optuna.storages.RDBStorage(postgres_url)
    deadline = time.time() + 120
    killed_numbers: list[int] = []
    while time.time() < deadline:
        try:
            study = optuna.load_study(study_name="workers.weight_decay", storage=storage)
            running = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
        except KeyError:
            running = []
        if running:
            time.sleep(0.5)  # inside the trial (2 folds x 150 epochs)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            left = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
            assert len(left) == stack, "the killed worker's trials should be left RUNNING"
            killed_numbers = [t.number for t in left]
            break
        time.sleep(0.2)
    assert killed_numbers, "the worker never started a trial"
    rescuer = _start(command, env, tmp_path)
    _, err = rescuer.communicate(timeout=600)
    assert rescuer.returncode == 0, err
    trials = _check_grid_done_once(postgres_url)
    for number in killed_numbers:
        killed = next(t for t in trials if t.number == number)
        assert killed.state == TrialState.FAIL
        retried = [t for t in trials if t.system_attrs.get("failed_trial") == number]
        assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE


def test_second_sqlite_worker_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hpo.pipeline import Pipeline
    from hpo.tuning import locks

    cfg = _config(tmp_path, epochs=1)
    db = tmp_path / "hpo.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'wb'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(60)",
            f"{db}.workers.lock",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        code = cli.main(["run-stage", "baseline", "--config", str(cfg), "--storage", f"sqlite:///{db}"])
        err = capsys.readouterr().err
        assert code == 2
        assert "another hpo process is already running a stage" in err and "PostgreSQL" in err
    finally:
        holder.kill()
    pipe = Pipeline.load(cfg, storage=f"sqlite:///{db}", artifacts=tmp_path / "a")
    locks.exclusive_sqlite_worker(pipe.ctx.storage, "x")  # free again once the other process is gone


@pytest.mark.postgres
@pytest.mark.parametrize("stack", [1, 2])
def test_workers_survive_dropped_connections(tmp_path: Path, postgres_url: str, stack: int) -> None:
    """Terminate every server connection of the database twice while two workers run."""
    psycopg = pytest.importorskip("psycopg")
    cfg = _config(tmp_path, epochs=30, stack=stack)
    env = _env(tmp_path, postgres_url)
    _prepare_and_prerequisites(tmp_path, cfg, env)
    command = ["hpo", "run-stage", "weight_decay", "--config", str(cfg)]
    workers = [_start(command, env, tmp_path) for _ in range(2)]
    database = postgres_url.rsplit("/", 1)[1]
    storage = optuna.storages.RDBStorage(postgres_url)
    kills = 0
    deadline = time.time() + 300
    while kills < 2 and time.time() < deadline and any(w.poll() is None for w in workers):
        try:
            trials = optuna.load_study(study_name="workers.weight_decay", storage=storage).get_trials()
        except Exception:
            trials = []
        if any(t.state == TrialState.RUNNING for t in trials):
            time.sleep(1.0)
            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                )
            storage.engine.dispose()
            kills += 1
            time.sleep(3.0)
        time.sleep(0.2)
    assert kills >= 1
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    _check_grid_done_once(postgres_url)
