"""The weight-decay stage's 25 fits (5 grid values x 5 CV folds, 256x256 MLP, batch 128 per model,
Adam lr 1e-3) on the full-size synthetic training split, four ways, like for like:

* ``plain_fp32``: for each fit, ``TensorDataset`` + shuffling ``DataLoader`` + ``nn.Module`` MLP +
  ``torch.optim.Adam(weight_decay=wd)``, one fit after another (the straightforward code);
* ``plain_bf16``: the same loop with its forward pass under CPU autocast to bfloat16;
* ``stacked_fp32``: :func:`hpo.families.mlp.stacked.fit_stacked`, the 25 fits as one stack, fp32;
* ``stacked_bf16``: the same stack under bf16 autocast (the faithful study file's setting).

So the ratios separate the two levers: stacking alone (plain_fp32 / stacked_fp32), bf16 alone
(plain_fp32 / plain_bf16) and both (plain_fp32 / stacked_bf16). Every path trains the same fits on
the same fold rows (each fold scaled by a scaler fit on its training part) for the same epochs, in
this one process; the paths run ``--repeats`` times in alternating order (forward, then
backward) and each path's median is reported. The mean held-out accuracy per weight decay of every
path must lie within ``--tolerance`` of plain_fp32's (checked, exit 1 if not). ``--precision``
fp32, bf16 or auto (hpo's probe on this machine at the stack's width) runs plain_fp32 (the user's
code) against the stack at that precision only; ``both``, the default, runs all four.

    python bench/weight_decay_stage.py [--epochs 1] [--repeats 2] [--rows N] [--precision both]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from _precision import resolve
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from hpo import data
from hpo import training as train
from hpo.families.mlp import model as models
from hpo.families.mlp import stacked
from hpo.sections import DataSettings
from hpo.settings import ModelConfig, OptimConfig, TrainConfig
from hpo.settings import TrainPrecision as Precision
from hpo.tasks import Classification
from hpo.training.optim import build_optimizer
from hpo.training.precision import cpu_description

DECADES = Classification(tuple(f"{1920 + 10 * d}s" for d in range(10)))

GRID = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
FOLDS = 5
SEED = 42


@contextlib.contextmanager
def _autocast(precision: Precision) -> Iterator[None]:
    if precision == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield


def plain_fit(tensors: train.TensorData, wd: float, epochs: int, precision: Precision) -> float:
    """The straightforward implementation; returns the last epoch's held-out accuracy."""
    model = models.build_model(ModelConfig(hidden=(256, 256)), seed=SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=wd)
    loader = DataLoader(
        TensorDataset(tensors.x_train, tensors.y_train),
        batch_size=128,
        shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
    )
    acc = 0.0
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            with _autocast(precision):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        model.eval()
        with torch.no_grad(), _autocast(precision):
            acc = float((model(tensors.x_val).argmax(1) == tensors.y_val).double().mean())
    return acc


def stacked_fits(folds: list[train.TensorData], epochs: int, precision: Precision) -> list[float]:
    tcfg = TrainConfig(epochs=epochs, batch_size=128, seed=SEED, precision=precision)
    members = [
        stacked.Member(ModelConfig(hidden=(256, 256)), OptimConfig(lr=1e-3, weight_decay=wd), tcfg, k)
        for wd in GRID
        for k in range(FOLDS)
    ]
    return [r.history[-1].val_score for r in stacked.fit_stacked(members, folds, task=DECADES)]


def _by_wd(accs: list[float]) -> dict[str, float]:
    means = [float(np.mean(accs[i * FOLDS : (i + 1) * FOLDS])) for i in range(len(GRID))]
    return {f"{wd:g}": round(m, 5) for wd, m in zip(GRID, means, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=1, help="epochs per fit (the stage uses 10)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the four paths")
    parser.add_argument("--rows", type=int, default=None, help="synthetic rows (default: full size)")
    parser.add_argument(
        "--tolerance", type=float, default=0.01, help="largest accuracy gap to plain_fp32 per weight decay"
    )
    parser.add_argument(
        "--precision",
        choices=("both", "auto", "fp32", "bf16"),
        default="both",
        help="the stack's precision (auto: hpo's probe here); both: all four paths (default)",
    )
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # every path: denormals otherwise slow the decayed fits 2-3x

    settings = DataSettings() if args.rows is None else DataSettings(rows=args.rows)
    prepared = data.prepare(settings, progressbar=False)
    split = prepared.split
    x = np.asarray(prepared.features[split.train], dtype=np.float32)
    y = np.asarray(prepared.labels[split.train], dtype=np.int64)
    folds = []
    for fit_idx, held_idx in data.cv_folds(y, n_splits=FOLDS, seed=SEED):
        scaler = data.Scaler.fit(x[fit_idx])
        folds.append(
            train.TensorData.from_numpy(
                scaler.transform(x[fit_idx]), y[fit_idx], scaler.transform(x[held_idx]), y[held_idx]
            )
        )
    samples = sum(f.x_train.shape[0] for f in folds) * len(GRID) * args.epochs

    def plain(precision: Precision) -> Callable[[], list[float]]:
        return lambda: [plain_fit(folds[k], wd, args.epochs, precision) for wd in GRID for k in range(FOLDS)]

    paths: dict[str, Callable[[], list[float]]] = {
        "plain_fp32": plain("fp32"),
        "plain_bf16": plain("bf16"),
        "stacked_fp32": lambda: stacked_fits(folds, args.epochs, "fp32"),
        "stacked_bf16": lambda: stacked_fits(folds, args.epochs, "bf16"),
    }
    if args.precision != "both":
        stack = f"stacked_{resolve(args.precision, len(GRID) * FOLDS)}"
        paths = {k: v for k, v in paths.items() if k in ("plain_fp32", stack)}
    # Process start-up, paid once per worker process, not per fit: the first fused optimizer
    # constructed in a process imports PyTorch's compile machinery (~0.8 s measured here).
    build_optimizer([torch.zeros(1, requires_grad=True)], OptimConfig())
    timings: dict[str, list[float]] = {name: [] for name in paths}
    accs: dict[str, dict[str, float]] = {}
    order = list(paths)
    for r in range(args.repeats):
        for name in order if r % 2 == 0 else reversed(order):
            start = time.perf_counter()
            result = paths[name]()
            timings[name].append(time.perf_counter() - start)
            accs[name] = _by_wd(result)  # deterministic: every repeat gives the same accuracies
    median = {k: statistics.median(v) for k, v in timings.items()}
    base = accs["plain_fp32"]
    gaps = {name: round(max(abs(a[wd] - base[wd]) for wd in a), 5) for name, a in accs.items()}
    out: dict[str, Any] = {
        "benchmark": "weight_decay stage: 25 fits (5 weight decays x 5 folds), 256x256, batch 128",
        "epochs_per_fit": args.epochs,
        "rows": prepared.rows,
        "train_rows_per_fold": [int(f.x_train.shape[0]) for f in folds],
        "model_samples": samples,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_description(),  # model, bf16-relevant flags, flags hash
        "seconds_median": {k: round(v, 2) for k, v in median.items()},
        "seconds_all": {k: [round(s, 2) for s in v] for k, v in timings.items()},
        "model_samples_per_second": {k: round(samples / v) for k, v in median.items()},
        "precision": args.precision,
        "speedup": {
            name: round(median[slow] / median[fast], 2)
            for name, slow, fast in (
                ("stacking_alone_fp32", "plain_fp32", "stacked_fp32"),
                ("bf16_alone_plain", "plain_fp32", "plain_bf16"),
                ("bf16_on_the_stack", "stacked_fp32", "stacked_bf16"),
                ("both", "plain_fp32", "stacked_bf16"),
            )
            if slow in median and fast in median
        },
        "mean_cv_accuracy_by_weight_decay": accs,
        "largest_accuracy_gap_to_plain_fp32": gaps,
        "tolerance": args.tolerance,
        "accuracies_agree": all(g <= args.tolerance for g in gaps.values()),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(out, indent=2))
    if not out["accuracies_agree"]:
        print(f"accuracies disagree beyond {args.tolerance}: {gaps}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
