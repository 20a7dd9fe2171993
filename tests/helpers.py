"""Helpers shared by the tests: train one MLP configuration as the stages do."""

from __future__ import annotations

from collections.abc import Sequence

from hpo.families.mlp import build_model
from hpo.settings import ModelConfig, OptimConfig, TrainConfig
from hpo.tasks import Classification, Task
from hpo.training import Callback, FitResult, TensorData, fit


def classes(n: int) -> Classification:
    """A classification task of ``n`` classes named "0" ... "n-1"."""
    return Classification(tuple(str(i) for i in range(n)))


def fit_mlp(
    model: ModelConfig,
    optim: OptimConfig,
    train: TrainConfig,
    data: TensorData,
    *,
    task: Task | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """The MLP of ``model`` built from ``train.seed`` and trained by the one-model loop (a
    classifier of ``model.n_outputs`` classes unless ``task`` says otherwise)."""
    return fit(
        build_model(model, seed=train.seed),
        optim,
        train,
        data,
        task=task or classes(model.n_outputs),
        callbacks=callbacks,
    )
