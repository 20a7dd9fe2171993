"""The training loop for one model: in-memory tensors, seeded, deterministic. Knows nothing of Optuna.

Optuna (or anything else) plugs in through ``callbacks``: each is called with an
:class:`EvalRecord` after every evaluation and may return ``True`` to stop training, or raise
(``optuna.TrialPruned``) to abort it. The per-evaluation bookkeeping (:class:`EarlyStopping`)
is shared with the stacked trainer.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from hpo.model import build_model, build_optimizer
from hpo.settings import ModelConfig, OptimConfig, TrainConfig

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def autocast(precision: str, device: str = "cpu") -> Iterator[None]:
    """``bf16``: autocast to bfloat16 (matmuls in bf16; losses and reductions in float32)."""
    if precision == "bf16":
        with torch.autocast(device, dtype=torch.bfloat16):
            yield
    else:
        yield


@dataclass(frozen=True)
class TensorData:
    """Scaled features (float32) and class labels (int64) of a train and a validation part."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @classmethod
    def from_numpy(
        cls,
        x_train: npt.NDArray[np.floating],
        y_train: npt.NDArray[np.integer],
        x_val: npt.NDArray[np.floating],
        y_val: npt.NDArray[np.integer],
    ) -> TensorData:
        return cls(
            torch.as_tensor(np.ascontiguousarray(x_train, dtype=np.float32)),
            torch.as_tensor(np.asarray(y_train, dtype=np.int64)),
            torch.as_tensor(np.ascontiguousarray(x_val, dtype=np.float32)),
            torch.as_tensor(np.asarray(y_val, dtype=np.int64)),
        )

    def to(self, device: str) -> TensorData:
        if self.x_train.device.type == device:
            return self
        return TensorData(*(t.to(device) for t in (self.x_train, self.y_train, self.x_val, self.y_val)))


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation: training loss/accuracy since the previous one, and validation scores."""

    epoch: int  # 1-based epoch in which the evaluation happened
    step: int  # optimizer steps so far
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    #: the predicted class of every validation row (CPU int64), for metrics beyond accuracy
    val_pred: torch.Tensor | None = field(default=None, compare=False, repr=False)
    #: the cross-entropy of every validation row (CPU float32), for paired comparisons
    val_nll: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def light(self) -> EvalRecord:
        """The record without its per-row tensors (what a history keeps)."""
        return replace(self, val_pred=None, val_nll=None)


_HISTORY_FIELDS = tuple(f.name for f in fields(EvalRecord) if f.name not in ("val_pred", "val_nll"))

Callback = Callable[[EvalRecord], bool | None]


@dataclass
class FitResult:
    model: nn.Module
    history: list[EvalRecord] = field(default_factory=list)
    best_index: int = -1
    stopped_early: bool = False
    diverged: bool = False

    @property
    def best(self) -> EvalRecord:
        return self.history[self.best_index]

    @property
    def peak_val_accuracy(self) -> float:
        return max(r.val_accuracy for r in self.history)

    def history_dicts(self) -> list[dict[str, float]]:
        return [{k: getattr(r, k) for k in _HISTORY_FIELDS} for r in self.history]


@dataclass
class EarlyStopping:
    """Best validation loss, evaluations since it, and when to stop: shared by :func:`fit` and
    the stacked trainer (one per member)."""

    patience: int | None
    restore_best: bool = True
    best_loss: float = math.inf
    since_best: int = 0

    def observe(
        self, result: FitResult, record: EvalRecord, callbacks: Sequence[Callback] = ()
    ) -> tuple[bool, bool]:
        """Append ``record`` to ``result``; return (stop, snapshot the weights now as the best)."""
        result.history.append(record)
        stop = snapshot = False
        if not math.isfinite(record.val_loss):
            result.diverged = True
            stop = True
        elif record.val_loss < self.best_loss:
            self.best_loss = record.val_loss
            result.best_index = len(result.history) - 1
            self.since_best = 0
            snapshot = self.patience is not None and self.restore_best
        else:
            self.since_best += 1
            if self.patience is not None and self.since_best >= self.patience:
                result.stopped_early = True
                stop = True
        for callback in callbacks:
            if callback(record):
                stop = True
        result.history[-1] = record.light()  # callbacks saw the per-row tensors; keep them no longer
        return stop, snapshot

    @staticmethod
    def finish(result: FitResult) -> None:
        if result.best_index < 0 and result.history:
            result.best_index = 0


def training_loss(logits: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Mean cross-entropy with the configuration's label smoothing and class weights."""
    if cfg.class_weights is None and cfg.label_smoothing == 0.0:
        return F.cross_entropy(logits, y)
    weight = torch.tensor(cfg.class_weights, device=logits.device) if cfg.class_weights else None
    return F.cross_entropy(logits, y, weight=weight, label_smoothing=cfg.label_smoothing)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int = 16_384) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]).float() for i in range(0, x.shape[0], batch_size)])
    model.train(was_training)
    return out


def fit(
    model_config: ModelConfig,
    optim_config: OptimConfig,
    train_config: TrainConfig,
    data: TensorData,
    *,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train one model; evaluate on the validation part at every epoch end (or every
    ``eval_every`` steps), with early stopping on validation loss when ``patience`` is set."""
    cfg = train_config
    device = cfg.device
    # Weight decay drives weights and Adam's second moments towards float32 denormals, which
    # the CPU handles ~2-3x slower (measured: epochs of the 256x256 model went from 0.6 s to
    # 1.2-1.7 s at weight decay 1e-2); flushing them to zero changes values below 1.2e-38 only.
    torch.set_flush_denormal(True)
    model = build_model(model_config, seed=cfg.seed).to(device)
    optimizer = build_optimizer(model.parameters(), optim_config)
    generator = torch.Generator().manual_seed(cfg.seed)
    data = data.to(device)
    result = FitResult(model=model)
    n = data.x_train.shape[0]
    tracker = EarlyStopping(patience=cfg.patience, restore_best=cfg.restore_best)
    best_state: dict[str, torch.Tensor] | None = None
    step = 0
    run_loss = torch.zeros((), dtype=torch.float64, device=device)
    run_correct = torch.zeros((), dtype=torch.int64, device=device)
    run_seen = 0

    def evaluate(epoch: int) -> bool:
        nonlocal best_state, run_loss, run_correct, run_seen
        with autocast(cfg.precision, device):
            logits = predict_logits(model, data.x_val, batch_size=cfg.eval_batch_size)
        pred = logits.argmax(dim=1)
        nll = F.cross_entropy(logits, data.y_val, reduction="none")
        record = EvalRecord(
            epoch=epoch,
            step=step,
            train_loss=float(run_loss) / max(run_seen, 1),
            train_accuracy=float(run_correct) / max(run_seen, 1),
            val_loss=F.cross_entropy(logits, data.y_val).item(),
            val_accuracy=(pred == data.y_val).double().mean().item(),
            val_pred=pred.cpu(),
            val_nll=nll.cpu(),
        )
        run_loss.zero_()
        run_correct.zero_()
        run_seen = 0
        logger.debug("epoch %d step %d: %s", epoch, step, record)
        stop, snapshot = tracker.observe(result, record, callbacks)
        if snapshot:
            best_state = copy.deepcopy(model.state_dict())
        return stop

    model.train()
    stop = False
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            xb = data.x_train.index_select(0, idx)
            yb = data.y_train.index_select(0, idx)
            with autocast(cfg.precision, device):
                logits = model(xb).float()
            loss = training_loss(logits, yb, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            step += 1
            with torch.no_grad():
                run_loss += loss.detach().double() * idx.numel()
                run_correct += (logits.argmax(dim=1) == yb).sum()
            run_seen += idx.numel()
            at_limit = cfg.max_batches is not None and step >= cfg.max_batches
            if (cfg.eval_every is not None and step % cfg.eval_every == 0) or (
                at_limit and (cfg.eval_every is None or step % cfg.eval_every != 0)
            ):
                stop = evaluate(epoch)
            if stop or at_limit:
                stop = True
                break
        if stop:
            break
        if cfg.eval_every is None and (not cfg.eval_last_only or epoch == cfg.epochs):
            stop = evaluate(epoch)
            if stop:
                break
    EarlyStopping.finish(result)
    if best_state is not None and cfg.restore_best:
        model.load_state_dict(best_state)
    model.eval()
    return result
