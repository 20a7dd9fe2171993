"""The weight-decay stage with 1 worker and with 2 on one host, on one PostgreSQL.

Does a second worker process beat one process using the same cores, and do two workers that
share the host without being told (hpo splits its cores among the live workers on a host) avoid
the oversubscription of two workers that each take every core? Configurations, each on the
machine's cores:

* ``1_worker``: one worker, threads left to hpo (all the cores it may use);
* ``2_workers_shared``: two workers, threads left to hpo (each takes cores / 2 once both run);
* ``2_workers_all_cores``: two workers, each told ``HPO_THREADS`` = all cores (what every worker
  did before hpo set threads: torch takes every core it sees).

Every configuration runs ``hpo worker`` processes on a fresh database: the LR range test (one
point: one worker runs it while the other waits, so both are registered when it ends), then the
weight-decay stage (6 grid points x 2 folds, stacked as the faithful file stacks them, the live
workers splitting the points between them), after a warm-up run that prepares the data cache and
loads the libraries, in rotating order. The stage's time is its trials' span (first start to
last completion); the median of each configuration is reported with every run's, with the thread
counts the workers logged. A run of two workers where one worker ran every point measured one
worker; it is run again and counted as discarded. Every run must complete
all 6 points (checked) and the mean CV accuracy per point is printed per configuration. The JSON
names the CPU and the precision (``--precision``, default auto: resolved by hpo's probe on this
machine, whose results it includes).

Needs the PostgreSQL server on 127.0.0.1:5432 (trust auth).

    python bench/workers.py [--rows 60000] [--epochs 2] [--repeats 2] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psycopg

from hpo.training import precision, threads

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

PIPELINE = """
[pipeline]
name = "bench_workers"

[data]
source = "synthetic"
rows = {rows}

[defaults]
hidden = [256, 256]
precision = "{precision}"

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


def _hpo(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "hpo", *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err
        )


@dataclass
class Run:
    seconds: float
    accuracies: dict[str, float]
    workers_with_trials: int
    threads_logged: list[str]


def run(workers: int, threads: int | None, config: Path, work: Path) -> Run:
    name = f"hpo_bench_{uuid.uuid4().hex[:8]}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("HPO_THREADS", "OMP_NUM_THREADS")}
        env.update(HPO_STORAGE=url, HPO_ARTIFACTS=str(work / "artifacts"), HPO_DATA_DIR=str(work / "cache"))
        if threads is not None:
            env["HPO_THREADS"] = str(threads)
        # every worker starts at the LR range test (one point: one runs it while the others wait,
        # all registered by the time it ends), then they split the weight-decay grid
        logs = [work / f"worker{i}.log" for i in range(workers)]
        procs = [_hpo(["worker", "--plain", "--config", str(config)], env, work, log) for log in logs]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"a worker failed: exit codes {codes}")
        trials = optuna.load_study(study_name="bench_workers.weight_decay", storage=url).get_trials()
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        done = {f"{t.params['weight_decay']:g}": round(float(t.value or 0.0), 4) for t in complete}
        starts = [t.datetime_start for t in complete if t.datetime_start is not None]
        ends = [t.datetime_complete for t in complete if t.datetime_complete is not None]
        seconds = (max(ends) - min(starts)).total_seconds()  # the stage, from its trials' times
        if len(done) != 6:
            raise SystemExit(f"{len(done)} of 6 points completed")
        lines = [
            line.split("training with ", 1)[1].strip()
            for log in logs
            for line in log.read_text().splitlines()
            if "training with " in line
        ]
        return Run(seconds, done, len({t.user_attrs.get("hpo:worker") for t in complete}), lines)
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
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    args = parser.parse_args()
    cores = threads.available_cores().n
    configs: dict[str, tuple[int, int | None]] = {
        "1_worker": (1, None),
        "2_workers_shared": (2, None),
        "2_workers_all_cores": (2, cores),
    }
    seconds: dict[str, list[float]] = {k: [] for k in configs}
    values: dict[str, dict[str, float]] = {}
    discarded = {k: 0 for k in configs}
    logged: dict[str, list[str]] = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "bench.toml"
        config.write_text(PIPELINE.format(rows=args.rows, epochs=args.epochs, precision=args.precision))
        run(1, None, config, work)  # warm-up: data cache, imports, page cache, the precision probe
        order = list(configs)
        for r in range(args.repeats):
            for key in order[r % len(order) :] + order[: r % len(order)]:
                workers, n = configs[key]
                # two workers started together race to their first claim: where one claimed every
                # point before the other registered, the run measured one worker; run it again
                for _ in range(6):
                    got = run(workers, n, config, work)
                    if got.workers_with_trials == workers:
                        break
                    discarded[key] += 1
                else:
                    raise SystemExit(f"{key}: one worker took every point in 6 runs")
                values[key] = got.accuracies
                seconds[key].append(round(got.seconds, 1))
                logged[key] = sorted(set(logged[key]) | set(got.threads_logged))
        probes = (
            json.loads((work / "cache" / precision.CACHE_FILE).read_text())
            if args.precision == "auto"
            else {}
        )
    median = {k: statistics.median(v) for k, v in seconds.items()}
    one = median["1_worker"]
    out: dict[str, Any] = {
        "benchmark": "workers on one host",
        "cpu": precision.cpu_description(),
        "cores": cores,
        "precision": args.precision,
        "precision_probes": probes,
        "stage": "weight_decay: 6 grid points x 2 folds, stacked",
        "rows": args.rows,
        "epochs_per_fold": args.epochs,
        "configurations": {
            k: {"workers": w, "threads_each": t or "hpo's choice"} for k, (w, t) in configs.items()
        },
        "threads_logged": logged,
        "runs_discarded_one_worker_took_all": discarded,
        "seconds_all": seconds,
        "seconds_median": median,
        "speed_against_1_worker": {k: round(one / v, 2) for k, v in median.items()},
        "cv_accuracy_by_weight_decay": values,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
