"""Model files cannot choose code, and a file that is not one is one line (issue 27).

A scikit-learn model restores only as exactly the study file's estimator class; tree types are
trusted only for tree estimators and every tree is bounds-checked; a user's module is recorded
under a name that does not depend on the checkout's path; random bytes, a file cut short, another
format or a wrong ``--artifacts`` are one line, exit 2, nothing written.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier
from sklearn.tree._tree import Tree

from hpo import cli
from hpo.errors import DataFileError, HpoError
from hpo.families import FAMILIES, _trees
from hpo.families._imports import module_name
from hpo.families.sklearn_api import SklearnFamily, estimator_class
from hpo.model_file import ModelFile, load_model_file, save_model_file
from hpo.pipeline import Pipeline
from hpo.settings import RunConfig

X = np.random.default_rng(0).normal(size=(120, 3)).astype(np.float32)
Y = ((X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)).astype(int)  # three classes
CLASSES = ["a", "b", "c"]

MY_EST = """
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class MyEstimator(ClassifierMixin, BaseEstimator):
    def __init__(self, shift=0.0):
        self.shift = shift

    def fit(self, x, y):
        self.classes_ = np.unique(y)
        self.means_ = np.stack([x[y == c].mean(axis=0) for c in self.classes_])
        return self

    def predict_proba(self, x):
        d = -((x[:, None, :] - self.means_[None]) ** 2).sum(axis=2) + self.shift
        e = np.exp(d - d.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x):
        return self.classes_[self.predict_proba(x).argmax(axis=1)]
"""

NET = """
from torch import nn


def make(n_features, n_outputs, width=8):
    return nn.Sequential(nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, n_outputs))
"""

SKLEARN = SklearnFamily()


def _sk(spec: str) -> RunConfig:
    return RunConfig(family="sklearn", estimator=spec)


def _model_file(family: str, payloads: list[dict[str, Any]], cfg: RunConfig) -> ModelFile:
    return ModelFile(
        family=family,
        payloads=payloads,
        run_config=cfg.to_record(),
        task={"kind": "classification", "class_names": CLASSES},
        scaler_mean=np.zeros(3),
        scaler_scale=np.ones(3),
        feature_names=["f0", "f1", "f2"],
        class_names=CLASSES,
        labeling=None,
        target="y",
        hpo_version="test",
    )


def _restore(model: Any, spec: str, n_features: int = 3) -> Any:
    return SKLEARN.restore(
        SKLEARN.payload(model), _sk(spec), n_features=n_features, n_outputs=3, trusted=[spec]
    )


# --------------------------------------------------------------------------- the study file's class


@pytest.mark.parametrize(
    "study", ["sklearn.linear_model.RidgeClassifier", "sklearn.ensemble.HistGradientBoostingClassifier"]
)
def test_a_model_file_holding_another_estimator_class_is_refused_in_one_line(
    tmp_path: Path, study: str
) -> None:
    """A LogisticRegression (which skops trusts by default) saved where the study file names
    another estimator, the file's own config naming the study file's: refused, naming the file,
    the class found and the class expected."""
    lr = LogisticRegression().fit(X, Y)
    path = tmp_path / "m.pt"
    save_model_file(path, _model_file("sklearn", [SKLEARN.payload(lr)], _sk(study)))
    with pytest.raises(HpoError) as err:
        load_model_file(path).model(trusted=[study])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"{path}: the model cannot be loaded: the saved estimator is a "
        f"sklearn.linear_model._logistic.LogisticRegression, not the study file's estimator {study} ("
    ), msg
    assert _trees.type_name(estimator_class(_sk(study))) in msg


def test_a_subclass_of_the_study_files_estimator_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub.py").write_text(
        "from sklearn.linear_model import LogisticRegression\n\nclass Sub(LogisticRegression):\n    pass\n"
    )
    sub = SKLEARN.estimator(_sk("sub.py:Sub"), 0).fit(X, Y)
    with pytest.raises(
        ValueError, match=r"the saved estimator is a hpo_user_sub_[0-9a-f]{8}\.Sub, not the study"
    ):
        _restore(sub, "sklearn.linear_model.LogisticRegression")


def test_a_saved_estimator_loads_only_with_trusted_types() -> None:
    """skops, not pickle: a function inside the study file's own estimator is refused by name."""
    from sklearn.preprocessing import FunctionTransformer

    bad = FunctionTransformer(func=print).fit(X)  # a builtin function, called at predict time
    with pytest.raises(ValueError, match=r"holds types hpo does not trust: builtins.print"):
        _restore(bad, "sklearn.preprocessing.FunctionTransformer")


# --------------------------------------------------------------------------- tree types


def test_tree_types_are_read_off_skops_for_tree_estimators_only() -> None:
    assert _trees.tree_types(LogisticRegression) == frozenset()
    # with categorical_features (hpo's native encoding) it also holds partial(check_array, ...)
    assert _trees.tree_types(HistGradientBoostingClassifier) == {_trees.PREDICTOR, *_trees.CATEGORICAL_TYPES}
    assert _trees.tree_types(RandomForestClassifier) == {_trees.TREE}
    assert _trees.tree_types(DecisionTreeClassifier) == {_trees.TREE}


@pytest.mark.parametrize(
    "study", ["sklearn.linear_model.LogisticRegression", "sklearn.ensemble.HistGradientBoostingClassifier"]
)
def test_a_tree_type_is_refused_where_the_study_files_estimator_does_not_hold_it(study: str) -> None:
    """A tree smuggled into an estimator that holds none (or holds another kind) is refused."""
    est = estimator_class(_sk(study))().fit(X, Y)
    est.smuggled_ = DecisionTreeClassifier().fit(X, Y).tree_
    with pytest.raises(ValueError, match=r"holds types hpo does not trust: sklearn\.tree\._tree\.Tree"):
        _restore(est, study)


def _tree_with(tree: Tree, **nodes: tuple[int, int]) -> Tree:
    """A copy of ``tree`` with node fields changed (``left_child=(node, value)``), or its
    ``max_depth`` (``max_depth=(0, value)``), built through the Tree's own pickling state."""
    state = tree.__getstate__()
    array = state["nodes"].copy()
    for field, (i, value) in nodes.items():
        if field == "max_depth":
            state["max_depth"] = value
        else:
            array[field][i] = value
    state["nodes"] = array
    copy = Tree(tree.n_features, np.asarray(tree.n_classes), tree.n_outputs)
    copy.__setstate__(state)
    return copy


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"left_child": (0, 10**6)}, r"node 0's left child is 1000000, outside \[-1, \d+\)"),
        ({"right_child": (0, 0)}, r"node 0's right child is 0, outside 1\.\.\d+"),
        ({"left_child": (0, -5)}, r"node 0 has one child|node 0's left child is -5"),
        ({"feature": (0, 7)}, r"node 0 splits on feature 7, outside \[0, 3\)"),
        ({"max_depth": (0, 1)}, r"max_depth 1 is below its depth \d+"),
    ],
)
def test_a_tree_with_a_corrupted_index_is_refused(change: dict[str, tuple[int, int]], problem: str) -> None:
    tree = DecisionTreeClassifier(random_state=0).fit(X, Y)
    assert np.array_equal(_restore(tree, "sklearn.tree.DecisionTreeClassifier").predict(X), tree.predict(X))
    tree.tree_ = _tree_with(tree.tree_, **change)
    with pytest.raises(
        ValueError, match=r"the saved estimator's tree DecisionTreeClassifier\.tree_ is corrupt: " + problem
    ):
        _restore(tree, "sklearn.tree.DecisionTreeClassifier")


def test_a_forest_and_a_gradient_boosting_model_with_one_corrupted_tree_are_refused() -> None:
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, Y)
    assert np.array_equal(
        _restore(forest, "sklearn.ensemble.RandomForestClassifier").predict(X), forest.predict(X)
    )
    forest.estimators_[1].tree_ = _tree_with(forest.estimators_[1].tree_, right_child=(0, 10**6))
    with pytest.raises(ValueError, match=r"tree RandomForestClassifier\.estimators_\[1\]\.tree_ is corrupt"):
        _restore(forest, "sklearn.ensemble.RandomForestClassifier")

    hgb = HistGradientBoostingClassifier(max_iter=5).fit(X, Y)
    spec = "sklearn.ensemble.HistGradientBoostingClassifier"
    assert np.array_equal(_restore(hgb, spec).predict(X), hgb.predict(X))
    with pytest.raises(ValueError, match=r"node \d+ splits on feature 2, outside \[0, 2\)"):
        _restore(hgb, spec, n_features=2)  # rows narrower than the trees' features
    predictor = hgb._predictors[2][1]
    nodes = predictor.nodes.copy()
    inner = int(np.flatnonzero(nodes["is_leaf"] == 0)[0])
    nodes["left"][inner] = len(nodes) + 3
    predictor.nodes = nodes
    with pytest.raises(
        ValueError, match=rf"_predictors\[2\]\[1\] is corrupt: node {inner}'s left child is {len(nodes) + 3}"
    ):
        _restore(hgb, spec)


# --------------------------------------------------------------------------- another checkout


def test_a_model_file_made_in_one_directory_loads_in_a_copy_of_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Your estimator and your module, saved in one checkout, load from a copy of the project
    (study file's module files and model files) in another directory, the first one gone."""
    first = tmp_path / "checkout"
    first.mkdir()
    (first / "my_est.py").write_text(MY_EST)
    (first / "net.py").write_text(NET)
    monkeypatch.chdir(first)
    est_spec, net_spec = "my_est.py:MyEstimator", "net.py:make"
    est = SKLEARN.estimator(_sk(est_spec), 0).fit(X, Y)
    assert type(est).__module__ == module_name("my_est.py") and "checkout" not in type(est).__module__
    save_model_file(first / "est.pt", _model_file("sklearn", [SKLEARN.payload(est)], _sk(est_spec)))
    torch_family = FAMILIES["torch"]
    net_cfg = torch_family.complete(RunConfig(family="torch", module=net_spec, params={"width": 4}))
    net = torch_family.build(net_cfg, n_features=3, n_outputs=3, seed=0).eval()
    save_model_file(first / "net.pt", _model_file("torch", [torch_family.payload(net)], net_cfg))

    copy = Path(shutil.copytree(first, tmp_path / "elsewhere" / "copy"))
    shutil.rmtree(first)
    monkeypatch.chdir(copy)
    back = load_model_file(copy / "est.pt").model(trusted=[est_spec])
    np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))
    assert Path(sys.modules[type(back).__module__].__file__ or "").parent == copy.resolve()
    assert type(back) is estimator_class(_sk(est_spec)) and type(back) is not type(est)
    rows = torch.as_tensor(X)
    torch.testing.assert_close(load_model_file(copy / "net.pt").model(trusted=[net_spec])(rows), net(rows))


def test_a_model_file_of_an_older_hpo_with_the_absolute_path_module_name_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a file's module was named after its absolute path's hash: such a file loads as
    the study file's class of the same name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_est.py").write_text(MY_EST)
    legacy = "hpo_user_" + hashlib.sha256(str((tmp_path / "my_est.py").resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(legacy, tmp_path / "my_est.py")
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    sys.modules[legacy] = old
    try:
        spec.loader.exec_module(old)
        est: Any = old.MyEstimator().fit(X, Y)
        payload = SKLEARN.payload(est)
    finally:
        del sys.modules[legacy]
    cfg = _sk("my_est.py:MyEstimator")
    back = SKLEARN.restore(payload, cfg, n_features=3, n_outputs=3, trusted=["my_est.py:MyEstimator"])
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    assert type(back) is estimator_class(cfg) and legacy not in sys.modules


# --------------------------------------------------------------------------- not a model file


def _good_bytes(tmp_path: Path) -> bytes:
    lr = LogisticRegression().fit(X, Y)
    path = tmp_path / "good.pt"
    save_model_file(
        path, _model_file("sklearn", [SKLEARN.payload(lr)], _sk("sklearn.linear_model.LogisticRegression"))
    )
    return path.read_bytes()


def _with(tmp_path: Path, **changes: Any) -> bytes:
    raw = torch.load(tmp_path / "good.pt", weights_only=True)
    raw.update(changes)
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    return buffer.getvalue()


MALFORMED: dict[str, tuple[Callable[[Path, bytes], bytes], str]] = {
    "random bytes": (
        lambda tmp, good: np.random.default_rng(1).bytes(4000),
        "cannot be read as a model file",
    ),
    "cut short": (lambda tmp, good: good[: len(good) // 2], "cannot be read as a model file"),
    "empty": (lambda tmp, good: b"", "cannot be read as a model file"),
    "a newer format": (
        lambda tmp, good: _with(tmp, format="hpo-model/9"),
        "is a model file of format 'hpo-model/9', which this hpo does not read",
    ),
    "no format": (lambda tmp, good: _with(tmp, format=4), "is not an hpo model file"),
    "payloads of the wrong type": (
        lambda tmp, good: _with(tmp, payloads="x"),
        "is not a valid model file: its 'payloads' is of type str, not list",
    ),
    "scaler of the wrong size": (
        lambda tmp, good: _with(tmp, scaler_mean=torch.zeros(5, dtype=torch.float64)),
        "its 'scaler_mean' is not 3 numbers, one per feature",
    ),
    "unknown task": (
        lambda tmp, good: _with(tmp, task={"kind": "ranking"}),
        "its 'task' is not a task hpo reads",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_model_file_is_one_line_naming_it(tmp_path: Path, case: str) -> None:
    make, problem = MALFORMED[case]
    path = tmp_path / "m.pt"
    path.write_bytes(make(tmp_path, _good_bytes(tmp_path)))
    with pytest.raises(DataFileError) as err:
        load_model_file(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and problem in msg, msg


def test_a_model_whose_weights_do_not_fit_is_one_line(tmp_path: Path) -> None:
    """An MLP's state_dict of other keys (restore raises RuntimeError in torch) is one line."""
    config = {"hidden": [8], "activation": "relu", "norm": "none", "init": "default", "dropout": 0.0}
    payload = {
        "state_dict": {"x": torch.zeros(2)},
        "model_config": {**config, "n_features": 3, "n_outputs": 3},
    }
    path = tmp_path / "m.pt"
    save_model_file(path, _model_file("mlp", [payload], RunConfig(hidden=(8,))))
    with pytest.raises(HpoError, match=r"m\.pt: the model cannot be loaded \(RuntimeError: ") as err:
        load_model_file(path).model()
    assert "\n" not in str(err.value)


STUDY = """
[pipeline]
name = "mf"

[data]
source = "synthetic"
rows = 1000
seed = 42

[defaults]
family = "sklearn"
estimator = "sklearn.linear_model.LogisticRegression"

[stages.final]
kind = "final"
"""


def _cli(tmp_path: Path, *args: str) -> int:
    study = tmp_path / "mf.toml"
    study.write_text(STUDY)
    return cli.main(
        [
            *args,
            "--config",
            str(study),
            "--storage",
            f"sqlite:///{tmp_path / 'hpo.db'}",
            "--data-dir",
            str(tmp_path / "data"),
        ]
    )


@pytest.mark.parametrize("command", ["predict", "export-model"])
def test_a_malformed_model_in_the_artifact_store_is_one_line_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    store = tmp_path / "artifacts"
    store.mkdir()
    FileSystemArtifactStore(str(store)).write("abc", io.BytesIO(b"not a model file at all"))
    monkeypatch.setattr(Pipeline, "final_model_artifact", lambda self: "abc")
    out = tmp_path / "out" / "model.pt"
    extra = (
        ["--input", str(tmp_path / "rows.csv"), "--output", str(out)]
        if command == "predict"
        else ["--out", str(out)]
    )
    assert _cli(tmp_path, command, *extra, "--artifacts", str(store)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(
        f"hpo: error: the final model (artifact abc) in {store}: cannot be read as a model file "
        "(UnpicklingError); train it again: hpo run-stage final --force"
    ), err
    assert not out.parent.exists()
    (store / "abc").unlink()  # another --artifacts: the store does not hold the model
    assert _cli(tmp_path, command, *extra, "--artifacts", str(store)) == 2
    err = capsys.readouterr().err
    assert err == (
        f"hpo: error: the final model (artifact abc) is not in the artifact store {store}; pass the "
        "--artifacts directory (or $HPO_ARTIFACTS) the pipeline ran with\n"
    )


def test_a_wrong_artifacts_directory_is_one_line_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for artifacts, problem in [
        (afile, f"--artifacts {afile}: is not a directory; pass a directory for the model files"),
        (afile / "sub", f"--artifacts {afile / 'sub'}: {afile} is not a directory; pass a directory"),
    ]:
        assert _cli(tmp_path, "status", "--artifacts", str(artifacts)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"hpo: error: {problem}"), err
    store = tmp_path / "readonly"
    store.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != store and real(p, mode))
    for artifacts, problem in [
        (store, f"--artifacts {store}: is not writable; pass a directory you can write to"),
        (store / "a" / "b", f"--artifacts {store / 'a' / 'b'}: cannot be made ({store} is not writable)"),
    ]:
        assert _cli(tmp_path, "run", "--artifacts", str(artifacts)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"hpo: error: {problem}"), err
    assert not (tmp_path / "hpo.db").exists() and not (tmp_path / "data").exists()
    assert not (store / "a").exists()


def test_an_output_path_that_cannot_be_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``export-model --out`` and ``predict --output`` under a file or onto a directory."""
    store = tmp_path / "artifacts"
    store.mkdir()
    FileSystemArtifactStore(str(store)).write("abc", io.BytesIO(_good_bytes(tmp_path)))
    monkeypatch.setattr(Pipeline, "final_model_artifact", lambda self: "abc")
    rows = tmp_path / "rows.csv"
    rows.write_text("f0,f1,f2\n0.1,0.2,0.3\n")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for command, flag, out, problem in [
        (
            "export-model",
            "--out",
            afile / "m.pt",
            f"--out {afile / 'm.pt'}: cannot be written (File exists: {afile})",
        ),
        ("export-model", "--out", tmp_path, f"--out {tmp_path}: cannot be written (Is a directory: "),
        (
            "predict",
            "--output",
            afile / "o.csv",
            f"{afile / 'o.csv'}: cannot be written (File exists: {afile})",
        ),
    ]:
        extra = ["--input", str(rows)] if command == "predict" else []
        assert _cli(tmp_path, command, *extra, flag, str(out), "--artifacts", str(store)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"hpo: error: {problem}"), err
    assert _cli(tmp_path, "predict", "--input", str(rows), "--artifacts", str(store), "--format", "json") == 0
    assert '"rows": 1' in capsys.readouterr().out
