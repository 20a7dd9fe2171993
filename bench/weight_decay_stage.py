"""The weight-decay stage's 25 fits (5 grid values x 5 CV folds, 256x256 MLP, batch 128 per model,
Adam lr 1e-3) on the full-size synthetic training split: hpo vs a plain PyTorch DataLoader loop.

Both paths train the same 25 fits in this one process, on the same fold rows (each fold scaled by
a scaler fit on its training part), for the same fixed number of epochs, and evaluate every fold
model on its held-out rows after each epoch:

* ``plain``: for each fit, ``TensorDataset`` + shuffling ``DataLoader`` + ``nn.Module`` MLP +
  ``torch.optim.Adam(weight_decay=wd)``, fp32, one fit after another;
* ``hpo``: :func:`hpo.stacked.fit_stacked` with the 25 fits as one stack (what the stage does),
  in fp32 and in bf16 autocast (the faithful study file's setting).

Prints JSON with seconds per path, model-samples per second, the ratios, and mean CV accuracy
per weight decay for each path (they must agree within noise).

    python bench/weight_decay_stage.py [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from hpo import data
from hpo import model as models
from hpo import training as train
from hpo.settings import DataSettings, ModelConfig, OptimConfig, Precision, TrainConfig
from hpo.training import stacked

GRID = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
FOLDS = 5
SEED = 42


def plain_fit(tensors: train.TensorData, wd: float, epochs: int) -> float:
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
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(tensors.x_val).argmax(1) == tensors.y_val).double().mean())
    return acc


def hpo_fits(folds: list[train.TensorData], epochs: int, precision: Precision) -> list[float]:
    tcfg = TrainConfig(epochs=epochs, batch_size=128, seed=SEED, precision=precision)
    members = [
        stacked.Member(ModelConfig(hidden=(256, 256)), OptimConfig(lr=1e-3, weight_decay=wd), tcfg, k)
        for wd in GRID
        for k in range(FOLDS)
    ]
    return [r.history[-1].val_accuracy for r in stacked.fit_stacked(members, folds)]


def _by_wd(accs: list[float]) -> dict[str, float]:
    return {f"{wd:g}": float(np.mean(accs[i * FOLDS : (i + 1) * FOLDS])) for i, wd in enumerate(GRID)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per fit (the stage uses 10)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # both paths: denormals otherwise slow the decayed fits 2-3x

    prepared = data.prepare(DataSettings(), progressbar=False)
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

    out: dict[str, Any] = {
        "benchmark": "weight_decay stage: 25 fits (5 weight decays x 5 folds), 256x256, batch 128",
        "epochs_per_fit": args.epochs,
        "train_rows_per_fold": [int(f.x_train.shape[0]) for f in folds],
        "model_samples": samples,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    # Process start-up, paid once per worker process, not per fit: the first fused optimizer
    # constructed in a process imports PyTorch's compile machinery (~0.8 s measured here).
    models.build_optimizer([torch.zeros(1, requires_grad=True)], OptimConfig())
    timings: dict[str, float] = {}
    accs: dict[str, dict[str, float]] = {}
    precisions: tuple[Precision, ...] = ("fp32", "bf16")
    for precision in precisions:
        start = time.perf_counter()
        result = hpo_fits(folds, args.epochs, precision)
        timings[f"hpo_{precision}"] = time.perf_counter() - start
        accs[f"hpo_{precision}"] = _by_wd(result)
    start = time.perf_counter()
    plain = [plain_fit(folds[k], wd, args.epochs) for wd in GRID for k in range(FOLDS)]
    timings["plain_dataloader"] = time.perf_counter() - start
    accs["plain_dataloader"] = _by_wd(plain)

    out["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    out["model_samples_per_second"] = {k: round(samples / v) for k, v in timings.items()}
    out["speedup_vs_plain"] = {
        k: round(timings["plain_dataloader"] / v, 2) for k, v in timings.items() if k != "plain_dataloader"
    }
    out["target_speedup"] = 4.0
    out["mean_cv_accuracy_by_weight_decay"] = accs
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
