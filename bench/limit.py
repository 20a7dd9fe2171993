"""The faithful stages against this machine's own limit, and against a plain PyTorch + Optuna loop.

In one run on the current machine (nothing else running; every figure from this run):

1. **The matmul limit**: the GEMMs of one training step of M stacked 90-256-256-10 MLPs at batch
   128 (3 forward; 5 backward, the first layer needs no input gradient), timed alone, at each
   stack width the stages train (1, 3, 25, ...), fp32 and bf16; and one large square GEMM. No
   elementwise work, no optimizer, no data: the best a training step could do here.
2. **The faithful stages' training FLOP**: each stage's planned model-samples at the full-size
   split (hpo's own ``Stage.planned``) x the FLOP of those GEMMs per model-sample (2 x 250,368
   multiply-adds, about 0.5 MFLOP).
3. **hpo's achieved rate**: the faithful study file run by hpo (``Pipeline.run``, its precision
   resolved as a run resolves it, its threads) on ``--rows`` synthetic rows. Each stage's trained
   model-samples (the progress tally's count of epochs x rows; the LR range test's from its plan)
   give its training FLOP; the time the matmul limit would need for them (each trial's share at
   its batch's stack width and precision) over the stage's wall time is the stage's **fraction of
   the limit**. Wall time is everything the stage does: evaluation, storage, selection.
4. **A plain loop** as a user writes it: an Optuna study (GridSampler) over the weight-decay grid,
   each trial a 5-fold CV (scikit-learn StratifiedKFold and StandardScaler) of one
   ``nn.Sequential`` at a time through a ``DataLoader`` with Adam, fp32, on the same training rows;
   a slice of the weight-decay stage (``--plain-points`` points, ``--plain-epochs`` epochs).
   hpo's speedup: its model-samples per second over the plain loop's, for the weight-decay stage
   and for the whole protocol.

Prints JSON.

    python bench/limit.py [--rows 60000] [--precision auto] [--plain-points 1] [--plain-epochs 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from _precision import add_argument
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from hpo import Pipeline
from hpo.data.splits import TEST_FRACTION, VAL_FRACTION
from hpo.present.progress import LogProgress
from hpo.training.precision import cpu_description
from hpo.tuning import records

BATCH = 128
DIMS = (90, 256, 256, 10)
FULL_ROWS = 515_345
STUDY = Path(__file__).resolve().parent.parent / "studies" / "msd_decade.toml"
GRID = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)


def step_gemms(m: int) -> list[tuple[tuple[int, ...], tuple[int, ...], bool, bool]]:
    """The GEMMs of one training step of ``m`` stacked MLPs: (a's shape, b's shape, a transposed,
    b transposed), stacked over ``m`` (2-D for one model, as ``nn.Linear`` runs it)."""
    out: list[tuple[tuple[int, ...], tuple[int, ...], bool, bool]] = []
    lead = (m,) if m > 1 else ()
    for i, (a, b) in enumerate(itertools.pairwise(DIMS)):
        out.append(((*lead, BATCH, a), (*lead, a, b), False, False))  # forward: x @ W
        out.append(((*lead, BATCH, a), (*lead, BATCH, b), True, False))  # weight grad: x^T @ g
        if i > 0:
            out.append(((*lead, BATCH, b), (*lead, a, b), False, True))  # input grad: g @ W^T
    return out


MACS_PER_SAMPLE = sum(a * b for a, b in itertools.pairwise(DIMS)) * 3 - DIMS[0] * DIMS[1]
FLOP_PER_SAMPLE = 2 * MACS_PER_SAMPLE


def _timed(fn: Callable[[], None], seconds: float = 0.5) -> float:
    """Seconds per call: one warm-up, one call to size the run, then at least ``seconds``."""
    fn()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    reps = max(2, min(2000, int(seconds / max(once, 1e-9))))
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def matmul_limit(m: int, dtype: torch.dtype) -> float:
    """FLOP per second of one training step's GEMMs for a stack of ``m`` at ``dtype``."""
    g = torch.Generator().manual_seed(0)
    pairs = []
    for a_shape, b_shape, ta, tb in step_gemms(m):
        a = torch.randn(*a_shape, generator=g).to(dtype)
        b = torch.randn(*b_shape, generator=g).to(dtype)
        pairs.append((a.transpose(-1, -2) if ta else a, b.transpose(-1, -2) if tb else b))

    def step() -> None:
        for a, b in pairs:
            torch.matmul(a, b)

    return m * BATCH * FLOP_PER_SAMPLE / _timed(step)


def large_gemm(dtype: torch.dtype) -> dict[str, float]:
    """One square GEMM: 2048 where it runs at least 20 GFLOP/s at 512, else 1024 (bf16 without
    bf16 instructions runs about 1 GFLOP/s: 17 s a call at 2048)."""
    rate = 0.0
    for n in (512, 2048):
        if n == 2048 and rate < 20e9:
            n = 1024
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)

        def gemm(a: torch.Tensor = a, b: torch.Tensor = b) -> None:
            torch.matmul(a, b)

        rate = 2 * n**3 / _timed(gemm)
    return {"n": n, "gflops": round(rate / 1e9, 1)}


def plain_loop(x: np.ndarray, y: np.ndarray, points: int, epochs: int) -> dict[str, float]:
    """The weight-decay stage as a user writes it with PyTorch and Optuna (see the docstring)."""
    samples = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal samples
        wd = trial.suggest_categorical("weight_decay", list(GRID))
        accuracies = []
        for fit_idx, val_idx in StratifiedKFold(5, shuffle=True, random_state=42).split(x, y):
            scaler = StandardScaler().fit(x[fit_idx])
            xt = torch.tensor(scaler.transform(x[fit_idx]), dtype=torch.float32)
            xv = torch.tensor(scaler.transform(x[val_idx]), dtype=torch.float32)
            yt, yv = torch.tensor(y[fit_idx]), torch.tensor(y[val_idx])
            loader = DataLoader(TensorDataset(xt, yt), batch_size=BATCH, shuffle=True)
            torch.manual_seed(42)
            model = nn.Sequential(
                nn.Linear(90, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
            )
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=wd)
            for _ in range(epochs):
                model.train()
                for xb, yb in loader:
                    optimizer.zero_grad()
                    F.cross_entropy(model(xb), yb).backward()  # type: ignore[no-untyped-call]
                    optimizer.step()
                samples += len(fit_idx)
            model.eval()
            with torch.no_grad():
                accuracies.append(float((model(xv).argmax(1) == yv).float().mean()))
        return float(np.mean(accuracies))

    sampler = optuna.samplers.GridSampler({"weight_decay": list(GRID[:points])}, seed=42)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    start = time.perf_counter()
    study.optimize(objective, n_trials=points)
    seconds = time.perf_counter() - start
    return {
        "model_samples": samples,
        "seconds": round(seconds, 1),
        "model_samples_per_s": round(samples / seconds),
    }


def _width(attrs: dict[str, Any]) -> int:
    train = attrs.get(records.TRAIN, {})
    return int(train.get("stacked", 1)) * int(train.get("folds", 1)) * int(train.get("seeds", 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rows", type=int, default=60_000, help="synthetic rows of hpo's run (default %(default)s)"
    )
    ap.add_argument("--plain-points", type=int, default=1, help="weight-decay points of the plain loop")
    ap.add_argument("--plain-epochs", type=int, default=2, help="epochs of each plain fit")
    add_argument(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        progress = LogProgress()
        pipe = Pipeline.load(
            STUDY,
            storage=f"sqlite:///{tmp}/hpo.db",
            artifacts=Path(tmp) / "artifacts",
            data_dir=Path(tmp) / "data",
            progress=progress,
            overrides=[f"data.rows={args.rows}", f"defaults.precision={args.precision}"],
        )
        result = pipe.run()
        train_rows = int(pipe.ctx.data().train_val().x_train.shape[0])
        tv = pipe.ctx.data().train_val()  # the training rows the weight-decay stage's CV splits
        x, y = tv.x_train.numpy().copy(), tv.y_train.numpy().copy()
        stages: dict[str, dict[str, Any]] = {}
        for run, stage in zip(result.runs, pipe.stages, strict=True):
            study = pipe.ctx.find_study(pipe.ctx.study_name(stage.name))
            assert study is not None and run.seconds is not None
            trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
            planned = stage.planned(pipe.plan.defaults, train_rows)
            samples = min(progress.tally.samples.get(stage.name, 0), planned.samples)
            if stage.kind == "lr_range":  # the range test itself does not report epochs
                samples += planned.samples - planned.model_epochs * train_rows
            widths = [_width(t.user_attrs) for t in trials] or [1]
            precisions = sorted({str(t.user_attrs.get(records.TRAIN, {}).get("precision")) for t in trials})
            stages[stage.name] = {
                "kind": stage.kind,
                "seconds": run.seconds,
                "model_samples": samples,
                "widths": sorted(set(widths)),
                "precision": precisions,
                "_share": [(w, samples / len(widths)) for w in widths],
            }
    plain = plain_loop(x, y, args.plain_points, args.plain_epochs)

    # the limit at every width and precision the stages used
    limits: dict[str, dict[int, float]] = {"fp32": {}, "bf16": {}}
    for p in limits:
        for m in sorted({1, 3, 25} | {w for s in stages.values() for w in s["widths"]}):
            limits[p][m] = matmul_limit(m, torch.float32 if p == "fp32" else torch.bfloat16)
    total_flop = total_limit_s = total_s = total_samples = 0.0
    for s in stages.values():
        precision = s["precision"][0] if s["precision"] and s["precision"][0] in limits else "fp32"
        limit_s = sum(n * FLOP_PER_SAMPLE / limits[precision][w] for w, n in s.pop("_share"))
        flop = s["model_samples"] * FLOP_PER_SAMPLE
        s["gflops"] = round(flop / s["seconds"] / 1e9, 1)
        s["model_samples_per_s"] = round(s["model_samples"] / s["seconds"])
        s["fraction_of_limit"] = round(limit_s / s["seconds"], 3)
        total_flop, total_limit_s = total_flop + flop, total_limit_s + limit_s
        total_s, total_samples = total_s + s["seconds"], total_samples + s["model_samples"]

    full_train = FULL_ROWS - round(TEST_FRACTION * FULL_ROWS) - round(VAL_FRACTION * FULL_ROWS)
    faithful = {
        st.name: st.planned(pipe.plan.defaults, full_train).samples * FLOP_PER_SAMPLE for st in pipe.stages
    }
    wd = stages.get("weight_decay", {})
    print(
        json.dumps(
            {
                "cpu": cpu_description(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "precision_requested": args.precision,
                "flop_per_model_sample": FLOP_PER_SAMPLE,
                "matmul_limit_gflops": {
                    p: {str(m): round(v / 1e9, 1) for m, v in d.items()} for p, d in limits.items()
                },
                "large_gemm": {
                    p: large_gemm(torch.float32 if p == "fp32" else torch.bfloat16) for p in limits
                },
                "faithful_training_tflop": {
                    **{k: round(v / 1e12, 2) for k, v in faithful.items()},
                    "total": round(sum(faithful.values()) / 1e12, 1),
                },
                "hpo_run": {
                    "rows": args.rows,
                    "train_rows": train_rows,
                    "seconds": result.seconds,
                    "stages": stages,
                    "protocol": {
                        "seconds": round(total_s, 1),
                        "model_samples": total_samples,
                        "gflops": round(total_flop / total_s / 1e9, 1),
                        "fraction_of_limit": round(total_limit_s / total_s, 3),
                    },
                },
                "plain_loop": {
                    **plain,
                    "points": args.plain_points,
                    "epochs": args.plain_epochs,
                    "precision": "fp32",
                },
                "hpo_vs_plain": {
                    "weight_decay": round(wd.get("model_samples_per_s", 0) / plain["model_samples_per_s"], 2),
                    "protocol": round(total_samples / total_s / plain["model_samples_per_s"], 2),
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
