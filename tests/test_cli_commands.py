"""Commands as a user runs them: Ctrl-C, `hpo init`, `hpo status` tables, `hpo data calibrate`."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.tuning import records

LONG = """
[pipeline]
name = "long"

[data]
source = "synthetic"
rows = 3000
seed = 42

[defaults]
hidden = [32, 32]

[stages.lr_range]
kind = "lr_range"
verify_epochs = 1

[stages.weight_decay]
kind = "grid_cv"
grid = { weight_decay = [0.0, 1e-4] }
folds = 2
epochs = EPOCHS
stack = 1  # one trial at a time: Ctrl-C interrupts exactly one
"""


def _hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def _trials(db: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=study, storage=f"sqlite:///{db}").get_trials()
    except KeyError:
        return []


def _running(db: Path, study: str) -> bool:
    """Whether a trial of ``study`` is RUNNING, read straight from Optuna's tables (a poll of
    milliseconds: loading the study through Optuna took long enough to miss a short trial)."""
    import sqlite3

    if not db.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            (n,) = con.execute(
                "SELECT count(*) FROM trials t JOIN studies s ON t.study_id = s.study_id "
                "WHERE s.study_name = ? AND t.state = 'RUNNING'",
                (study,),
            ).fetchone()
    except sqlite3.OperationalError:  # the tables are not created yet
        return False
    return bool(n)


@pytest.mark.slow
def test_ctrl_c_exits_130_marks_the_trial_and_the_rerun_finishes(tmp_path: Path) -> None:
    cfg = tmp_path / "long.toml"
    cfg.write_text(LONG.replace("EPOCHS", "400"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "run", "--plain", "--config", str(cfg)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job (CI started with "&") ignores SIGINT, and a child inherits
        # that: Python then installs no KeyboardInterrupt handler and Ctrl-C would do nothing
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 300
        while not _running(tmp_path / "hpo.db", "long.weight_decay"):
            assert time.time() < deadline and proc.poll() is None, "no weight_decay trial started"
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)  # measured 1-2 s alone; minutes on a loaded machine
    finally:
        if proc.poll() is None:  # a failed assertion: leave no training process behind
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "hpo: interrupted"
    assert "Traceback" not in err
    interrupted = [t for t in _trials(tmp_path / "hpo.db", "long.weight_decay") if t.state == TrialState.FAIL]
    assert len(interrupted) == 1 and interrupted[0].user_attrs[records.INTERRUPTED] is True

    rerun = _hpo("-q", "run", "--config", str(cfg), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    trials = _trials(tmp_path / "hpo.db", "long.weight_decay")
    assert sorted(t.params["weight_decay"] for t in trials if t.state == TrialState.COMPLETE) == [0.0, 1e-4]
    assert len(trials) == 3  # the interrupted trial, kept, and one per point


@pytest.mark.slow
def test_init_prepares_and_status_shows_every_stage_pending(tmp_path: Path) -> None:
    cfg = tmp_path / "long.toml"
    cfg.write_text(LONG.replace("EPOCHS", "1"))
    init = _hpo("init", "--config", str(cfg), cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert "3,000 rows" in init.stdout and "stages: lr_range, weight_decay" in init.stdout
    table = _hpo("status", "--config", str(cfg), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("pipeline long (")
    for stage in ("lr_range", "weight_decay"):
        row = next(line for line in lines if line.startswith(f"long.{stage} "))
        assert "not started" in row and "no trials" in row, row
    as_json = json.loads(_hpo("status", "--config", str(cfg), "--format", "json", cwd=tmp_path).stdout)
    assert [s["stage"] for s in as_json["stages"]] == ["lr_range", "weight_decay"]
    assert all(s["state"] != "complete" for s in as_json["stages"])
    assert as_json["test_metrics"] is None


@pytest.mark.slow
def test_data_calibrate_prints_the_three_references_and_the_nonlinearity_check(tmp_path: Path) -> None:
    table = _hpo("data", "calibrate", "--rows", "4000", "--epochs", "2", "--draws", "1", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    for label in (
        "majority class",
        "logistic regression",
        "MLP",
        "gradient boosting minus",
        "synthetic (1 draws)",
    ):
        assert any(line.startswith(label) for line in table.stdout.splitlines()), table.stdout
    args = ("data", "calibrate", "--rows", "4000", "--epochs", "2", "--draws", "0", "--format", "json")
    result = json.loads(_hpo(*args, cwd=tmp_path).stdout)
    assert result["nonlinearity"] is None  # --draws 0 skips the check
    assert result["rows"] == 4000 and result["test_rows"] == 600
    assert result["majority_accuracy"] == pytest.approx(0.58, abs=0.01)
    assert 0.5 < result["logreg_accuracy"] < 0.7 and 0.5 < result["mlp_accuracy"] < 0.7


def _on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``hpo ARGS`` with stdout and stderr on a pseudo-terminal; its exit code and output."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its stdout and stderr
        os.chdir(cwd)
        os.execv(sys.executable, [sys.executable, "-m", "hpo", *args])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # an 80-column terminal
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_terminal_gets_the_live_display_and_json_stays_clean(tmp_path: Path) -> None:
    cfg = tmp_path / "long.toml"
    cfg.write_text(LONG.replace("EPOCHS", "3"))
    code, shown = _on_a_terminal(["run", "--config", str(cfg)], tmp_path)
    assert code == 0, shown
    rows = [r for r in re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)) if "━" in r]
    assert rows and "\x1b[" in shown  # rich's bars, drawn with terminal control codes
    assert all(len(r) <= 80 and "…" not in r for r in rows), max(rows, key=len)  # nothing cut
    # the pipeline's row (stage k of n, share done, time left) and the stage's (epochs, rate, time left)
    assert any(re.match(r"long 2/2 .* \d+% +\d:\d\d:\d\d$", r) for r in rows), rows[-6:]
    assert any(re.match(r" weight_decay t\d.* 12/12 ep +\d+k/s .* \d:\d\d:\d\d$", r) for r in rows), rows[-6:]
    assert " INFO hpo.progress" not in shown  # no per-epoch log lines under the bar
    plain = _hpo("run", "--force", "--config", str(cfg), cwd=tmp_path)  # not a terminal: log lines
    assert plain.returncode == 0 and "hpo.progress" in plain.stderr and "━" not in plain.stderr
    assert "pipeline long: stage 2/2 weight_decay done; 100% of the planned work" in plain.stderr
    quiet = _hpo("-q", "status", "--config", str(cfg), "--format", "json", cwd=tmp_path)
    assert json.loads(quiet.stdout)["stages"][1]["state"] == "complete"  # JSON only on stdout
    assert quiet.stderr == ""
