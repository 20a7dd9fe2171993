"""A real table hpo did not make, with categorical columns and empty cells: the Palmer penguins
(``palmerpenguins`` on PyPI, written to CSV at test time as a user would; the data is never
committed). ``hpo run``, ``status`` and ``predict`` on raw rows (columns reordered, an extra
column, an unseen level, empty cells), for the shipped MLP and HistGradientBoosting study files
on tiny budgets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import require_module

from hpo import cli

REPO = Path(__file__).resolve().parents[1]


def _penguins(tmp_path: Path) -> pd.DataFrame:
    pp = require_module("palmerpenguins", "HPO_REQUIRE_PENGUINS")
    frame: pd.DataFrame = pp.load_penguins()
    frame.to_csv(tmp_path / "penguins.csv", index=False)
    return frame


def _shrunk(text: str) -> str:
    for old, new in (
        ("epochs = 40", "epochs = 4"),
        ("epochs = 30", "epochs = 3"),
        ("epochs = 60", "epochs = 6"),
    ):
        text = text.replace(old, new)
    return text.replace("folds = 5", "folds = 3")


def _cli(tmp_path: Path, *args: str) -> int:
    return cli.main(["-q", *args, "--storage", f"sqlite:///{tmp_path / 'hpo.db'}"])


def _study(study: str) -> str:
    """A shipped study file at tiny budgets; "penguins_lgbm": the HistGradientBoosting one with
    LightGBM (native categoricals through fit's categorical_feature)."""
    if study != "penguins_lgbm":
        return _shrunk((REPO / "studies" / f"{study}.toml").read_text())
    text = (REPO / "studies" / "penguins_hgb.toml").read_text()
    for old, new in (
        ("sklearn.ensemble.HistGradientBoostingClassifier", "lightgbm.LGBMClassifier"),
        ("{ max_iter = 100, early_stopping = false, min_samples_leaf = 10 }", "{ n_estimators = 30 }"),
        ("{ learning_rate = [0.03, 0.1, 0.3] }", "{ learning_rate = [0.05, 0.2] }"),
    ):
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("study", ["penguins", "penguins_hgb", "penguins_lgbm"])
def test_penguins_run_status_and_predict_raw_rows(
    tmp_path: Path, study: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _penguins(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HPO_ARTIFACTS", str(tmp_path / "artifacts"))
    cfg = tmp_path / f"{study}.toml"
    cfg.write_text(_study(study))
    assert _cli(tmp_path, "run", "--config", str(cfg)) == 0
    capsys.readouterr()
    assert _cli(tmp_path, "status", "--config", str(cfg), "--format", "json") == 0
    status = json.loads(capsys.readouterr().out)
    final = next(s for s in status["stages"] if s["stage"] == "final")
    assert final["state"] == "complete"
    # the data section lists every column as read and its encoding (empty cells in the figures)
    assert _cli(tmp_path, "data", "explore", "--config", str(cfg), "--out", "data.html") == 0
    html = (tmp_path / "data.html").read_text()
    sex = "one-hot: 2 level(s) + infrequent + empty" if study == "penguins" else "native categorical"
    assert sex in html
    # raw rows as a user has them: columns reordered, an extra column, an unseen island, empty cells
    raw = frame[list(reversed(frame.columns))].head(40).copy()
    raw["note"] = "x"
    raw.loc[3, "island"] = "Atlantis"
    raw.loc[4, ["bill_length_mm", "sex"]] = None
    raw.to_csv(tmp_path / "raw.csv", index=False)
    assert _cli(tmp_path, "predict", "--config", str(cfg), "--input", "raw.csv", "--output", "out.csv") == 0
    out = pd.read_csv(tmp_path / "out.csv")
    assert len(out) == 40 and set(out["class"]) <= {"Adelie", "Chinstrap", "Gentoo"}
    said = capsys.readouterr().out
    assert said.count("ignored columns the model does not use: note") == 1
    # text in a numeric column, and a missing column: one line each, naming the column and row
    raw["body_mass_g"] = raw["body_mass_g"].astype(object)
    raw.loc[6, "body_mass_g"] = "heavy"
    raw.to_csv(tmp_path / "bad.csv", index=False)
    assert _cli(tmp_path, "predict", "--config", str(cfg), "--input", "bad.csv") == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "hpo: error: bad.csv:8: column 'body_mass_g' is 'heavy', not a number; fix or empty that cell"
    )
    raw.drop(columns=["year"]).to_csv(tmp_path / "missing.csv", index=False)
    assert _cli(tmp_path, "predict", "--config", str(cfg), "--input", "missing.csv") == 2
    err = capsys.readouterr().err.strip()
    assert "missing.csv: missing feature column(s) 'year'" in err and "\n" not in err


def _onnx_outputs(model: Path, frame: pd.DataFrame) -> Any:
    import numpy as np

    ort = require_module("onnxruntime", "HPO_REQUIRE_ONNX")
    session = ort.InferenceSession(str(model))
    feeds = {}
    for i in session.get_inputs():
        col = frame[i.name]
        if i.type == "tensor(string)":  # "" for an empty cell
            feeds[i.name] = (
                col.map(lambda v: "" if pd.isna(v) else str(v)).to_numpy(dtype=object).reshape(-1, 1)
            )
        else:  # NaN for an empty cell
            feeds[i.name] = pd.to_numeric(col).to_numpy(dtype=np.float32).reshape(-1, 1)
    return session.run(None, feeds)[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        "mlp classifier",
        "your module, regression",
        "logistic regression",
        "histgradientboosting, native",
        "histgradientboosting, native, regression",
        "mlp and histgradientboosting tracks, greedy",
        "mlp classifier, quantile scaling",
    ],
)
def test_onnx_from_raw_rows_agrees_with_predict(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One input per column (string for categoricals, float32 with NaN for numbers), the whole
    preprocessing inside: onnxruntime agrees with hpo predict on every row, unseen levels and
    empty cells included."""
    import numpy as np

    require_module("onnxscript", "HPO_REQUIRE_ONNX")
    frame = _penguins(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HPO_ARTIFACTS", str(tmp_path / "artifacts"))
    text = _shrunk((REPO / "studies" / "penguins.toml").read_text())
    if case == "logistic regression":  # an estimator on the encoded matrix; skl2onnx behind it
        text = (REPO / "studies" / "penguins_hgb.toml").read_text()
        for old, new in (
            ("sklearn.ensemble.HistGradientBoostingClassifier", "sklearn.linear_model.LogisticRegression"),
            ("{ max_iter = 100, early_stopping = false, min_samples_leaf = 10 }", "{ max_iter = 500 }"),
            ("{ learning_rate = [0.03, 0.1, 0.3] }", "{ C = [0.1, 1.0] }"),
        ):
            text = text.replace(old, new)
    elif case.startswith("histgradientboosting"):  # native codes; categorical splits unfolded
        text = _shrunk((REPO / "studies" / "penguins_hgb.toml").read_text())
        if case.endswith(", regression"):
            text = text.replace("HistGradientBoostingClassifier", "HistGradientBoostingRegressor")
            text = text.replace('target = "species"', 'target = "body_mass_g"\ntask = "regression"')
    elif case.endswith("quantile scaling"):  # normal scores inside the graph, empty cells kept
        text = text.replace('split = "stratified"', 'split = "stratified"\nscaling = "quantile"')
    elif case.endswith("greedy"):  # two families in one ensemble: trees on the one-hot matrix
        # (the MLP's learning rates held low, so that no MLP alone is near perfect on validation)
        text = text.replace("choices = { lr = [1e-3, 3e-3, 1e-2] }", "choices = { lr = [1e-3, 3e-3] }")
        text = text.replace(
            '[stages.final]\nkind = "final"\n',
            '[stages.hgb]\nkind = "grid"\nfamily = "sklearn"\n'
            'estimator = "sklearn.ensemble.HistGradientBoostingClassifier"\n'
            "params = { max_iter = 50, early_stopping = false, min_samples_leaf = 5 }\n"
            "grid = { learning_rate = [0.1, 0.3] }\n\n"
            '[stages.final]\nkind = "final"\nensemble = "greedy"\nmembers_from = ["lr", "hgb"]\n'
            "max_members = 8\n",
        )
    elif case != "mlp classifier":
        (tmp_path / "residual_mlp.py").write_text((REPO / "examples" / "residual_mlp.py").read_text())
        text = text.replace("hidden = [64, 64]", 'family = "torch"\nmodule = "residual_mlp.py:make"')
        text = text.replace('target = "species"', 'target = "body_mass_g"\ntask = "regression"')
    cfg = tmp_path / "study.toml"
    cfg.write_text(text)
    assert _cli(tmp_path, "run", "--config", str(cfg)) == 0
    assert _cli(tmp_path, "export-model", "--config", str(cfg), "--format", "onnx", "--out", "m.onnx") == 0
    if case.endswith(("greedy", "quantile scaling")):
        from hpo.pipeline import Pipeline

        model = Pipeline.load(cfg, storage=f"sqlite:///{tmp_path / 'hpo.db'}").final_model()
        if case.endswith("greedy"):
            assert {c.family for c in model.configs()} == {"mlp", "sklearn"}
        else:
            prep = model.prep()
            assert prep is not None and prep.normal is not None
    rows = frame.copy()
    rows.loc[0, "island"] = "Atlantis"  # unseen: infrequent
    rows.loc[1, ["sex", "bill_depth_mm"]] = None
    rows.to_csv(tmp_path / "rows.csv", index=False)
    capsys.readouterr()
    assert _cli(tmp_path, "predict", "--config", str(cfg), "--input", "rows.csv", "--output", "p.csv") == 0
    predicted = pd.read_csv(tmp_path / "p.csv")
    graph = _onnx_outputs(tmp_path / "m.onnx", rows)
    expected: Any
    if not case.endswith(", regression"):
        expected = predicted[[c for c in predicted.columns if c.startswith("p_")]].to_numpy()
        assert (graph.argmax(axis=1) == expected.argmax(axis=1)).all()
    else:
        expected = predicted["prediction"].to_numpy()
    assert len(expected) == len(frame) == graph.shape[0]
    np.testing.assert_allclose(graph, expected, rtol=1e-4, atol=2e-6)  # the CSV's 6 decimals


def test_onnx_of_lightgbm_given_native_codes_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_module("lightgbm", "HPO_REQUIRE_LIGHTGBM")
    _penguins(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HPO_ARTIFACTS", str(tmp_path / "artifacts"))
    cfg = tmp_path / "penguins_lgbm.toml"
    cfg.write_text(_study("penguins_lgbm"))
    assert _cli(tmp_path, "run", "--config", str(cfg)) == 0
    capsys.readouterr()
    assert _cli(tmp_path, "export-model", "--config", str(cfg), "--format", "onnx", "--out", "m.onnx") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "ONNX export of LGBMClassifier given native categorical codes" in err
    assert not (tmp_path / "m.onnx").exists()
