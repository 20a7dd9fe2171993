"""Classification: class indices predicted from logits, cross-entropy, scikit-learn's metrics.

The formulas here are the ones the trainers used before tasks existed (the faithful study file
gives the same numbers): the mean cross-entropy with optional label smoothing and class weights
(``F.cross_entropy``'s definition, also for a stack of members), accuracy as the share of
matching rows, balanced accuracy and macro-F1 as scikit-learn defines them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn import metrics as skm
from sklearn.utils.class_weight import compute_class_weight
from torch.nn import functional as F

from hpo import evidence
from hpo.settings import TrainConfig
from hpo.tasks._protocol import Evaluation
from hpo.tuning import records


def balanced_class_weights(labels: npt.NDArray[np.integer[Any]], n_classes: int) -> list[float]:
    """scikit-learn's "balanced" weights ``n / (n_classes * count)``; a class absent from
    ``labels`` gets weight 1 (it contributes no loss anyway)."""
    y = np.asarray(labels, dtype=np.int64)
    present = np.unique(y)
    weights = np.ones(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=y) * len(present) / n_classes
    return [float(w) for w in weights]


def _fast_metric(metric: str, y: npt.NDArray[np.int64], p: npt.NDArray[np.int64], n_classes: int) -> float:
    """Balanced accuracy or macro-F1 from one confusion matrix (as scikit-learn computes them)."""
    cm = np.bincount(y * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1)
    if metric == "balanced_accuracy":
        present = support > 0
        return float(np.mean(tp[present] / support[present]))
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


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


@dataclass(frozen=True)
class Classification:
    class_names: tuple[str, ...]

    kind = "classification"
    headline = "accuracy"

    @property
    def n_outputs(self) -> int:
        return len(self.class_names)

    # ------------------------------------------------------------------ training

    def loss(self, out: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
        if cfg.class_weights is None and cfg.label_smoothing == 0.0:
            return F.cross_entropy(out, y)
        weight = torch.tensor(cfg.class_weights, device=out.device) if cfg.class_weights else None
        return F.cross_entropy(out, y, weight=weight, label_smoothing=cfg.label_smoothing)

    def stacked_losses(
        self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, cfgs: Sequence[TrainConfig]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain cross-entropy, or with each member's label smoothing and class weights as
        ``F.cross_entropy`` computes them (the weighted mean over rows)."""
        m_count, rows, n_classes = out.shape
        plain = all(c.label_smoothing == 0.0 and c.class_weights is None for c in cfgs)
        counts = mask.sum(1) if mask is not None else torch.full((m_count,), float(rows), device=out.device)
        if plain:
            ce = F.cross_entropy(out.reshape(-1, n_classes), y.reshape(-1), reduction="none").view(
                m_count, -1
            )
            if mask is not None:
                return (ce * mask).sum(1) / counts.clamp(min=1), counts
            return ce.mean(1), counts
        logp = F.log_softmax(out, dim=-1)
        weights = torch.tensor([c.class_weights or (1.0,) * n_classes for c in cfgs], device=out.device)
        eps = torch.tensor([c.label_smoothing for c in cfgs], device=out.device)[:, None]
        nll = -logp.gather(-1, y[..., None]).squeeze(-1)  # [M, B]
        w_y = weights.gather(1, y)  # [M, B]
        smooth = -(logp * weights[:, None, :]).sum(-1) / n_classes  # [M, B]
        per_row = (1 - eps) * w_y * nll + eps * smooth
        if mask is not None:
            per_row, w_y = per_row * mask, w_y * mask
        return per_row.sum(1) / w_y.sum(1).clamp(min=1e-12), counts

    def hits(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return out.argmax(-1) == y

    def running_score(self, total: float, rows: int) -> float:
        return total / max(rows, 1)

    # ------------------------------------------------------------------ evaluation

    def rows(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_classes = out.shape[-1]
        ce = F.cross_entropy(out.reshape(-1, n_classes), y.reshape(-1), reduction="none")
        return out.argmax(-1), ce.view(y.shape)

    def evaluate(self, out: torch.Tensor, y: torch.Tensor) -> Evaluation:
        pred = out.argmax(dim=1)
        return Evaluation(
            loss=F.cross_entropy(out, y).item(),
            score=(pred == y).double().mean().item(),
            pred=pred,
            per_row=F.cross_entropy(out, y, reduction="none"),
        )

    def score_rows(self, pred: torch.Tensor, y: torch.Tensor, loss: float) -> float:
        return int((pred == y).sum()) / max(y.numel(), 1)

    def metric(self, name: str, y: npt.NDArray[Any], pred: npt.NDArray[Any]) -> float:
        t, p = np.asarray(y), np.asarray(pred)
        if name == "accuracy":
            return float(np.mean(t == p))
        if name == "balanced_accuracy":  # scikit-learn's definition over the classes present in y
            return float(skm.balanced_accuracy_score(t, p))
        if name == "macro_f1":
            labels = list(range(self.n_outputs))
            return float(skm.f1_score(t, p, labels=labels, average="macro", zero_division=0))
        raise KeyError(f"{name!r} is not a classification metric of predicted classes")

    def paired_bootstrap(
        self, name: str, y: npt.NDArray[Any], pred_a: npt.NDArray[Any], pred_b: npt.NDArray[Any]
    ) -> tuple[float, float, float]:
        y, a, b = (np.asarray(v, dtype=np.int64) for v in (y, pred_a, pred_b))
        if name == "accuracy":
            return evidence.paired_bootstrap(
                y,
                a,
                b,
                metric=lambda t, p: self.metric(name, t, p),
                per_row=lambda t, p: (p == t).astype(np.float64),
            )
        return evidence.paired_bootstrap(
            y,
            a,
            b,
            metric=lambda t, p: self.metric(name, t, p),
            fast=lambda t, p: _fast_metric(name, t, p, self.n_outputs),
        )

    def trivial_score(self, y_train: npt.NDArray[Any], y_val: npt.NDArray[Any]) -> float:
        y = np.asarray(y_val, dtype=np.int64)
        return float(np.bincount(y).max() / y.size)

    def test_metrics(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Loss, accuracy, balanced accuracy, macro-F1, confusion matrix and per-class report."""
        loss = F.cross_entropy(out.float(), y).item()
        y_true = y.numpy()
        y_pred = out.argmax(dim=1).numpy()
        labels = list(range(self.n_outputs))
        names = list(self.class_names)
        report = skm.classification_report(
            y_true, y_pred, labels=labels, target_names=names, output_dict=True, zero_division=0
        )
        assert isinstance(report, dict)
        return Metrics(
            loss=loss,
            accuracy=float(skm.accuracy_score(y_true, y_pred)),
            balanced_accuracy=float(skm.balanced_accuracy_score(y_true, y_pred)),
            macro_f1=float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
            confusion=skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
            per_class={name: {k: float(v) for k, v in report[name].items()} for name in names},
        ).to_dict()

    def combine(
        self, outputs: Sequence[torch.Tensor], weights: Sequence[float] | None = None
    ) -> torch.Tensor:
        """The log of the members' (weighted) mean class probabilities (soft voting): its
        softmax is that mean, its cross-entropy the ensemble's loss."""
        if not outputs:
            raise ValueError("an ensemble needs at least one member")
        log_p = torch.stack([torch.log_softmax(o.double(), dim=-1) for o in outputs])
        if weights is None:
            return (torch.logsumexp(log_p, dim=0) - math.log(len(outputs))).float()
        w = torch.as_tensor(weights, dtype=torch.float64)
        log_w = torch.log(w / w.sum()).view(-1, *([1] * (log_p.dim() - 1)))
        return torch.logsumexp(log_p + log_w, dim=0).float()

    def blend(self, out: torch.Tensor) -> torch.Tensor:
        return torch.softmax(out.double(), dim=-1)

    def unblend(self, mean: torch.Tensor) -> torch.Tensor:
        return torch.log(mean.clamp_min(1e-300)).float()

    def predictions(self, out: torch.Tensor) -> npt.NDArray[np.float64]:
        return torch.softmax(out.double(), dim=-1).numpy()

    def pack_predictions(self, pred: torch.Tensor) -> str:
        return records.pack_labels(pred.numpy())

    def unpack_predictions(self, text: str) -> npt.NDArray[Any]:
        return records.unpack_labels(text)

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "class_names": list(self.class_names)}
