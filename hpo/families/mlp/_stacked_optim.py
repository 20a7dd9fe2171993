"""The stacked network's optimizers (:class:`_Optimizers`): each member optimised, learning rate and
weight decay included, exactly as its own optimizer would optimise it alone. Part of
:mod:`hpo.families.mlp.stacked`.

Speed (measured in ``bench/stack_levers.py``, numbers in docs/benchmarks.md): members with
different optimizers or learning rates are updated by one fused optimizer per group over views into
the stacked tensors (before: per-member leaf tensors stacked anew at every step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from hpo.families.mlp._stacked_model import StackedMLP
from hpo.training.optim import build_optimizer, optimizer_spec


class _Optimizers:
    """The stack's optimizers: one over the stacked tensors when every member shares the
    optimizer configuration (all of it but the weight decay); else one fused optimizer per
    configuration over views of its members' slices, with each view's gradient a view of the
    stacked gradient. Weight decay is applied per member before the step, as the member's
    optimizer defines it (:data:`hpo.training.optim.OPTIMIZERS`): added to the gradient (L2), or
    shrinking the parameters by ``lr * wd`` (decoupled, AdamW)."""

    def __init__(self, stack: StackedMLP) -> None:
        self.stack = stack
        self._build({})

    def _build(self, carried: dict[tuple[int, int], dict[str, torch.Tensor]]) -> None:
        stack = self.stack
        leaves = stack.leaves()
        self.leaves = leaves
        # every optimizer setting but the weight decay, which is applied per member (step)
        keys = [dataclasses.replace(mb.optim, weight_decay=0.0) for mb in stack.members]
        self.grouped = len(set(keys)) > 1
        self.views: list[tuple[torch.Tensor, int, int]] = []  # (view, leaf index, member position)
        self.optimizers: list[torch.optim.Optimizer] = []
        if not self.grouped:
            optimizer = build_optimizer(leaves, keys[0])
            for j, leaf in enumerate(leaves):
                # carried whole, or per member when compaction left one group of several
                state = carried.get((j, -1)) or _stacked_state([carried.get((j, i)) for i in stack.order])
                if state:
                    optimizer.state[leaf] = state
            self.optimizers.append(optimizer)
        else:
            for key in dict.fromkeys(keys):
                params = []
                for p, k in enumerate(keys):
                    if k != key:
                        continue
                    for j, leaf in enumerate(leaves):
                        view = leaf.detach()[p]
                        self.views.append((view, j, p))
                        params.append(view)
                optimizer = build_optimizer(params, key)
                for view, j, p in self.views:
                    state = carried.get((j, stack.order[p]))
                    if state and any(view is q for q in params):
                        optimizer.state[view] = state
                self.optimizers.append(optimizer)
        decoupled = [optimizer_spec(mb.optim.name).decoupled for mb in stack.members]
        l2 = [0.0 if d else mb.optim.weight_decay for d, mb in zip(decoupled, stack.members, strict=True)]
        shrink = [
            1.0 - mb.optim.lr * mb.optim.weight_decay if d else 1.0
            for d, mb in zip(decoupled, stack.members, strict=True)
        ]
        self.decay = torch.tensor(l2, device=stack.device).view(-1, 1, 1) if any(l2) else None
        self.shrink = (
            torch.tensor(shrink, device=stack.device).view(-1, 1, 1)
            if any(f != 1.0 for f in shrink)
            else None
        )

    def step(self) -> None:
        with torch.no_grad():
            # a leaf without a gradient is unused: the norm affines of a stack whose normalised
            # members have all stopped and left it (optimizers skip parameters without gradients)
            if self.decay is not None:
                for leaf in self.leaves:  # L2 as PyTorch's optimizers add it: grad + wd * param
                    if leaf.grad is not None:
                        leaf.grad.addcmul_(leaf, self.decay)
            if self.shrink is not None:
                for leaf in self.leaves:  # decoupled, as torch.optim.AdamW: param * (1 - lr * wd)
                    if leaf.grad is not None:
                        leaf.mul_(self.shrink)
            for view, j, p in self.views:
                grad = self.leaves[j].grad
                view.grad = grad[p] if grad is not None else None
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self) -> None:
        for leaf in self.leaves:
            leaf.grad = None

    def keep(self, positions: list[int], old_leaves: list[torch.Tensor]) -> None:
        """Carry the optimizer state of the members that stay into optimizers over the new leaves."""
        idx = torch.tensor(positions, device=self.stack.device)
        carried: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        if not self.grouped:
            for j, leaf in enumerate(old_leaves):
                state = self.optimizers[0].state.get(leaf, {})
                carried[(j, -1)] = {
                    k: v.index_select(0, idx).contiguous() if torch.is_tensor(v) and v.dim() > 0 else v
                    for k, v in state.items()
                }
        else:
            by_view = {id(view): (j, self.stack_order_before[p]) for view, j, p in self.views}
            for optimizer in self.optimizers:
                for view, state in optimizer.state.items():
                    carried[by_view[id(view)]] = state
        self._build(carried)

    def remember_order(self) -> None:
        self.stack_order_before = list(self.stack.order)


def _stacked_state(states: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Per-member optimizer states (of views ``leaf[p]``) as one state of the stacked leaf: the
    tensors stacked in member order, scalars (the step count every member shares) as they are."""
    if not states or any(st is None for st in states):
        return None
    first = states[0]
    assert first is not None
    return {
        k: torch.stack([st[k] for st in states if st is not None])
        if torch.is_tensor(v) and v.dim() > 0
        else v
        for k, v in first.items()
    }
