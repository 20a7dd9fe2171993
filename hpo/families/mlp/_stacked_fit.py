"""The stacked trainer's fit loop (:func:`fit_stacked`), its options (:class:`StackOptions`) and its
epoch-end evaluation of every member. Part of :mod:`hpo.families.mlp.stacked`.

Speed (measured in ``bench/stack_levers.py``, numbers in docs/benchmarks.md): only the last batch
of an epoch can be ragged, so no step synchronises to find out. Optional levers
(:class:`StackOptions`): members that share their rows and data order (a sweep's choices: same
seed, same data) share one gathered batch and the first layer's input; evaluation runs all members
of a dataset in one batched pass; members that stopped (early stopping, a pruner) leave the stack
instead of being trained on; ``torch.compile`` of the step's forward and loss where
:func:`~hpo.families.mlp._stacked_compile.measure_compile` measured a gain on this machine (bf16
stacks only). Every member's callbacks hear of each epoch trained
(:func:`~hpo.training.epoch_done`), evaluated or not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from hpo.families.mlp._stacked_compile import _CompiledOrEager, _ForwardLoss, wants_compile
from hpo.families.mlp._stacked_model import Member, StackedMLP, stack_key
from hpo.families.mlp._stacked_optim import _Optimizers
from hpo.families.mlp.model import MLP
from hpo.tasks import Task
from hpo.training.loop import EarlyStopping, EvalRecord, FitResult, TensorData, autocast, epoch_done

MemberCallback = Callable[[EvalRecord], bool | None]


@dataclass(frozen=True)
class StackOptions:
    """The stacked trainer's optional speed levers (see docs/benchmarks.md).

    ``compile``: ``torch.compile`` the training step's forward and loss. ``"auto"`` follows the
    members' ``train.compile``: the pipeline's numerics (:mod:`hpo.tuning.numerics`), compiled
    where :func:`measure_compile` found a clear gain once for the pipeline's layers and stack
    width, or as ``[defaults] compile`` pins it (only bf16 stacks on the CPU are candidates for
    "auto": fp32 stays eager, so that it stays equal to the one-model trainer to float
    tolerance). A member trained alone (the one-model loop) never compiles. Why measured and not
    a rule: on a Xeon with AMX (2026-11-25, one epoch of 300,000 rows after the compile) the
    norm sweep's 3 models ran 1.50x faster compiled, layernorm with three optimizers 1.20x, the
    activation sweep 1.25x, plain ReLU stacks 1.00x for 3 models and 1.07x for 25 (not worth the
    5-10 s a compile costs); other CPUs differ. Where compiling fails (no C++ compiler), training
    goes on eagerly."""

    shared_batches: bool = True  # members with the same rows and order share one gathered batch
    batched_eval: bool = True  # evaluate all members of a dataset in one pass
    compaction: bool = True  # drop stopped members from the stack
    compile: bool | Literal["auto"] = "auto"  # torch.compile the forward and loss


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


#: one member's evaluation: val loss, val score, per-row predictions, per-row losses, raw outputs
_Scores = tuple[float, float, torch.Tensor, torch.Tensor, torch.Tensor]


@torch.no_grad()
def _evaluate(
    stack: StackedMLP,
    datasets: Sequence[TensorData],
    task: Task,
    eval_batch: int,
    precision: str,
    batched: bool,
) -> list[_Scores]:
    """(val loss, val score, per-row predictions, per-row losses, raw outputs) of every member,
    by stack position: all members in one pass per chunk of rows (``batched``), or member by
    member."""
    if not batched:
        return [
            _evaluate_one(stack, datasets[mb.data], task, p, eval_batch, precision)
            for p, mb in enumerate(stack.members)
        ]
    m = stack.m
    vals = [datasets[mb.data] for mb in stack.members]
    sizes = [v.x_val.shape[0] for v in vals]
    one_dataset = len({mb.data for mb in stack.members}) == 1
    chunk = max(512, eval_batch // m)
    loss_sum = torch.zeros(m, dtype=torch.float64, device=stack.device)
    preds: list[list[torch.Tensor]] = [[] for _ in range(m)]
    losses: list[list[torch.Tensor]] = [[] for _ in range(m)]
    outs: list[list[torch.Tensor]] = [[] for _ in range(m)]
    for s in range(0, max(sizes), chunk):
        if one_dataset:
            xb = vals[0].x_val[s : s + chunk][None].expand(m, -1, -1)
            yb = vals[0].y_val[s : s + chunk][None].expand(m, -1)
            valid = None
        else:
            rows = min(chunk, max(sizes) - s)
            xb = torch.zeros(m, rows, vals[0].x_val.shape[1], device=stack.device)
            yb = torch.zeros(m, rows, dtype=vals[0].y_val.dtype, device=stack.device)
            valid = torch.zeros(m, rows, device=stack.device)
            for p, v in enumerate(vals):
                part = v.x_val[s : s + rows]
                xb[p, : part.shape[0]] = part
                yb[p, : part.shape[0]] = v.y_val[s : s + rows]
                valid[p, : part.shape[0]] = 1.0
        with autocast(precision, stack.device):
            out = stack.forward(xb, training=False).float()
        pred, per_row = task.rows(out, yb)
        if valid is not None:
            per_row = per_row * valid
        loss_sum += per_row.double().sum(1)
        for p in range(m):
            real = max(0, min(chunk, sizes[p] - s))
            preds[p].append(pred[p, :real])
            losses[p].append(per_row[p, :real])
            outs[p].append(out[p, :real])
    result = []
    for p, v in enumerate(vals):
        pred = torch.cat(preds[p])
        loss = float(loss_sum[p]) / sizes[p]
        result.append(
            (
                loss,
                task.score_rows(pred, v.y_val, loss),
                pred.cpu(),
                torch.cat(losses[p]).float().cpu(),
                torch.cat(outs[p]).cpu(),
            )
        )
    return result


def _evaluate_one(
    stack: StackedMLP, data: TensorData, task: Task, p: int, eval_batch: int, precision: str
) -> _Scores:
    """One member's evaluation (the stack's layers, sliced to that member)."""
    mb = stack.members[p].model
    sel = slice(p, p + 1)
    loss_sum = torch.zeros((), dtype=torch.float64, device=stack.device)
    preds, losses, outs = [], [], []
    for s in range(0, data.x_val.shape[0], eval_batch):
        xb, yb = data.x_val[s : s + eval_batch], data.y_val[s : s + eval_batch]
        with autocast(precision, stack.device):
            h = xb[None]
            for i in range(len(stack.weights) - 1):
                h = torch.baddbmm(stack.biases[i][sel], h, stack.weights[i][sel])
                h = stack._act(mb.activation, stack._norm(i, h, mb.norm, sel, None, False))
            out = torch.baddbmm(stack.biases[-1][sel], h, stack.weights[-1][sel])[0].float()
        pred, per_row = task.rows(out, yb)
        loss_sum += per_row.double().sum()
        preds.append(pred)
        losses.append(per_row)
        outs.append(out)
    pred = torch.cat(preds)
    n = data.x_val.shape[0]
    loss = float(loss_sum) / n
    return (
        loss,
        task.score_rows(pred, data.y_val, loss),
        pred.cpu(),
        torch.cat(losses).cpu(),
        torch.cat(outs).cpu(),
    )


def fit_stacked(
    members: Sequence[Member],
    datasets: Sequence[TensorData],
    *,
    task: Task,
    callbacks: Sequence[Sequence[MemberCallback]] | None = None,
    precision: str | None = None,
    options: StackOptions | None = None,
) -> list[FitResult]:
    """Train every member; one :class:`~hpo.training.loop.FitResult` per member, in order.

    ``callbacks[m]`` are called with member m's evaluation records; returning ``True`` stops that
    member (its history ends there), as with :func:`~hpo.training.loop.fit`.
    """
    _check(members, datasets)
    opt = options or StackOptions()
    torch.set_flush_denormal(True)  # see hpo.training.loop.fit
    cfg = members[0].train
    device = cfg.device
    precision = precision or cfg.precision
    datasets = [d.to(device) for d in datasets]
    cbs = [list(c) for c in callbacks] if callbacks is not None else [[] for _ in members]
    stack = StackedMLP(members, device)
    optimizers = _Optimizers(stack)
    batch = cfg.batch_size
    sizes = [datasets[mb.data].x_train.shape[0] for mb in stack.members]
    steps_per_epoch = math.ceil(max(sizes) / batch)
    if any(math.ceil(n / batch) != steps_per_epoch for n in sizes):
        raise ValueError("stacked members need the same number of batches per epoch; stack them apart")
    generators = [torch.Generator().manual_seed(mb.train.seed) for mb in stack.members]
    results = [FitResult(model=nn.Module()) for _ in members]
    trackers = [
        EarlyStopping(patience=mb.train.patience, restore_best=mb.train.restore_best) for mb in members
    ]
    best_state: list[dict[str, torch.Tensor] | None] = [None] * len(members)
    done = [False] * len(members)

    def forward_loss(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with autocast(precision, device):
            out = stack.forward(xb, training=True)
        out = out.float()
        per_member, counts = task.stacked_losses(out, yb, None, [mb.train for mb in stack.members])
        return out, per_member, counts

    compiled: _ForwardLoss = (
        _CompiledOrEager(forward_loss) if wants_compile(opt.compile, members) else forward_loss
    )
    for epoch in range(1, cfg.epochs + 1):
        m = stack.m
        shared = opt.shared_batches and len({(mb.data, mb.train.seed) for mb in stack.members}) == 1
        run_loss = torch.zeros(m, dtype=torch.float64, device=device)
        run_hits = torch.zeros(m, dtype=torch.float64, device=device)
        run_seen = torch.zeros(m, dtype=torch.int64, device=device)
        if shared:
            order = torch.randperm(sizes[0], generator=generators[0])
            for g in generators[1:]:
                torch.randperm(sizes[0], generator=g)  # every member's generator advances as alone
            data = datasets[stack.members[0].data]
        else:
            orders = [torch.randperm(n, generator=g) for n, g in zip(sizes, generators, strict=True)]
            padded = torch.zeros(m, steps_per_epoch * batch, dtype=torch.int64)
            valid = torch.ones(m, steps_per_epoch * batch)
            for p, o in enumerate(orders):
                padded[p, : o.numel()] = o
                valid[p, o.numel() :] = 0.0
            padded, valid = padded.to(device), valid.to(device)
            by_data = sorted({mb.data for mb in stack.members})
            groups = {
                d: torch.tensor([p for p, mb in enumerate(stack.members) if mb.data == d], device=device)
                for d in by_data
            }
        ragged = not shared and any(n < steps_per_epoch * batch for n in sizes)
        for s in range(steps_per_epoch):
            last = s == steps_per_epoch - 1
            if shared:
                idx = order[s * batch : (s + 1) * batch].to(device)
                xb = data.x_train.index_select(0, idx)[None]
                yb = data.y_train.index_select(0, idx)[None].expand(m, -1)
            else:
                idx = padded[:, s * batch : (s + 1) * batch]
                if len(groups) == 1:
                    d = stack.members[0].data
                    xb, yb = datasets[d].x_train[idx], datasets[d].y_train[idx]
                else:
                    xb = torch.empty(m, idx.shape[1], datasets[0].x_train.shape[1], device=device)
                    yb = torch.empty(m, idx.shape[1], dtype=datasets[0].y_train.dtype, device=device)
                    for d, pos in groups.items():
                        sub = idx[pos]
                        xb[pos] = datasets[d].x_train[sub]
                        yb[pos] = datasets[d].y_train[sub]
            mask = valid[:, s * batch : (s + 1) * batch] if ragged and last else None
            if mask is None and not (any(stack.dropout) and last):
                # a short last batch runs eagerly rather than compiling a second graph for it
                step = compiled if xb.shape[-2] == batch else forward_loss
                out, per_member, counts = step(xb, yb)
            else:
                rows = [int(r) for r in mask.sum(1).tolist()] if mask is not None else [yb.shape[1]] * m
                with autocast(precision, device):
                    out = stack.forward(xb, training=True, mask=mask, rows=rows)
                out = out.float()
                per_member, counts = task.stacked_losses(out, yb, mask, [mb.train for mb in stack.members])
            optimizers.zero_grad()
            per_member.sum().backward()  # type: ignore[no-untyped-call]
            optimizers.step()
            stack.steps += 1
            with torch.no_grad():
                hit = task.hits(out, yb)
                if mask is not None:
                    hit = hit * (mask > 0)
                run_loss += per_member.detach().double() * counts.double()
                run_hits += hit.sum(1)
                run_seen += counts.to(torch.int64)
        for i in stack.order:
            if not done[i]:
                epoch_done(cbs[i], epoch)
        if cfg.eval_last_only and epoch < cfg.epochs:
            continue
        scores = _evaluate(stack, datasets, task, cfg.eval_batch_size, precision, opt.batched_eval)
        stopped: list[int] = []
        # in the caller's member order: a pruner then decides for each member with what it
        # would see if the members trained one after another (the earlier members' same epoch)
        for p in sorted(range(stack.m), key=lambda q: stack.order[q]):
            val_loss, val_score, val_pred, val_nll, val_out = scores[p]
            i = stack.order[p]
            if done[i]:  # stopped earlier, still in the stack (compaction off)
                continue
            seen = max(int(run_seen[p]), 1)
            record = EvalRecord(
                epoch=epoch,
                step=stack.steps,
                train_loss=float(run_loss[p]) / seen,
                train_score=task.running_score(float(run_hits[p]), seen),
                val_loss=val_loss,
                val_score=val_score,
                metric=task.headline,
                val_pred=val_pred,
                val_nll=val_nll,
                val_out=val_out,
            )
            stop, snapshot = trackers[i].observe(results[i], record, cbs[i])
            if snapshot:
                best_state[i] = stack.member_state(p)
            if stop:
                done[i] = True
                stopped.append(p)
                if best_state[i] is None:  # end with the weights it stopped with
                    best_state[i] = stack.member_state(p)
        if all(done):
            break
        if stopped and opt.compaction:
            keep = [p for p in range(stack.m) if p not in stopped]
            optimizers.remember_order()
            old = stack.keep(keep)
            optimizers.keep(keep, old)
            sizes = [sizes[p] for p in keep]
            generators = [generators[p] for p in keep]
    for p, i in enumerate(stack.order):
        if best_state[i] is None:
            best_state[i] = stack.member_state(p)
    for i, res in enumerate(results):
        EarlyStopping.finish(res)
        net = MLP(members[i].model)
        state = best_state[i]
        assert state is not None
        net.load_state_dict(state)
        net.eval()
        res.model = net
    return results
