from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from hpo import cli, training
from hpo.errors import PrerequisiteError
from hpo.families import mlp as batch
from hpo.pipeline import Pipeline
from hpo.training import lr_finder
from hpo.tuning import records

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "studies" / "quick.toml"

TINY = """
[pipeline]
name = "tiny"

[data]
source = "synthetic"
rows = 3000
seed = 42

[defaults]
hidden = [32, 32]
batch_size = 128

[stages.baseline]
architectures = [[16, 16], [32, 32]]
max_batches = 6
eval_every = 3

[stages.lr_range]
verify_epochs = 1

[stages.weight_decay]
kind = "grid_cv"
grid = { weight_decay = [0.0, 1e-4, 1e-2] }
folds = 2
epochs = 1
STACK_WD

[stages.init]
kind = "sweep"
choices = { init = ["default", "xavier_uniform"] }
epochs = 1
STACK_SWEEP

[stages.activation]
kind = "sweep"
choices = { activation = ["relu", "gelu"] }
epochs = 1
STACK_SWEEP

[stages.norm]
kind = "sweep"
choices = { norm = ["none", "layernorm"] }
epochs = 1
STACK_SWEEP

[stages.optimizer]
kind = "sweep"
choices = { optimizer = ["adam", "sgd"] }
epochs = 1
STACK_SWEEP

[stages.final]
epochs = 2
patience = 1
"""

SWEEPS = ("init", "activation", "norm", "optimizer")


def tiny_text(*, stack: int | None = None) -> str:
    wd = f"stack = {stack}" if stack else ""
    return TINY.replace("STACK_WD", wd).replace("STACK_SWEEP", wd)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_text())
    return path


def load(root: Path, cfg: Path, storage: str | None = None) -> Pipeline:
    return Pipeline.load(
        cfg,
        storage=storage or f"sqlite:///{root / 'hpo.db'}",
        artifacts=root / "artifacts",
        data_dir=Path(os.environ["HPO_DATA_DIR"]),
    )


def _hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpo", "-q", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


@pytest.mark.slow
def test_quick_pipeline_end_to_end_and_status_json(tmp_path: Path) -> None:
    proc = _hpo("run", "--config", str(QUICK), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "hpo.db").exists()  # the embedded default storage
    proc = _hpo("status", "--config", str(QUICK), "--format", "json", cwd=tmp_path)
    status = json.loads(proc.stdout)
    assert [s["stage"] for s in status["stages"]] == [
        "baseline",
        "lr_range",
        "weight_decay",
        *SWEEPS,
        "final",
    ]
    assert [s["state"] for s in status["stages"]] == ["complete"] * 8
    for st in status["stages"]:
        assert st["selection"]["selected"] and st["selection"]["reason"]
        assert st["selection"]["config_out"]["hidden"]
    assert status["stages"][2]["trials"] == {"COMPLETE": 3}
    metrics = status["test_metrics"]
    # the majority class alone scores 58.0 % of these 1,800 test rows; the 12,000-row smoke run
    # learns past it (measured 61.6 %), and a model that learned nothing would not
    assert 0.60 < metrics["accuracy"] < 0.70 and np.array(metrics["confusion"]).sum() == 1800
    assert set(metrics) >= {"loss", "accuracy", "balanced_accuracy", "macro_f1", "confusion", "per_class"}


def test_python_api_runs_and_reads_back(tmp_path: Path, tiny: Path) -> None:
    pipe = load(tmp_path, tiny)
    assert [s.name for s in pipe.stages] == ["baseline", "lr_range", "weight_decay", *SWEEPS, "final"]
    result = pipe.run()
    assert [r.status for r in result.runs] == ["completed"] * 8
    status = pipe.status()
    assert status.test_metrics is not None and status.stages[-1].state == "complete"
    model_file = pipe.final_model()
    assert model_file.class_names[0] == "1920s" and model_file.feature_names[0] == "timbre_avg_1"
    again = load(tmp_path, tiny).run()  # a new process would see the same: everything is stored
    assert {r.status for r in again.runs} == {"already complete"}


@pytest.mark.slow
def test_carry_forward_across_processes(tmp_path: Path, tiny: Path) -> None:
    for stage in ("baseline", "lr_range", "weight_decay"):
        proc = _hpo("run-stage", stage, "--config", str(tiny), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    base = records.read_selection(optuna.load_study(study_name="tiny.baseline", storage=storage).user_attrs)
    lr = records.read_selection(optuna.load_study(study_name="tiny.lr_range", storage=storage).user_attrs)
    wd = optuna.load_study(study_name="tiny.weight_decay", storage=storage)
    assert base is not None and lr is not None
    assert lr.config_out.hidden == base.config_out.hidden == tuple(base.selected["hidden"])
    for t in wd.trials:
        cfg = records.read_config(t.user_attrs)
        assert cfg.lr == lr.selected["lr"] and cfg.hidden == base.config_out.hidden
        assert cfg.weight_decay == t.params["weight_decay"]  # the full resolved config per trial
        assert len(t.user_attrs[records.FOLD_SCORES]) == 2
    selection = records.read_selection(wd.user_attrs)
    assert selection is not None and selection.config_out.weight_decay == selection.selected["weight_decay"]


@pytest.mark.slow
def test_prerequisite_error_is_one_line_and_writes_nothing(tmp_path: Path, tiny: Path) -> None:
    proc = _hpo("run-stage", "weight_decay", "--config", str(tiny), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "stage 'weight_decay' needs stage 'lr_range'" in proc.stderr
    assert f"run first: hpo run-stage lr_range --config {tiny}" in proc.stderr
    assert optuna.get_all_study_names(storage=f"sqlite:///{tmp_path / 'hpo.db'}") == []


def _one_at_a_time(tmp_path: Path) -> Path:
    path = tmp_path / "one.toml"
    path.write_text(tiny_text(stack=1))
    return path


def test_interrupted_stage_resumes_only_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = load(tmp_path, _one_at_a_time(tmp_path))
    pipe.run_stage("baseline")
    pipe.run_stage("lr_range")
    real_fit = batch.fit
    calls: list[float] = []

    def interrupting_fit(*args: Any, **kwargs: Any) -> training.FitResult:
        calls.append(args[1].weight_decay)
        if len(calls) == 3:  # the first fold of the second grid point
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(batch, "fit", interrupting_fit)
    with pytest.raises(KeyboardInterrupt):
        pipe.run_stage("weight_decay")
    study = optuna.load_study(study_name="tiny.weight_decay", storage=pipe.ctx.storage)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]  # one point at a time
    assert not records.is_complete(study)

    def counting_fit(*args: Any, **kwargs: Any) -> training.FitResult:
        calls.append(args[1].weight_decay)
        return real_fit(*args, **kwargs)

    calls.clear()
    monkeypatch.setattr(batch, "fit", counting_fit)
    result = pipe.run_stage("weight_decay")
    assert result.status == "completed"
    assert sorted(set(calls)) == [1e-4, 1e-2] and len(calls) == 4  # two points x two folds
    complete = [
        t.params["weight_decay"] for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    ]
    assert sorted(complete) == [0.0, 1e-4, 1e-2]

    calls.clear()
    again = pipe.run_stage("weight_decay")
    assert again.status == "already complete" and calls == []
    assert len(study.trials) == 4


def test_interrupted_stacked_batch_fails_its_trials_and_resumes(
    tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = load(tmp_path, tiny)
    pipe.run_stage("baseline")
    pipe.run_stage("lr_range")

    def interrupted(*args: Any, **kwargs: Any) -> list[training.FitResult]:
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "fit_stacked", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipe.run_stage("weight_decay")
    study = optuna.load_study(study_name="tiny.weight_decay", storage=pipe.ctx.storage)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3  # the batch held all three points
    assert all(t.user_attrs[records.INTERRUPTED] for t in study.trials)
    monkeypatch.undo()
    assert pipe.run_stage("weight_decay").status == "completed"
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.params["weight_decay"] for t in done) == [0.0, 1e-4, 1e-2]
    assert all(len(t.intermediate_values) == 2 for t in done)  # one report per fold


def test_force_restarts_one_stage_only(tmp_path: Path, tiny: Path) -> None:
    pipe = load(tmp_path, tiny)
    pipe.run_stage("baseline")
    pipe.run_stage("lr_range")
    before = optuna.load_study(study_name="tiny.baseline", storage=pipe.ctx.storage).trials
    pipe.run_stage("lr_range", force=True)
    after = optuna.load_study(study_name="tiny.baseline", storage=pipe.ctx.storage).trials
    assert [t.datetime_complete for t in before] == [t.datetime_complete for t in after]
    assert len(optuna.load_study(study_name="tiny.lr_range", storage=pipe.ctx.storage).trials) == 1


SENTINEL = 1.0e6


def mark_test_rows(pipe: Pipeline) -> None:
    """Fingerprint the test rows in the prepared cache: feature 0 of every test row becomes
    1e6 (+ its index). Scalers are fit on training rows only, so a scaled test row stands out
    by orders of magnitude wherever it turns up."""
    prepared = pipe.dataset()
    features = np.load(prepared.path / "features.npy", mmap_mode="r+")
    features[prepared.split.test, 0] = SENTINEL + np.arange(prepared.split.test.size)
    features.flush()
    del features


@pytest.fixture
def watched_trainers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, float]]]:
    """The largest |value| of the rows every trainer receives: the single-model loop, the stack,
    the range test (training and validation parts)."""
    seen: list[tuple[str, float]] = []
    real_fit, real_stacked, real_range = batch.fit, batch.fit_stacked, lr_finder.range_test

    def peak(data: training.TensorData) -> float:
        return float(max(data.x_train.abs().max(), data.x_val.abs().max()))

    def fit(*args: Any, **kwargs: Any) -> training.FitResult:
        seen.append(("fit", peak(args[3])))
        return real_fit(*args, **kwargs)

    def fit_stacked(members: Any, datasets: Any, **kwargs: Any) -> list[training.FitResult]:
        seen.extend(("stacked", peak(d)) for d in datasets)
        return real_stacked(members, datasets, **kwargs)

    def range_test(*args: Any, **kwargs: Any) -> Any:
        seen.append(("range_test", peak(args[3])))
        return real_range(*args, **kwargs)

    monkeypatch.setattr(batch, "fit", fit)  # every stage trains through the family
    monkeypatch.setattr(batch, "fit_stacked", fit_stacked)
    monkeypatch.setattr("hpo.stages.lr_range.range_test", range_test)
    yield seen


def test_no_trainer_sees_a_test_row_before_final(
    tmp_path: Path, tiny: Path, watched_trainers: list[tuple[str, float]]
) -> None:
    pipe = load(tmp_path, tiny)
    mark_test_rows(pipe)
    for stage in pipe.stages[:-1]:
        pipe.run_stage(stage.name)
    data = pipe.ctx.data()
    assert data.test_reads == []  # the audited door to the test rows stayed shut
    assert {kind for kind, _ in watched_trainers} == {"fit", "stacked", "range_test"}
    assert max(v for _, v in watched_trainers) < 100  # scaled rows; a test row would be ~1e6/scale
    pipe.run_stage("final")
    assert data.test_reads == ["stage final"]
    assert max(v for _, v in watched_trainers) < 100  # final trains on train/val too


def test_the_guard_sees_test_rows_swapped_into_validation(
    tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch, watched_trainers: list[tuple[str, float]]
) -> None:
    """The fault the guard exists for: a context that validates on the test rows, taken
    around the audited door (straight from the prepared split)."""
    from hpo.stages import _context

    real = _context.StageData.train_val

    def leaky(self: _context.StageData) -> training.TensorData:
        tv = real(self)
        p = self._prepared
        x_test = torch.as_tensor(p.scaler.transform(p.features[p.split.test]))
        y_test = torch.as_tensor(np.asarray(p.labels[p.split.test], dtype=np.int64))
        return training.TensorData(tv.x_train, tv.y_train, x_test, y_test)

    monkeypatch.setattr(_context.StageData, "train_val", leaky)
    pipe = load(tmp_path, tiny)
    mark_test_rows(pipe)
    pipe.run_stage("baseline")
    assert max(v for _, v in watched_trainers) > 1000  # caught


def test_predict_and_export_round_trip(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = load(tmp_path, tiny)
    pipe.run()
    common = [
        "--config",
        str(tiny),
        "--storage",
        f"sqlite:///{tmp_path / 'hpo.db'}",
        "--artifacts",
        str(tmp_path / "artifacts"),
    ]
    out = tmp_path / "model.pt"
    assert cli.main(["-q", "export-model", "--out", str(out), *common]) == 0
    payload = torch.load(out, weights_only=True)
    assert payload["class_names"][0] == "1920s"
    final = records.read_selection(pipe.final_study().user_attrs)
    assert final is not None and payload["config"] == final.config_out.to_record()
    model_file = pipe.final_model()
    model = model_file.model()

    p = pipe.dataset()
    rows = p.split.test[:50]
    csv = tmp_path / "in.csv"
    years = [1920 + 10 * int(c) + 5 for c in p.labels[rows]]
    feats = np.asarray(p.features[rows], dtype=np.float64)
    with csv.open("w") as fh:
        fh.write("year,extra," + ",".join(model_file.feature_names) + "\n")
        for y, f in zip(years, feats, strict=True):
            fh.write(f"{y},x," + ",".join(f"{v:.6f}" for v in f) + "\n")
    pred_csv = tmp_path / "pred.csv"
    assert cli.main(["-q", "predict", "--input", str(csv), "--output", str(pred_csv), *common]) == 0
    printed = capsys.readouterr().out
    assert (
        "accuracy against the target column" in printed
        and "ignored columns the model does not use: extra" in printed
    )
    import pandas as pd

    got = pd.read_csv(pred_csv)
    assert list(got.columns[:2]) == ["class", "p_1920s"] and len(got) == 50
    assert np.allclose(got.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-4)
    with torch.no_grad():
        expected = torch.softmax(model(torch.as_tensor(model_file.scale(feats))), dim=1).numpy()
    assert np.allclose(got.iloc[:, 1:].to_numpy(), expected, atol=1e-5)

    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    assert cli.main(["predict", "--input", str(bad), *common]) == 2
    assert "3 columns, expected 90 features or year + 90 features" in capsys.readouterr().err
    missing = tmp_path / "missing.csv"
    missing.write_text(",".join(model_file.feature_names[1:]) + "\n" + ",".join(["1.0"] * 89) + "\n")
    assert cli.main(["predict", "--input", str(missing), *common]) == 2
    assert "missing feature column(s) timbre_avg_1" in capsys.readouterr().err


def test_predict_before_final_says_what_to_run(tmp_path: Path, tiny: Path) -> None:
    pipe = load(tmp_path, tiny)
    with pytest.raises(PrerequisiteError, match="run first: hpo run-stage final"):
        pipe.final_model()


@pytest.mark.slow
@pytest.mark.postgres
def test_pipeline_on_postgresql(tmp_path: Path, tiny: Path, postgres_url: str) -> None:
    pipe = load(tmp_path, tiny, storage=postgres_url)
    result = pipe.run()
    assert all(st.state == "complete" for st in result.status.stages)
    assert result.status.test_metrics is not None and result.status.test_metrics["accuracy"] > 0.5
    again = pipe.run()
    assert {r.status for r in again.runs} == {"already complete"}


def _trials(pipe: Pipeline, stage: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=pipe.ctx.study_name(stage), storage=pipe.ctx.storage)
    return sorted(study.get_trials(), key=lambda t: json.dumps(t.params, sort_keys=True))


@pytest.mark.slow
def test_stacked_stages_keep_every_trial_and_match_one_at_a_time(tmp_path: Path, tiny: Path) -> None:
    """grid_cv and sweep stages trained stacked (the default) vs one trial at a time
    (stack = 1): the same trials, params, intermediate values and scores."""
    runs = {}
    for label, cfg in (("stacked", tiny), ("one", _one_at_a_time(tmp_path))):
        (tmp_path / label).mkdir()
        pipe = load(tmp_path / label, cfg)
        for stage in ("baseline", "lr_range", "weight_decay", *SWEEPS):
            pipe.run_stage(stage)
        runs[label] = pipe
    for name in ("weight_decay", *SWEEPS):
        got, ref = _trials(runs["stacked"], name), _trials(runs["one"], name)
        assert [t.params for t in got] == [t.params for t in ref]
        for a, b in zip(got, ref, strict=True):
            assert a.state == b.state == optuna.trial.TrialState.COMPLETE
            assert a.intermediate_values.keys() == b.intermediate_values.keys() and a.intermediate_values
            assert a.value == pytest.approx(b.value, abs=2 / 450)  # a borderline row at most
            assert a.user_attrs[records.CONFIG] == b.user_attrs[records.CONFIG]
        if name == "weight_decay":
            assert all(len(t.user_attrs[records.FOLD_SCORES]) == 2 for t in got)
            assert got[0].user_attrs[records.TRAIN]["stacked"] == 3


@pytest.mark.slow
def test_a_legacy_study_file_runs_the_same_trials(tmp_path: Path) -> None:
    """Study files written before kinds existed ([stages.components], grid = [...]) still run,
    as the same trials (components becomes four sweeps, weight_decay a grid_cv)."""
    legacy = tmp_path / "legacy.toml"
    legacy.write_text(
        TINY.replace(
            'kind = "grid_cv"\ngrid = { weight_decay = [0.0, 1e-4, 1e-2] }', "grid = [0.0, 1e-4, 1e-2]"
        )
        .replace("STACK_WD", "")
        .split("[stages.init]")[0]
        + '[stages.components]\nepochs = 1\ninit = ["default", "xavier_uniform"]\n'
        'activation = ["relu", "gelu"]\nnorm = ["none", "layernorm"]\noptimizer = ["adam", "sgd"]\n\n'
        "[stages.final]\nepochs = 2\npatience = 1\n"
    )
    new = tmp_path / "new.toml"
    new.write_text(tiny_text())
    pipes = {}
    for label, cfg in (("legacy", legacy), ("new", new)):
        (tmp_path / label).mkdir()
        pipes[label] = load(tmp_path / label, cfg)
        pipes[label].run()
    assert [s.name for s in pipes["legacy"].stages][3:7] == [f"components.{s}" for s in SWEEPS]
    for a_name, b_name in zip(
        [s.name for s in pipes["legacy"].stages], [s.name for s in pipes["new"].stages], strict=True
    ):
        a, b = _trials(pipes["legacy"], a_name), _trials(pipes["new"], b_name)
        assert [(t.params, t.value, t.intermediate_values) for t in a] == [
            (t.params, t.value, t.intermediate_values) for t in b
        ]


@pytest.mark.slow
def test_an_appended_dropout_sweep_runs_before_final(tmp_path: Path) -> None:
    """Issue: pipelines as data. A sweep over a new setting, appended to the shipped quick file,
    runs after the shipped stages, and the final stage trains with what it selected."""
    cfg = tmp_path / "quick_dropout.toml"
    cfg.write_text(
        QUICK.read_text().replace("rows = 12000", "rows = 4000")
        + '\n[stages.dropout]\nkind = "sweep"\nchoices = { dropout = [0.0, 0.1, 0.3] }\nepochs = 2\n'
    )
    proc = _hpo("run", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(_hpo("status", "--config", str(cfg), "--format", "json", cwd=tmp_path).stdout)
    names = [s["stage"] for s in status["stages"]]
    assert names[-2:] == ["dropout", "final"]
    dropout = status["stages"][-2]
    assert dropout["kind"] == "sweep" and dropout["trials"] == {"COMPLETE": 3}
    chosen = dropout["selection"]["selected"]["dropout"]
    assert chosen in (0.0, 0.1, 0.3)
    final = status["stages"][-1]["selection"]["config_out"]
    assert final["dropout"] == chosen
    study = optuna.load_study(study_name="quick.final", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    assert records.read_config(study.trials[0].user_attrs).dropout == chosen
    out = tmp_path / "r.html"
    assert _hpo("report", "--config", str(cfg), "--out", str(out), cwd=tmp_path).returncode == 0
    text = out.read_text()
    assert 'id="stage-dropout"' in text and 'data-figure="dropout-bar"' in text


MEDIAN = """
[pipeline]
name = "median"

[data]
source = "synthetic"
rows = 4000
seed = 42

[defaults]
hidden = [32, 32]

[stages.weight_decay]
kind = "grid_cv"
grid = { weight_decay = [1e-4, 1e-3, 3.0] }
folds = 3
epochs = 2
pruner = "median"
"""


def test_median_pruner_stops_a_hopeless_point_after_its_first_fold(tmp_path: Path) -> None:
    """With ``pruner = "median"`` the points run one at a time, fold by fold; a point whose first
    fold scores below the median of the points before it is pruned there and cannot be selected."""
    cfg = tmp_path / "median.toml"
    cfg.write_text(MEDIAN)
    pipe = load(tmp_path, cfg)
    pipe.run()
    study = optuna.load_study(study_name="median.weight_decay", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    by_wd = {t.params["weight_decay"]: t for t in study.get_trials()}
    assert set(by_wd) == {1e-4, 1e-3, 3.0} and len(study.get_trials()) == 3
    for wd in (1e-4, 1e-3):
        assert by_wd[wd].state == optuna.trial.TrialState.COMPLETE
        assert len(by_wd[wd].user_attrs[records.FOLD_SCORES]) == 3
    hopeless = by_wd[3.0]
    assert hopeless.state == optuna.trial.TrialState.PRUNED
    assert len(hopeless.user_attrs[records.FOLD_SCORES]) == 1  # stopped after its first fold
    assert hopeless.user_attrs[records.FOLD_SCORES][0] < min(
        by_wd[wd].user_attrs[records.FOLD_SCORES][0] for wd in (1e-4, 1e-3)
    )
    selection = records.read_selection(study.user_attrs)
    assert selection is not None and selection.config_out.weight_decay in (1e-4, 1e-3)
