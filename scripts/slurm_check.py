"""The Slurm check's submissions and assertions (scripts/slurm_check.sh starts the cluster, the
PostgreSQL server and munged, and sets HPO_CHECK_ROOT, HPO_STORAGE, HPO and SLURM_CONF).

Submits slurm/init.sbatch, then slurm/worker.sbatch as a 3-task array that depends on it, on the
quick pipeline with longer epochs (a trial lasts seconds, so a signal lands inside one). While
they work: SIGTERM (``scancel --signal=TERM --full``) to one task as soon as the storage shows it
training, then ``scontrol requeue`` of that task; SIGKILL to another while it trains. Then checks:
the TERM'd worker released its trials (FAIL, interrupted by SIGTERM) and exited 143, its requeued
run joined and exited 0, the killed worker's trial went stale and ran again, the untouched worker
exited 0, every stage is complete with each grid point once, nothing is RUNNING or WAITING, and
the final stage's test metrics are stored.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.plan import RESERVED
from hpo.tuning import records

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ["HPO_CHECK_ROOT"])
STORAGE = os.environ["HPO_STORAGE"]
HPO = os.environ["HPO"]
TASKS = (1, 2, 3)
#: Each stage's COMPLETE trials once the pipeline is done: one per grid point.
EXPECTED = {
    "baseline": 3,
    "lr_range": 1,
    "weight_decay": 3,
    "init": 3,
    "activation": 3,
    "norm": 3,
    "optimizer": 3,
    "final": 1,
}
LONG_STAGES = ("weight_decay", "init", "activation", "norm", "optimizer")


def say(text: str) -> None:
    print(f"== slurm check: {text}", flush=True)


def run(*command: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout.strip()


def study_file() -> Path:
    """quick.toml with trials long enough to be caught training (epochs 1 -> 40)."""
    text = (REPO / "studies" / "quick.toml").read_text()
    path = ROOT / "quick_check.toml"
    path.write_text(re.sub(r"(?m)^epochs = 1$", "epochs = 40", text))
    return path


def env(config: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("HPO_") or k in ("HPO_STORAGE", "HPO")}
    out.update(
        HPO_CONFIG=str(config),
        HPO_ARTIFACTS=str(ROOT / "artifacts"),
        HPO_DATA_DIR=str(ROOT / "cache"),
        HPO_HEARTBEAT_INTERVAL="2",
        HPO_GRACE_PERIOD="8",
        PATH=f"{Path(HPO).parent}:{os.environ['PATH']}",
    )
    return out


def submit(e: dict[str, str]) -> str:
    logs = ROOT / "log"
    init = subprocess.run(
        ["sbatch", "--parsable", f"--output={logs}/init-%j.log", str(REPO / "slurm" / "init.sbatch")],
        check=True,
        capture_output=True,
        text=True,
        env=e,
    ).stdout.strip()
    array = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--dependency=afterok:{init}",
            f"--array={TASKS[0]}-{TASKS[-1]}",
            "--cpus-per-task=1",
            "--time=30",
            f"--output={logs}/worker-%A_%a.log",
            str(REPO / "slurm" / "worker.sbatch"),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=e,
    ).stdout.strip()
    say(f"submitted init job {init} and worker array {array} (tasks {TASKS[0]}-{TASKS[-1]}, afterok)")
    return array


def log_of(array: str, task: int) -> str:
    path = ROOT / "log" / f"worker-{array}_{task}.log"
    return path.read_text() if path.exists() else ""


def worker_ids(array: str, timeout: float = 240) -> dict[int, str]:
    """Each task's worker id, from its log's "worker ID joined pipeline" line."""
    deadline = time.time() + timeout
    ids: dict[int, str] = {}
    while time.time() < deadline and len(ids) < len(TASKS):
        for task in TASKS:
            m = re.search(r"worker (\w+) joined pipeline quick", log_of(array, task))
            if m:
                ids[task] = m.group(1)
        time.sleep(0.5)
    if len(ids) < len(TASKS):
        raise AssertionError(f"only tasks {sorted(ids)} started a worker within {timeout:.0f} s")
    return ids


def stage_trials(storage: optuna.storages.BaseStorage) -> dict[str, list[FrozenTrial]]:
    out = {}
    for study in storage.get_all_studies():
        stage = study.study_name.split(".", 1)[1]
        if study.study_name.startswith("quick.") and stage not in RESERVED:
            out[stage] = storage.get_all_trials(study._study_id, deepcopy=False)
    return out


def training(storage: optuna.storages.BaseStorage, worker: str) -> FrozenTrial | None:
    """A trial ``worker`` started less than a second ago in a stage whose trials last seconds."""
    now = time.time()
    for stage, trials in stage_trials(storage).items():
        for t in trials:
            if (
                stage in LONG_STAGES
                and t.state == TrialState.RUNNING
                and t.user_attrs.get(records.WORKER) == worker
                and t.datetime_start is not None
                and now - t.datetime_start.timestamp() < 1.0
            ):
                return t
    return None


def signal_while_training(
    storage: optuna.storages.BaseStorage, array: str, ids: dict[int, str], tasks: list[int], signal: str
) -> tuple[int, FrozenTrial]:
    deadline = time.time() + 600
    while time.time() < deadline:
        for task in tasks:
            trial = training(storage, ids[task])
            if trial is not None:
                # TERM to every process of the task (--full: the batch step is the worker); KILL to
                # the batch step only (--batch), since scancel treats KILL to the job as a cancel,
                # which sends SIGTERM first and SIGKILL only after KillWait
                scope = "--full" if signal == "TERM" else "--batch"
                run("scancel", f"--signal={signal}", scope, f"{array}_{task}")
                say(f"SIG{signal} to task {task} (worker {ids[task]}) while it trains trial {trial.number}")
                return task, trial
        time.sleep(0.2)
    raise AssertionError(f"no task of {tasks} was seen training within 10 minutes")


def job(array: str, task: int) -> dict[str, str]:
    text = run("scontrol", "show", "job", f"{array}_{task}")
    return dict(re.findall(r"(\w+)=(\S+)", text))


def brief(info: dict[str, str]) -> str:
    """A task's state in one line (the whole record buries the reason in CI's output)."""
    keys = ("JobId", "JobState", "Reason", "ExitCode", "Restarts", "RunTime", "StartTime", "EndTime")
    return " ".join(f"{k}={info.get(k)}" for k in keys)


def wait_done(array: str, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not run("squeue", "--noheader", "--jobs", array, "--format", "%i"):
            return
        time.sleep(1)
    raise AssertionError(f"array {array} still queued or running after {timeout:.0f} s")


def main() -> None:
    config = study_file()
    e = env(config)
    array = submit(e)
    ids = worker_ids(array)
    say(f"workers: {ids}")
    storage = optuna.storages.RDBStorage(STORAGE)
    termed, term_trial = signal_while_training(storage, array, ids, list(TASKS), "TERM")
    # the TERM'd task exits; requeued, it comes back as a new worker that joins where the pipeline is
    deadline = time.time() + 60
    while job(array, termed)["JobState"] in ("RUNNING", "COMPLETING") and time.time() < deadline:
        time.sleep(0.2)
    first = job(array, termed)
    assert first["ExitCode"] == "143:0", (
        f"task {termed} after SIGTERM: {first['JobState']} {first['ExitCode']}"
    )
    termed_log = log_of(array, termed)
    assert "released trial(s)" in termed_log and "terminated (SIGTERM)" in termed_log, termed_log[-3000:]
    say(
        f"task {termed} released its trials and exited {first['ExitCode']} ({first['JobState']}); "
        "requeueing it"
    )
    # slurmd revokes an ended job's credential and refuses to launch that job id again with a
    # credential not newer than the revocation, at one-second resolution ("Job 4 already killed,
    # do not launch batch job": CI and here, the requeued run failed after 0 s when requeued within
    # the second its first run ended). Wait until slurmd is done with the job and has cleared its
    # spool files, then let the clock pass the next second.
    jobid = int(first["JobId"])
    slurmd_log = ROOT / "log" / "slurmd.log"
    deadline = time.time() + 30
    while time.time() < deadline and (
        f"[{jobid}.batch] done with job" not in slurmd_log.read_text(errors="replace")
        or [f for f in (ROOT / "spool").iterdir() if f.name == f"job{jobid:05d}" or f"_{jobid}." in f.name]
    ):
        time.sleep(0.2)
    time.sleep(2.0)
    run("scontrol", "requeue", f"{array}_{termed}")
    run("scontrol", "update", f"JobId={array}_{termed}", "StartTime=now")  # no requeue delay
    others = [t for t in TASKS if t != termed]
    killed, kill_trial = signal_while_training(storage, array, ids, others, "KILL")
    wait_done(array)
    untouched = next(t for t in others if t != killed)

    states = {t: job(array, t) for t in TASKS}
    for t, info in states.items():
        say(f"task {t}: {info['JobState']} exit {info['ExitCode']} restarts {info.get('Restarts')}")
    for t, why in ((untouched, "untouched"), (termed, "requeued after SIGTERM")):
        ok = states[t]["JobState"] == "COMPLETED" and states[t]["ExitCode"] == "0:0"
        assert ok, f"task {t} ({why}): {brief(states[t])}"
    assert states[termed]["Restarts"] == "1", brief(states[termed])
    assert states[killed]["JobState"] != "COMPLETED", brief(states[killed])
    rejoined = log_of(array, termed)
    assert rejoined.count("joined pipeline quick") == 2 and "worker done" in rejoined, rejoined[-3000:]
    assert "worker done" in log_of(array, untouched)
    for t in (termed, untouched):
        say(f"task {t}: " + " | ".join(re.findall(r"(?m)^worker done.*$", log_of(array, t))))

    studies = stage_trials(storage)
    assert set(studies) == set(EXPECTED), sorted(studies)
    for stage, trials in studies.items():
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        points = [t.user_attrs.get(records.POINT) for t in complete]
        assert len(complete) == EXPECTED[stage] and len(set(points)) == len(points), (stage, points)
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], stage
    term_stage = next(s for s, ts in studies.items() if any(t._trial_id == term_trial._trial_id for t in ts))
    released = [t for t in studies[term_stage] if t.user_attrs.get(records.INTERRUPTED) == "SIGTERM"]
    assert released and all(t.state == TrialState.FAIL for t in released), term_stage
    kill_stage = next(s for s, ts in studies.items() if any(t._trial_id == kill_trial._trial_id for t in ts))
    stale = next(t for t in studies[kill_stage] if t._trial_id == kill_trial._trial_id)
    assert stale.state == TrialState.FAIL and records.INTERRUPTED not in stale.user_attrs, stale
    retried = [t for t in studies[kill_stage] if t.system_attrs.get("failed_trial") == stale.number]
    assert [t.state for t in retried] == [TrialState.COMPLETE], retried
    say(
        f"{term_stage}: {len(released)} trial(s) released on SIGTERM and run again; {kill_stage}: "
        f"trial {stale.number} of the killed worker went stale and ran again as trial {retried[0].number}"
    )

    status: dict[str, Any] = json.loads(
        run(HPO, "-q", "status", "--format", "json", "--config", str(config), env=e)
    )
    assert {s["state"] for s in status["stages"]} == {"complete"}, status["stages"]
    assert status["test_metrics"]["accuracy"] > 0.5, status["test_metrics"]
    say(
        "pipeline complete, each grid point once, nothing running; test accuracy "
        f"{status['test_metrics']['accuracy']:.4f}"
    )


if __name__ == "__main__":
    try:
        main()
    except AssertionError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        sys.exit(1)
