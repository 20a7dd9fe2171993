from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from hpo import cli, pipeline, predict, stages, train
from hpo.errors import PrerequisiteError
from hpo.stages import _base

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
grid = [0.0, 1e-4, 1e-2]
folds = 2
epochs = 1

[stages.components]
epochs = 1
init = ["default", "xavier_uniform"]
activation = ["relu", "gelu"]
norm = ["none", "layernorm"]
optimizer = ["adam", "sgd"]

[stages.final]
epochs = 2
patience = 1
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _ctx(tmp_path: Path, cfg: Path, storage: str | None = None) -> stages.StageContext:
    return pipeline.context(
        config_path=cfg,
        storage_url=storage or f"sqlite:///{tmp_path / 'hpo.db'}",
        artifacts=tmp_path / "artifacts",
        data_dir=Path(os.environ["HPO_DATA_DIR"]),
    )


def _hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpo", "-q", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_quick_pipeline_end_to_end_and_status_json(tmp_path: Path) -> None:
    proc = _hpo("run", "--config", str(QUICK), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "hpo.db").exists()  # the embedded default storage
    proc = _hpo("status", "--config", str(QUICK), "--format", "json", cwd=tmp_path)
    status = json.loads(proc.stdout)
    assert [s["state"] for s in status["stages"].values()] == ["complete"] * 5
    assert len(status["stages"]["components"]["studies"]) == 4
    for st in status["stages"].values():
        for study in st["studies"]:
            assert study["selected"] and study["reason"]
    assert status["stages"]["weight_decay"]["studies"][0]["trials"] == {"COMPLETE": 3}
    metrics = status["test_metrics"]
    assert 0.5 < metrics["accuracy"] < 0.75 and np.array(metrics["confusion"]).sum() == 1800
    assert set(metrics) >= {"loss", "accuracy", "balanced_accuracy", "macro_f1", "confusion", "per_class"}


def test_carry_forward_across_processes(tmp_path: Path, tiny: Path) -> None:
    for stage in ("baseline", "lr_range", "weight_decay"):
        proc = _hpo("run-stage", stage, "--config", str(tiny), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    base = optuna.load_study(study_name="tiny.baseline", storage=storage).user_attrs
    lr = optuna.load_study(study_name="tiny.lr_range", storage=storage).user_attrs
    wd = optuna.load_study(study_name="tiny.weight_decay", storage=storage)
    assert lr["config_out"]["hidden"] == base["selected"]["hidden"]
    for t in wd.trials:
        cfg = t.user_attrs["config"]
        assert cfg["lr"] == lr["selected"]["lr"] and cfg["hidden"] == base["selected"]["hidden"]
        assert cfg["weight_decay"] == t.params["weight_decay"]  # the full resolved config per trial
        assert len(t.user_attrs["fold_scores"]) == 2
    assert wd.user_attrs["config_out"]["weight_decay"] == wd.user_attrs["selected"]["weight_decay"]


def test_prerequisite_error_is_one_line_and_writes_nothing(tmp_path: Path, tiny: Path) -> None:
    proc = _hpo("run-stage", "weight_decay", "--config", str(tiny), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "stage 'weight_decay' needs stage 'lr_range'" in proc.stderr
    assert f"run first: hpo run-stage lr_range --config {tiny}" in proc.stderr
    assert optuna.get_all_study_names(storage=f"sqlite:///{tmp_path / 'hpo.db'}") == []


def _one_at_a_time(tmp_path: Path) -> Path:
    path = tmp_path / "one.toml"
    path.write_text(
        TINY.replace(
            "epochs = 1\n\n[stages.components]", "epochs = 1\nstack = 1\n\n[stages.components]"
        ).replace('optimizer = ["adam", "sgd"]', 'optimizer = ["adam", "sgd"]\nstack = 1')
    )
    return path


def test_interrupted_stage_resumes_only_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = _ctx(tmp_path, _one_at_a_time(tmp_path))
    stages.run_stage(ctx, "baseline")
    stages.run_stage(ctx, "lr_range")
    real_fit = train.fit
    calls: list[float] = []

    def interrupting_fit(*args: Any, **kwargs: Any) -> train.FitResult:
        calls.append(args[1].weight_decay)
        if len(calls) == 3:  # the first fold of the second grid point
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr("hpo.stages.weight_decay.train.fit", interrupting_fit)
    with pytest.raises(KeyboardInterrupt):
        stages.run_stage(ctx, "weight_decay")
    study = optuna.load_study(study_name="tiny.weight_decay", storage=ctx.storage)
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "FAIL"]  # points are claimed one at a time
    assert not _base.is_complete(study)

    def counting_fit(*args: Any, **kwargs: Any) -> train.FitResult:
        calls.append(args[1].weight_decay)
        return real_fit(*args, **kwargs)

    calls.clear()
    monkeypatch.setattr("hpo.stages.weight_decay.train.fit", counting_fit)
    result = stages.run_stage(ctx, "weight_decay")
    assert result["status"] == "completed"
    assert sorted(set(calls)) == [1e-4, 1e-2] and len(calls) == 4  # two points x two folds
    complete = [
        t.params["weight_decay"] for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    ]
    assert sorted(complete) == [0.0, 1e-4, 1e-2]

    calls.clear()
    again = stages.run_stage(ctx, "weight_decay")
    assert again["status"] == "already complete" and calls == []
    assert len(study.trials) == 4


def test_interrupted_stacked_batch_fails_its_trials_and_resumes(
    tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo import stacked

    ctx = _ctx(tmp_path, tiny)
    stages.run_stage(ctx, "baseline")
    stages.run_stage(ctx, "lr_range")

    def interrupted(*args: Any, **kwargs: Any) -> list[train.FitResult]:
        raise KeyboardInterrupt

    monkeypatch.setattr(stacked, "fit_stacked", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stages.run_stage(ctx, "weight_decay")
    study = optuna.load_study(study_name="tiny.weight_decay", storage=ctx.storage)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3  # the batch held all three points
    assert all(t.user_attrs["interrupted"] for t in study.trials)
    monkeypatch.undo()
    assert stages.run_stage(ctx, "weight_decay")["status"] == "completed"
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.params["weight_decay"] for t in done) == [0.0, 1e-4, 1e-2]
    assert all(len(t.intermediate_values) == 2 for t in done)  # one report per fold


def test_force_restarts_one_stage_only(tmp_path: Path, tiny: Path) -> None:
    ctx = _ctx(tmp_path, tiny)
    stages.run_stage(ctx, "baseline")
    stages.run_stage(ctx, "lr_range")
    before = optuna.load_study(study_name="tiny.baseline", storage=ctx.storage).trials
    stages.run_stage(ctx, "lr_range", force=True)
    after = optuna.load_study(study_name="tiny.baseline", storage=ctx.storage).trials
    assert [t.datetime_complete for t in before] == [t.datetime_complete for t in after]
    assert len(optuna.load_study(study_name="tiny.lr_range", storage=ctx.storage).trials) == 1


def test_test_rows_untouched_before_final(
    tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = _ctx(tmp_path, tiny)
    reads: list[str] = []
    real = stages.StageContext.test_tensors

    def guarded(self: stages.StageContext) -> tuple[torch.Tensor, torch.Tensor]:
        reads.append("test")
        return real(self)

    monkeypatch.setattr(stages.StageContext, "test_tensors", guarded)
    split = ctx.split
    seen_rows: set[int] = set()
    real_fit = train.fit

    def recording_fit(*args: Any, **kwargs: Any) -> train.FitResult:
        data = args[3]
        seen_rows.add(int(data.x_train.shape[0]) + int(data.x_val.shape[0]))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", recording_fit)
    for name in ("baseline", "lr_range", "weight_decay", "components"):
        stages.run_stage(ctx, name)
    assert reads == []
    n_train, n_val = split.train.size, split.val.size
    assert seen_rows <= {n_train + n_val, n_train}  # never more rows than train + val
    stages.run_stage(ctx, "final")
    assert reads == ["test"]


def test_predict_and_export_round_trip(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = _ctx(tmp_path, tiny)
    for name in stages.STAGES:
        stages.run_stage(ctx, name)
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
    model = predict.model_from_payload(payload)
    assert payload["class_names"][0] == "1920s" and payload["config"] == ctx_final_config(ctx)

    p = ctx.prepared()
    rows = p.split("stratified").test[:50]
    csv = tmp_path / "in.csv"
    years = p.years[rows]
    feats = np.asarray(p.features[rows], dtype=np.float64)
    with csv.open("w") as fh:
        fh.write("year," + ",".join(f"f{i}" for i in range(1, 91)) + "\n")
        for y, f in zip(years, feats, strict=True):
            fh.write(f"{y}," + ",".join(f"{v:.6f}" for v in f) + "\n")
    pred_csv = tmp_path / "pred.csv"
    assert cli.main(["-q", "predict", "--input", str(csv), "--output", str(pred_csv), *common]) == 0
    assert "accuracy against the year column" in capsys.readouterr().out
    import pandas as pd

    got = pd.read_csv(pred_csv)
    assert list(got.columns[:2]) == ["decade", "p_1920s"] and len(got) == 50
    assert np.allclose(got.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-4)
    scaler = p.scaler("stratified")
    with torch.no_grad():
        expected = torch.softmax(model(torch.as_tensor(scaler.transform(feats))), dim=1).numpy()
    assert np.allclose(got.iloc[:, 1:].to_numpy(), expected, atol=1e-5)

    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    code = cli.main(["predict", "--input", str(bad), *common])
    assert code == 2
    assert "3 columns, expected 90 features or year + 90 features" in capsys.readouterr().err


def ctx_final_config(ctx: stages.StageContext) -> dict[str, Any]:
    study = _base.find_study(ctx, "tiny.final")
    assert study is not None
    cfg: dict[str, Any] = study.user_attrs["config_out"]
    return cfg


def test_predict_before_final_says_what_to_run(tmp_path: Path, tiny: Path) -> None:
    ctx = _ctx(tmp_path, tiny)
    with pytest.raises(PrerequisiteError, match="run first: hpo run-stage final"):
        predict.export_model(ctx, tmp_path / "m.pt")


@pytest.mark.postgres
def test_pipeline_on_postgresql(tmp_path: Path, tiny: Path, postgres_url: str) -> None:
    ctx = _ctx(tmp_path, tiny, storage=postgres_url)
    result = pipeline.run_all(ctx)
    assert all(st["state"] == "complete" for st in result["stages"].values())
    assert result["test_metrics"]["accuracy"] > 0.4
    again = pipeline.run_all(ctx)
    assert {r["status"] for r in again["runs"]} == {"already complete"}


def test_stacked_stages_keep_every_trial_and_match_one_at_a_time(tmp_path: Path, tiny: Path) -> None:
    """weight_decay and components trained stacked (the default) vs one trial at a time
    (stack = 1): the same trials, params, intermediate values and scores."""
    one = tmp_path / "one.toml"
    one.write_text(
        TINY.replace(
            "epochs = 1\n\n[stages.components]", "epochs = 1\nstack = 1\n\n[stages.components]"
        ).replace('optimizer = ["adam", "sgd"]', 'optimizer = ["adam", "sgd"]\nstack = 1')
    )
    runs = {}
    for label, cfg in (("stacked", tiny), ("one", one)):
        (tmp_path / label).mkdir()
        ctx = _ctx(tmp_path / label, cfg)
        for stage in ("baseline", "lr_range", "weight_decay", "components"):
            stages.run_stage(ctx, stage)
        runs[label] = ctx
    for name in (
        "tiny.weight_decay",
        *(f"tiny.components.{s}" for s in ("init", "activation", "norm", "optimizer")),
    ):
        got, ref = (
            sorted(
                optuna.load_study(study_name=name, storage=runs[k].storage).get_trials(),
                key=lambda t: json.dumps(t.params, sort_keys=True),
            )
            for k in ("stacked", "one")
        )
        assert [t.params for t in got] == [t.params for t in ref]
        for a, b in zip(got, ref, strict=True):
            assert a.state == b.state == optuna.trial.TrialState.COMPLETE
            assert a.intermediate_values.keys() == b.intermediate_values.keys() and a.intermediate_values
            assert a.value == pytest.approx(b.value, abs=2 / 450)  # a borderline row at most
            assert a.user_attrs["config"] == b.user_attrs["config"]
        if name == "tiny.weight_decay":
            assert all(len(t.user_attrs["fold_scores"]) == 2 for t in got)
            assert got[0].user_attrs["train"]["stacked"] == 3
