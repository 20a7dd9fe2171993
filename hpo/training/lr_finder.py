"""LR range test, as torch-lr-finder (which the write-up used) computes it. Knows nothing of Optuna.

The learning rate grows exponentially from the optimizer's LR to ``end_lr`` over ``num_iter``
training batches (one epoch by default). The batch loss is smoothed exponentially
(``smooth_f``), the test stops once the smoothed loss exceeds ``diverge_th`` times the best
one, and the suggestion is torch-lr-finder's: trim ``skip_start``/``skip_end`` points, then take
the LR at ``argmin(np.gradient(smoothed loss))``, the steepest descent. torch-lr-finder itself
calls ``plt.show()`` when asked for the suggestion; this module returns data only.

The test trains through the run's :class:`~hpo.settings.TrainConfig` and the task's loss, as
every other training does: its batch size, seed, device, precision (bf16 autocast), label
smoothing and class weights apply (before, it used a plain float32 cross-entropy whatever the
configuration said).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hpo.settings import OptimConfig, TrainConfig
from hpo.tasks import Task
from hpo.training.loop import TensorData, autocast
from hpo.training.optim import build_optimizer


@dataclass(frozen=True)
class RangeTestResult:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggested_lr: float
    suggested_index: int
    diverged: bool


def suggest(lrs: list[float], losses: list[float], *, skip_start: int, skip_end: int) -> tuple[float, int]:
    """torch-lr-finder's steepest-descent pick (index into the untrimmed lists)."""
    end = len(lrs) - skip_end if skip_end else len(lrs)
    trimmed = losses[skip_start:end]
    if len(trimmed) < 2:
        raise ValueError(
            f"the range test recorded {len(losses)} points, too few after trimming "
            f"{skip_start} + {skip_end}; raise num_iter or lower skip_start/skip_end"
        )
    idx = int(np.gradient(np.asarray(trimmed)).argmin()) + skip_start
    return lrs[idx], idx


def range_test(
    model: nn.Module,
    optim_config: OptimConfig,
    train_config: TrainConfig,
    data: TensorData,
    *,
    task: Task,
    end_lr: float = 1.0,
    num_iter: int | None = None,
    smooth_f: float = 0.05,
    diverge_th: float = 5.0,
    skip_start: int = 10,
    skip_end: int = 5,
) -> RangeTestResult:
    """Train ``model`` (built and seeded by the caller) with an exponentially growing LR."""
    cfg = train_config
    batch_size, seed, device = cfg.batch_size, cfg.seed, cfg.device
    model = model.to(device)
    data = data.to(device)
    optimizer = build_optimizer(model.parameters(), optim_config)
    start_lr = optim_config.lr
    n = data.x_train.shape[0]
    iters = num_iter or math.ceil(n / batch_size)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    lrs: list[float] = []
    losses: list[float] = []
    best = math.inf
    diverged = False
    model.train()
    pos = 0
    for i in range(iters):
        if pos >= n:
            order = torch.randperm(n, generator=generator)
            pos = 0
        # torch-lr-finder's ExponentialLR: base * (end / base) ** (i / (num_iter - 1))
        lr = start_lr * (end_lr / start_lr) ** (i / max(iters - 1, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = order[pos : pos + batch_size].to(device)
        pos += batch_size
        with autocast(cfg.precision, device):
            out = model(data.x_train.index_select(0, idx)).float()
        loss = task.loss(out, data.y_train.index_select(0, idx), cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        value = loss.item()
        if losses:
            value = smooth_f * value + (1 - smooth_f) * losses[-1]
        lrs.append(lr)
        losses.append(value)
        best = min(best, value)
        if not math.isfinite(value) or value > diverge_th * best:
            diverged = True
            break
    suggested, index = suggest(lrs, losses, skip_start=skip_start, skip_end=skip_end)
    return RangeTestResult(
        lrs=lrs, losses=losses, suggested_lr=suggested, suggested_index=index, diverged=diverged
    )
