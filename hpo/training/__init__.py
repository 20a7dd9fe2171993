"""Training one torch module: the loop, the optimizers' table, the LR range test, the device.
Knows nothing of Optuna, of stages, or of which model it trains (the families build models; the
task owns the loss and the scores)."""

from __future__ import annotations

from hpo.training.device import resolve_device
from hpo.training.loop import (
    Callback,
    EarlyStopping,
    EpochCallback,
    EvalRecord,
    FitResult,
    TensorData,
    autocast,
    epoch_done,
    fit,
    predict_outputs,
)
from hpo.training.lr_finder import RangeTestResult, range_test, suggest
from hpo.training.optim import OPTIMIZERS, build_optimizer

__all__ = [
    "OPTIMIZERS",
    "Callback",
    "EarlyStopping",
    "EpochCallback",
    "EvalRecord",
    "FitResult",
    "RangeTestResult",
    "TensorData",
    "autocast",
    "build_optimizer",
    "epoch_done",
    "fit",
    "predict_outputs",
    "range_test",
    "resolve_device",
    "suggest",
]
