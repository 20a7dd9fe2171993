"""Helpers shared by the tests: train one MLP configuration as the stages do."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

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


def predict_test_rows(
    cfg: Path, table: Path, test: npt.NDArray[np.int64], out_dir: Path, *, args: Sequence[str] = ()
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """``hpo predict`` on exactly the rows ``test`` of ``table`` (CLI ``args``: storage,
    artifacts): the rows, the predictions, and their accuracy against the ``target`` column."""
    from hpo import cli

    rows = pd.read_csv(table).iloc[test]
    rows.to_csv(out_dir / "test_rows.csv", index=False)
    code = cli.main(
        ["-q", "predict", "--config", str(cfg), *args,
         "--input", str(out_dir / "test_rows.csv"), "--output", str(out_dir / "pred.csv")]
    )  # fmt: skip
    assert code == 0
    pred = pd.read_csv(out_dir / "pred.csv")
    hits = pred["class"].astype(str).to_numpy() == rows["target"].astype(str).to_numpy()
    return rows, pred, float(hits.mean())
