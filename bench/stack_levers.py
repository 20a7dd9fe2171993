"""The stacked trainer's speed levers, each measured alone and all together, in one run.

Workloads (the faithful protocol's stacks, on the full-size synthetic training split, at
``--precision``: auto, the default, resolves by hpo's probe on this machine at each workload's
stack width; batch 128 per model):

* ``weight_decay``: 25 models (5 weight decays x 5 CV folds, each fold its own rows and scaler);
* ``sweep``: 3 models of one sweep (the init sweep: same rows, same seed, so the same data order);
* ``norm_sweep`` and ``optimizer_sweep``: 3 models that differ in normalisation or optimizer;
* ``early_stop``: 8 models, half of which stop after the first epoch (a pruner, patience).

Variants: ``reference`` is the trainer before the levers (``bench/_reference_stacked.py``); ``base``
is today's trainer with every optional lever off (always on: no per-member slicing in the
training step, fused per-group optimizers over views for mixed stacks, no per-step
synchronisation); then each optional lever alone (``+compile`` twice: with its compile time, then
with inductor's caches warm), then all, eager and compiled (a stage compiles where
``StageContext.compile`` measured a gain on the machine for the stack's layers). Every variant trains
the same members from the same seeds; the benchmark asserts that each variant's validation
accuracies agree with the reference's (bf16: within 0.01 per model, the noise of a borderline
row flip growing over an epoch) and prints the largest difference.

Prints JSON: seconds, model-samples per second and the ratio to the reference per workload and
variant, with the torch version, threads and CPU.

    python bench/stack_levers.py [--rows 100000] [--epochs 1] [--workloads sweep,weight_decay]
        [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _reference_stacked as reference
from _precision import add_argument, resolve

from hpo import data
from hpo.families.mlp import stacked
from hpo.sections import DataSettings
from hpo.settings import ModelConfig, OptimConfig, TrainConfig
from hpo.tasks import Classification
from hpo.training import TensorData
from hpo.training.precision import Resolved, cpu_description

SEED = 42
TASK = Classification(tuple(f"{1920 + 10 * d}s" for d in range(10)))  # MSD's decades
VARIANTS: dict[str, stacked.StackOptions | None] = {
    "reference": None,
    "base": stacked.StackOptions(shared_batches=False, batched_eval=False, compaction=False, compile=False),
    "+shared_batches": stacked.StackOptions(
        shared_batches=True, batched_eval=False, compaction=False, compile=False
    ),
    "+batched_eval": stacked.StackOptions(
        shared_batches=False, batched_eval=True, compaction=False, compile=False
    ),
    "+compaction": stacked.StackOptions(
        shared_batches=False, batched_eval=False, compaction=True, compile=False
    ),
    "+compile": stacked.StackOptions(
        shared_batches=False, batched_eval=False, compaction=False, compile=True
    ),
    # the same again: inductor's caches are warm, so this is the compiled step's speed with
    # little compile time, what a stage of many epochs approaches
    "+compile, caches warm": stacked.StackOptions(
        shared_batches=False, batched_eval=False, compaction=False, compile=True
    ),
    "all, eager": stacked.StackOptions(compile=False),
    "all, compiled": stacked.StackOptions(compile=True),
}


def _folds(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], k: int) -> list[TensorData]:
    out = []
    for fit_idx, held_idx in data.cv_folds(y, n_splits=k, seed=SEED):
        scaler = data.Scaler.fit(x[fit_idx])
        out.append(
            TensorData.from_numpy(
                scaler.transform(x[fit_idx]), y[fit_idx], scaler.transform(x[held_idx]), y[held_idx]
            )
        )
    return out


def workloads(
    rows: int, epochs: int, precision_for: Callable[[int], Resolved]
) -> dict[str, tuple[list[stacked.Member], list[TensorData], list[list[Any]]]]:
    """The workloads, each at ``precision_for(its stack width)``."""
    prepared = data.prepare(DataSettings(), progressbar=False)
    split, scaler = prepared.split, prepared.scaler
    train_idx, val_idx = split.train[:rows], split.val[: max(rows // 5, 2000)]
    x = np.asarray(prepared.features[train_idx], dtype=np.float32)
    y = np.asarray(prepared.labels[train_idx], dtype=np.int64)
    tv = TensorData.from_numpy(
        scaler.transform(x), y, scaler.transform(prepared.features[val_idx]), prepared.labels[val_idx]
    )
    folds = _folds(x, y, 5)

    def tcfg(width: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, batch_size=128, seed=SEED, precision=precision_for(width))

    model = ModelConfig(hidden=(256, 256))
    out: dict[str, tuple[list[stacked.Member], list[TensorData], list[list[Any]]]] = {}
    wd = [
        stacked.Member(model, OptimConfig(weight_decay=w), tcfg(25), k)
        for w in (0, 1e-5, 1e-4, 1e-3, 1e-2)
        for k in range(5)
    ]
    out["weight_decay"] = (wd, folds, [[] for _ in wd])
    inits = [
        stacked.Member(ModelConfig(hidden=(256, 256), init=i), OptimConfig(), tcfg(3), 0)
        for i in ("default", "xavier_uniform", "kaiming_normal")
    ]
    out["sweep"] = (inits, [tv], [[] for _ in inits])
    norms = [
        stacked.Member(ModelConfig(hidden=(256, 256), norm=n), OptimConfig(), tcfg(3), 0)
        for n in ("none", "batchnorm", "layernorm")
    ]
    out["norm_sweep"] = (norms, [tv], [[] for _ in norms])
    opts = [
        stacked.Member(model, OptimConfig(name=o, lr=1e-3), tcfg(3), 0) for o in ("adam", "sgd", "rmsprop")
    ]
    out["optimizer_sweep"] = (opts, [tv], [[] for _ in opts])
    seeds = [
        stacked.Member(
            model,
            OptimConfig(),
            TrainConfig(epochs=max(epochs, 2), batch_size=128, seed=s, precision=precision_for(8)),
            0,
        )
        for s in range(8)
    ]
    stop_first: list[list[Any]] = [[(lambda r: r.epoch >= 1)] if s % 2 else [] for s in range(8)]
    out["early_stop"] = (seeds, [tv], stop_first)
    return out


def run(
    members: list[stacked.Member],
    datasets: list[TensorData],
    callbacks: list[list[Any]],
    options: stacked.StackOptions | None,
) -> tuple[float, list[float]]:
    if options is None:
        ref_members = [reference.Member(m.model, m.optim, m.train, m.data) for m in members]
        start = time.perf_counter()
        results = reference.fit_stacked(ref_members, datasets, callbacks=callbacks)
    else:
        start = time.perf_counter()
        results = stacked.fit_stacked(members, datasets, callbacks=callbacks, options=options, task=TASK)
    seconds = time.perf_counter() - start
    return seconds, [r.history[-1].val_score for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="training rows per model")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workloads", default="weight_decay,sweep,norm_sweep,optimizer_sweep,early_stop")
    add_argument(parser)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    wanted = args.workloads.split(",")
    loads = {
        k: v
        for k, v in workloads(args.rows, args.epochs, lambda m: resolve(args.precision, m)).items()
        if k in wanted
    }
    # warm-up: the first fused optimizer of a process imports PyTorch's compile machinery
    warm_members, warm_data, _ = loads[next(iter(loads))]
    stacked.fit_stacked(warm_members[:1], warm_data, options=VARIANTS["base"], task=TASK)
    out: dict[str, Any] = {
        "benchmark": "stacked trainer levers (batch 128 per model, 256x256)",
        "precision": {
            "requested": args.precision,
            **{k: members[0].train.precision for k, (members, _, _) in loads.items()},
        },
        "rows_per_model": args.rows,
        "epochs": args.epochs,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_description(),  # model, bf16-relevant flags, flags hash
        "workloads": {},
    }
    for name, (members, datasets, callbacks) in loads.items():
        rows = sum(datasets[m.data].x_train.shape[0] for m in members) * args.epochs
        per: dict[str, Any] = {}
        ref_acc: list[float] = []
        for variant, options in VARIANTS.items():  # +compile: its compile time included
            seconds, accs = run(members, datasets, callbacks, options)
            if variant == "reference":
                ref_acc = accs
            diff = max(abs(a - b) for a, b in zip(accs, ref_acc, strict=True))
            assert diff <= 0.01, (
                f"{name} {variant}: validation accuracy differs from the reference by {diff:.4f}"
            )
            per[variant] = {
                "seconds": round(seconds, 2),
                "model_samples_per_s": round(rows / seconds),
                "max_val_accuracy_difference_vs_reference": round(diff, 4),
            }
        ref = per["reference"]["seconds"]
        for variant in per:
            per[variant]["speedup_vs_reference"] = round(ref / per[variant]["seconds"], 2)
        out["workloads"][name] = {"models": len(members), "variants": per}
        print(json.dumps({name: out["workloads"][name]}), file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
