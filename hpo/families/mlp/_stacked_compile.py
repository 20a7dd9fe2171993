"""Whether a stack trains through ``torch.compile`` (:func:`wants_compile`), the measurement that
``compile = "auto"`` decides by (:func:`measure_compile`), and a compiled training step that falls
back to eager for good where compiling fails (:class:`_CompiledOrEager`). Part of
:mod:`hpo.families.mlp.stacked`: the stacked trainer compiles the step's forward and loss where
:func:`measure_compile` measured a gain on this machine (bf16 stacks only).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from hpo.errors import first_line
from hpo.families.mlp._stacked_model import Member, StackedMLP
from hpo.settings import ModelConfig, OptimConfig, TrainConfig
from hpo.tasks import Task
from hpo.training.loop import autocast
from hpo.training.precision import Timing, interleaved, seconds_per_step

# the public module's name, as before the split (log lines name their logger)
logger = logging.getLogger("hpo.families.mlp.stacked")


def wants_compile(option: bool | Literal["auto"], members: Sequence[Member]) -> bool:
    """Whether a stack of ``members`` trains through ``torch.compile`` (see :class:`StackOptions`):
    ``option``, or for "auto" the members' own setting (the pipeline's numerics; members that
    differ in it never share a stack, :func:`stack_key`)."""
    if option != "auto":
        return option
    return members[0].train.compile


#: a compiled step must be clearly faster to pay for its compile (seconds, once per process):
#: a dead band, so that a pick near a tie does not flip between two probes (the AMD Zen 4 of
#: 2026-12-01 timed one stack at 1.27x and 0.99x in two single-shot probes with a 1.1x bar)
COMPILE_MIN_GAIN = 1.25
COMPILE_PROBE_MAX_WIDTH = 8


def measure_compile(model: ModelConfig, *, batch: int, width: int, task: Task) -> Timing:
    """Seconds per bf16 training step (forward, loss, backward) on the CPU of a stack of ``width``
    (at most :data:`COMPILE_PROBE_MAX_WIDTH`) models like ``model``, eager against compiled by
    ``torch.compile``, in interleaved rounds (:func:`~hpo.training.precision.interleaved`; a
    compiled step that fails is timed as never faster). What ``compile = "auto"`` decides by,
    once per pipeline (:mod:`hpo.tuning.numerics`); the compile itself takes seconds."""
    m = max(2, min(width, COMPILE_PROBE_MAX_WIDTH))
    train = TrainConfig(batch_size=batch, precision="bf16")
    members = [Member(model, OptimConfig(), dataclasses.replace(train, seed=s), 0) for s in range(m)]
    stack = StackedMLP(members, "cpu")
    gen = torch.Generator().manual_seed(0)
    xb = torch.randn(1, batch, model.n_features, generator=gen)
    targets = torch.randint(0, model.n_outputs, (batch,), generator=gen)
    yb = (targets if model.n_outputs > 1 else torch.randn(batch, generator=gen))[None].expand(m, -1)

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with autocast("bf16", "cpu"):
            out = stack.forward(x, training=True)
        out = out.float()
        per_member, counts = task.stacked_losses(out, y, None, [mb.train for mb in stack.members])
        return out, per_member, counts

    def step(fn: _ForwardLoss) -> Callable[[], None]:
        def run() -> None:
            _, per_member, _ = fn(xb, yb)
            per_member.sum().backward()  # type: ignore[no-untyped-call]
            for leaf in stack.leaves():
                leaf.grad = None

        return run

    eager = step(forward_loss)
    try:
        compiled = step(torch.compile(forward_loss, dynamic=False))
        compiled()  # compiles here, so that a failure is caught before the timing
    except Exception as exc:  # e.g. no C++ compiler for inductor's CPU backend
        logger.warning("torch.compile failed (%s); measured as never faster", first_line(exc, 200))
        return Timing(seconds_per_step(eager), math.inf, 0.0)
    return interleaved(eager, compiled)


_ForwardLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class _CompiledOrEager:
    """``torch.compile(fn)``, falling back to ``fn`` for good if compiling fails."""

    def __init__(self, fn: _ForwardLoss) -> None:
        self.fn = fn
        self.compiled: Callable[..., Any] | None = torch.compile(fn, dynamic=False)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.compiled is not None:
            try:
                out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = self.compiled(xb, yb)
                return out
            except Exception as exc:  # e.g. no C++ compiler for inductor's CPU backend
                logger.warning("torch.compile failed (%s); training on without it", first_line(exc, 200))
                self.compiled = None
        return self.fn(xb, yb)
