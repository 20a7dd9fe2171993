"""The stacked trainer as it was before the speed levers (hpo 0.1, commit 7dd40e9, ported to
hpo 0.2's modules unchanged): the reference ``bench/stack_levers.py`` measures the levers
against. Not part of the package."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from hpo.families.mlp.model import MLP, build_model, dropout_generator
from hpo.settings import ModelConfig, OptimConfig, TrainConfig
from hpo.training.loop import EarlyStopping, EvalRecord, FitResult, TensorData, autocast
from hpo.training.optim import build_optimizer

MemberCallback = Callable[[EvalRecord], bool | None]
_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1
_LN_EPS = 1e-5


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
        t.eval_batch_size,
        t.precision,
        t.device,
    )


class _Stack:
    """The stacked parameters: weights ``[M, in, out]``, biases and norm affines ``[M, 1, out]``."""

    def __init__(self, members: Sequence[Member], device: str) -> None:
        self.members = list(members)
        self.m = len(members)
        self.device = device
        built = [build_model(mb.model, seed=mb.train.seed) for mb in members]
        linears = [[mod for mod in net.modules() if isinstance(mod, nn.Linear)] for net in built]
        self.weights = [
            torch.stack([ls[i].weight.detach().t() for ls in linears])
            .contiguous()
            .to(device)
            .requires_grad_()
            for i in range(len(linears[0]))
        ]
        self.biases = [
            torch.stack([ls[i].bias.detach()[None] for ls in linears])
            .contiguous()
            .to(device)
            .requires_grad_()
            for i in range(len(linears[0]))
        ]
        hidden = members[0].model.hidden
        self.norms = [mb.model.norm for mb in members]
        self.acts = [mb.model.activation for mb in members]
        self.dropout = [mb.model.dropout for mb in members]
        self.dropout_generators = [dropout_generator(mb.train.seed) for mb in members]
        self.gammas = [torch.ones(self.m, 1, h, device=device).requires_grad_() for h in hidden]
        self.betas = [torch.zeros(self.m, 1, h, device=device).requires_grad_() for h in hidden]
        self.running_mean = [torch.zeros(self.m, h, device=device) for h in hidden]
        self.running_var = [torch.ones(self.m, h, device=device) for h in hidden]
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
        self.steps = 0
        self.ragged = False  # the current batch has padding rows (masked out of BatchNorm statistics)

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
            config = OptimConfig(name=opt.name, lr=opt.lr, weight_decay=0.0)
            return [build_optimizer(self._stacked(), config)]
        return [
            build_optimizer(
                self.member_leaves[m], OptimConfig(name=mb.optim.name, lr=mb.optim.lr, weight_decay=0.0)
            )
            for m, mb in enumerate(self.members)
        ]

    def decayed(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(leaf, weight decay broadcastable to it) pairs for the L2 term added to gradients."""
        decay = [mb.optim.weight_decay for mb in self.members]
        if not any(decay):
            return []
        if not self.mixed:
            d = torch.tensor(decay, device=self.device).view(self.m, 1, 1)
            return [(p, d) for p in self._stacked()]
        return [
            (p, torch.tensor(decay[m], device=self.device))
            for m in range(self.m)
            if decay[m]
            for p in self.member_leaves[m]
        ]

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

    def _dropout(self, h: torch.Tensor, rows: Sequence[int] | None) -> torch.Tensor:
        """Each member's mask from its own generator, over its real rows only (as alone)."""
        if rows is None or not any(self.dropout):
            return h
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
        mask: torch.Tensor | None,
        *,
        training: bool,
        members: slice = slice(None),
        rows: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """``x``: ``[M, B, in]`` (or ``[1, B, in]``, broadcast); ``mask``: ``[M, B]`` of 0/1;
        ``rows``: each member's real rows (training with dropout)."""
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
            if training:
                h = self._dropout(h, rows)
        return _affine(h, self.weights[-1][members], self.biases[-1][members])

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member ``m``'s weights as the ``state_dict`` of its own :class:`hpo.families.mlp.model.MLP`."""
        net = MLP(self.members[m].model)
        state = net.state_dict()
        linear_i = 0
        norm_i = 0
        for name, module in net.named_children():
            if isinstance(module, nn.Linear):
                state[f"{name}.weight"] = self.weights[linear_i][m].detach().t().cpu().clone()
                state[f"{name}.bias"] = self.biases[linear_i][m, 0].detach().cpu().clone()
                linear_i += 1
            elif isinstance(module, nn.BatchNorm1d | nn.LayerNorm):
                state[f"{name}.weight"] = self.gammas[norm_i][m, 0].detach().cpu().clone()
                state[f"{name}.bias"] = self.betas[norm_i][m, 0].detach().cpu().clone()
                if isinstance(module, nn.BatchNorm1d):
                    state[f"{name}.running_mean"] = self.running_mean[norm_i][m].cpu().clone()
                    state[f"{name}.running_var"] = self.running_var[norm_i][m].cpu().clone()
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
        raise ValueError("fit_stacked needs at least one member")
    keys = {stack_key(mb) for mb in members}
    if len(keys) != 1:
        raise ValueError(
            "stacked members must share hidden sizes, epochs and batch size; group them with stack_key() "
            "and fit each group as its own stack"
        )
    t = members[0].train
    if t.max_batches is not None or t.eval_every is not None:
        raise ValueError(
            "stacked training evaluates at epoch ends only; train runs with max_batches or eval_every "
            "one at a time with hpo.training.fit"
        )
    for mb in members:
        if not 0 <= mb.data < len(datasets):
            raise ValueError(f"member data index {mb.data} is not one of the {len(datasets)} datasets")


@torch.no_grad()
def _evaluate(
    stack: _Stack, datasets: Sequence[TensorData], batch: int, precision: str
) -> list[tuple[float, float, torch.Tensor]]:
    out: list[tuple[float, float, torch.Tensor]] = []
    for m, mb in enumerate(stack.members):
        d = datasets[mb.data]
        loss_sum = torch.zeros((), dtype=torch.float64, device=stack.device)
        preds = []
        for s in range(0, d.x_val.shape[0], batch):
            xb, yb = d.x_val[s : s + batch], d.y_val[s : s + batch]
            with autocast(precision, stack.device):
                logits = stack.forward(xb[None], None, training=False, members=slice(m, m + 1))[0].float()
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
            preds.append(logits.argmax(dim=1))
        n = d.x_val.shape[0]
        pred = torch.cat(preds)
        correct = int((pred == d.y_val).sum())
        out.append((float(loss_sum) / n, correct / n, pred.cpu()))
    return out


def _losses(
    logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, members: Sequence[Member]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's mean training loss ``[M]`` and its row count ``[M]``: plain cross-entropy,
    or with the member's label smoothing and class weights as ``F.cross_entropy`` computes them."""
    m_count, rows, n_classes = logits.shape
    plain = all(mb.train.label_smoothing == 0.0 and mb.train.class_weights is None for mb in members)
    counts = mask.sum(1) if mask is not None else torch.full((m_count,), float(rows), device=logits.device)
    if plain:
        ce = F.cross_entropy(logits.reshape(-1, n_classes), y.reshape(-1), reduction="none").view(m_count, -1)
        if mask is not None:
            return (ce * mask).sum(1) / counts.clamp(min=1), counts
        return ce.mean(1), counts
    logp = F.log_softmax(logits, dim=-1)
    weights = torch.tensor(
        [mb.train.class_weights or (1.0,) * n_classes for mb in members], device=logits.device
    )  # [M, C]
    eps = torch.tensor([mb.train.label_smoothing for mb in members], device=logits.device)[:, None]
    nll = -logp.gather(-1, y[..., None]).squeeze(-1)  # [M, B]
    w_y = weights.gather(1, y)  # [M, B]
    smooth = -(logp * weights[:, None, :]).sum(-1) / n_classes  # [M, B]
    per_row = (1 - eps) * w_y * nll + eps * smooth
    if mask is not None:
        per_row, w_y = per_row * mask, w_y * mask
    return per_row.sum(1) / w_y.sum(1).clamp(min=1e-12), counts


def fit_stacked(
    members: Sequence[Member],
    datasets: Sequence[TensorData],
    *,
    callbacks: Sequence[Sequence[MemberCallback]] | None = None,
    precision: str | None = None,
) -> list[FitResult]:
    """Train every member; one :class:`~hpo.training.loop.FitResult` per member, in order.

    ``callbacks[m]`` are called with member m's evaluation records; returning ``True`` stops that
    member (its history ends there), as with :func:`~hpo.training.loop.fit`.
    """
    _check(members, datasets)
    torch.set_flush_denormal(True)  # see hpo.training.loop.fit
    cfg = members[0].train
    device = cfg.device
    precision = precision or cfg.precision
    datasets = [d.to(device) for d in datasets]
    m_count = len(members)
    cbs = [list(c) for c in callbacks] if callbacks is not None else [[] for _ in members]
    stack = _Stack(members, device)
    optimizers = stack.optimizers()
    decayed = stack.decayed()
    # members reading each dataset (gathered per dataset: no concatenated copy of all rows)
    groups = {
        d: torch.tensor([m for m, mb in enumerate(members) if mb.data == d], device=device)
        for d in sorted({mb.data for mb in members})
    }
    sizes = [datasets[mb.data].x_train.shape[0] for mb in members]
    steps_per_epoch = max(math.ceil(n / cfg.batch_size) for n in sizes)
    if any(math.ceil(n / cfg.batch_size) != steps_per_epoch for n in sizes):
        raise ValueError("stacked members need the same number of batches per epoch; stack them apart")
    generators = [torch.Generator().manual_seed(mb.train.seed) for mb in members]
    results = [FitResult(model=nn.Module()) for _ in members]
    active = [True] * m_count
    trackers = [
        EarlyStopping(patience=mb.train.patience, restore_best=mb.train.restore_best) for mb in members
    ]
    best_state: list[dict[str, torch.Tensor] | None] = [None] * m_count
    run_loss = torch.zeros(m_count, dtype=torch.float64, device=device)
    run_correct = torch.zeros(m_count, dtype=torch.int64, device=device)
    run_seen = torch.zeros(m_count, dtype=torch.int64, device=device)
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
        padded, valid = padded.to(device), valid.to(device)
        for s in range(steps_per_epoch):
            idx = padded[:, s * batch : (s + 1) * batch]
            mask = valid[:, s * batch : (s + 1) * batch]
            if len(groups) == 1:
                d = members[0].data
                xb = datasets[d].x_train[idx]  # [M, B, in]
                yb = datasets[d].y_train[idx]  # [M, B]
            else:
                xb = torch.empty(m_count, idx.shape[1], datasets[0].x_train.shape[1], device=device)
                yb = torch.empty(m_count, idx.shape[1], dtype=torch.int64, device=device)
                for d, rows in groups.items():
                    sub = idx[rows]
                    xb[rows] = datasets[d].x_train[sub]
                    yb[rows] = datasets[d].y_train[sub]
            stack.ragged = ragged and bool((mask == 0).any())
            real_rows = [int(r) for r in mask.sum(1).tolist()] if stack.ragged else [batch] * m_count
            stack.refresh()
            with autocast(precision, device):
                logits = stack.forward(xb, mask, training=True, rows=real_rows)
            logits = logits.float()
            per_member, counts = _losses(logits, yb, mask if ragged else None, members)
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
            val_loss, val_acc, val_pred = scores[m]
            seen = max(int(run_seen[m]), 1)
            record = EvalRecord(
                epoch=epoch,
                step=step,
                train_loss=float(run_loss[m]) / seen,
                train_score=float(run_correct[m]) / seen,
                val_loss=val_loss,
                val_score=val_acc,
                val_pred=val_pred,
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
        EarlyStopping.finish(res)
        net = MLP(members[m].model)
        state = best_state[m]
        net.load_state_dict(state if state is not None else stack.member_state(m))
        net.eval()
        res.model = net
    return results
