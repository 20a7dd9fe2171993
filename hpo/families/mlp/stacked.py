"""Train several same-shape MLPs at once: one step of M models is one batched matmul per layer.

At the write-up's batch size of 128, a single MLP on the CPU is dominated by per-step overhead;
stacking M models makes every kernel M times larger. Each member keeps its own

* initial weights (built by :func:`hpo.families.mlp.model.build_model` with its own seed, then copied in),
* training rows and validation rows (e.g. its CV fold, scaled by that fold's scaler),
* data order (its own ``torch.Generator``, exactly as :func:`hpo.training.loop.fit` draws it),
* dropout masks (its own generator, drawn as the single model draws them),
* optimizer, learning rate and weight decay (L2 added to its gradient slice, as PyTorch's
  optimizers do internally; for a decoupled-decay optimizer such as AdamW, its parameters
  shrink by ``lr * wd`` before the step, as ``torch.optim.AdamW`` does),
* loss (the task's: label smoothing and class weights for a classifier), activation and
  normalisation (from the component tables shared with the one-model MLP; BatchNorm statistics
  are per member and masked to its real rows),
* evaluation history, early-stopping state and best weights.

Members of one stack share the hidden sizes, batch size and number of epochs. The losses are
summed, so each member's gradient is exactly the one it would get alone; results match separate
:func:`~hpo.training.loop.fit` runs to float tolerance (tested). Like the single-model loop, these
modules know nothing of Optuna; the task (:mod:`hpo.tasks`) owns the loss and the scores.

The code lives in four modules, re-exported here (import from this module):

* :mod:`hpo.families.mlp._stacked_model`: the stacked network (:class:`StackedMLP`) and its
  members (:class:`Member`, :func:`stack_key`),
* :mod:`hpo.families.mlp._stacked_optim`: its optimizers (per-member weight decay, fused groups),
* :mod:`hpo.families.mlp._stacked_compile`: ``torch.compile`` decisions and the compile probe
  (:func:`measure_compile`, :func:`wants_compile`),
* :mod:`hpo.families.mlp._stacked_fit`: the fit loop (:func:`fit_stacked`, :class:`StackOptions`)
  and its evaluation.

Speed (measured in ``bench/stack_levers.py``, numbers in docs/benchmarks.md): each module's
docstring says which of the measured levers it holds.
"""

from __future__ import annotations

from hpo.families.mlp._stacked_compile import (
    COMPILE_MIN_GAIN,
    COMPILE_PROBE_MAX_WIDTH,
    measure_compile,
    wants_compile,
)
from hpo.families.mlp._stacked_fit import MemberCallback, StackOptions, fit_stacked
from hpo.families.mlp._stacked_model import Member, StackedMLP, stack_key

__all__ = [
    "COMPILE_MIN_GAIN",
    "COMPILE_PROBE_MAX_WIDTH",
    "Member",
    "MemberCallback",
    "StackOptions",
    "StackedMLP",
    "fit_stacked",
    "measure_compile",
    "stack_key",
    "wants_compile",
]
