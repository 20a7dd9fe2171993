"""Train a batch of models: stacked where they can share a stack, one by one where they cannot.

What a stage's objective calls. A model alone in its group (or every model, with
``stack=False``) goes through :func:`hpo.training.loop.fit`, so a batch of one reproduces the
one-model trainer exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

from hpo.training.loop import FitResult, TensorData, fit
from hpo.training.stacked import Member, MemberCallback, fit_stacked, stack_key

__all__ = ["fit", "fit_members", "fit_stacked"]  # the trainers it calls (tests watch them here)


def fit_members(
    members: Sequence[Member],
    datasets: Sequence[TensorData],
    *,
    callbacks: Sequence[Sequence[MemberCallback]] | None = None,
    stack: bool = True,
) -> list[FitResult]:
    """One result per member, in order. Members with equal :func:`stack_key` train as one stack."""
    cbs = [list(c) for c in callbacks] if callbacks is not None else [[] for _ in members]
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, mb in enumerate(members):
        groups.setdefault(stack_key(mb) if stack else (i,), []).append(i)
    results: list[FitResult | None] = [None] * len(members)
    for idx in groups.values():
        if len(idx) == 1:
            mb = members[idx[0]]
            results[idx[0]] = fit(mb.model, mb.optim, mb.train, datasets[mb.data], callbacks=cbs[idx[0]])
            continue
        fitted = fit_stacked([members[i] for i in idx], datasets, callbacks=[cbs[i] for i in idx])
        for i, result in zip(idx, fitted, strict=True):
            results[i] = result
    return [r for r in results if r is not None]
