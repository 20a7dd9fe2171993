"""Train several same-shape MLPs at once: one step of M models is one batched matmul per layer.

At the write-up's batch size of 128, a single MLP on the CPU is dominated by per-step overhead;
stacking M models makes every kernel M times larger. Each member keeps its own

* initial weights (built by :func:`hpo.models.build_model` with its own seed, then copied in),
* training rows and validation rows (e.g. its CV fold, scaled by that fold's scaler),
* data order (its own ``torch.Generator``, exactly as :func:`hpo.train.fit` draws it),
* weight decay (L2 added to its gradient slice, as PyTorch's optimizers do internally),
* activation and normalisation (BatchNorm statistics are per member and masked to its rows),
* evaluation history, early-stopping state and best weights.

Members of one stack share the hidden sizes, batch size and number of epochs; members with
different optimizers or learning rates (the optimizer sweep) keep their own leaf tensors and
optimizers inside the stack. The losses are summed, so each member's gradient is exactly the one
it would get alone; results match separate :func:`hpo.train.fit` runs to float tolerance (tested).
Like ``hpo.train``, this module knows nothing of Optuna: per-member callbacks plug in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from hpo import models
from hpo.errors import ConfigError
from hpo.train import EarlyStopping, EvalRecord, FitResult, TensorData, TrainConfig, autocast

MemberCallback = Callable[[EvalRecord], bool | None]
_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1
_LN_EPS = 1e-5


@dataclass(frozen=True)
class Member:
    model: models.ModelConfig
    optim: models.OptimConfig
    train: TrainConfig
    data: int  # index into the ``datasets`` given to :func:`fit_stacked`


def stack_key(member: Member) -> tuple[object, ...]:
    """Members with equal keys can share a stack (and usually should)."""
    t = member.train
    return (
        member.model.hidden,
        member.model.n_features,
        member.model.n_classes,
        t.epochs,
        t.batch_size,
        t.max_batches,
        t.eval_every,
        t.eval_batch_size,
        t.precision,
    )


class _Stack:
    """The stacked parameters: weights ``[M, in, out]``, biases and norm affines ``[M, 1, out]``."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.members = list(members)
        self.m = len(members)
        built = [models.build_model(mb.model, seed=mb.train.seed) for mb in members]
        linears = [[mod for mod in net.modules() if isinstance(mod, nn.Linear)] for net in built]
        self.weights = [
            torch.stack([ls[i].weight.detach().t() for ls in linears]).contiguous().requires_grad_()
            for i in range(len(linears[0]))
        ]
        self.biases = [
            torch.stack([ls[i].bias.detach()[None] for ls in linears]).contiguous().requires_grad_()
            for i in range(len(linears[0]))
        ]
        hidden = members[0].model.hidden
        self.norms = [mb.model.norm for mb in members]
        self.acts = [mb.model.activation for mb in members]
        self.gammas = [torch.ones(self.m, 1, h).requires_grad_() for h in hidden]
        self.betas = [torch.zeros(self.m, 1, h).requires_grad_() for h in hidden]
        self.running_mean = [torch.zeros(self.m, h) for h in hidden]
        self.running_var = [torch.ones(self.m, h) for h in hidden]
        self.uses_norm = any(n != "none" for n in self.norms)
        self.same = len(set(self.norms)) == 1 and len(set(self.acts)) == 1
        # Members with different optimizers (the optimizer sweep) keep their own leaf tensors,
        # each updated by its own optimizer; the stacked tensors are rebuilt from them per step.
        self.mixed = len({(mb.optim.name, mb.optim.lr) for mb in members}) > 1
        self.member_leaves: list[list[torch.Tensor]] = []
        if self.mixed:
            for m in range(self.m):
                self.member_leaves.append([t[m].detach().clone().requires_grad_() for t in self._stacked()])
            self.refresh()

    def _stacked(self) -> list[torch.Tensor]:
        out = [*self.weights, *self.biases]
        if self.uses_norm:
            out += [*self.gammas, *self.betas]
        return out

    def refresh(self) -> None:
        """Mixed mode: stack the members' leaves (differentiably) into the working tensors."""
        if not self.mixed:
            return
        n_lin, n_norm = len(self.weights), len(self.gammas)
        tensors = [
            torch.stack([leaves[j] for leaves in self.member_leaves])
            for j in range(len(self.member_leaves[0]))
        ]
        self.weights = tensors[:n_lin]
        self.biases = tensors[n_lin : 2 * n_lin]
        if self.uses_norm:
            self.gammas = tensors[2 * n_lin : 2 * n_lin + n_norm]
            self.betas = tensors[2 * n_lin + n_norm :]

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """One optimizer over the stacked leaves, or (mixed) one per member over its own."""
        if not self.mixed:
            opt = self.members[0].optim
            config = models.OptimConfig(name=opt.name, lr=opt.lr, weight_decay=0.0)
            return [models.build_optimizer(self._stacked(), config)]  # type: ignore[arg-type]
        return [
            models.build_optimizer(
                self.member_leaves[m],  # type: ignore[arg-type]
                models.OptimConfig(name=mb.optim.name, lr=mb.optim.lr, weight_decay=0.0),
            )
            for m, mb in enumerate(self.members)
        ]

    def decayed(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(leaf, weight decay broadcastable to it) pairs for the L2 term added to gradients."""
        decay = [mb.optim.weight_decay for mb in self.members]
        if not any(decay):
            return []
        if not self.mixed:
            d = torch.tensor(decay).view(self.m, 1, 1)
            return [(p, d) for p in self._stacked()]
        return [(p, torch.tensor(decay[m])) for m in range(self.m) if decay[m] for p in self.member_leaves[m]]

    def _norm(
        self, i: int, h: torch.Tensor, kind: str, sel: slice | int, mask: torch.Tensor | None, training: bool
    ) -> torch.Tensor:
        if kind == "none":
            return h
        g, b = self.gammas[i][sel], self.betas[i][sel]
        if kind == "layernorm":
            return F.layer_norm(h, h.shape[-1:], eps=_LN_EPS) * g + b
        rm, rv = self.running_mean[i][sel], self.running_var[i][sel]
        if not training:
            return (h - rm.unsqueeze(-2)) / torch.sqrt(rv.unsqueeze(-2) + _BN_EPS) * g + b
        assert mask is not None
        if not self.ragged:  # every row real: PyTorch's own kernel, members as channel blocks
            if h.dim() == 3:
                m, rows, width = h.shape
                flat = h.transpose(0, 1).reshape(rows, m * width)
                out = F.batch_norm(
                    flat,
                    rm.view(-1),
                    rv.view(-1),
                    g.reshape(-1),
                    b.reshape(-1),
                    training=True,
                    momentum=_BN_MOMENTUM,
                    eps=_BN_EPS,
                )
                return out.view(rows, m, width).transpose(0, 1)
            return F.batch_norm(
                h, rm, rv, g.reshape(-1), b.reshape(-1), training=True, momentum=_BN_MOMENTUM, eps=_BN_EPS
            )
        h32 = h.float()
        w = mask.unsqueeze(-1)
        cnt = mask.sum(-1, keepdim=True).unsqueeze(-1)  # [..., 1, 1]
        mean = (h32 * w).sum(-2, keepdim=True) / cnt
        var = (((h32 - mean) * w) ** 2).sum(-2, keepdim=True) / cnt
        with torch.no_grad():
            unbiased = var * cnt / (cnt - 1).clamp(min=1)
            rm.mul_(1 - _BN_MOMENTUM).add_(mean.squeeze(-2), alpha=_BN_MOMENTUM)
            rv.mul_(1 - _BN_MOMENTUM).add_(unbiased.squeeze(-2), alpha=_BN_MOMENTUM)
        return ((h32 - mean) / torch.sqrt(var + _BN_EPS)).to(h.dtype) * g + b

    @staticmethod
    def _act(kind: str, h: torch.Tensor) -> torch.Tensor:
        if kind == "relu":
            return F.relu(h)
        if kind == "leaky_relu":
            return F.leaky_relu(h)
        return F.gelu(h)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, *, training: bool, members: slice = slice(None)
    ) -> torch.Tensor:
        """``x``: ``[M, B, in]`` (or ``[1, B, in]``, broadcast); ``mask``: ``[M, B]`` of 0/1."""
        h = x
        idx = range(self.m)[members]
        for i in range(len(self.weights) - 1):
            w, b = self.weights[i][members], self.biases[i][members]
            h = _affine(h, w, b)
            if self.same:
                h = self._act(self.acts[0], self._norm(i, h, self.norms[0], members, mask, training))
            else:
                parts = []
                for j, m in enumerate(idx):
                    hm = h[j] if h.shape[0] > 1 else h[0]
                    mm = mask[j] if mask is not None else None
                    parts.append(self._act(self.acts[m], self._norm(i, hm, self.norms[m], m, mm, training)))
                h = torch.stack(parts)
        return _affine(h, self.weights[-1][members], self.biases[-1][members])

    steps = 0
    ragged = False  # the current batch has padding rows (masked out of BatchNorm statistics)

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member ``m``'s weights as the ``state_dict`` of its own :class:`hpo.models.MLP`."""
        net = models.MLP(self.members[m].model)
        state = net.state_dict()
        linear_i = 0
        norm_i = 0
        for name, module in net.named_children():
            if isinstance(module, nn.Linear):
                state[f"{name}.weight"] = self.weights[linear_i][m].detach().t().clone()
                state[f"{name}.bias"] = self.biases[linear_i][m, 0].detach().clone()
                linear_i += 1
            elif isinstance(module, nn.BatchNorm1d | nn.LayerNorm):
                state[f"{name}.weight"] = self.gammas[norm_i][m, 0].detach().clone()
                state[f"{name}.bias"] = self.betas[norm_i][m, 0].detach().clone()
                if isinstance(module, nn.BatchNorm1d):
                    state[f"{name}.running_mean"] = self.running_mean[norm_i][m].clone()
                    state[f"{name}.running_var"] = self.running_var[norm_i][m].clone()
                    state[f"{name}.num_batches_tracked"] = torch.tensor(self.steps)
                norm_i += 1
        return state


def _affine(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``h @ w + b`` per member; one fused ``baddbmm`` when ``h`` has a row block per member."""
    if h.dim() == 3 and h.shape[0] == w.shape[0]:
        return torch.baddbmm(b, h, w)
    return torch.matmul(h, w) + b


def _check(members: Sequence[Member], datasets: Sequence[TensorData]) -> None:
    if not members:
        raise ConfigError("fit_stacked needs at least one member")
    keys = {stack_key(mb) for mb in members}
    if len(keys) != 1:
        raise ConfigError(
            "stacked members must share hidden sizes, epochs and batch size; group them with stack_key() "
            "and fit each group as its own stack"
        )
    t = members[0].train
    if t.max_batches is not None or t.eval_every is not None:
        raise ConfigError(
            "stacked training evaluates at epoch ends only; train runs with max_batches or eval_every "
            "one at a time with hpo.train.fit"
        )
    for mb in members:
        if not 0 <= mb.data < len(datasets):
            raise ConfigError(f"member data index {mb.data} is not one of the {len(datasets)} datasets")


@torch.no_grad()
def _evaluate(
    stack: _Stack, datasets: Sequence[TensorData], batch: int, precision: str
) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = [(math.nan, math.nan)] * stack.m
    for m, mb in enumerate(stack.members):
        d = datasets[mb.data]
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        for s in range(0, d.x_val.shape[0], batch):
            xb, yb = d.x_val[s : s + batch], d.y_val[s : s + batch]
            with autocast(precision):
                logits = stack.forward(xb[None], None, training=False, members=slice(m, m + 1))[0].float()
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(dim=1) == yb).sum()
        n = d.x_val.shape[0]
        out[m] = (float(loss_sum) / n, float(correct) / n)
    return out


def fit_stacked(
    members: Sequence[Member],
    datasets: Sequence[TensorData],
    *,
    callbacks: Sequence[Sequence[MemberCallback]] | None = None,
    precision: str | None = None,
) -> list[FitResult]:
    """Train every member; one :class:`~hpo.train.FitResult` per member, in order.

    ``callbacks[m]`` are called with member m's evaluation records; returning ``True`` stops that
    member (its history ends there), as with :func:`hpo.train.fit`.
    """
    _check(members, datasets)
    torch.set_flush_denormal(True)  # see hpo.train.fit
    cfg = members[0].train
    precision = precision or cfg.precision
    m_count = len(members)
    cbs = [list(c) for c in callbacks] if callbacks is not None else [[] for _ in members]
    stack = _Stack(members)
    optimizers = stack.optimizers()
    decayed = stack.decayed()
    # members reading each dataset (gathered per dataset: no concatenated copy of all rows)
    groups = {
        d: torch.tensor([m for m, mb in enumerate(members) if mb.data == d])
        for d in sorted({mb.data for mb in members})
    }
    sizes = [datasets[mb.data].x_train.shape[0] for mb in members]
    steps_per_epoch = max(math.ceil(n / cfg.batch_size) for n in sizes)
    if any(math.ceil(n / cfg.batch_size) != steps_per_epoch for n in sizes):
        raise ConfigError("stacked members need the same number of batches per epoch; stack them apart")
    generators = [torch.Generator().manual_seed(mb.train.seed) for mb in members]
    results = [FitResult(model=nn.Module()) for _ in members]
    active = [True] * m_count
    trackers = [
        EarlyStopping(patience=mb.train.patience, restore_best=mb.train.restore_best) for mb in members
    ]
    best_state: list[dict[str, torch.Tensor] | None] = [None] * m_count
    run_loss = torch.zeros(m_count, dtype=torch.float64)
    run_correct = torch.zeros(m_count, dtype=torch.int64)
    run_seen = torch.zeros(m_count, dtype=torch.int64)
    batch = cfg.batch_size
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        orders = [torch.randperm(n, generator=g) for n, g in zip(sizes, generators, strict=True)]
        padded = torch.zeros(m_count, steps_per_epoch * batch, dtype=torch.int64)
        valid = torch.zeros(m_count, steps_per_epoch * batch)
        for m, order in enumerate(orders):
            padded[m, : order.numel()] = order
            valid[m, : order.numel()] = 1.0
        ragged = bool((valid == 0).any())
        for s in range(steps_per_epoch):
            idx = padded[:, s * batch : (s + 1) * batch]
            mask = valid[:, s * batch : (s + 1) * batch]
            if len(groups) == 1:
                d = members[0].data
                xb = datasets[d].x_train[idx]  # [M, B, in]
                yb = datasets[d].y_train[idx]  # [M, B]
            else:
                xb = torch.empty(m_count, idx.shape[1], datasets[0].x_train.shape[1])
                yb = torch.empty(m_count, idx.shape[1], dtype=torch.int64)
                for d, rows in groups.items():
                    sub = idx[rows]
                    xb[rows] = datasets[d].x_train[sub]
                    yb[rows] = datasets[d].y_train[sub]
            stack.ragged = ragged and bool((mask == 0).any())
            stack.refresh()
            with autocast(precision):
                logits = stack.forward(xb, mask, training=True)
            logits = logits.float()
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1), reduction="none")
            ce = ce.view(m_count, -1)
            if ragged:
                counts = mask.sum(1)
                per_member = (ce * mask).sum(1) / counts.clamp(min=1)
            else:
                counts = torch.full((m_count,), float(batch))
                per_member = ce.mean(1)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            per_member.sum().backward()  # type: ignore[no-untyped-call]
            with torch.no_grad():
                for leaf, wd in decayed:  # L2 as PyTorch's optimizers add it: grad + wd * param
                    assert leaf.grad is not None
                    leaf.grad.addcmul_(leaf, wd)
            for optimizer in optimizers:
                optimizer.step()
            step += 1
            stack.steps = step
            with torch.no_grad():
                hit = (logits.argmax(-1) == yb).to(torch.int64)
                if ragged:
                    hit = hit * mask.to(torch.int64)
                run_loss += per_member.detach().double() * counts.double()
                run_correct += hit.sum(1)
                run_seen += counts.to(torch.int64)
        stack.refresh()
        scores = _evaluate(stack, datasets, cfg.eval_batch_size, precision)
        for m in range(m_count):
            if not active[m]:
                continue
            val_loss, val_acc = scores[m]
            seen = max(int(run_seen[m]), 1)
            record = EvalRecord(
                epoch=epoch,
                step=step,
                train_loss=float(run_loss[m]) / seen,
                train_accuracy=float(run_correct[m]) / seen,
                val_loss=val_loss,
                val_accuracy=val_acc,
            )
            stop, snapshot = trackers[m].observe(results[m], record, cbs[m])
            if snapshot:
                best_state[m] = stack.member_state(m)
            if stop:
                active[m] = False
                if best_state[m] is None:  # end with the weights it stopped with
                    best_state[m] = stack.member_state(m)
        run_loss.zero_()
        run_correct.zero_()
        run_seen.zero_()
        if not any(active):
            break
    stack.refresh()
    for m, res in enumerate(results):
        if res.best_index < 0 and res.history:
            res.best_index = 0
        net = models.MLP(members[m].model)
        state = best_state[m]
        net.load_state_dict(state if state is not None else stack.member_state(m))
        net.eval()
        res.model = net
    return results
