"""The training loop: in-memory tensors, seeded, deterministic on CPU. Knows nothing of Optuna.

Optuna (or anything else) plugs in through ``callbacks``: each is called with an
:class:`EvalRecord` after every evaluation and may return ``True`` to stop training, or raise
(``optuna.TrialPruned``) to abort it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn import metrics as skm
from torch import nn
from torch.nn import functional as F

from hpo.errors import ConfigError
from hpo.models import ModelConfig, OptimConfig, build_model, build_optimizer

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def autocast(precision: str) -> Iterator[None]:
    """``bf16``: CPU autocast to bfloat16 (matmuls in bf16; losses and reductions in float32)."""
    if precision == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    seed: int = 42
    patience: int | None = None  # early stopping on validation loss, in evaluations
    restore_best: bool = True  # with patience: end with the weights of the best val loss
    max_batches: int | None = None  # stop after this many optimizer steps
    eval_every: int | None = None  # evaluate every N steps (default: at the end of each epoch)
    eval_batch_size: int = 16_384
    precision: str = "fp32"  # "bf16": CPU autocast for forward passes (losses stay float32)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)} must be at least 1")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision = {self.precision!r}; use 'fp32' or 'bf16'")
        for name in ("patience", "max_batches", "eval_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} = {value} must be at least 1 (or unset)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**d)


@dataclass(frozen=True)
class TensorData:
    """Scaled features (float32) and decade labels (int64) of a train and a validation part."""

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


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation: training loss/accuracy since the previous one, and validation scores."""

    epoch: int  # 1-based epoch in which the evaluation happened
    step: int  # optimizer steps so far
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float


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
        return [asdict(r) for r in self.history]


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
        return stop, snapshot


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int = 16_384) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]).float() for i in range(0, x.shape[0], batch_size)])
    model.train(was_training)
    return out


def loss_and_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 16_384
) -> tuple[float, float]:
    logits = predict_logits(model, x, batch_size=batch_size)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=1) == y).double().mean().item()
    return loss, acc


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
    # Weight decay drives weights and Adam's second moments towards float32 denormals, which
    # the CPU handles ~2-3x slower (measured: epochs of the 256x256 model went from 0.6 s to
    # 1.2-1.7 s at weight decay 1e-2); flushing them to zero changes values below 1.2e-38 only.
    torch.set_flush_denormal(True)
    model = build_model(model_config, seed=cfg.seed)
    optimizer = build_optimizer(model.parameters(), optim_config)
    generator = torch.Generator().manual_seed(cfg.seed)
    result = FitResult(model=model)
    n = data.x_train.shape[0]
    tracker = EarlyStopping(patience=cfg.patience, restore_best=cfg.restore_best)
    best_state: dict[str, torch.Tensor] | None = None
    step = 0
    run_loss = torch.zeros((), dtype=torch.float64)
    run_correct = torch.zeros((), dtype=torch.int64)
    run_seen = 0

    def evaluate(epoch: int) -> bool:
        nonlocal best_state, run_loss, run_correct, run_seen
        with autocast(cfg.precision):
            val_loss, val_acc = loss_and_accuracy(
                model, data.x_val, data.y_val, batch_size=cfg.eval_batch_size
            )
        record = EvalRecord(
            epoch=epoch,
            step=step,
            train_loss=float(run_loss) / max(run_seen, 1),
            train_accuracy=float(run_correct) / max(run_seen, 1),
            val_loss=val_loss,
            val_accuracy=val_acc,
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
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            xb = data.x_train.index_select(0, idx)
            yb = data.y_train.index_select(0, idx)
            with autocast(cfg.precision):
                logits = model(xb).float()
            loss = F.cross_entropy(logits, yb)
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
        if cfg.eval_every is None:
            stop = evaluate(epoch)
            if stop:
                break
    if result.best_index < 0 and result.history:
        result.best_index = 0
    if best_state is not None and cfg.restore_best:
        model.load_state_dict(best_state)
    model.eval()
    return result


@dataclass(frozen=True)
class Metrics:
    loss: float
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    confusion: list[list[int]]
    per_class: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    class_names: Sequence[str],
    batch_size: int = 16_384,
) -> Metrics:
    """Loss, accuracy, balanced accuracy, macro-F1, confusion matrix and per-class report."""
    logits = predict_logits(model, x, batch_size=batch_size)
    loss = F.cross_entropy(logits, y).item()
    y_true = y.numpy()
    y_pred = logits.argmax(dim=1).numpy()
    labels = list(range(len(class_names)))
    report = skm.classification_report(
        y_true, y_pred, labels=labels, target_names=list(class_names), output_dict=True, zero_division=0
    )
    assert isinstance(report, dict)
    return Metrics(
        loss=loss,
        accuracy=float(skm.accuracy_score(y_true, y_pred)),
        balanced_accuracy=float(skm.balanced_accuracy_score(y_true, y_pred)),
        macro_f1=float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        confusion=skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        per_class={name: {k: float(v) for k, v in report[name].items()} for name in class_names},
    )
