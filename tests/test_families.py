"""Your own model and task: the torch and sklearn families, regression, and the one-line errors
for everything a study file can get wrong about them (exit 2, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from optuna.distributions import FloatDistribution, IntDistribution
from sklearn.datasets import load_diabetes, load_digits

from hpo import cli, plan
from hpo.errors import ConfigError, HpoError
from hpo.families import FAMILIES
from hpo.families.sklearn_api import SklearnFamily
from hpo.model_file import ModelFile, load_model_file, save_model_file
from hpo.pipeline import Pipeline
from hpo.settings import RunConfig
from hpo.stages.search import Search
from hpo.tuning import records

REPO = Path(__file__).resolve().parents[1]

NET = """
import torch
from torch import nn


def make(n_features, n_outputs, width=16, depth=1):
    layers = [nn.Linear(n_features, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, n_outputs))


def not_a_module(n_features, n_outputs, width=16):
    return [width]


def too_narrow(n_features, n_outputs, width=16):
    return nn.Linear(n_features, n_outputs + 1)


notcallable = 3
"""

HEAD = """
[pipeline]
name = "fam"

[data]
"""
SYNTHETIC = 'source = "synthetic"\nrows = 3000\nseed = 42\n'


def _study(tmp_path: Path, text: str, name: str = "fam.toml") -> Path:
    (tmp_path / "net.py").write_text(NET)
    path = tmp_path / name
    path.write_text(text)
    return path


def _run(tmp_path: Path, path: Path, *args: str) -> int:
    return cli.main(
        [
            "-q",
            *args,
            "--config",
            str(path),
            "--storage",
            f"sqlite:///{tmp_path / 'hpo.db'}",
            "--artifacts",
            str(tmp_path / "artifacts"),
        ]
    )


SWEEP = """
[stages.s]
kind = "sweep"
choices = CHOICES
epochs = 1

[stages.final]
kind = "final"
epochs = 1
"""

BAD = {
    "unknown family": (
        '[defaults]\nfamily = "xgb"\n' + SWEEP.replace("CHOICES", "{ lr = [1e-3] }"),
        "defaults.family = 'xgb': must be 'mlp', 'torch' or 'sklearn'",
    ),
    "module file missing": (
        '[defaults]\nfamily = "torch"\nmodule = "nope.py:make"\n'
        + SWEEP.replace("CHOICES", "{ lr = [1e-3] }"),
        "defaults.module = 'nope.py:make': nope.py: no such file "
        "(relative paths start at the working directory",
    ),
    "module has no such name": (
        '[defaults]\nfamily = "torch"\nmodule = "net.py:build"\n'
        + SWEEP.replace("CHOICES", "{ lr = [1e-3] }"),
        "net.py has no 'build'; it defines: make, not_a_module, too_narrow",
    ),
    "module not callable": (
        '[defaults]\nfamily = "torch"\nmodule = "net.py:notcallable"\n'
        + SWEEP.replace("CHOICES", "{ lr = [1e-3] }"),
        "net.py:notcallable is a int, not callable; name a function or class",
    ),
    "package not installed": (
        '[defaults]\nfamily = "torch"\nmodule = "no_such_pkg.nets:make"\n'
        + SWEEP.replace("CHOICES", "{ lr = [1e-3] }"),
        "module 'no_such_pkg.nets' cannot be imported (no module named 'no_such_pkg'); install it",
    ),
    "estimator missing": (
        '[defaults]\nfamily = "sklearn"\nestimator = "sklearn.ensemble.NoSuchForest"\n'
        + SWEEP.replace("CHOICES", "{ max_iter = [10] }"),
        "defaults.estimator = 'sklearn.ensemble.NoSuchForest': sklearn.ensemble has no 'NoSuchForest'",
    ),
    "estimator not an estimator": (
        '[defaults]\nfamily = "sklearn"\nestimator = "math.sqrt"\n'
        + SWEEP.replace("CHOICES", "{ x = [10] }"),
        "math.sqrt is not a scikit-learn estimator class (it needs fit, get_params and set_params)",
    ),
    "regressor for a classification task": (
        '[defaults]\nfamily = "sklearn"\nestimator = "sklearn.linear_model.Ridge"\n'
        + SWEEP.replace("CHOICES", "{ alpha = [1.0] }"),
        'sklearn.linear_model.Ridge is not a classifier and task = "classification"',
    ),
    "torch setting the factory lacks": (
        '[defaults]\nfamily = "torch"\nmodule = "net.py:make"\n'
        + SWEEP.replace("CHOICES", "{ depthh = [1, 2] }"),
        'stages.s.choices.depthh: is not a setting of family "torch" (net.py:make); its settings are: '
        "optimizer, lr, weight_decay, batch_size, label_smoothing, class_weight, depth, width",
    ),
    "mlp setting under family torch": (
        '[defaults]\nfamily = "torch"\nmodule = "net.py:make"\nhidden = [8]\n'
        + SWEEP.replace("CHOICES", "{ lr = [1e-3] }"),
        'defaults.hidden: is not a setting of family "torch" (net.py:make); its settings are: optimizer',
    ),
    "estimator parameter unknown": (
        '[defaults]\nfamily = "sklearn"\nestimator = "sklearn.ensemble.HistGradientBoostingClassifier"\n'
        "params = { max_iterations = 10 }\n" + SWEEP.replace("CHOICES", "{ max_iter = [10] }"),
        "defaults.params.max_iterations = 10: not a parameter of "
        "sklearn.ensemble.HistGradientBoostingClassifier; its parameters are: "
        "categorical_features, class_weight",
    ),
    "estimator value refused by scikit-learn": (
        '[defaults]\nfamily = "sklearn"\nestimator = "sklearn.ensemble.HistGradientBoostingClassifier"\n'
        + SWEEP.replace("CHOICES", "{ max_iter = [10, -5] }"),
        "stages.s.choices.max_iter[1] = -5: sklearn.ensemble.HistGradientBoostingClassifier: "
        "The 'max_iter' parameter of HistGradientBoostingClassifier must be an int in the range [1, inf)",
    ),
    "kind not serving the family": (
        '[defaults]\nfamily = "sklearn"\nestimator = "sklearn.ensemble.HistGradientBoostingClassifier"\n'
        '[stages.lr_range]\nkind = "lr_range"\n[stages.final]\nkind = "final"\n',
        'stages.lr_range.kind = "lr_range": does not serve family "sklearn" '
        "(sklearn.ensemble.HistGradientBoostingClassifier) (it trains torch modules); "
        "kinds for this family: grid, grid_cv, sweep, search, final",
    ),
    "regression with bins": (
        'task = "regression"\nsource = "csv"\npath = "t.csv"\ntarget = "y"\nbins = [0, 1, 2]\n'
        + SWEEP.replace("CHOICES", "{ lr = [1e-3] }"),
        'data.bins makes classes; task = "regression" predicts the target as a number',
    ),
    "classification metric for regression": (
        SYNTHETIC
        + 'task = "regression"\n'
        + SWEEP.replace("CHOICES", "{ lr = [1e-3] }")
        + '\n[stages.s2]\nkind = "sweep"\nchoices = { lr = [1e-3] }\nmetric = "accuracy"\n',
        'stages.s2.metric = "accuracy": not a metric of task = "regression"; '
        "its metrics are: loss, rmse, mae, r2",
    ),
    "regression metric for classification": (
        SWEEP.replace("CHOICES", "{ lr = [1e-3] }").replace(
            "epochs = 1\n", 'epochs = 1\nmetric = "rmse"\n', 1
        ),
        'stages.s.metric = "rmse": not a metric of task = "classification"; its metrics are: accuracy, '
        "balanced_accuracy, macro_f1, loss",
    ),
    "label smoothing for regression": (
        SYNTHETIC
        + 'task = "regression"\n[defaults]\nlabel_smoothing = 0.1\n'
        + SWEEP.replace("CHOICES", "{ lr = [1e-3] }"),
        'defaults.label_smoothing = 0.1: applies to task = "classification"; remove it',
    ),
}


def _text(body: str) -> str:
    """The study file: a case's body continues the [data] table (synthetic rows unless it says)."""
    return HEAD + (body if body.startswith(("source", "task")) else SYNTHETIC + body)


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_family_and_task_settings_are_one_line_exit_2_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    body, needle = BAD[case]
    monkeypatch.chdir(tmp_path)
    path = _study(tmp_path, _text(body))
    assert _run(tmp_path, path, "run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"hpo: error: {path}: ") and "Traceback" not in err
    assert needle in err, err
    assert not (tmp_path / "hpo.db").exists()  # found before the storage was opened
    assert not (tmp_path / "hpo-data").exists() or not any((tmp_path / "hpo-data").rglob("meta.json"))


@pytest.mark.parametrize(
    ("factory", "needle"),
    [
        ("not_a_module", "net.py:not_a_module returned a list, not a torch.nn.Module; return the module"),
        ("too_narrow", "maps a batch of shape [2, 90] to (2, 11); it must return [2, 10] (n_outputs = 10)"),
    ],
)
def test_a_factory_that_does_not_return_a_fitting_module_stops_before_any_study(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    factory: str,
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    body = f'[defaults]\nfamily = "torch"\nmodule = "net.py:{factory}"\n' + SWEEP.replace(
        "CHOICES", "{ width = [4, 8] }"
    )
    path = _study(tmp_path, HEAD + SYNTHETIC + body)
    assert _run(tmp_path, path, "run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"hpo: error: {path}: defaults.module = 'net.py:{factory}': " in err
    assert needle in err, err
    assert optuna.get_all_study_names(storage=f"sqlite:///{tmp_path / 'hpo.db'}") == []


def test_a_non_numeric_target_for_regression_is_one_line_and_prepares_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    r = np.random.default_rng(0)
    frame = pd.DataFrame(r.normal(size=(1200, 3)), columns=["a", "b", "c"])
    frame["y"] = np.where(r.random(1200) > 0.5, "high", "low")
    frame.to_csv(tmp_path / "t.csv", index=False)
    body = 'task = "regression"\nsource = "csv"\npath = "t.csv"\ntarget = "y"\n' + SWEEP.replace(
        "CHOICES", "{ lr = [1e-3] }"
    )
    path = _study(tmp_path, _text(body))
    assert _run(tmp_path, path, "run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("hpo: error: t.csv: target column 'y' is not numeric (e.g. '")
    assert (
        'task = "regression" predicts a number; use a numeric target column, or task = "classification"'
        in err
    )
    assert optuna.get_all_study_names(storage=f"sqlite:///{tmp_path / 'hpo.db'}") == []
    assert not any((tmp_path / "hpo-data").rglob("meta.json"))


# --------------------------------------------------------------------------- your own torch module


def _synth_rows(tmp_path: Path, rows: int = 40) -> Path:
    out = tmp_path / "rows.txt"
    assert cli.main(["-q", "data", "synth", "--out", str(out), "--rows", str(rows), "--seed", "3"]) == 0
    return out


TORCH_TRAINING = """
[pipeline]
name = "torch_training"

[data]
source = "synthetic"
rows = 2000
seed = 42

[defaults]
family = "torch"
module = "examples/residual_mlp.py:make"
params = { width = 16, blocks = 1 }
optimizer = "adamw"

[stages.weight_decay]
kind = "sweep"
choices = { weight_decay = [1e-5, 1e-3] }
epochs = 1

[stages.lr]
kind = "search"
n_trials = 3
batch = 3
epochs = 1
space = { lr = { low = 1e-4, high = 1e-2, log = true }, width = { choices = [16, 32] } }

[stages.final]
kind = "final"
epochs = 1
"""


@pytest.mark.slow
def test_your_torch_module_tunes_hpos_training_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hpo's training settings are tunable by plain name under family "torch" (a sweep of
    weight_decay, a search of lr beside a factory argument), and each trial trains with them."""
    monkeypatch.chdir(REPO)
    cfg = tmp_path / "torch_training.toml"
    cfg.write_text(TORCH_TRAINING)
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    Pipeline.load(cfg, storage=db, artifacts=tmp_path / "a").run()
    sweep = optuna.load_study(study_name="torch_training.weight_decay", storage=db)
    assert sorted(t.user_attrs[records.CONFIG]["weight_decay"] for t in sweep.trials) == [1e-5, 1e-3]
    search = optuna.load_study(study_name="torch_training.lr", storage=db)
    lrs = [t.user_attrs[records.CONFIG]["lr"] for t in search.trials]
    assert len(set(lrs)) == 3 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    assert {t.params["lr"] for t in search.trials} == set(lrs)
    final = optuna.load_study(study_name="torch_training.final", storage=db)
    chosen = records.read_selection(search.user_attrs)
    assert chosen is not None and final.trials[0].user_attrs[records.CONFIG]["lr"] == chosen.config_out.lr


@pytest.mark.slow
def test_your_torch_module_runs_lr_range_a_sweep_of_its_argument_and_final(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped example (a factory in a file outside the package): the LR range test on the
    module, a sweep over the factory's ``width``, the final model; predicted from a fresh process."""
    monkeypatch.chdir(REPO)
    changes = [
        "data.rows=3000", "stages.lr_range.verify_epochs=1", "stages.lr_range.skip_start=2",
        "stages.lr_range.skip_end=1", "stages.width.epochs=1", "stages.blocks.epochs=1",
        "stages.final.epochs=2",
    ]  # fmt: skip
    overrides = [arg for change in changes for arg in ("--set", change)]
    config = str(REPO / "examples" / "residual_mlp.toml")
    common = [*overrides, "--config", config, "--storage", f"sqlite:///{tmp_path / 'hpo.db'}"]
    common += ["--artifacts", str(tmp_path / "artifacts")]
    assert cli.main(["-q", "run", *common]) == 0
    capsys.readouterr()
    assert cli.main(["status", "--format", "json", *common]) == 0
    status = json.loads(capsys.readouterr().out)
    by_stage = {s["stage"]: s for s in status["stages"]}
    assert all(s["state"] == "complete" for s in status["stages"])
    assert by_stage["width"]["selection"]["selected"]["width"] in (32, 64, 128)
    config_out = by_stage["final"]["selection"]["config_out"]
    assert config_out["family"] == "torch" and config_out["module"] == "examples/residual_mlp.py:make"
    assert config_out["params"]["width"] == by_stage["width"]["selection"]["selected"]["width"]
    assert "hidden" not in config_out  # the MLP's settings are not this family's
    assert config_out["params"]["expansion"] == 2.0  # the factory's defaults, written out
    lr_trial = optuna.load_study(
        study_name="residual_mlp.lr_range", storage=f"sqlite:///{tmp_path / 'hpo.db'}"
    )
    assert len(lr_trial.trials[0].user_attrs[records.CURVE]["lr"]) > 3
    assert 0.4 < status["test_metrics"]["accuracy"] <= 1.0
    rows = _synth_rows(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "hpo", "predict", "--format", "json", "--input", str(rows), *common],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["rows"] == 40 and result["task"] == "classification" and result["accuracy"] is not None
    assert set(result["predictions"][0]) == {"class", *(f"p_{c}" for c in result["class_names"])}


# --------------------------------------------------------------------------- scikit-learn estimators


def _digits_csv(tmp_path: Path) -> Path:
    path = tmp_path / "digits.csv"
    load_digits(as_frame=True).frame.to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_a_scikit_learn_estimator_runs_grid_cv_search_final_and_compares_with_the_mlp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    csv = _digits_csv(tmp_path)
    storage = ["--storage", f"sqlite:///{tmp_path / 'hpo.db'}", "--artifacts", str(tmp_path / "artifacts")]
    hgb = [
        "--config", str(REPO / "studies" / "digits_hgb.toml"),
        "--set", "defaults.params.max_iter=15", "--set", "stages.learning_rate.folds=2",
        "--set", "stages.search.n_trials=3", "--set", "stages.search.batch=3",
    ]  # fmt: skip
    smaller = [
        "stages.weight_decay.folds=2", "stages.weight_decay.epochs=2", "stages.dropout.epochs=2",
        "stages.activation.epochs=2", "stages.final.epochs=3", "stages.lr_range.verify_epochs=2",
    ]  # fmt: skip
    mlp = ["--config", str(REPO / "studies" / "digits.toml"), *(a for c in smaller for a in ("--set", c))]
    assert cli.main(["-q", "run", *hgb, *storage]) == 0
    assert cli.main(["-q", "run", *mlp, *storage]) == 0
    capsys.readouterr()
    assert cli.main(["status", "--format", "json", *hgb, *storage]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [s["state"] for s in status["stages"]] == ["complete"] * 3
    grid = status["stages"][0]["selection"]
    assert (
        grid["selected"]["learning_rate"] in (0.03, 0.1, 0.3)
        and "corrected resampled t-test" in (grid["evidence"]["method"])
    )
    final = status["stages"][-1]["selection"]["config_out"]
    assert final["estimator"] == "sklearn.ensemble.HistGradientBoostingClassifier"
    assert set(final["params"]) >= {"max_iter", "learning_rate", "max_leaf_nodes", "l2_regularization"}
    assert status["test_metrics"]["accuracy"] > 0.85
    out = tmp_path / "cmp.html"
    assert cli.main(["-q", "report", "--out", str(out), *hgb, "--compare", mlp[1], *storage]) == 0
    capsys.readouterr()
    page = out.read_text()
    assert "sklearn (sklearn.ensemble.HistGradientBoostingClassifier)" in page and "digits_hgb" in page
    assert "comparison-recall" in page  # per-class recall of both classifiers
    rows = tmp_path / "rows.csv"
    pd.read_csv(csv).head(30).to_csv(rows, index=False)
    assert cli.main(["predict", "--format", "json", "--input", str(rows), *hgb, *storage]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted["rows"] == 30 and predicted["accuracy"] > 0.8


def test_a_saved_estimator_loads_only_with_trusted_types(tmp_path: Path) -> None:
    """skops, not pickle: only the study file's estimator class and the inner types of known
    estimators are accepted, by exact name; a function, or a file naming another estimator than
    the study file's, is refused (more in tests/test_model_files.py)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.preprocessing import FunctionTransformer

    family = SklearnFamily()
    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    est = HistGradientBoostingClassifier(max_iter=3).fit(x, (x[:, 0] > 0).astype(int))
    spec = "sklearn.ensemble.HistGradientBoostingClassifier"
    cfg = RunConfig(family="sklearn", estimator=spec)
    back = family.restore(family.payload(est), cfg, n_features=3, n_outputs=2, trusted=[spec])
    assert np.array_equal(back.predict(x), est.predict(x))
    bad = FunctionTransformer(func=print).fit(x)  # a builtin function, called at predict time
    transformer = "sklearn.preprocessing.FunctionTransformer"
    with pytest.raises(ValueError, match=r"holds types hpo does not trust: builtins.print"):
        family.restore(
            family.payload(bad),
            RunConfig(family="sklearn", estimator=transformer),
            n_features=3,
            n_outputs=2,
            trusted=[transformer],
        )
    with pytest.raises(
        ValueError, match=r"names estimator '.*HistGradientBoostingClassifier', which the study"
    ):
        family.restore(
            family.payload(est), cfg, n_features=3, n_outputs=2, trusted=["sklearn.linear_model.Ridge"]
        )


def test_a_saved_module_is_rebuilt_only_with_the_study_files_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model file does not choose what code runs: a torch model is rebuilt only with the
    factory the study file names; weights that no longer fit the factory are one line."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET)
    family = FAMILIES["torch"]
    cfg = family.complete(RunConfig(family="torch", module="net.py:make", params={"width": 4}))
    assert cfg.params == {"width": 4, "depth": 1}  # the factory's defaults written out
    model = family.build(cfg, n_features=3, n_outputs=2, seed=0)
    payload = family.payload(model)
    back = family.restore(payload, cfg, n_features=3, n_outputs=2, trusted=["net.py:make"])
    x = torch.randn(5, 3)
    torch.testing.assert_close(back(x), model.eval()(x))
    with pytest.raises(ValueError, match=r"names module 'net\.py:make', which the study file does not"):
        family.restore(payload, cfg, n_features=3, n_outputs=2, trusted=[])
    wider = cfg.with_point({"width": 8})
    with pytest.raises(ValueError, match=r"the saved weights do not fit the module net\.py:make builds now"):
        family.restore(payload, wider, n_features=3, n_outputs=2, trusted=["net.py:make"])


# --------------------------------------------------------------------------- regression


REGRESSION = """
[pipeline]
name = "year"

[data]
source = "synthetic"
task = "regression"
rows = 3000
seed = 42

[defaults]
hidden = [32, 32]
precision = "fp32"

[stages.baseline]
architectures = [[16, 16], [32, 32]]
max_batches = 6
eval_every = 3

[stages.lr_range]
verify_epochs = 1
skip_start = 2
skip_end = 1

[stages.weight_decay]
kind = "grid_cv"
grid = { weight_decay = [0.0, 1e-3] }
folds = 2
epochs = 1

[stages.norm]
kind = "sweep"
choices = { norm = ["none", "batchnorm"] }
epochs = 2
metric = "mae"

[stages.final]
epochs = 3
patience = 2
"""


@pytest.mark.slow
def test_year_regression_runs_every_kind_and_reports_in_years(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "year.toml"
    path.write_text(REGRESSION)
    storage = ["--storage", f"sqlite:///{tmp_path / 'hpo.db'}", "--artifacts", str(tmp_path / "a")]
    assert cli.main(["-q", "run", "--config", str(path), *storage]) == 0
    capsys.readouterr()
    assert cli.main(["status", "--format", "json", "--config", str(path), *storage]) == 0
    status = json.loads(capsys.readouterr().out)
    m = status["test_metrics"]
    assert m["task"] == "regression" and {"rmse", "mae", "r2", "loss"} <= set(m)
    # in years: the synthetic years spread about 11 years around their mean; the model beats the mean
    assert 3.0 < m["rmse"] < m["constant_rmse"] < 20.0 and 0.0 < m["r2"] < 1.0
    stages = {s["stage"]: s["selection"] for s in status["stages"]}
    assert stages["weight_decay"]["evidence"]["metric"] == "rmse"  # the task's default metric
    assert stages["norm"]["evidence"]["method"].startswith("paired bootstrap over 450 validation rows")
    assert "verification_val_rmse" in stages["lr_range"]["selected"]
    assert cli.main(["status", "--config", str(path), *storage]) == 0
    assert "final test: RMSE" in capsys.readouterr().out
    report = tmp_path / "r.html"
    assert cli.main(["-q", "report", "--out", str(report), "--config", str(path), *storage]) == 0
    capsys.readouterr()
    page = report.read_text()
    assert "final-predicted-vs-true" in page and "final-residuals" in page and "data-target" in page
    rows = _synth_rows(tmp_path, rows=25)
    capsys.readouterr()
    assert (
        cli.main(["predict", "--format", "json", "--input", str(rows), "--config", str(path), *storage]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    values = [r["prediction"] for r in out["predictions"]]
    assert out["task"] == "regression" and len(values) == 25 and all(1920 < v < 2015 for v in values)
    assert set(out["metrics"]) == {"rmse", "mae", "r2"}  # the rows' first column is the year


@pytest.mark.slow
def test_a_regression_pipeline_on_a_real_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scikit-learn's diabetes data written to CSV, through run, status, report and predict."""
    monkeypatch.chdir(tmp_path)
    load_diabetes(as_frame=True).frame.to_csv(tmp_path / "diabetes.csv", index=False)
    config = REPO / "studies" / "diabetes.toml"
    small = ["stages.weight_decay.epochs=5", "stages.dropout.epochs=5", "stages.final.epochs=10"]
    pipe = Pipeline.load(
        config, storage=f"sqlite:///{tmp_path / 'hpo.db'}", artifacts=tmp_path / "a", overrides=small
    )
    pipe.run()
    m = pipe.status().test_metrics
    assert m is not None and m["task"] == "regression" and m["rows"] in (66, 67)
    assert m["rmse"] < m["constant_rmse"]  # better than predicting the training mean
    model = pipe.final_model()
    frame = pd.read_csv(tmp_path / "diabetes.csv")
    predicted = model.task_of().predictions(model.outputs(frame.drop(columns="target").to_numpy()))
    assert predicted.shape == (442,) and predicted.min() > 0 and predicted.max() < 400


# --------------------------------------------------------------------------- model files


def test_a_model_file_of_format_2_still_predicts(tmp_path: Path) -> None:
    """Models stored before families existed (an MLP classifier) load and predict unchanged."""
    from hpo.families.mlp import build_model
    from hpo.settings import ModelConfig

    net = build_model(ModelConfig(hidden=(8,), n_features=4, n_outputs=3), seed=0)
    path = tmp_path / "old.pt"
    torch.save(
        {
            "format": "hpo-model/2",
            "hpo_version": "0.2.0",
            "state_dict": net.state_dict(),
            "model_config": {"hidden": [8], "activation": "relu", "norm": "none", "init": "default",
                             "dropout": 0.0, "n_features": 4, "n_classes": 3},
            "config": RunConfig(hidden=(8,)).to_record(),
            "scaler_mean": torch.zeros(4, dtype=torch.float64),
            "scaler_scale": torch.ones(4, dtype=torch.float64),
            "feature_names": ["a", "b", "c", "d"],
            "class_names": ["x", "y", "z"],
            "labeling": {"kind": "categorical", "class_names": ["x", "y", "z"], "values": ["x", "y", "z"],
                         "edges": None, "closed_last": False},
            "target": "t",
        },
        path,
    )  # fmt: skip
    model = load_model_file(path)
    x = np.random.default_rng(1).normal(size=(5, 4))
    with torch.no_grad():
        want = torch.softmax(net.eval()(torch.as_tensor(x, dtype=torch.float32)), dim=1).numpy()
    got = model.task_of().predictions(model.outputs(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_every_family_is_registered_once() -> None:
    assert list(FAMILIES) == ["mlp", "torch", "sklearn"]
    assert [f.torch_based for f in FAMILIES.values()] == [True, True, False]


def test_the_shipped_example_study_validates_from_the_repository_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    p = plan.load(REPO / "examples" / "residual_mlp.toml")
    assert [s.kind for s in p.stages] == ["lr_range", "sweep", "sweep", "final"]
    with pytest.raises(ConfigError, match="no such file"):
        monkeypatch.chdir(REPO / "tests")
        plan.load(REPO / "examples" / "residual_mlp.toml")


def test_the_model_file_refuses_what_it_cannot_restore(tmp_path: Path) -> None:
    mf = ModelFile(
        family="sklearn",
        payloads=[{"skops": torch.zeros(4, dtype=torch.uint8)}],
        run_config={"family": "sklearn", "estimator": "sklearn.linear_model.Ridge", "params": {}, "seed": 1},
        task={"kind": "regression", "mean": 0.0, "std": 1.0},
        scaler_mean=np.zeros(2),
        scaler_scale=np.ones(2),
        feature_names=["a", "b"],
        class_names=[],
        labeling=None,
        target="y",
        hpo_version="x",
    )
    save_model_file(tmp_path / "m.pt", mf)
    with pytest.raises(HpoError, match=r"m.pt: the model cannot be loaded: the model file names estimator"):
        load_model_file(tmp_path / "m.pt").model()
    with pytest.raises(HpoError, match="the saved estimator is not a skops file"):
        load_model_file(tmp_path / "m.pt").model(trusted=["sklearn.linear_model.Ridge"])


def test_calibrate_gives_a_regression_targets_baselines(capsys: pytest.CaptureFixture[str]) -> None:
    """`hpo data calibrate` on a regression target: the training mean, ridge regression and the
    MLP on the same split, in the target's units."""
    args = [
        "data",
        "calibrate",
        "--task",
        "regression",
        "--rows",
        "3000",
        "--epochs",
        "2",
        "--format",
        "json",
    ]
    assert cli.main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["task"] == "regression" and r["test_rows"] == 450
    assert r["ridge"]["rmse"] < r["constant"]["rmse"] and r["mlp"]["rmse"] < r["constant"]["rmse"]
    assert abs(r["constant"]["r2"]) < 0.05 and 0.0 < r["ridge"]["r2"] < 1.0
    assert cli.main(args[:-2]) == 0
    table = capsys.readouterr().out
    assert "training mean       RMSE" in table and "ridge regression    RMSE" in table


def test_a_tuned_value_the_factory_cannot_build_stops_before_any_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    body = '[defaults]\nfamily = "torch"\nmodule = "net.py:make"\n' + SWEEP.replace(
        "CHOICES", "{ width = [4, -3] }"
    )
    path = _study(tmp_path, HEAD + SYNTHETIC + body)
    assert _run(tmp_path, path, "run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: stages.s.choices.width = -3: " in err, err
    assert optuna.get_all_study_names(storage=f"sqlite:///{tmp_path / 'hpo.db'}") == []


def test_a_search_range_is_typed_by_the_setting_not_by_how_its_bounds_are_written(tmp_path: Path) -> None:
    """An estimator's float parameter with whole-number bounds is a float range; its integer
    parameter an integer range, whatever its bounds' TOML type."""
    path = tmp_path / "space.toml"
    path.write_text(
        HEAD + SYNTHETIC + '[defaults]\nfamily = "sklearn"\n'
        'estimator = "sklearn.ensemble.HistGradientBoostingClassifier"\n'
        '[stages.search]\nkind = "search"\nspace = { l2_regularization = { low = 0, high = 10 }, '
        'max_leaf_nodes = { low = 7.0, high = 63 } }\n[stages.final]\nkind = "final"\n'
    )
    search = plan.load(path).stage("search")
    assert isinstance(search, Search)
    dists = search.distributions()
    assert isinstance(dists["l2_regularization"], FloatDistribution)
    assert isinstance(dists["max_leaf_nodes"], IntDistribution) and dists["max_leaf_nodes"].low == 7


def test_settings_added_later_mean_what_a_study_made_before_had() -> None:
    """A study stored before ``data.task`` or ``range_precision`` existed resumes where the new
    key means the same; it is refused, naming the key, where it does not."""
    stored = {"data": {"seed": 1}, "stage": {"kind": "lr_range"}, "carried_in": {"precision": "bf16"}}

    def current(task: str, range_precision: str | None, precision: str = "bf16") -> dict[str, Any]:
        return {
            "data": {"seed": 1, "task": task},
            "stage": {"kind": "lr_range", "range_precision": range_precision},
            "carried_in": {"precision": precision},
        }

    assert records.settings_drift(stored, current("classification", "fp32")) is None
    assert records.settings_drift(stored, current("regression", "fp32")) == (
        "data.task",
        "classification",
        "regression",
    )
    # before range_precision existed the range test ran in fp32, whatever the carried precision
    assert records.settings_drift(stored, current("classification", None)) == (
        "stage.range_precision",
        "fp32",
        "bf16",
    )
    fp32 = {**stored, "carried_in": {"precision": "fp32"}}
    assert records.settings_drift(fp32, current("classification", None, precision="fp32")) is None
    # a parameter of the user's that happens to be called "task" is compared as any other key
    assert records.settings_drift(
        {"defaults": {"params": {}}}, {"defaults": {"params": {"task": "classification"}}}
    ) == (
        "defaults.params.task",
        None,
        "classification",
    )


def test_an_estimator_is_resolved_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The study file's estimator is imported and its defaults built once per process, however
    many parameters its stages tune and however many times the stages ask (before: 2 + N imports
    and 3 + 2N constructions at load, and again on every fit)."""
    from hpo.families import sklearn_api

    spec = "sklearn.ensemble.ExtraTreesClassifier"  # a class no other test of this process names
    import functools

    from hpo.families._imports import load_object

    imports: list[str] = []

    def loaded(name: str) -> Any:
        imports.append(name)
        return load_object(name)

    monkeypatch.setattr(sklearn_api, "load_object", loaded)
    sklearn_api._estimator_class.cache_clear()
    sklearn_api._default_params.cache_clear()
    built = 0
    original = sklearn_api._default_params.__wrapped__

    def counted(cls: type, name: str) -> Any:
        nonlocal built
        built += 1
        return original(cls, name)

    monkeypatch.setattr(sklearn_api, "_default_params", functools.cache(counted))
    family = SklearnFamily()
    cfg = RunConfig(family="sklearn", estimator=spec, params={"n_estimators": 5})
    for _ in range(3):  # a plan's load, a stage's check, a fit's build: each asks again
        family.check(cfg, "classification")
        for name, value in (("max_depth", 3), ("min_samples_leaf", 2), ("max_features", 0.5)):
            family.check_value(cfg, name, value)
        family.own_params(cfg)
    assert imports == [spec] and built == 1
