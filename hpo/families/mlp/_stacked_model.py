"""The stacked network: M same-shape MLPs held as stacked tensors, so that one step of all of them is
one batched matmul per layer (:class:`StackedMLP`), and what one member of a stack is (:class:`Member`,
:func:`stack_key`). Part of :mod:`hpo.families.mlp.stacked`.

Speed (measured in ``bench/stack_levers.py``, numbers in docs/benchmarks.md): the parameters are
used whole in the training step (no per-member slicing, whose backward allocates and fills a
full-size gradient per slice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hpo.families.mlp import components
from hpo.families.mlp.model import MLP, build_model, dropout_generator
from hpo.settings import ModelConfig, OptimConfig, TrainConfig


@dataclass(frozen=True)
class Member:
    """One model of a stack: what it is, how it is optimised and trained, and which of the
    datasets given to :func:`fit_stacked` it trains on."""

    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    data: int


def stack_key(member: Member) -> tuple[object, ...]:
    """Members with equal keys can share a stack (and usually should)."""
    t = member.train
    return (
        member.model.hidden,
        member.model.n_features,
        member.model.n_outputs,
        t.epochs,
        t.batch_size,
        t.max_batches,
        t.eval_every,
        t.eval_last_only,
        t.eval_batch_size,
        t.precision,
        t.compile,
        t.device,
    )


class StackedMLP:
    """M same-shape MLPs as stacked tensors: weights ``[M, in, out]``, biases and norm affines
    ``[M, 1, out]``, BatchNorm statistics ``[M, out]``. Members are kept in groups of equal
    (norm, activation), contiguous in the stack; ``order[p]`` is the caller's index of the
    member at position ``p``."""

    def __init__(self, members: Sequence[Member], device: str) -> None:
        self.order = sorted(
            range(len(members)), key=lambda i: (members[i].model.norm, members[i].model.activation)
        )
        self.members = [members[i] for i in self.order]
        self.device = device
        built = [build_model(mb.model, seed=mb.train.seed) for mb in self.members]
        linears = [[mod for mod in net.modules() if isinstance(mod, nn.Linear)] for net in built]
        n_lin = len(linears[0])
        self.weights = [
            torch.stack([ls[i].weight.detach().t() for ls in linears])
            .contiguous()
            .to(device)
            .requires_grad_()
            for i in range(n_lin)
        ]
        self.biases = [
            torch.stack([ls[i].bias.detach()[None] for ls in linears])
            .contiguous()
            .to(device)
            .requires_grad_()
            for i in range(n_lin)
        ]
        hidden = self.members[0].model.hidden
        m = len(self.members)
        self.uses_norm = any(mb.model.norm != "none" for mb in self.members)
        self.gammas = (
            [torch.ones(m, 1, h, device=device).requires_grad_() for h in hidden] if self.uses_norm else []
        )
        self.betas = (
            [torch.zeros(m, 1, h, device=device).requires_grad_() for h in hidden] if self.uses_norm else []
        )
        self.running_mean = [torch.zeros(m, h, device=device) for h in hidden]
        self.running_var = [torch.ones(m, h, device=device) for h in hidden]
        self.dropout_generators = [dropout_generator(mb.train.seed) for mb in self.members]
        self.steps = 0
        self._regroup()

    @property
    def m(self) -> int:
        return len(self.members)

    def _regroup(self) -> None:
        """Contiguous runs of members sharing (norm, activation)."""
        self.groups: list[tuple[str, str, slice]] = []
        start = 0
        for p in range(1, self.m + 1):
            if p == self.m or (self.members[p].model.norm, self.members[p].model.activation) != (
                self.members[start].model.norm,
                self.members[start].model.activation,
            ):
                mb = self.members[start].model
                self.groups.append((mb.norm, mb.activation, slice(start, p)))
                start = p
        self.dropout = [mb.model.dropout for mb in self.members]

    def leaves(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases, *self.gammas, *self.betas]

    # ------------------------------------------------------------------ forward

    def _norm(
        self, i: int, h: torch.Tensor, kind: str, sel: slice, mask: torch.Tensor | None, training: bool
    ) -> torch.Tensor:
        stacked = components.norm(kind).stacked
        if stacked is None:
            return h
        whole = sel == slice(0, self.m)
        state = components.NormState(
            gamma=self.gammas[i] if whole else self.gammas[i][sel],
            beta=self.betas[i] if whole else self.betas[i][sel],
            running_mean=self.running_mean[i][sel],
            running_var=self.running_var[i][sel],
        )
        return stacked(h, state, mask, training)

    def _act(self, kind: str, h: torch.Tensor) -> torch.Tensor:
        return components.activation(kind).fn(h)

    def _mixed(self, i: int, h: torch.Tensor, mask: torch.Tensor | None, training: bool) -> torch.Tensor:
        """Members of several (norm, activation) groups: each group on its slice of the stack.
        (Computing every kind for the whole stack and selecting with ``torch.where`` measured
        slower: 3.7 vs 3.4 ms per step for the norm sweep's three members.)"""
        if h.shape[0] != self.m:
            h = h.expand(self.m, -1, -1)
        return torch.cat(
            [
                self._act(
                    act, self._norm(i, h[sel], norm, sel, mask[sel] if mask is not None else None, training)
                )
                for norm, act, sel in self.groups
            ]
        )

    def _dropout(self, h: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """Each member's mask from its own generator, over its real rows only (as alone)."""
        parts = []
        for m, p in enumerate(self.dropout):
            if p > 0:
                keep = torch.zeros(h.shape[1:], dtype=torch.float32)
                keep[: rows[m]].bernoulli_(1.0 - p, generator=self.dropout_generators[m])
                parts.append(h[m] * keep.to(h.device, h.dtype) / (1.0 - p))  # as SeededDropout
            else:
                parts.append(h[m])
        return torch.stack(parts)

    def forward(
        self,
        x: torch.Tensor,
        *,
        training: bool,
        mask: torch.Tensor | None = None,
        rows: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Outputs ``[M, B, n_outputs]`` of ``x``: ``[M, B, in]``, or ``[1, B, in]`` shared by every
        member. Training: ``mask`` ``[M, B]`` marks real rows of a ragged batch (None: all real),
        ``rows`` each member's count of real rows."""
        h = x
        uniform = len(self.groups) == 1
        for i in range(len(self.weights) - 1):
            h = _affine(h, self.weights[i], self.biases[i])
            if uniform:
                norm, act, sel = self.groups[0]
                h = self._act(act, self._norm(i, h, norm, sel, mask, training))
            else:
                h = self._mixed(i, h, mask, training)
            if training and any(self.dropout):
                h = self._dropout(h, rows or [h.shape[1]] * self.m)
        return _affine(h, self.weights[-1], self.biases[-1])

    # ------------------------------------------------------------------ members

    def member_state(self, p: int) -> dict[str, torch.Tensor]:
        """The member at position ``p`` as the ``state_dict`` of its own :class:`hpo.model.MLP`."""
        net = MLP(self.members[p].model)
        state = net.state_dict()
        linear_i = norm_i = 0
        for name, module in net.named_children():
            if isinstance(module, nn.Linear):
                state[f"{name}.weight"] = self.weights[linear_i][p].detach().t().cpu().clone()
                state[f"{name}.bias"] = self.biases[linear_i][p, 0].detach().cpu().clone()
                linear_i += 1
            elif isinstance(module, nn.BatchNorm1d | nn.LayerNorm):
                state[f"{name}.weight"] = self.gammas[norm_i][p, 0].detach().cpu().clone()
                state[f"{name}.bias"] = self.betas[norm_i][p, 0].detach().cpu().clone()
                if isinstance(module, nn.BatchNorm1d):
                    state[f"{name}.running_mean"] = self.running_mean[norm_i][p].cpu().clone()
                    state[f"{name}.running_var"] = self.running_var[norm_i][p].cpu().clone()
                    state[f"{name}.num_batches_tracked"] = torch.tensor(self.steps)
                norm_i += 1
        return state

    def keep(self, positions: list[int]) -> list[torch.Tensor]:
        """Only the members at ``positions`` stay (compaction); returns the old leaves, whose
        optimizer state the caller carries over."""
        old = self.leaves()
        idx = torch.tensor(positions, device=self.device)

        def take(ts: list[torch.Tensor], grad: bool) -> list[torch.Tensor]:
            out = [t.detach().index_select(0, idx).contiguous() for t in ts]
            return [t.requires_grad_() for t in out] if grad else out

        self.weights, self.biases = take(self.weights, True), take(self.biases, True)
        self.gammas, self.betas = take(self.gammas, True), take(self.betas, True)
        self.running_mean, self.running_var = take(self.running_mean, False), take(self.running_var, False)
        self.members = [self.members[p] for p in positions]
        self.order = [self.order[p] for p in positions]
        self.dropout_generators = [self.dropout_generators[p] for p in positions]
        self._regroup()
        return old


def _affine(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``h @ w + b`` per member as one fused ``baddbmm``; an input shared by every member
    (``[1, B, in]``) is expanded to them as a view. (A broadcasting ``matmul`` plus the bias, as
    before, ran the 3-model sweep workload 6-7 % slower on the Xeon of 2026-11-25, and under bf16
    autocast its sum came out in float32 where a single model's ``nn.Linear`` gives bfloat16.)"""
    if h.shape[0] != w.shape[0]:
        h = h.expand(w.shape[0], -1, -1)
    return torch.baddbmm(b, h, w)
