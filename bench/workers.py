"""The weight-decay stage with 1 worker and with 2, at equal total threads, on one PostgreSQL.

Does a second worker process beat one process using the same cores? Each configuration gets the
machine's two cores: one worker with 2 torch threads, or two workers with 1 thread each. Both run
the same stage (6 grid points x 2 folds, stacked as the faithful file stacks them, the live workers
splitting the points between them) on a fresh database each time, after a warm-up run that
prepares the data cache and loads the libraries, in alternating order (1, 2, 2, 1, ...); the
median wall time of each is reported with every run's. Every run must complete all 6 points
(checked) and the mean CV accuracy per point is printed per configuration.

Needs the PostgreSQL server on 127.0.0.1:5432 (trust auth).

    python bench/workers.py [--rows 60000] [--epochs 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
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
precision = "bf16"

[stages.lr_range]
kind = "lr_range"
num_iter = 30
verify_epochs = 1

[stages.weight_decay]
kind = "grid_cv"
grid = {{ weight_decay = [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2] }}
folds = 2
epochs = {epochs}
stack = 6
"""


def _hpo(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "-q", *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL
    )


def run(workers: int, threads: int, config: Path, work: Path) -> tuple[float, dict[str, float]]:
    name = f"hpo_bench_{uuid.uuid4().hex[:8]}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        env = {
            **os.environ,
            "HPO_STORAGE": url,
            "HPO_ARTIFACTS": str(work / "artifacts"),
            "HPO_DATA_DIR": str(work / "cache"),
            "OMP_NUM_THREADS": str(threads),
        }
        if _hpo(["run-stage", "lr_range", "--config", str(config)], env, work).wait() != 0:
            raise SystemExit("stage lr_range failed")
        start = time.perf_counter()
        procs = [
            _hpo(["run-stage", "weight_decay", "--config", str(config)], env, work) for _ in range(workers)
        ]
        codes = [p.wait() for p in procs]
        seconds = time.perf_counter() - start
        if any(codes):
            raise SystemExit(f"a worker failed: exit codes {codes}")
        trials = optuna.load_study(study_name="bench_workers.weight_decay", storage=url).get_trials()
        done = {
            f"{t.params['weight_decay']:g}": round(float(t.value or 0.0), 4)
            for t in trials
            if t.state == optuna.trial.TrialState.COMPLETE
        }
        if len(done) != 6:
            raise SystemExit(f"{len(done)} of 6 points completed")
        return seconds, done
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="total threads")
    args = parser.parse_args()
    configs = {"1_worker": (1, args.cores), f"{args.cores}_workers": (args.cores, 1)}
    seconds: dict[str, list[float]] = {k: [] for k in configs}
    values: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "bench.toml"
        config.write_text(PIPELINE.format(rows=args.rows, epochs=args.epochs))
        run(1, args.cores, config, work)  # warm-up: data cache, imports, page cache
        order = list(configs)
        for r in range(args.repeats):
            for key in order if r % 2 == 0 else reversed(order):
                workers, threads = configs[key]
                took, values[key] = run(workers, threads, config, work)
                seconds[key].append(round(took, 1))
    median = {k: statistics.median(v) for k, v in seconds.items()}
    one, many = median["1_worker"], median[f"{args.cores}_workers"]
    out: dict[str, Any] = {
        "benchmark": "workers at equal total threads",
        "stage": "weight_decay: 6 grid points x 2 folds, stacked, bf16",
        "rows": args.rows,
        "epochs_per_fold": args.epochs,
        "total_threads": args.cores,
        "configurations": {k: {"workers": w, "threads_each": t} for k, (w, t) in configs.items()},
        "seconds_all": seconds,
        "seconds_median": median,
        "speedup_of_more_workers": round(one / many, 2),
        "cv_accuracy_by_weight_decay": values,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
