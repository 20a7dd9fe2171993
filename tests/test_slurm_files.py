"""The shipped sbatch files without a cluster: their directives, the hpo command each runs, the
threads and stop time they hand the worker, and the one-line refusal without a storage. (The
real run on a one-node Slurm cluster is scripts/slurm_check.sh, called by CI.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpo import cli

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"


def _directives(name: str) -> dict[str, str]:
    text = (SLURM / name).read_text()
    return dict(re.findall(r"(?m)^#SBATCH --([\w-]+)(?:=(\S+))?", text))


def _fake_tools(tmp_path: Path, end: str) -> dict[str, str]:
    """An ``hpo`` that prints its arguments and environment, and a ``squeue`` that prints
    ``end`` for each task of an array (as squeue does for the array's id)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    hpo = bin_dir / "hpo"
    hpo.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        "print('ARGS', *sys.argv[1:])\n"
        "print('THREADS', os.environ.get('HPO_THREADS'))\n"
        "print('STOP_AT', os.environ.get('HPO_STOP_AT'))\n"
    )
    squeue = bin_dir / "squeue"
    squeue.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/squeue-args\nprintf "{end}\\n{end}\\n{end}\\n"\n')
    for tool in (hpo, squeue):
        tool.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPO_", "SLURM_"))}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        HPO_STORAGE="postgresql+psycopg://u@db:5432/hpo",
        HPO_CONFIG="quick",
        SLURM_JOB_ID="12",
        SLURM_ARRAY_JOB_ID="10",
        SLURM_ARRAY_TASK_ID="3",
        SLURM_CPUS_PER_TASK="4",
    )
    return env


def test_directives() -> None:
    worker = _directives("worker.sbatch")
    assert worker["output"] == "hpo-worker-%A_%a.log" and worker["open-mode"] == "append"
    assert "requeue" in worker and worker["array"] and worker["cpus-per-task"] and worker["time"]
    init = _directives("init.sbatch")
    assert init["output"] == "hpo-init-%j.log" and "array" not in init


def test_worker_runs_hpo_worker_with_threads_and_stop_time(tmp_path: Path) -> None:
    env = _fake_tools(tmp_path, "2026-11-30T18:00:00")
    out = subprocess.run(
        ["bash", str(SLURM / "worker.sbatch")], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "ARGS worker --plain --config quick" in out
    assert "THREADS 4" in out  # from --cpus-per-task
    assert "STOP_AT 2026-11-30T18:00:00" in out  # this task's end, one line of squeue's output
    assert "--jobs 10_3" in (tmp_path / "squeue-args").read_text()  # the task, not the array
    # the worker parses what the file hands it
    args = cli.build_parser().parse_args(out.split("ARGS ", 1)[1].splitlines()[0].split())
    assert args.handler is not None and args.plain
    # no time limit: squeue prints NONE (or Unknown), and the worker gets no stop time
    (tmp_path / "none").mkdir()
    env = _fake_tools(tmp_path / "none", "NONE")
    out = subprocess.run(
        ["bash", str(SLURM / "worker.sbatch")], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "STOP_AT None" in out
    # a user's own HPO_THREADS and a newer Slurm's SLURM_JOB_END_TIME are kept
    env.update(HPO_THREADS="1", SLURM_JOB_END_TIME="1800000000")
    out = subprocess.run(
        ["bash", str(SLURM / "worker.sbatch")], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "THREADS 1" in out and "STOP_AT None" in out


@pytest.mark.parametrize("name", ["worker.sbatch", "init.sbatch"])
def test_refuses_without_a_storage_in_one_line(tmp_path: Path, name: str) -> None:
    env = _fake_tools(tmp_path, "NONE")
    del env["HPO_STORAGE"]
    proc = subprocess.run(["bash", str(SLURM / name)], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "ARGS" not in proc.stdout
    assert "HPO_STORAGE: set HPO_STORAGE to the PostgreSQL URL" in proc.stderr


def test_init_runs_hpo_init(tmp_path: Path) -> None:
    env = _fake_tools(tmp_path, "NONE")
    out = subprocess.run(
        ["bash", str(SLURM / "init.sbatch")], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "ARGS init --config quick" in out and "THREADS 4" in out
