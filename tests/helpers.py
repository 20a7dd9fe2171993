"""Helpers shared by the tests: train one MLP configuration as the stages do."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

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


def storage_args(tmp_path: Path) -> list[str]:
    """``--storage`` and ``--artifacts`` of a test's own SQLite storage and artifact store."""
    return ["--storage", f"sqlite:///{tmp_path / 'hpo.db'}", "--artifacts", str(tmp_path / "artifacts")]


def onnx_agrees_with_predict(cfg: Path, tmp_path: Path, table: Path, target: str = "target") -> None:
    """``hpo export-model --format onnx`` of the pipeline's final model, run by onnxruntime on
    every row of ``table``: within 1e-4 of what the model file predicts (one input per column)."""
    from conftest import require_module

    from hpo import cli
    from hpo.pipeline import Pipeline

    ort = require_module("onnxruntime", "HPO_REQUIRE_ONNX")
    require_module("onnxscript", "HPO_REQUIRE_ONNX")
    out = tmp_path / "model.onnx"
    args = ["-q", "export-model", "--config", str(cfg), *storage_args(tmp_path)]
    assert cli.main([*args, "--format", "onnx", "--out", str(out)]) == 0
    pipe = Pipeline.load(cfg, storage=f"sqlite:///{tmp_path / 'hpo.db'}", artifacts=tmp_path / "artifacts")
    model = pipe.final_model()
    frame = pd.read_csv(table).drop(columns=target)
    want = model.task_of().predictions(model.outputs(frame.to_numpy(np.float64), trusted=pipe.trusted()))
    session = ort.InferenceSession(str(out))
    feeds = {i.name: frame[i.name].to_numpy(np.float32).reshape(-1, 1) for i in session.get_inputs()}
    got = session.run(None, feeds)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4)


def refused_in_one_line(args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``hpo ARGS`` exits 2 with one line on stderr and no traceback; that line."""
    from hpo import cli

    code = cli.main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]
