"""Workers: `hpo worker` processes sharing a pipeline on PostgreSQL (the compose topology without
Docker), crash recovery, dropped connections, a database outage; SQLite refuses a second worker."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import yaml
from conftest import require_module, skip_or_fail
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
kind = "baseline"
architectures = [[16, 16], [32, 32]]
max_batches = 6
eval_every = 3

[stages.lr_range]
kind = "lr_range"
verify_epochs = 1

[stages.weight_decay]
kind = "grid_cv"
grid = { weight_decay = [0.0, 1e-5, 1e-4, 1e-3, 1e-2] }
folds = 2
epochs = EPOCHS
stack = STACK

[stages.init]
kind = "sweep"
choices = { init = ["default", "xavier_uniform", "kaiming_normal"] }
epochs = 1

[stages.final]
kind = "final"
epochs = 2
"""
#: Every stage's trial count once the pipeline is done, when nothing failed or repeated.
EXPECTED_COMPLETE = {"baseline": 2, "lr_range": 1, "weight_decay": 5, "init": 3, "final": 1}


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
    """The service's command as the container runs it: ``sh -c "exec hpo ..."`` with compose's
    ``$$`` escape undone and the container's environment expanded."""
    parts = [_interpolate(part, env) for part in COMPOSE["services"][service]["command"]]
    assert parts[:2] == ["sh", "-c"], parts
    script = parts[2].replace("$$", "$")
    script = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], script)
    words = shlex.split(script)
    assert words[0] == "exec", words
    return words[1:]


# --------------------------------------------------------------------------- compose file


def test_compose_services_and_safety() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "prepare", "worker", "dashboard"}
    assert "name" not in COMPOSE  # Debian's docker-compose 1.29.2 rejects a top-level name
    pg = services["postgres"]
    assert "healthcheck" in pg and pg["volumes"][0].startswith("pgdata:")
    assert "pgdata" in COMPOSE["volumes"]
    assert "deploy" not in services["worker"]  # scaled with --scale, which 1.29.2 honours
    assert services["worker"]["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
    assert services["prepare"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for port in services["dashboard"]["ports"]:
        assert port.startswith("127.0.0.1:"), port  # published on loopback only
    text = (REPO / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD:?" in text and not re.search(r"PASSWORD:\s*['\"]?\w", text)
    assert ".env" in (REPO / ".gitignore").read_text().split()
    example = (REPO / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", example, re.M)
    assert re.search(r"^HPO_READER_PASSWORD=$", example, re.M)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--no-index --find-links /wheels hpo" in dockerfile and "USER hpo" in dockerfile
    assert '"torch==2.13.0"' in (REPO / "scripts" / "wheelhouse.sh").read_text()


def test_compose_passwords_stay_out_of_urls_and_the_dashboard_reads_only() -> None:
    """HPO_STORAGE names a role only (the password is HPO_STORAGE_PASSWORD); the dashboard uses
    the read-only role that PostgreSQL's init script makes, after ``prepare`` made the tables."""
    from sqlalchemy.engine import make_url

    from hpo.tuning.storage import redact

    services = COMPOSE["services"]
    roles = {}
    for name in ("prepare", "worker", "dashboard"):
        env = services[name]["environment"]
        assert redact(env["HPO_STORAGE"]) == env["HPO_STORAGE"]  # nothing to hide: no password
        roles[name] = (make_url(env["HPO_STORAGE"]).username, env["HPO_STORAGE_PASSWORD"].split(":")[0])
    assert roles == {
        "prepare": ("hpo", "${POSTGRES_PASSWORD"),
        "worker": ("hpo", "${POSTGRES_PASSWORD"),
        "dashboard": ("hpo_reader", "${HPO_READER_PASSWORD"),
    }
    dashboard = services["dashboard"]
    assert dashboard["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
    assert "--allow-writes" not in " ".join(dashboard["command"])
    pg = services["postgres"]
    assert pg["environment"]["HPO_READER_PASSWORD"].startswith("${HPO_READER_PASSWORD:?")
    assert "./docker/initdb:/docker-entrypoint-initdb.d:ro" in pg["volumes"]
    assert os.access(REPO / "docker" / "initdb" / "10-hpo-reader.sh", os.X_OK)  # run, not sourced


@pytest.mark.parametrize("service", ["prepare", "worker", "dashboard"])
def test_compose_commands_are_real_hpo_commands(service: str) -> None:
    env = {"POSTGRES_PASSWORD": "x", "HPO_CONFIG": "quick"}
    command = _service_command(service, env)
    assert command[0] == "hpo"
    args = cli.build_parser().parse_args(command[1:])
    assert args.handler is not None
    if service == "worker":
        assert command[1] == "worker" and args.plain  # log lines, not a live display, in `compose logs`


def test_compose_file_parses_with_docker_compose() -> None:
    """``docker-compose config`` (1.29.2 here, where installed) accepts the file as written."""
    import shutil

    exe = shutil.which("docker-compose")
    if exe is None:
        skip_or_fail(
            "docker-compose is not installed (.ci/run installs Debian's)", "HPO_REQUIRE_DOCKER_COMPOSE"
        )
    proc = subprocess.run(
        [exe, "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        env={**os.environ, "POSTGRES_PASSWORD": "x", "HPO_READER_PASSWORD": "y"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


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
    assert command[0] == "hpo"
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


def _init(tmp_path: Path, cfg: Path, env: dict[str, str]) -> list[str]:
    """Run compose's one-shot ``prepare`` command; return the worker command."""
    compose_env = {**env, "POSTGRES_PASSWORD": "unused", "HPO_CONFIG": str(cfg)}
    proc = _start(_service_command("prepare", compose_env), env, tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return _service_command("worker", compose_env)


def _studies(storage: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    out = {}
    for summary in optuna.get_all_study_summaries(storage):
        name = summary.study_name
        if name.startswith("workers.") and name not in ("workers.workers", "workers.numerics"):
            out[name.split(".", 1)[1]] = optuna.load_study(study_name=name, storage=storage).get_trials()
    return out


def _check_pipeline_done_once(storage: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    """Every stage complete; every grid point COMPLETE exactly once; nothing left running."""
    studies = _studies(storage)
    assert set(studies) == set(EXPECTED_COMPLETE)
    for stage, trials in studies.items():
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == EXPECTED_COMPLETE[stage], (stage, [(t.number, t.state.name) for t in trials])
        points = [t.user_attrs.get(records.POINT) for t in complete]
        assert len(set(points)) == len(points), (stage, points)  # no point run twice
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], stage
        study = optuna.load_study(study_name=f"workers.{stage}", storage=storage)
        assert study.user_attrs[records.COMPLETE] is True, stage
    wd = sorted(t.params["weight_decay"] for t in studies["weight_decay"] if t.state == TrialState.COMPLETE)
    assert wd == [0.0, 1e-5, 1e-4, 1e-3, 1e-2]
    return studies


def _wait_for_running(storage: str, stage: str, timeout: float) -> list[optuna.trial.FrozenTrial]:
    rdb = optuna.storages.RDBStorage(storage)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            try:
                trials = optuna.load_study(study_name=f"workers.{stage}", storage=rdb).get_trials()
            except KeyError:
                trials = []
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if running:
                return running
            time.sleep(0.2)
    finally:
        rdb.engine.dispose()
    raise AssertionError(f"no trial of {stage} started within {timeout:.0f} s")


def _finish(workers: list[subprocess.Popen[str]], timeout: float = 600) -> list[str]:
    logs = []
    for w in workers:
        _, err = w.communicate(timeout=timeout)
        assert w.returncode == 0, err
        logs.append(err)
    return logs


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("stack", [1, 2])  # one trial at a time; batches of two stacked trials
def test_workers_run_the_whole_pipeline_and_a_late_one_joins(
    tmp_path: Path, postgres_url: str, stack: int
) -> None:
    """Three ``hpo worker`` processes (compose's command) run the pipeline from its first stage;
    a fourth joins while the weight-decay grid runs. All exit 0; each point runs exactly once."""
    cfg = _config(tmp_path, epochs=8, stack=stack)
    env = _env(tmp_path, postgres_url)
    command = _init(tmp_path, cfg, env)
    workers = [_start(command, env, tmp_path) for _ in range(3)]
    _wait_for_running(postgres_url, "weight_decay", timeout=300)
    workers.append(_start(command, env, tmp_path))
    _finish(workers)
    studies = _check_pipeline_done_once(postgres_url)
    # nothing failed and nothing was repeated, in any stage
    assert {stage: len(trials) for stage, trials in studies.items()} == EXPECTED_COMPLETE
    registry = optuna.load_study(study_name="workers.workers", storage=postgres_url).get_trials()
    assert len(registry) == 4 and all(t.state == TrialState.COMPLETE for t in registry)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("stack", [1, 5])
def test_sigkilled_worker_trial_is_retried(tmp_path: Path, postgres_url: str, stack: int) -> None:
    cfg = _config(tmp_path, epochs=150, stack=stack)  # a trial lasts seconds, even on a quiet machine
    env = _env(tmp_path, postgres_url, HPO_HEARTBEAT_INTERVAL="1", HPO_GRACE_PERIOD="3")
    command = _init(tmp_path, cfg, env)
    victim = _start(command, env, tmp_path)
    _wait_for_running(postgres_url, "weight_decay", timeout=300)
    time.sleep(0.5)  # inside the trial (2 folds x 150 epochs)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    left = [
        t
        for t in optuna.load_study(study_name="workers.weight_decay", storage=postgres_url).get_trials()
        if t.state == TrialState.RUNNING
    ]
    assert len(left) == stack, "the killed worker's trials should be left RUNNING"
    killed_numbers = [t.number for t in left]
    rescuer = _start(command, env, tmp_path)
    _finish([rescuer])
    studies = _check_pipeline_done_once(postgres_url)
    trials = studies["weight_decay"]
    for number in killed_numbers:
        killed = next(t for t in trials if t.number == number)
        assert killed.state == TrialState.FAIL
        retried = [t for t in trials if t.system_attrs.get("failed_trial") == number]
        assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE


class _Lines:
    """A process's stderr read line by line in a thread, so a test can wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import threading

        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(text in line for line in self.lines):
                return
            time.sleep(0.1)
        raise AssertionError(f"no line with {text!r} within {timeout:.0f} s: {''.join(self.lines)[-2000:]}")

    def text(self) -> str:
        self._thread.join(timeout=60)
        return "".join(self.lines)


@pytest.mark.slow
@pytest.mark.postgres
def test_sigtermed_worker_releases_its_trials_at_once(tmp_path: Path, postgres_url: str) -> None:
    """SIGTERM (Slurm's time limit, preemption, scancel; docker stop) while a worker trains all
    five weight-decay points as one stack: it tells them FAIL (interrupted), leaves the registry
    and exits 143 within seconds; a waiting worker runs the five points again at once, long
    before the 60 s grace period would have failed them, and each point completes once."""
    import datetime as dt

    cfg = _config(tmp_path, epochs=1500, stack=5)  # trains for longer than a worker takes to start
    env = _env(tmp_path, postgres_url, HPO_HEARTBEAT_INTERVAL="5", HPO_GRACE_PERIOD="60")
    command = _init(tmp_path, cfg, env)
    victim = _start(command, env, tmp_path)
    held = _wait_for_running(postgres_url, "weight_decay", timeout=300)
    rescuer = _start(command, env, tmp_path)
    rescuer_log = _Lines(rescuer)
    rescuer_log.wait_for("waiting for stage workers.weight_decay", timeout=120)
    held = _wait_for_running(postgres_url, "weight_decay", timeout=5)
    assert len(held) == 5, [t.number for t in held]  # the victim holds every point
    terminated_at = time.time()
    victim.send_signal(signal.SIGTERM)
    _, err = victim.communicate(timeout=30)
    exited_after = time.time() - terminated_at
    assert victim.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM)" in err and "released trial(s)" in err, err[-2000:]
    assert exited_after < 10, exited_after
    rescuer.wait(timeout=600)
    assert rescuer.returncode == 0, rescuer_log.text()[-2000:]
    assert "training with 1 thread ($OMP_NUM_THREADS)" in rescuer_log.text()
    studies = _check_pipeline_done_once(postgres_url)
    trials = {t.number: t for t in studies["weight_decay"]}
    for t in held:
        released = trials[t.number]
        assert released.state == TrialState.FAIL and released.user_attrs[records.INTERRUPTED] == "SIGTERM"
        again = [
            u
            for u in trials.values()
            if u.state == TrialState.COMPLETE
            and u.user_attrs[records.POINT] == released.user_attrs[records.POINT]
        ]
        assert len(again) == 1 and again[0].datetime_start is not None
        waited = (again[0].datetime_start - dt.datetime.fromtimestamp(terminated_at)).total_seconds()
        assert waited < 15, f"point {released.user_attrs[records.POINT]} ran again only after {waited:.1f} s"
    registry = optuna.load_study(study_name="workers.workers", storage=postgres_url).get_trials()
    assert sorted(t.state.name for t in registry) == ["COMPLETE", "FAIL"]  # the victim left it


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


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("stack", [1, 2])
def test_workers_survive_dropped_connections(tmp_path: Path, postgres_url: str, stack: int) -> None:
    """Terminate every server connection of the database while two workers train the
    weight-decay grid, and again 2 s later unless the pipeline is already done."""
    psycopg = require_module("psycopg", "HPO_REQUIRE_POSTGRES")
    cfg = _config(tmp_path, epochs=60, stack=stack)
    env = _env(tmp_path, postgres_url)
    command = _init(tmp_path, cfg, env)
    workers = [_start(command, env, tmp_path) for _ in range(2)]
    database = postgres_url.rsplit("/", 1)[1]
    _wait_for_running(postgres_url, "weight_decay", timeout=300)
    time.sleep(1.0)
    for round_ in range(2):
        if all(w.poll() is not None for w in workers):
            break
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchall()
        assert killed or round_, "no worker connection to terminate while the stage ran"
        time.sleep(2.0)
    _finish(workers)
    _check_pipeline_done_once(postgres_url)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("stack", [1, 2])
def test_workers_ride_out_a_database_outage(tmp_path: Path, private_postgres: Any, stack: int) -> None:
    """The database crashes (``pg_ctl stop -m immediate``) while two workers run the weight-decay
    grid and stays down for 60 s (three times the heartbeat interval, longer than the grace
    period); both workers wait, carry on when it is back, and exit 0 with every point run once."""
    url = private_postgres.url
    cfg = _config(tmp_path, epochs=40, stack=stack)
    env = _env(tmp_path, url, HPO_HEARTBEAT_INTERVAL="5", HPO_GRACE_PERIOD="20")
    command = _init(tmp_path, cfg, env)
    workers = [_start(command, env, tmp_path) for _ in range(2)]
    _wait_for_running(url, "weight_decay", timeout=300)
    time.sleep(1.0)
    private_postgres.stop()
    time.sleep(60)
    assert all(w.poll() is None for w in workers), "a worker gave up during the outage"
    private_postgres.start()
    logs = _finish(workers)
    assert any("unreachable" in log and "reachable again" in log for log in logs), logs[0][-2000:]
    _check_pipeline_done_once(url)


class _EndedOnClose:
    """A lock connection whose server shuts down between the unlock and the close."""

    def __init__(self, *, unlock_fails: bool) -> None:
        self.unlock_fails = unlock_fails
        self.closed = False
        self.invalidated = False
        self.calls: list[str] = []

    def execute(self, *_: Any) -> None:
        self.calls.append("unlock")
        if self.unlock_fails:
            self.closed = True
            raise sqlalchemy.exc.OperationalError("unlock", {}, Exception("server closed"))

    def invalidate(self) -> None:
        if self.closed:
            raise sqlalchemy.exc.ResourceClosedError("This Connection is closed")
        self.invalidated = True

    def close(self) -> None:
        self.calls.append("close")
        if self.closed:
            raise sqlalchemy.exc.ResourceClosedError("This Connection is closed")
        self.closed = True
        raise sqlalchemy.exc.OperationalError("ROLLBACK", {}, Exception("AdminShutdown"))


@pytest.mark.parametrize("unlock_fails", [False, True])
def test_claim_lock_release_survives_a_server_shutdown(unlock_fails: bool) -> None:
    """CI once saw close() raise AdminShutdown after a good unlock, then invalidate() raise
    ResourceClosedError and end a worker: the server had already released the lock with the
    session, so releasing must not raise."""
    from hpo.tuning import locks

    conn = _EndedOnClose(unlock_fails=unlock_fails)
    locks._release(conn, "study")  # type: ignore[arg-type]
    assert conn.calls[0] == "unlock" and conn.closed
