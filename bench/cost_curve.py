"""The cost curve: throughput against stack width, one stage's wall time against rows, and two
processes with half a stack each against one process with both cores.

1. ``width``: model-samples per second of the stacked trainer (256x256, batch 128 per
   model, one epoch of ``--width-rows`` rows per model, evaluation included) for stacks of
   1, 2, 4, 8, 16, 32 and 64 models, in this process (intra-op threads: all cores); best of two.
2. ``rows``: wall time of a one-epoch weight-decay stage (a ``grid_cv`` stage: 5 weight decays x
   5 folds stacked, the faithful study file's shape) through the pipeline API, on synthetic
   draws of 100,000, 515,345 and 2,000,000 rows (data preparation reported apart).
3. ``processes``: the 25-model stack of (2) at 515,345 rows in one process with 2 threads, and
   split 13 + 12 into two processes with 1 thread each, started together.

Every part trains at ``--precision`` (auto: in (1) hpo's probe on this machine at each width, in
(2) and (3) the stage's own resolution). Prints JSON; with matplotlib installed, ``--plot FILE``
draws (1) and (2) as an SVG.

    python bench/cost_curve.py [--plot docs/cost_curve.svg] [--skip-rows 2000000] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _precision import add_argument, resolve

from hpo.families.mlp import Member, fit_stacked
from hpo.settings import ModelConfig, OptimConfig, TrainConfig
from hpo.tasks import Classification
from hpo.training import TensorData
from hpo.training.precision import cpu_description

WIDTHS = (1, 2, 4, 8, 16, 32, 64)
ROWS = (100_000, 515_345, 2_000_000)
STAGE = """
[pipeline]
name = "cost"

[data]
source = "synthetic"
rows = {rows}
seed = 42

[defaults]
hidden = [256, 256]
precision = "{precision}"

[stages.weight_decay]
kind = "grid_cv"
grid = {{ weight_decay = [0.0, 1e-5, 1e-4, 1e-3, 1e-2] }}
folds = 5
epochs = 1
stack = 5
{members}
"""
_RUN_STAGE = """
import json, sys, time, torch
from hpo.pipeline import Pipeline
pipe = Pipeline.load(sys.argv[1], storage=sys.argv[2], artifacts=sys.argv[3])
pipe.ctx.data()
start = time.perf_counter()
pipe.run_stage("weight_decay")
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


DECADES = Classification(tuple(f"{1920 + 10 * d}s" for d in range(10)))


def width_curve(rows: int, precision: str) -> list[dict[str, Any]]:
    r = np.random.default_rng(0)
    x = r.normal(size=(rows, 90)).astype(np.float32)
    y = r.integers(0, 10, rows)
    data = TensorData.from_numpy(x, y, x[: rows // 5], y[: rows // 5])
    out = []
    fit_stacked(
        [Member(ModelConfig(), OptimConfig(), TrainConfig(epochs=1, precision=resolve(precision, 1)), 0)],
        [data],
        task=DECADES,
    )
    for m in WIDTHS:
        resolved = resolve(precision, m)
        members = [
            Member(
                ModelConfig(),
                OptimConfig(weight_decay=1e-4),
                TrainConfig(epochs=1, precision=resolved, seed=s),
                0,
            )
            for s in range(m)
        ]
        start = time.perf_counter()
        fit_stacked(members, [data], task=DECADES)
        seconds = time.perf_counter() - start
        out.append(
            {
                "models": m,
                "precision": resolved,
                "seconds": round(seconds, 2),
                "model_samples_per_s": round(m * rows / seconds),
            }
        )
        print(json.dumps(out[-1]), file=sys.stderr)
    return out


def _stage(
    rows: int, work: Path, precision: str, *, grid: str | None = None, threads: int | None = None
) -> float:
    """Seconds of the weight-decay stage (data prepared beforehand) in a fresh process."""
    cfg = work / f"cost-{rows}-{grid or 'all'}.toml"
    text = STAGE.format(rows=rows, members="", precision=precision)
    if grid is not None:
        text = text.replace("[0.0, 1e-5, 1e-4, 1e-3, 1e-2]", grid)
    cfg.write_text(text)
    env = {**os.environ, "HPO_DATA_DIR": str(work / "data")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    db = work / f"{cfg.stem}-{time.time_ns()}.db"
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_STAGE, str(cfg), f"sqlite:///{db}", str(work / "artifacts")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])


def rows_curve(work: Path, skip: set[int], precision: str) -> list[dict[str, Any]]:
    from hpo import data
    from hpo.sections import DataSettings

    out = []
    for rows in ROWS:
        if rows in skip:
            continue
        start = time.perf_counter()
        data.prepare(DataSettings(rows=rows), data_dir=work / "data", progressbar=False)
        prep = time.perf_counter() - start
        seconds = _stage(rows, work, precision)
        models_rows = 25 * 0.7 * 0.8 * rows  # 25 models, each on 4/5 of the 70 % training rows
        out.append(
            {
                "rows": rows,
                "prepare_seconds": round(prep, 1),
                "stage_seconds": round(seconds, 1),
                "model_samples_per_s": round(models_rows / seconds),
            }
        )
        print(json.dumps(out[-1]), file=sys.stderr)
    return out


def processes(work: Path, precision: str) -> dict[str, Any]:
    rows = 515_345
    one = _stage(rows, work, precision)
    results: list[float] = []

    def run(grid: str) -> None:
        results.append(_stage(rows, work, precision, grid=grid, threads=1))

    threads = [threading.Thread(target=run, args=(g,)) for g in ("[0.0, 1e-5, 1e-4]", "[1e-3, 1e-2]")]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    both = time.perf_counter() - start
    return {
        "one_process_2_threads_seconds": round(one, 1),
        "two_processes_1_thread_seconds": round(both, 1),
        "each_process_stage_seconds": [round(r, 1) for r in results],
        "note": "points split 3 + 2 (15 + 10 models); wall time of the slower process, start-up included",
        "speedup": round(one / both, 2),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    w = result["width"]
    a.plot([p["models"] for p in w], [p["model_samples_per_s"] / 1000 for p in w], marker="o")
    a.set_xscale("log", base=2)
    a.set_xlabel("models in the stack")
    a.set_ylabel("thousand model-samples / s")
    a.set_title(f"Stacked trainer throughput ({result['precision']}, batch 128)")
    a.grid(alpha=0.3)
    r = result["rows"]
    if r:
        b.plot([p["rows"] / 1e6 for p in r], [p["stage_seconds"] for p in r], marker="o")
        b.set_xlabel("rows (millions)")
        b.set_ylabel("seconds")
        b.set_title("Weight-decay stage, 1 epoch (25 models)")
        b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width-rows", type=int, default=40_000)
    parser.add_argument("--skip-rows", type=int, nargs="*", default=[])
    parser.add_argument("--no-processes", action="store_true")
    parser.add_argument("--plot", type=Path)
    add_argument(parser)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    result: dict[str, Any] = {
        "benchmark": "cost curve",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_description(),  # model, bf16-relevant flags, flags hash
        "precision": args.precision,
        "width": width_curve(args.width_rows, args.precision),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result["rows"] = rows_curve(work, set(args.skip_rows), args.precision)
        if not args.no_processes:
            result["processes"] = processes(work, args.precision)
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
