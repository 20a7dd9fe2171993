"""Training throughput of the 256x256 MLP: hpo's trainer vs a plain PyTorch DataLoader loop.

Both run in this one process on the same scaled training rows of the prepared synthetic data,
one epoch each (after a short warm-up), at batch 128 (the write-up's) and 1024. hpo's trainer runs
at ``--precision`` (auto: hpo's probe on this machine); the DataLoader loop in fp32, as a user
writes it. Prints JSON.

    python bench/train_throughput.py [--rows N] [--repeats K] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
from _precision import add_argument, resolve
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from hpo import data
from hpo import training as train
from hpo.families.mlp import model as models
from hpo.sections import DataSettings
from hpo.settings import ModelConfig, OptimConfig, TrainConfig
from hpo.tasks import Classification
from hpo.training.precision import Resolved, cpu_description


def dataloader_epoch(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> float:
    """The straightforward implementation: TensorDataset + shuffling DataLoader + Adam."""
    model = models.build_model(ModelConfig(hidden=(256, 256)), seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    start = time.perf_counter()
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return time.perf_counter() - start


def hpo_epoch(tensors: train.TensorData, batch_size: int, seed: int, precision: Resolved = "fp32") -> float:
    config = TrainConfig(epochs=1, batch_size=batch_size, seed=seed, precision=precision)
    start = time.perf_counter()
    model = models.build_model(ModelConfig(hidden=(256, 256)), seed=seed)
    train.fit(model, OptimConfig(), config, tensors, task=Classification(tuple(str(c) for c in range(10))))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="training rows per epoch")
    parser.add_argument("--repeats", type=int, default=2, help="best of K epochs per setting")
    add_argument(parser)
    args = parser.parse_args()
    precision = resolve(args.precision, width=1)

    prepared = data.prepare(DataSettings(), progressbar=False)
    split = prepared.split
    scaler = prepared.scaler
    rows = split.train[: args.rows]
    x = torch.as_tensor(scaler.transform(prepared.features[rows]))
    y = torch.as_tensor(np.asarray(prepared.labels[rows], dtype=np.int64))
    val = split.val[:2048]
    tensors = train.TensorData.from_numpy(
        scaler.transform(prepared.features[rows]),
        prepared.labels[rows],
        scaler.transform(prepared.features[val]),
        prepared.labels[val],
    )
    warm = train.TensorData(x[:20_000], y[:20_000], tensors.x_val, tensors.y_val)
    hpo_epoch(warm, 128, 0)
    dataloader_epoch(x[:20_000], y[:20_000], 128, 0)

    results: dict[str, Any] = {
        "benchmark": "train_throughput",
        "model": "256x256 MLP (91,658 parameters), Adam lr 1e-3",
        "rows_per_epoch": int(x.shape[0]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_description(),  # model, bf16-relevant flags, flags hash
        "precision": {"requested": args.precision, "hpo": precision, "dataloader": "fp32"},
        "batches": {},
    }
    for batch_size in (128, 1024):
        t_hpo = min(hpo_epoch(tensors, batch_size, r, precision) for r in range(args.repeats))
        t_dl = min(dataloader_epoch(x, y, batch_size, r) for r in range(args.repeats))
        n = int(x.shape[0])
        results["batches"][str(batch_size)] = {
            "hpo_samples_per_s": round(n / t_hpo),
            "dataloader_samples_per_s": round(n / t_dl),
            "speedup_vs_dataloader": round(t_dl / t_hpo, 2),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
