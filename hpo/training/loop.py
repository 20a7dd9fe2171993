"""The training loop for one model: in-memory tensors, seeded, deterministic. Knows nothing of Optuna.

The trainer is handed a built ``nn.Module`` and a :class:`~hpo.tasks.Task` (minGPT's seam: the
trainer knows nothing of the model's specifics; the task owns the loss and the scores), so the
same loop trains hpo's MLP and a user's own module, for classification or regression.

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
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from hpo.settings import OptimConfig, TrainConfig
from hpo.tasks import Task
from hpo.training.optim import build_optimizer

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def autocast(precision: str, device: str = "cpu") -> Iterator[None]:
    """``bf16``: autocast to bfloat16 (matmuls in bf16; losses and reductions in float32)."""
    if precision == "bf16":
        with torch.autocast(device, dtype=torch.bfloat16):
            yield
    else:
        yield


def _targets(y: npt.NDArray[Any]) -> torch.Tensor:
    """Class indices as int64; a regressor's (standardised) values as float32."""
    dtype = np.int64 if np.issubdtype(np.asarray(y).dtype, np.integer) else np.float32
    return torch.as_tensor(np.ascontiguousarray(y, dtype=dtype))


@dataclass(frozen=True)
class TensorData:
    """Scaled features (float32) and targets (class indices int64, or standardised values
    float32) of a train and a validation part."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    #: columns holding category codes (NaN empty), for an estimator that takes them natively
    #: (hpo.data.preprocess, encoding "native"); empty for a float matrix
    categorical: tuple[int, ...] = ()

    @classmethod
    def from_numpy(
        cls,
        x_train: npt.NDArray[np.floating[Any]],
        y_train: npt.NDArray[Any],
        x_val: npt.NDArray[np.floating[Any]],
        y_val: npt.NDArray[Any],
        categorical: tuple[int, ...] = (),
    ) -> TensorData:
        return cls(
            torch.as_tensor(np.ascontiguousarray(x_train, dtype=np.float32)),
            _targets(y_train),
            torch.as_tensor(np.ascontiguousarray(x_val, dtype=np.float32)),
            _targets(y_val),
            categorical,
        )

    def to(self, device: str) -> TensorData:
        if self.x_train.device.type == device:
            return self
        to = [t.to(device) for t in (self.x_train, self.y_train, self.x_val, self.y_val)]
        return TensorData(to[0], to[1], to[2], to[3], categorical=self.categorical)


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation: the training loss and score since the previous one, and the validation
    loss and score. The score is the task's headline metric (``metric``: accuracy for a
    classifier, RMSE in the target's units for a regressor)."""

    epoch: int  # 1-based epoch in which the evaluation happened
    step: int  # optimizer steps so far
    train_loss: float
    train_score: float
    val_loss: float
    val_score: float
    metric: str = "accuracy"
    #: the prediction for every validation row (CPU; class index, or the standardised value)
    val_pred: torch.Tensor | None = field(default=None, compare=False, repr=False)
    #: the loss of every validation row (CPU float32), for paired comparisons
    val_nll: torch.Tensor | None = field(default=None, compare=False, repr=False)
    #: the model's raw outputs for every validation row (CPU float32: logits, or the standardised
    #: value), what a greedy ensemble's library keeps (hpo.ensemble)
    val_out: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def light(self) -> EvalRecord:
        """The record without its per-row tensors (what a history keeps)."""
        return replace(self, val_pred=None, val_nll=None, val_out=None)

    def as_dict(self) -> dict[str, float]:
        """As stored in a trial's history: the scores named by their metric (``val_accuracy``)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": self.train_loss,
            f"train_{self.metric}": self.train_score,
            "val_loss": self.val_loss,
            f"val_{self.metric}": self.val_score,
        }


Callback = Callable[[EvalRecord], bool | None]


@runtime_checkable
class EpochCallback(Protocol):
    """A callback that also hears of every epoch trained, evaluated or not (a progress display
    counts the k-fold stage's epochs, which are evaluated only after the last one)."""

    def __call__(self, record: EvalRecord) -> bool | None: ...

    def epoch_done(self, epoch: int) -> None: ...


def epoch_done(callbacks: Sequence[Callback], epoch: int) -> None:
    """Tell the callbacks that hear of epochs that ``epoch`` (1-based) has been trained."""
    for callback in callbacks:
        if isinstance(callback, EpochCallback):
            callback.epoch_done(epoch)


@dataclass
class FitResult:
    model: Any  # the trained model: an nn.Module, or a fitted scikit-learn estimator
    history: list[EvalRecord] = field(default_factory=list)
    best_index: int = -1
    stopped_early: bool = False
    diverged: bool = False

    @property
    def best(self) -> EvalRecord:
        return self.history[self.best_index]

    def history_dicts(self) -> list[dict[str, float]]:
        return [r.as_dict() for r in self.history]


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


@torch.no_grad()
def predict_outputs(model: nn.Module, x: torch.Tensor, *, batch_size: int = 16_384) -> torch.Tensor:
    """The model's outputs (logits, or values) for ``x``, in evaluation mode, as float32, on the
    model's device."""
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    if param is not None and x.device != param.device:
        x = x.to(param.device)
    out = torch.cat([model(x[i : i + batch_size]).float() for i in range(0, x.shape[0], batch_size)])
    model.train(was_training)
    return out


def fit(
    model: nn.Module,
    optim_config: OptimConfig,
    train_config: TrainConfig,
    data: TensorData,
    *,
    task: Task,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` (built and seeded by the caller) in place; evaluate on the validation part
    at every epoch end (or every ``eval_every`` steps), with early stopping on validation loss
    when ``patience`` is set. The data order comes from ``train_config.seed``."""
    cfg = train_config
    device = cfg.device
    # Weight decay drives weights and Adam's second moments towards float32 denormals, which
    # the CPU handles ~2-3x slower (measured: epochs of the 256x256 model went from 0.6 s to
    # 1.2-1.7 s at weight decay 1e-2); flushing them to zero changes values below 1.2e-38 only.
    torch.set_flush_denormal(True)
    model = model.to(device)
    optimizer = build_optimizer(model.parameters(), optim_config)
    generator = torch.Generator().manual_seed(cfg.seed)
    data = data.to(device)
    result = FitResult(model=model)
    n = data.x_train.shape[0]
    tracker = EarlyStopping(patience=cfg.patience, restore_best=cfg.restore_best)
    best_state: dict[str, torch.Tensor] | None = None
    step = 0
    run_loss = torch.zeros((), dtype=torch.float64, device=device)
    run_hits = torch.zeros((), dtype=torch.float64, device=device)
    run_seen = 0

    def evaluate(epoch: int) -> bool:
        nonlocal best_state, run_seen
        with autocast(cfg.precision, device):
            out = predict_outputs(model, data.x_val, batch_size=cfg.eval_batch_size)
        ev = task.evaluate(out, data.y_val)
        record = EvalRecord(
            epoch=epoch,
            step=step,
            train_loss=float(run_loss) / max(run_seen, 1),
            train_score=task.running_score(float(run_hits), run_seen),
            val_loss=ev.loss,
            val_score=ev.score,
            metric=task.headline,
            val_pred=ev.pred.cpu(),
            val_nll=ev.per_row.cpu(),
            val_out=out.cpu(),
        )
        run_loss.zero_()
        run_hits.zero_()
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
                out = model(xb).float()
            loss = task.loss(out, yb, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            step += 1
            with torch.no_grad():
                run_loss += loss.detach().double() * idx.numel()
                run_hits += task.hits(out, yb).sum()
            run_seen += idx.numel()
            at_limit = cfg.max_batches is not None and step >= cfg.max_batches
            if (cfg.eval_every is not None and step % cfg.eval_every == 0) or (
                at_limit and (cfg.eval_every is None or step % cfg.eval_every != 0)
            ):
                stop = evaluate(epoch)
            if stop or at_limit:
                stop = True
                break
        epoch_done(callbacks, epoch)
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
