"""How fast could the faithful stages be on this machine? A floor from the minimal stacked step.

Measures, in one run, model-samples per second of three ways to train M same-shape MLPs
(90-256-256-10, ReLU, batch 128 per model, at ``--precision``: auto, the default, resolves by
hpo's probe on this machine at each width, as a run of the faithful study file does; Adam) at the
stack widths the faithful stages use (1: LR range test and final; 3: a sweep; 25:
the weight-decay grid x folds):

* ``floor_autograd``: the least a stacked step can do with autograd: one gather of a shared
  batch, three ``baddbmm`` layers, ReLU, summed cross-entropy, ``backward``, one fused Adam over
  the stacked tensors. No evaluation, no norms, no per-member bookkeeping, no data order.
* ``floor_manual``: the same step with the backward pass written by hand (no autograd graph):
  what is left once Python and autograd's per-op overhead is gone.
* ``floor_compiled``: ``floor_autograd`` with its forward and loss through ``torch.compile``
  (inductor's CPU backend), timed after compiling: the best case, compile time not counted.
* ``hpo``: :func:`hpo.families.mlp.fit_stacked`, one epoch, a 2,000-row validation set.

Then projects the faithful study file's training work (model-samples per stage, from its epochs,
folds and stack widths and the stratified 70/15/15 split of 515,345 rows) onto each path's
throughput: the seconds each stage would need at that speed, training alone (no evaluation, no
data preparation, no storage). If even the floor's projection exceeds a time goal, no trimming of
the trainer reaches it on this machine without changing the protocol (batch size, epochs, stages).

Prints JSON.

    python bench/stage_floor.py [--steps 600] [--rows 360741] [--precision auto]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _precision import add_argument, resolve
from torch.nn import functional as F

from hpo import plan
from hpo.data.splits import TEST_FRACTION, VAL_FRACTION
from hpo.families.mlp import Member, fit_stacked
from hpo.settings import ModelConfig, OptimConfig, TrainConfig
from hpo.tasks import Classification
from hpo.training import TensorData
from hpo.training.precision import Resolved, cpu_description

BATCH, FEATURES, HIDDEN, CLASSES = 128, 90, 256, 10
WIDTHS = (1, 3, 25)
HOWS = ("autograd", "manual", "compiled")
ROWS = 515_345
STUDY = Path(__file__).resolve().parent.parent / "studies" / "msd_decade.toml"


class _MinimalStack:
    """M MLPs as stacked fp32 leaves; forward under bf16 autocast (``precision`` bf16) or in
    fp32; one fused Adam."""

    def __init__(self, m: int, precision: str) -> None:
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        g = torch.Generator().manual_seed(0)
        dims = [FEATURES, HIDDEN, HIDDEN, CLASSES]
        self.m = m
        self.w = [
            (torch.randn(m, a, b, generator=g) / a**0.5).requires_grad_() for a, b in itertools.pairwise(dims)
        ]
        self.b = [torch.zeros(m, 1, b).requires_grad_() for b in dims[1:]]
        self.leaves = [*self.w, *self.b]
        self.opt = torch.optim.Adam(self.leaves, lr=1e-3, fused=True)

    def loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            h = torch.matmul(xb, self.w[0]) + self.b[0]
            h = F.relu(h)
            h = F.relu(torch.baddbmm(self.b[1], h, self.w[1]))
            logits = torch.baddbmm(self.b[2], h, self.w[2])
        loss = F.cross_entropy(logits.float().reshape(-1, CLASSES), yb.reshape(-1), reduction="none")
        return loss.view(self.m, -1).mean(1).sum()

    def step_autograd(self, xb: torch.Tensor, yb: torch.Tensor, compiled: Any = None) -> None:
        loss = (compiled or self.loss)(xb, yb)
        for leaf in self.leaves:
            leaf.grad = None
        loss.backward()
        self.opt.step()

    @torch.no_grad()
    def step_manual(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        bf = self.dtype
        w = [t.to(bf) for t in self.w]
        x = xb.to(bf).expand(self.m, -1, -1)
        a1 = torch.baddbmm(self.b[0].to(bf), x, w[0])
        h1 = a1.relu()
        a2 = torch.baddbmm(self.b[1].to(bf), h1, w[1])
        h2 = a2.relu()
        p = torch.baddbmm(self.b[2].to(bf), h2, w[2]).float().softmax(-1)
        p.scatter_add_(-1, yb[..., None], torch.full_like(p[..., :1], -1.0))
        g3 = (p / BATCH).to(bf)
        g2 = torch.bmm(g3, w[2].transpose(1, 2)) * (a2 > 0)
        g1 = torch.bmm(g2, w[1].transpose(1, 2)) * (a1 > 0)
        grads = [
            torch.bmm(x.transpose(1, 2), g1),
            torch.bmm(h1.transpose(1, 2), g2),
            torch.bmm(h2.transpose(1, 2), g3),
            g1.sum(1, keepdim=True),
            g2.sum(1, keepdim=True),
            g3.sum(1, keepdim=True),
        ]
        for leaf, grad in zip(self.leaves, grads, strict=True):
            leaf.grad = grad.float()
        self.opt.step()


DECADES = Classification(tuple(f"{1920 + 10 * d}s" for d in range(10)))


def floor(m: int, x: torch.Tensor, y: torch.Tensor, steps: int, how: str, precision: str) -> float:
    stack = _MinimalStack(m, precision)
    if how == "manual":
        step = stack.step_manual
    elif how == "compiled":
        compiled = torch.compile(stack.loss, dynamic=False)

        def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
            stack.step_autograd(xb, yb, compiled)
    else:
        step = stack.step_autograd
    g = torch.Generator().manual_seed(1)

    def run(n: int) -> None:
        for _ in range(n):
            idx = torch.randint(0, x.shape[0], (BATCH,), generator=g)
            step(x.index_select(0, idx)[None], y.index_select(0, idx)[None].expand(m, -1))

    run(50)
    start = time.perf_counter()
    run(steps)
    return m * BATCH * steps / (time.perf_counter() - start)


def hpo_rate(m: int, x: torch.Tensor, y: torch.Tensor, steps: int, precision: Resolved) -> float:
    rows = steps * BATCH
    data = TensorData(x[:rows], y[:rows], x[-2000:], y[-2000:])
    members = [
        Member(
            ModelConfig(), OptimConfig(weight_decay=1e-5 * i), TrainConfig(epochs=1, precision=precision), 0
        )
        for i in range(m)
    ]
    fit_stacked(members[:1], [TensorData(x[:6400], y[:6400], x[-2000:], y[-2000:])], task=DECADES)  # warm-up
    start = time.perf_counter()
    fit_stacked(members, [data], task=DECADES)
    return m * rows / (time.perf_counter() - start)


def faithful_work(train_rows: int) -> dict[str, tuple[int, float]]:
    """Stage -> (stack width, model-samples of training) of the faithful study file, read
    through hpo's own study-file loader (its typed stage settings)."""
    work: dict[str, tuple[int, float]] = {}
    for stage in plan.load(STUDY).stages:
        s: Any = stage.settings  # the kind says which typed settings model it is
        if s.kind == "lr_range":  # one epoch of the range test, then the verification
            work[stage.name] = (1, train_rows * (1 + s.verify_epochs))
        elif s.kind == "grid_cv":
            fits = math.prod(len(v) for v in s.grid.values()) * s.folds * s.seeds
            work[stage.name] = (
                min(fits, s.stack * s.folds * s.seeds),
                fits * train_rows * (1 - 1 / s.folds) * s.epochs,
            )
        elif s.kind == "sweep":
            models = math.prod(len(v) for v in s.choices.values()) * s.seeds
            work[stage.name] = (min(models, s.stack * s.seeds), models * train_rows * s.epochs)
        elif s.kind == "final":
            work[stage.name] = (s.seeds, s.seeds * train_rows * s.epochs)
    return work


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="timed steps per measurement")
    train_rows = ROWS - round(TEST_FRACTION * ROWS) - round(VAL_FRACTION * ROWS)  # as the split counts
    ap.add_argument("--rows", type=int, default=train_rows, help="training rows of the split")
    add_argument(ap)
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    r = np.random.default_rng(0)
    x = torch.as_tensor(r.normal(size=(args.rows, FEATURES)).astype(np.float32))
    y = torch.as_tensor(r.integers(0, CLASSES, args.rows))
    rates: dict[str, dict[int, float]] = {name: {} for name in [*(f"floor_{h}" for h in HOWS), "hpo"]}
    precisions = {m: resolve(args.precision, m) for m in WIDTHS}
    for m in WIDTHS:
        for how in HOWS:
            rates[f"floor_{how}"][m] = floor(m, x, y, args.steps, how, precisions[m])
        rates["hpo"][m] = hpo_rate(m, x, y, args.steps, precisions[m])
    work = faithful_work(args.rows)
    projection = {
        path: {name: round(samples / by_width[width], 1) for name, (width, samples) in work.items()}
        for path, by_width in rates.items()
    }
    print(
        json.dumps(
            {
                "model_samples_per_s": {
                    p: {str(m): round(v) for m, v in d.items()} for p, d in rates.items()
                },
                "hpo_vs_floor_autograd": {
                    str(m): round(rates["hpo"][m] / rates["floor_autograd"][m], 2) for m in WIDTHS
                },
                "faithful_work": {n: {"width": w, "model_samples": round(s)} for n, (w, s) in work.items()},
                "projected_training_seconds": {
                    p: {**stages, "total": round(sum(stages.values()), 1)} for p, stages in projection.items()
                },
                # each stage at the fastest of the three floors for its width
                "best_floor_total_seconds": round(
                    sum(min(projection[f"floor_{h}"][n] for h in HOWS) for n in work), 1
                ),
                "steps": args.steps,
                "precision": {"requested": args.precision, **{str(m): p for m, p in precisions.items()}},
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpu": cpu_description(),  # model, bf16-relevant flags, flags hash
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
