"""The final model as an ensemble (``[stages.final] seeds = N, ensemble = true``): the ensemble's
test metrics at the top level with each member's beside; ``hpo predict`` on the test rows scores
what the stage stored; the model file holds every member; settings that cannot make an ensemble
are refused before anything runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import predict_test_rows

from hpo import cli
from hpo.pipeline import Pipeline
from hpo.tasks import Classification, Regression
from hpo.tuning import records


def _study(
    tmp_path: Path,
    *,
    task: str = "classification",
    final: str = "seeds = 3\nensemble = true",
    epochs: int = 4,
) -> Path:
    from sklearn.datasets import load_diabetes, load_digits

    table = tmp_path / "table.csv"
    if task == "classification":
        load_digits(as_frame=True).frame.to_csv(tmp_path / "table.csv", index=False)
        data = f'source = "csv"\npath = "{table}"\ntarget = "target"'
    else:
        load_diabetes(as_frame=True).frame.to_csv(tmp_path / "table.csv", index=False)
        data = f'source = "csv"\npath = "{table}"\ntarget = "target"\ntask = "regression"'
    cfg = tmp_path / "ens.toml"
    cfg.write_text(
        f'[pipeline]\nname = "ens"\n\n[data]\n{data}\nseed = 42\n\n[defaults]\nhidden = [32]\n'
        f'batch_size = 64\n\n[stages.final]\nkind = "final"\nepochs = {epochs}\n{final}\n'
    )
    return cfg


def _pipe(tmp_path: Path, cfg: Path) -> Pipeline:
    return Pipeline.load(cfg, storage=f"sqlite:///{tmp_path / 'hpo.db'}", artifacts=tmp_path / "artifacts")


def test_soft_voting_is_the_mean_of_the_members_probabilities() -> None:
    task = Classification(class_names=("a", "b", "c"))
    outs = [torch.randn(5, 3), torch.randn(5, 3) * 3, torch.randn(5, 3)]
    combined = task.combine(outs)
    want = torch.stack([torch.softmax(o.double(), 1) for o in outs]).mean(0)
    np.testing.assert_allclose(task.predictions(combined), want.numpy(), atol=1e-6)
    y = torch.tensor([0, 1, 2, 1, 0])
    loss = task.test_metrics(combined, y)["loss"]
    assert loss == pytest.approx(float(-torch.log(want[torch.arange(5), y]).mean()), rel=1e-5)
    reg = Regression(mean=10.0, std=2.0)
    values = [torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [-2.0]])]
    np.testing.assert_allclose(reg.predictions(reg.combine(values)), [10.0 + 2 * 2.0, 10.0 + 0.0])


def test_an_ensemble_stores_its_own_and_each_members_test_metrics(tmp_path: Path) -> None:
    cfg = _study(tmp_path)
    pipe = _pipe(tmp_path, cfg)
    pipe.run()
    m = pipe.status().test_metrics
    assert m is not None and m["ensemble"] == 3 and m["seeds"] == 3
    (trial,) = pipe.final_study().get_trials()
    members = trial.user_attrs[records.SEED_TEST_METRICS]
    assert len(members) == 3 and len({round(x["accuracy"], 6) for x in members}) >= 2  # seeds differ
    assert m["accuracy_mean"] == pytest.approx(np.mean([x["accuracy"] for x in members]))
    assert m["accuracy_sd"] == pytest.approx(np.std([x["accuracy"] for x in members], ddof=1))
    # -log is convex: the log-loss of the mean probabilities is at most the members' mean log-loss
    assert m["loss"] <= np.mean([x["loss"] for x in members]) + 1e-6

    model = pipe.final_model()
    assert model.ensemble and len(model.payloads) == 3
    # hpo predict on exactly the test rows scores what the stage stored for the ensemble
    prepared = pipe.dataset()
    args = ["--storage", f"sqlite:///{tmp_path / 'hpo.db'}", "--artifacts", str(tmp_path / "artifacts")]
    test_rows, pred, accuracy = predict_test_rows(
        cfg, tmp_path / "table.csv", prepared.split.test, tmp_path, args=args
    )
    assert accuracy == pytest.approx(m["accuracy"], abs=1e-12)
    # the ensemble is the mean of its members' probabilities, each member restored on its own
    x = test_rows.drop(columns="target").to_numpy()
    scaled = torch.as_tensor(model.scale(x))
    with torch.no_grad():
        probs = [torch.softmax(net(scaled).double(), 1) for net in model.models()]
    mean = torch.stack(probs).mean(0).numpy()
    # the stored top-level loss is the ensemble's own (of the mean probabilities), each member's its own
    y = test_rows["target"].to_numpy()
    rows = np.arange(len(y))
    assert m["loss"] == pytest.approx(-np.log(mean[rows, y]).mean(), rel=1e-5)
    member_loss = [float(-np.log(p.numpy()[rows, y]).mean()) for p in probs]
    assert member_loss == pytest.approx([x["loss"] for x in members], rel=1e-5)
    p_cols = [c for c in pred.columns if c.startswith("p_")]
    np.testing.assert_allclose(pred[p_cols].to_numpy(), mean, atol=2e-6)  # 6 decimals written
    member_acc = [float((p.argmax(1).numpy() == test_rows["target"].to_numpy()).mean()) for p in probs]
    assert member_acc == pytest.approx([x["accuracy"] for x in members], abs=1e-12)


def test_a_regression_ensemble_averages_values(tmp_path: Path) -> None:
    cfg = _study(tmp_path, task="regression", final="seeds = 2\nensemble = true", epochs=6)
    pipe = _pipe(tmp_path, cfg)
    pipe.run()
    m = pipe.status().test_metrics
    assert m is not None and m["ensemble"] == 2
    assert {"rmse_mean", "rmse_sd", "r2_mean", "mae_sd"} <= set(m)
    model = pipe.final_model()
    x = pd.read_csv(tmp_path / "table.csv").drop(columns="target").to_numpy()[:20]
    scaled = torch.as_tensor(model.scale(x))
    with torch.no_grad():
        each = [net(scaled)[:, 0].double() for net in model.models()]
    task = model.task_of()
    assert isinstance(task, Regression)
    want = task.units(torch.stack(each).mean(0).numpy())
    np.testing.assert_allclose(task.predictions(model.outputs(x)), want, rtol=1e-5)
    # the squared error is convex: the MSE of the mean value is at most the members' mean MSE
    (trial,) = pipe.final_study().get_trials()
    assert m["loss"] <= np.mean([s["loss"] for s in trial.user_attrs[records.SEED_TEST_METRICS]]) + 1e-6


def test_seeds_without_an_ensemble_keep_the_mean_and_save_one_model(tmp_path: Path) -> None:
    cfg = _study(tmp_path, final="seeds = 2")
    pipe = _pipe(tmp_path, cfg)
    pipe.run()
    m = pipe.status().test_metrics
    assert m is not None and "ensemble" not in m and m["seeds"] == 2
    assert m["accuracy"] == pytest.approx(m["accuracy_mean"])
    assert not pipe.final_model().ensemble


def test_an_ensemble_of_one_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _study(tmp_path, final="seeds = 1\nensemble = true")
    db = tmp_path / "hpo.db"
    code = cli.main(["-q", "run", "--config", str(cfg), "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "ensemble = true needs seeds >= 2 (got seeds = 1)" in err[0] and "Traceback" not in err[0]
    assert not db.exists() and not (tmp_path / "artifacts").exists()


def test_status_and_report_say_the_figures_are_the_ensembles(tmp_path: Path) -> None:
    from hpo.present import report

    cfg = _study(tmp_path, final="seeds = 2\nensemble = true")
    pipe = _pipe(tmp_path, cfg)
    pipe.run()
    m = pipe.status().test_metrics
    assert m is not None
    line = cli._test_line(m)
    assert (
        line.startswith(f"accuracy {m['accuracy']:.2%}")
        and "an ensemble of 2 models (the members: accuracy" in line
    )
    section = report.result_section(pipe)
    text = " ".join(str(b.get("text", "")) for b in section.blocks)
    assert "an ensemble of 2 models" in text and "the figures above are the ensemble's" in text
    assert not math.isnan(m["accuracy_sd"])


def test_the_dashboard_shows_each_member_beside_the_ensemble(tmp_path: Path) -> None:
    from hpo.present import figures

    pipe = _pipe(tmp_path, _study(tmp_path, final="seeds = 2\nensemble = true"))
    pipe.run()
    figs = dict(figures.final_figures(pipe.final_study()))
    fig = figs["final-members"]
    assert [round(y, 6) for y in fig.data[0].y] == [
        round(x["accuracy"], 6) for x in pipe.final_study().trials[0].user_attrs[records.SEED_TEST_METRICS]
    ]
    assert "the ensemble" in fig.layout.title.text


def test_a_final_study_made_before_ensembles_resumes_unless_it_becomes_one() -> None:
    stored = {"stage": {"kind": "final", "seeds": 3}}
    assert records.settings_drift(stored, {"stage": {"kind": "final", "seeds": 3, "ensemble": False}}) is None
    assert records.settings_drift(stored, {"stage": {"kind": "final", "seeds": 3, "ensemble": True}}) == (
        "stage.ensemble",
        False,
        True,
    )
