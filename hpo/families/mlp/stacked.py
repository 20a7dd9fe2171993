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
:func:`~hpo.training.loop.fit` runs to float tolerance (tested). Like the single-model loop, this
module knows nothing of Optuna; the task (:mod:`hpo.tasks`) owns the loss and the scores.

Speed (measured in ``bench/stack_levers.py``, numbers in docs/benchmarks.md): the parameters are
used whole in the training step (no per-member slicing, whose backward allocates and fills a
full-size gradient per slice); members with different optimizers or learning rates are updated by
one fused optimizer per group over views into the stacked tensors (before: per-member leaf
tensors stacked anew at every step); only the last batch of an epoch can be ragged, so no step
synchronises to find out. Optional levers (:class:`StackOptions`): members that share their rows
and data order (a sweep's choices: same seed, same data) share one gathered batch and the first
layer's input; evaluation runs all members of a dataset in one batched pass; members that stopped
(early stopping, a pruner) leave the stack instead of being trained on; ``torch.compile`` of the
step's forward and loss where :func:`measure_compile` measured a gain on this machine (bf16 stacks
only). Every member's callbacks hear of each epoch trained (:func:`~hpo.training.epoch_done`),
evaluated or not.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from hpo.errors import first_line
from hpo.families.mlp import components
from hpo.families.mlp.model import MLP, build_model, dropout_generator
from hpo.settings import ModelConfig, OptimConfig, TrainConfig
from hpo.tasks import Task
from hpo.training.loop import EarlyStopping, EvalRecord, FitResult, TensorData, autocast, epoch_done
from hpo.training.optim import build_optimizer, optimizer_spec
from hpo.training.precision import Timing, interleaved, seconds_per_step

logger = logging.getLogger(__name__)

MemberCallback = Callable[[EvalRecord], bool | None]


@dataclass(frozen=True)
class Member:
    """One model of a stack: what it is, how it is optimised and trained, and which of the
    datasets given to :func:`fit_stacked` it trains on."""

    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    data: int


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
    stack: StackedMLP,
    datasets: Sequence[TensorData],
    task: Task,
    eval_batch: int,
    precision: str,
    batched: bool,
) -> list[tuple[float, float, torch.Tensor, torch.Tensor]]:
    """(val loss, val score, per-row predictions, per-row losses) of every member, by stack
    position: all members in one pass per chunk of rows (``batched``), or member by member."""
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
    result = []
    for p, v in enumerate(vals):
        pred = torch.cat(preds[p])
        loss = float(loss_sum[p]) / sizes[p]
        result.append(
            (loss, task.score_rows(pred, v.y_val, loss), pred.cpu(), torch.cat(losses[p]).float().cpu())
        )
    return result


def _evaluate_one(
    stack: StackedMLP, data: TensorData, task: Task, p: int, eval_batch: int, precision: str
) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """One member's evaluation (the stack's layers, sliced to that member)."""
    mb = stack.members[p].model
    sel = slice(p, p + 1)
    loss_sum = torch.zeros((), dtype=torch.float64, device=stack.device)
    preds, losses = [], []
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
    pred = torch.cat(preds)
    n = data.x_val.shape[0]
    loss = float(loss_sum) / n
    return loss, task.score_rows(pred, data.y_val, loss), pred.cpu(), torch.cat(losses).cpu()


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
            val_loss, val_score, val_pred, val_nll = scores[p]
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
