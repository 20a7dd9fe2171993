"""Training: one model, a stack of models, the LR range test, metrics. Knows nothing of Optuna."""

from __future__ import annotations

from hpo.training.batch import fit_members
from hpo.training.device import resolve_device
from hpo.training.loop import Callback, EarlyStopping, EvalRecord, FitResult, TensorData, autocast, fit
from hpo.training.lr_finder import RangeTestResult, range_test, suggest
from hpo.training.metrics import Metrics, balanced_class_weights, evaluate, score
from hpo.training.stacked import Member, MemberCallback, fit_stacked, stack_key

__all__ = [
    "Callback",
    "EarlyStopping",
    "EvalRecord",
    "FitResult",
    "Member",
    "MemberCallback",
    "Metrics",
    "RangeTestResult",
    "TensorData",
    "autocast",
    "balanced_class_weights",
    "evaluate",
    "fit",
    "fit_members",
    "fit_stacked",
    "range_test",
    "resolve_device",
    "score",
    "stack_key",
    "suggest",
]
