"""Preparing a full-size CSV: wall time and peak memory of ``hpo data prepare --source csv``.

Writes a 515,345-row CSV with a header (the synthetic MSD draw: a ``year`` column and the 90
named features, as a user's export would look), then runs ``hpo data prepare`` on it in a fresh
process under ``/usr/bin/time -v`` (decade bins from the year, stratified split, scaler, cache),
``--repeats`` times into fresh cache directories, and a second time into a warm cache (the cache
reused, as every stage and worker reuses it). Prints JSON: each run's wall seconds and maximum
resident set size, and their medians.

    python bench/prepare_csv.py [--rows 515345] [--repeats 3]
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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpo.data import synthetic
from hpo.data.sources import timbre_names


def _write_csv(rows: int, path: Path) -> None:
    draw = synthetic.draw(synthetic.SyntheticSpec(rows=rows, seed=42))
    frame = pd.DataFrame(draw.features.astype(np.float32), columns=timbre_names())
    frame.insert(0, "year", draw.years)
    frame.to_csv(path, index=False, float_format="%.6g")


def _timed(command: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))  # type: ignore[union-attr]
    return {"seconds": round(wall, 2), "max_rss_mb": round(rss_kb / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=synthetic.FULL_ROWS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "songs.csv"
        _write_csv(args.rows, csv)
        csv_mb = csv.stat().st_size / 1e6
        cold, warm = [], []
        for i in range(args.repeats):
            cache = Path(tmp) / f"cache{i}"
            # decade bins as the MSD preset makes them, through a study file's [data] table
            study = Path(tmp) / "csv.toml"
            study.write_text(
                f'[pipeline]\nname = "csv"\n[data]\nsource = "csv"\npath = "{csv}"\ntarget = "year"\n'
                'bin_width = 10\norigin = 1920\n[stages.final]\nkind = "final"\n'
            )
            run = [sys.executable, "-m", "hpo", "-q", "data", "prepare", "--config", str(study)]
            run += ["--data-dir", str(cache)]
            cold.append(_timed(run))
            warm.append(_timed(run))
    result = {
        "rows": args.rows,
        "csv_mb": round(csv_mb, 1),
        "cold": cold,
        "warm_cache": warm,
        "cold_median_seconds": statistics.median(r["seconds"] for r in cold),
        "cold_median_max_rss_mb": statistics.median(r["max_rss_mb"] for r in cold),
        "warm_median_seconds": statistics.median(r["seconds"] for r in warm),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
