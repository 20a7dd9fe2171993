"""Caruana's ensemble selection: greedy forward selection with replacement over a model library.

Caruana, Niculescu-Mizil, Crew & Ksikes (2004), the method AutoGluon's weighted ensemble and
FLAML's ``ensemble=True`` descend from: start from the empty ensemble; at each step add (again,
if it is already in) the library member whose addition gives the lowest validation loss of the
ensemble; after ``max_members`` additions keep the nested ensemble (the first k additions) with
the lowest validation loss, since a round adds the best member even where that raises the loss.
A member's weight is the number of times it was chosen. With ``bags``, the selection runs on
that many random halves of the library (a fixed seed) and the counts add up, which keeps one
lucky member from taking every slot.

The ensemble averages the members where the task averages them (:meth:`hpo.tasks.Task.blend`:
class probabilities, or values), so a step costs one pass over the validation rows per library
member: the running sum of the chosen members is kept, not recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hpo.tasks import Task


@dataclass(frozen=True)
class Selected:
    """A greedy selection: each library member's count, and the ensemble's validation loss
    after each step (the path, for the report)."""

    counts: list[int]
    losses: list[float]

    @property
    def members(self) -> list[int]:
        """The library members chosen at least once, in library order."""
        return [i for i, c in enumerate(self.counts) if c > 0]


def _greedy(
    blended: Sequence[torch.Tensor], y: torch.Tensor, task: Task, pool: Sequence[int], steps: int
) -> tuple[list[int], list[float]]:
    total = torch.zeros_like(blended[0])
    chosen: list[int] = []
    losses: list[float] = []
    for step in range(1, steps + 1):
        best, best_loss = -1, float("inf")
        for i in pool:
            loss = task.evaluate(task.unblend((total + blended[i]) / step), y).loss
            if loss < best_loss:  # ties: the earlier member of the library
                best, best_loss = i, loss
        total += blended[best]
        chosen.append(best)
        losses.append(best_loss)
    # the nested ensemble with the lowest loss (Caruana et al. 2004): a round may only raise it
    keep = int(np.argmin(losses)) + 1
    return chosen[:keep], losses


def greedy_select(
    outputs: Sequence[torch.Tensor],
    y: torch.Tensor,
    task: Task,
    *,
    max_members: int,
    bags: int = 0,
    seed: int = 0,
) -> Selected:
    """The greedy selection over the library's validation ``outputs`` (each ``[N, n_outputs]``,
    raw as a family gives them) for the validation targets ``y``, minimising the task's loss.
    ValueError when the library is empty, the outputs disagree in shape, or ``max_members < 1``."""
    if max_members < 1:
        raise ValueError(f"max_members = {max_members}: an ensemble needs at least one member")
    if not outputs:
        raise ValueError("the library is empty: no stored validation outputs to select from")
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"the library's validation outputs differ in shape: {sorted(shapes)}")
    blended = [task.blend(o) for o in outputs]
    counts = [0] * len(outputs)
    if bags == 0:
        chosen, losses = _greedy(blended, y, task, range(len(outputs)), max_members)
    else:
        rng = np.random.default_rng(seed)
        half = max(1, len(outputs) // 2)
        chosen = []
        for _ in range(bags):
            pool = sorted(rng.choice(len(outputs), size=half, replace=False).tolist())
            chosen += _greedy(blended, y, task, pool, max_members)[0]
        weights = np.bincount(chosen, minlength=len(outputs)).astype(np.float64)
        losses = [task.evaluate(task.combine(list(outputs), weights.tolist()), y).loss]
    for i in chosen:
        counts[i] += 1
    return Selected(counts, losses)
