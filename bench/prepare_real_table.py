"""Preparing a real-shaped table at scale: wall time and peak memory of ``hpo data prepare`` on a
table with categorical columns, a date-time column, an identifier and empty cells (issue 29).

Writes a CSV of ``--rows`` rows (default 340,000, about nycflights13's flights) and 20 columns:
a 3-class target, 12 numeric columns (2-5 % of their cells empty), a 4,000-level and a 100-level
text column, an 8-level one, a boolean, an ISO date-time, an integer-coded categorical (listed in
``categorical``) and an identifier (left out). Runs ``hpo data prepare`` on it in a fresh
process under ``/usr/bin/time -v``, ``--repeats`` times into fresh cache directories, then fits
the split's preprocessing in each encoding in this process (``--fit``; tracemalloc's peak).
With ``--pipeline``, also ``hpo init`` and two short pipelines on the prepared cache, each a fresh
process under ``/usr/bin/time -v``: hpo's MLP (a 2-point learning-rate sweep of 1 epoch, then a
2-epoch final) and HistGradientBoostingClassifier (native categoricals, 100 iterations, final
only). Prints JSON. Measure alone on the machine: another job's load moves every figure.

    python bench/prepare_real_table.py [--rows 340000] [--repeats 3] [--fit] [--pipeline]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def write_table(rows: int, path: Path, seed: int = 0) -> None:
    r = np.random.default_rng(seed)
    shop = r.zipf(1.3, rows) % 4000  # a long tail: many rare levels
    region = r.integers(0, 100, rows)
    channel = r.integers(0, 8, rows)
    x = r.normal(size=(rows, 12))
    score = x[:, 0] + 0.5 * x[:, 1] + np.sin(shop / 50.0) + (region % 7) / 7.0 + 0.3 * r.normal(size=rows)
    frame = pd.DataFrame({f"m{j}": x[:, j] for j in range(12)})
    for j in range(12):  # 2-5 % empty cells
        frame.loc[r.random(rows) < 0.02 + 0.03 * j / 11, f"m{j}"] = np.nan
    frame["shop"] = [f"shop-{v}" for v in shop]
    frame["region"] = [f"r{v}" for v in region]
    frame["channel"] = np.array(["web", "app", "phone", "store", "mail", "fax", "kiosk", "agent"])[channel]
    frame["member"] = r.random(rows) < 0.4
    start = np.datetime64("2019-01-01T00:00:00")
    frame["ordered_at"] = (start + r.integers(0, 3 * 365 * 24 * 3600, rows).astype("timedelta64[s]")).astype(
        str
    )
    frame["zip"] = r.choice([94103, 10001, 60601, 73301, 2108], rows)
    frame["order_id"] = [f"o{i:07d}" for i in range(rows)]
    frame["y"] = np.where(score > 0.8, "high", np.where(score < -0.3, "low", "mid"))
    frame.to_csv(path, index=False, float_format="%.6g")


def _timed(command: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}): {proc.stderr[-2000:]}")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    assert found is not None
    return {"seconds": round(wall, 2), "max_rss_mb": round(int(found.group(1)) / 1024)}


def _study(csv: Path, out: Path, body: str = '[stages.final]\nkind = "final"\nepochs = 1\n') -> Path:
    out.write_text(
        f'[pipeline]\nname = "{out.stem}"\n[data]\nsource = "csv"\npath = "{csv}"\ntarget = "y"\n'
        f'categorical = ["zip"]\n{body}'
    )
    return out


MLP = """[defaults]
hidden = [128, 128]
batch_size = 512

[stages.lr]
kind = "sweep"
choices = { lr = [0.001, 0.003] }
epochs = 1

[stages.final]
kind = "final"
epochs = 2
"""

HGB = """[defaults]
family = "sklearn"
estimator = "sklearn.ensemble.HistGradientBoostingClassifier"
params = { max_iter = 100, early_stopping = false }

[stages.final]
kind = "final"
"""


def _pipelines(csv: Path, tmp: Path, data_dir: Path) -> dict[str, Any]:
    """``hpo init`` and ``hpo run`` of each family's short pipeline, on the prepared cache."""
    out: dict[str, Any] = {}
    for name, body in (("real_table_mlp", MLP), ("real_table_hgb", HGB)):
        study = _study(csv, tmp / f"{name}.toml", body)
        storage = f"sqlite:///{tmp / 'b.db'}"
        common = ["--config", str(study), "--data-dir", str(data_dir), "--storage", storage]
        hpo = [sys.executable, "-m", "hpo", "-q"]
        out[name] = {
            "init": _timed([*hpo, "init", *common]),
            "run": _timed([*hpo, "run", *common, "--artifacts", str(tmp / "artifacts")]),
        }
        status = subprocess.run(
            [*hpo, "status", *common, "--format", "json"], capture_output=True, text=True, check=True
        )
        metrics = json.loads(status.stdout).get("test_metrics") or {}
        out[name]["test"] = {k: metrics.get(k) for k in ("accuracy", "loss", "balanced_accuracy")}
    return out


def _fit(study: Path, data_dir: Path) -> dict[str, Any]:
    from hpo import data, plan
    from hpo.data.preprocess import MATRIX, NATIVE
    from hpo.stages._context import StageData

    settings = plan.load(study).data
    prepared = data.prepare(settings, data_dir=data_dir, progressbar=False)
    out = {}
    for encoding in (MATRIX, NATIVE):
        tracemalloc.start()
        t0 = time.perf_counter()
        sd = StageData(prepared, encoding)
        tv = sd.train_val()
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[encoding] = {
            "seconds": round(seconds, 2),
            "peak_mb": round(peak / 2**20),
            "inputs": sd.n_features,
            "train_matrix_mb": round(tv.x_train.numel() * 4 / 2**20),
            "modes": [c.mode for c in sd.preprocessor.categorical],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=340_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fit", action="store_true", help="also fit the split's preprocessing")
    parser.add_argument("--pipeline", action="store_true", help="also hpo init and run, both families")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "orders.csv"
        write_table(args.rows, csv)
        study = _study(csv, Path(tmp) / "real_table.toml")
        runs = []
        for i in range(args.repeats):
            command = [sys.executable, "-m", "hpo", "-q", "data", "prepare", "--config", str(study)]
            runs.append(_timed([*command, "--data-dir", str(Path(tmp) / f"cache{i}")]))
        from hpo.training.precision import cpu_description

        result: dict[str, Any] = {
            "cpu": cpu_description(),
            "rows": args.rows,
            "csv_mb": round(csv.stat().st_size / 1e6, 1),
            "prepare": runs,
            "median_seconds": statistics.median(r["seconds"] for r in runs),
            "median_max_rss_mb": statistics.median(r["max_rss_mb"] for r in runs),
        }
        if args.fit:
            result["fit"] = _fit(study, Path(tmp) / "cache0")
        if args.pipeline:
            result["pipelines"] = _pipelines(csv, Path(tmp), Path(tmp) / "cache0")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
