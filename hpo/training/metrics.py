"""Scores of predictions: what stages optimise and what the final stage reports (scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn import metrics as skm
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.nn import functional as F

from hpo.training.loop import predict_logits

#: Metrics where larger is better; "loss" (the validation cross-entropy) is minimised.
MAXIMISED = ("accuracy", "balanced_accuracy", "macro_f1")


def score(
    metric: str,
    y_true: npt.NDArray[np.integer[Any]] | torch.Tensor,
    y_pred: npt.NDArray[np.integer[Any]] | torch.Tensor,
    *,
    n_classes: int,
) -> float:
    """``accuracy``, ``balanced_accuracy`` or ``macro_f1`` of predicted classes."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if metric == "accuracy":
        return float(np.mean(t == p))
    if metric == "balanced_accuracy":
        # scikit-learn's definition over the classes present in y_true
        return float(skm.balanced_accuracy_score(t, p))
    if metric == "macro_f1":
        labels = list(range(n_classes))
        return float(skm.f1_score(t, p, labels=labels, average="macro", zero_division=0))
    raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(MAXIMISED)}")


def balanced_class_weights(labels: npt.NDArray[np.integer[Any]], n_classes: int) -> list[float]:
    """scikit-learn's "balanced" weights ``n / (n_classes * count)``; a class absent from
    ``labels`` gets weight 1 (it contributes no loss anyway)."""
    y = np.asarray(labels, dtype=np.int64)
    present = np.unique(y)
    weights = np.ones(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=y) * len(present) / n_classes
    return [float(w) for w in weights]


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
    device = next(model.parameters()).device
    logits = predict_logits(model, x.to(device), batch_size=batch_size).cpu()
    return metrics_from_logits(logits, y, class_names=class_names)


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor, *, class_names: Sequence[str]) -> Metrics:
    loss = F.cross_entropy(logits.float(), y).item()
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
