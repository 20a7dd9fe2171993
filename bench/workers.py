"""Stage throughput with 1 and 2 workers (1 torch thread each) on one PostgreSQL storage.

Runs the weight_decay stage of a small pipeline twice, each time on a fresh database: once with
one worker process, once with two started together, and prints the wall times and the speed-up
as JSON. Needs the PostgreSQL server on 127.0.0.1:5432 (trust auth).

    python bench/workers.py [--rows 40000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

PIPELINE = """
[pipeline]
name = "bench_workers"

[data]
source = "synthetic"
rows = {rows}

[defaults]
hidden = [256, 256]

[stages.baseline]
architectures = [[256, 256]]
max_batches = 3
eval_every = 3

[stages.lr_range]
num_iter = 30
verify_epochs = 1

[stages.weight_decay]
grid = [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2]
folds = 2
epochs = {epochs}
stack = {stack}
"""


def _hpo(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "-q", *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL
    )


def run(workers: int, config: Path, work: Path) -> float:
    name = f"hpo_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        env = {
            **os.environ,
            "HPO_STORAGE": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
            "HPO_ARTIFACTS": str(work / "artifacts"),
            "OMP_NUM_THREADS": "1",
        }
        for stage in ("baseline", "lr_range"):
            if _hpo(["run-stage", stage, "--config", str(config)], env, work).wait() != 0:
                raise SystemExit(f"stage {stage} failed")
        start = time.perf_counter()
        procs = [
            _hpo(["run-stage", "weight_decay", "--config", str(config)], env, work) for _ in range(workers)
        ]
        codes = [p.wait() for p in procs]
        seconds = time.perf_counter() - start
        if any(codes):
            raise SystemExit(f"a worker failed: exit codes {codes}")
        return seconds
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--stack",
        type=int,
        default=1,
        help="grid points per stacked batch (1: workers share points one by one)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "bench.toml"
        config.write_text(PIPELINE.format(rows=args.rows, epochs=args.epochs, stack=args.stack))
        one = run(1, config, work)
        two = run(2, config, work)
    print(
        json.dumps(
            {
                "benchmark": "workers",
                "stage": "weight_decay: 6 grid points x 2 folds",
                "rows": args.rows,
                "epochs_per_fold": args.epochs,
                "threads_per_worker": 1,
                "cpus": os.cpu_count(),
                "seconds_1_worker": round(one, 1),
                "seconds_2_workers": round(two, 1),
                "speedup": round(one / two, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
