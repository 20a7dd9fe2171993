"""``hpo export-model --format onnx``: one graph from raw feature rows (the scaler inside) to class
probabilities or values, run by onnxruntime in a fresh process and compared with ``hpo predict``
on the same rows: an MLP classifier with batchnorm, an MLP regressor, a user's torch module, and
scikit-learn estimators through skl2onnx (one that cannot convert: one line) and
HistGradientBoosting through hpo.onnx_trees."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import require_module


@pytest.fixture(autouse=True)
def _onnx_installed() -> None:
    """The [onnx] extra (in [dev]): each test skips without it, or fails where .ci/run sets
    HPO_REQUIRE_ONNX=1."""
    for name in ("onnxruntime", "onnxscript", "skl2onnx"):
        require_module(name, "HPO_REQUIRE_ONNX")


REPO = Path(__file__).resolve().parents[1]
LOGREG = (
    'family = "sklearn"\nestimator = "sklearn.linear_model.LogisticRegression"\nparams = { max_iter = 300 }'
)
FOREST = (
    'family = "sklearn"\nestimator = "sklearn.ensemble.RandomForestClassifier"\n'
    "params = { n_estimators = 10 }"
)

RUN_ONNX = """
import json, sys
import numpy as np, onnxruntime as ort, pandas as pd
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
rows = pd.read_csv(sys.argv[2]).drop(columns=[sys.argv[3]]).to_numpy(np.float32)
(out,) = session.run(None, {session.get_inputs()[0].name: rows})
np.save(sys.argv[4], out)
print(json.dumps({"input": session.get_inputs()[0].shape, "output": session.get_outputs()[0].name}))
"""


def _hpo(*args: str, cwd: Path) -> int:
    """``hpo -q ARGS`` in this process (the runs are what is tested, not the start-up), in ``cwd``."""
    import os

    from hpo import cli

    here, root = Path.cwd(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    os.chdir(cwd)
    try:
        return cli.main(["-q", *args])
    finally:
        os.chdir(here)
        root.handlers[:], root.level = handlers, level  # the CLI's handler writes to this test's stderr


def _study(tmp_path: Path, name: str, data: str, defaults: str, final: str = "") -> Path:
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(
        f'[pipeline]\nname = "{name}"\n\n[data]\n{data}\nseed = 42\n\n[defaults]\n{defaults}\n\n'
        f'[stages.final]\nkind = "final"\nepochs = 3\n{final}\n'
    )
    return cfg


def _digits(tmp_path: Path) -> str:
    from sklearn.datasets import load_digits

    load_digits(as_frame=True).frame.to_csv(tmp_path / "digits.csv", index=False)
    return 'source = "csv"\npath = "digits.csv"\ntarget = "target"'


def _diabetes(tmp_path: Path) -> str:
    from sklearn.datasets import load_diabetes

    load_diabetes(as_frame=True).frame.to_csv(tmp_path / "diabetes.csv", index=False)
    return 'source = "csv"\npath = "diabetes.csv"\ntarget = "target"\ntask = "regression"'


def _exported_agrees(tmp_path: Path, cfg: Path, table: str) -> tuple[float, dict[str, object]]:
    """Run the study, export its model to ONNX, and return the largest absolute difference between
    onnxruntime's outputs (a fresh process) and ``hpo predict``'s on every row of ``table``."""
    diff, info = _differences(tmp_path, cfg, table)
    return float(diff.max()), info


def _differences(tmp_path: Path, cfg: Path, table: str) -> tuple[np.ndarray, dict[str, object]]:
    assert _hpo("run", "--config", str(cfg), cwd=tmp_path) == 0
    graph = tmp_path / f"{cfg.stem}.onnx"
    assert (
        _hpo("export-model", "--config", str(cfg), "--format", "onnx", "--out", str(graph), cwd=tmp_path) == 0
    )
    pred = tmp_path / f"{cfg.stem}-pred.csv"
    assert _hpo("predict", "--config", str(cfg), "--input", table, "--output", str(pred), cwd=tmp_path) == 0
    out = tmp_path / f"{cfg.stem}-onnx.npy"
    run = [sys.executable, "-c", RUN_ONNX, str(graph), str(tmp_path / table), "target", str(out)]
    fresh = subprocess.run(run, capture_output=True, text=True, check=True)
    info: dict[str, object] = json.loads(fresh.stdout)
    got: np.ndarray = np.load(out)
    want = pd.read_csv(pred)
    expected: np.ndarray
    if info["output"] == "probabilities":
        expected = want[[c for c in want.columns if c.startswith("p_")]].to_numpy()
        top2 = np.sort(expected, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-5  # not a tie at hpo predict's 6 decimals
        info["same_class"] = float((got.argmax(1) == expected.argmax(1))[clear].mean())
    else:
        expected = want["prediction"].to_numpy()
    assert got.shape == expected.shape, (got.shape, expected.shape)
    diff: np.ndarray = np.abs(got - expected).reshape(len(got), -1).max(axis=1)
    return diff, info


ENSEMBLE = "seeds = 3\nensemble = true"
MLP = 'hidden = [32, 32]\nnorm = "batchnorm"\ndropout = 0.1'
SGD = (
    'family = "sklearn"\nestimator = "sklearn.linear_model.SGDClassifier"\n'
    'params = { loss = "log_loss", max_iter = 50 }'
)

HGB = (  # written by hpo.onnx_trees, not skl2onnx
    'family = "sklearn"\nestimator = "sklearn.ensemble.HistGradientBoosting{kind}"\n'
    "params = {{ max_iter = 20, early_stopping = false }}"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("data", "defaults", "final"),
    [
        (_digits, MLP, ""),
        (_diabetes, "hidden = [16]\nbatch_size = 32", ""),
        (_digits, f'family = "torch"\nmodule = "{REPO / "examples" / "residual_mlp.py"}:make"', ""),
        (_digits, LOGREG, ""),
        (_diabetes, 'family = "sklearn"\nestimator = "sklearn.linear_model.Ridge"', ""),
        (_digits, MLP, ENSEMBLE),
        (_diabetes, "hidden = [16]\nbatch_size = 32", ENSEMBLE),
        (_digits, SGD, ENSEMBLE),
        (_diabetes, 'family = "sklearn"\nestimator = "sklearn.linear_model.SGDRegressor"', ENSEMBLE),
        (_digits, HGB.format(kind="Classifier"), ENSEMBLE),
        (_diabetes, HGB.format(kind="Regressor"), ""),
    ],
    ids=[
        "mlp-classifier",
        "mlp-regressor",
        "torch-module",
        "logistic-regression",
        "ridge",
        "mlp-classifier-ensemble",
        "mlp-regressor-ensemble",
        "sgd-classifier-ensemble",
        "sgd-regressor-ensemble",
        "hist-gradient-boosting-classifier-ensemble",
        "hist-gradient-boosting-regressor",
    ],
)
def test_the_onnx_graph_agrees_with_hpo_predict(
    tmp_path: Path, data: object, defaults: str, final: str
) -> None:
    table = data(tmp_path)  # type: ignore[operator]
    cfg = _study(tmp_path, "onnx", table, defaults, final)
    largest, info = _exported_agrees(tmp_path, cfg, "digits.csv" if "digits" in table else "diabetes.csv")
    # hpo predict writes 6 decimals; fp32 graphs agree far closer than the tolerance asked (1e-4)
    assert largest <= 1e-4, f"largest absolute difference {largest:.2e} ({info})"
    assert info.get("same_class", 1.0) == 1.0  # the predicted classes
    shape = info["input"]
    assert isinstance(shape, list) and isinstance(shape[0], str)  # N is dynamic: a named dimension
    assert shape[1] == (64 if "digits" in table else 10)


def test_an_estimator_skl2onnx_cannot_convert_gets_one_line(tmp_path: Path) -> None:
    from sklearn.base import BaseEstimator, ClassifierMixin

    from hpo import onnx_export
    from hpo.errors import ConfigError
    from hpo.model_file import ModelFile

    class Custom(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
        classes_ = np.arange(3)

    model_file = ModelFile(
        family="sklearn",
        payloads=[{}],
        run_config={},
        task={"kind": "classification", "class_names": ["a", "b", "c"]},
        scaler_mean=np.zeros(4),
        scaler_scale=np.ones(4),
        feature_names=["w", "x", "y", "z"],
        class_names=["a", "b", "c"],
        labeling=None,
        target="t",
        hpo_version="test",
    )
    with pytest.raises(ConfigError, match=r"^this Custom cannot be exported to ONNX by skl2onnx \(.+\)$"):
        onnx_export._sklearn_graph(Custom(), model_file, 4, "probabilities", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_a_forest_exports_with_its_splits_in_float32(tmp_path: Path) -> None:
    """skl2onnx stores a tree's thresholds as float32 (ONNX's TreeEnsemble), where scikit-learn
    compares float32 features with float64 thresholds: rows at a threshold's rounding take the
    other branch. Measured on digits, a 10-tree forest: 67 of 1,797 rows differed from hpo
    predict, by at most 0.2 (two votes); the README says so. This keeps that bounded."""
    cfg = _study(tmp_path, "forest", _digits(tmp_path), FOREST)
    diff, info = _differences(tmp_path, cfg, "digits.csv")
    assert info["output"] == "probabilities"
    assert (diff > 1e-4).mean() < 0.06 and diff.max() <= 0.31, (int((diff > 1e-4).sum()), float(diff.max()))
