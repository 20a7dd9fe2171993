"""What a user sees of a search: every trial, complete and pruned (marked, at its last reported
value, with the epoch where it stopped), every trial's learning curve with the pruner's rungs,
axes spanning the data; the same for k-fold stages whose points were pruned between folds."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from hpo.pipeline import Pipeline
from hpo.present import figures
from hpo.settings import RunConfig
from hpo.stages.grid import GridCvSettings
from hpo.stages.grid_cv import GridCv
from hpo.stages.search import Dimension, Search, SearchSettings
from hpo.tuning import records

SPACE = {
    "lr": FloatDistribution(1e-4, 1e-2, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
    "norm": CategoricalDistribution(["none", "layernorm"]),
}
EPOCHS = 15
RUNGS = [3, 9]  # successive halving, min_resource 3, reduction factor 3, up to 15 epochs
# (trial's final accuracy, the epoch the pruner stopped it at or None): 2 complete, 4 pruned
PLAN: list[tuple[float, int | None]] = [
    (0.66, None),
    (0.52, 3),
    (0.61, 9),
    (0.48, 3),
    (0.64, None),
    (0.57, 9),
]
SELECTED_TRIAL = 0


def _accuracy(final: float, epoch: int) -> float:
    return final * (1 - 0.5 * math.exp(-epoch / 3))


def _search_study() -> optuna.Study:
    """A search as the search stage leaves it: a value reported every epoch, pruned trials told
    PRUNED after their last report, complete ones told their peak, the selection stored."""
    study = optuna.create_study(
        study_name="p.search", storage=optuna.storages.InMemoryStorage(), direction="maximize"
    )
    study.set_user_attr(records.STAGE, "search")
    for i, (final, stop) in enumerate(PLAN):
        trial = study.ask(SPACE)
        history = []
        for epoch in range(1, (stop or EPOCHS) + 1):
            value = _accuracy(final, epoch)
            trial.report(value, epoch)
            history.append({"epoch": epoch, "val_loss": 1.0, "val_accuracy": value})
        trial.set_user_attr(records.HISTORY, history)
        if stop is not None:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, _accuracy(final, EPOCHS))
        if i == SELECTED_TRIAL:
            params = study.trials[i].params
    records.write_selection(
        study,
        records.Selection(
            selected={**params, "peak_val_accuracy": _accuracy(PLAN[SELECTED_TRIAL][0], EPOCHS)},
            reason="test",
            config_out=RunConfig(),
        ),
    )
    return study


def _values(trials: list[optuna.trial.FrozenTrial]) -> list[float]:
    return [v for t in trials for v in t.intermediate_values.values()]


def _within_data(axis_range: Any, values: list[float]) -> None:
    """The axis spans the values, with a margin of at most a tenth of their spread."""
    lo, hi = axis_range
    spread = max(values) - min(values)
    assert lo <= min(values) and hi >= max(values)
    assert min(values) - lo <= 0.1 * spread and hi - max(values) <= 0.1 * spread


def test_rungs_come_from_the_pruners_settings() -> None:
    sh = optuna.pruners.SuccessiveHalvingPruner(min_resource=3, reduction_factor=3)
    assert figures.pruner_rungs(sh, 15) == [3, 9]
    late = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=2, reduction_factor=2, min_early_stopping_rate=1
    )
    assert figures.pruner_rungs(late, 20) == [4, 8, 16]
    # Hyperband: every bracket's rungs (bracket b starts at min_resource * 3 ** b), up to max_resource
    assert figures.pruner_rungs(optuna.pruners.HyperbandPruner(1, 15, 3), 15) == [1, 3, 9]
    assert figures.pruner_rungs(optuna.pruners.HyperbandPruner(1, 4, 3), 15) == [1, 3]
    assert figures.pruner_rungs(optuna.pruners.SuccessiveHalvingPruner(), 15) == []  # "auto"
    assert figures.pruner_rungs(optuna.pruners.MedianPruner(), 15) == []
    assert figures.rung_steps(1, 3, 0) == [] and figures.rung_steps(0, 3, 10) == []


def test_the_history_shows_every_trial_pruned_ones_marked_where_they_stopped() -> None:
    study = _search_study()
    fig = figures.search_history(study, list(SPACE), metric="accuracy", rungs=RUNGS)
    points = {tr.name: tr for tr in fig.data if tr.mode == "markers"}
    assert set(points) == {"complete", "pruned", "selected"}
    assert sorted(n for tr in points.values() for n in tr.x) == list(range(len(PLAN)))
    pruned = points["pruned"]
    assert pruned.marker.symbol == "x" and pruned.marker.color == figures.PRUNED
    assert list(pruned.x) == [i for i, (_, stop) in enumerate(PLAN) if stop is not None]
    # at its last reported value, the hover naming the epoch and the rung
    assert list(pruned.y) == pytest.approx([_accuracy(f, s) for f, s in PLAN if s is not None])
    assert "pruned at epoch 3 (rung 1 of 2)" in pruned.text[0]
    assert "pruned at epoch 9 (rung 2 of 2)" in pruned.text[1]
    assert list(points["selected"].x) == [SELECTED_TRIAL] and points["complete"].marker.color == figures.OTHER
    shown = [v for tr in points.values() for v in tr.y]
    _within_data(fig.layout.yaxis.range, shown)
    assert fig.layout.yaxis.range[1] < 1.0  # not Optuna's fixed axis up to 1.5


def test_the_learning_curves_show_every_trial_and_the_rungs() -> None:
    study = _search_study()
    fig = figures.search_curves(study, list(SPACE), metric="accuracy", rungs=RUNGS)
    assert len(fig.data) == len(PLAN)
    for trace, (_, stop) in zip(fig.data, PLAN, strict=True):
        assert list(trace.x) == list(range(1, (stop or EPOCHS) + 1))
        if stop is not None:
            assert trace.line.dash == "dot" and trace.line.color == figures.PRUNED
            assert trace.marker.symbol[-1] == "x" and f"pruned at epoch {stop}" in trace.hovertemplate
        else:
            assert trace.line.dash == "solid"
    assert fig.data[SELECTED_TRIAL].line.color == figures.SELECTED
    rungs = [shape.x0 for shape in fig.layout.shapes if shape.x0 == shape.x1]
    assert rungs == RUNGS
    _within_data(fig.layout.yaxis.range, _values(study.trials))
    assert list(fig.layout.xaxis.range) == [0.5, EPOCHS + 0.5]


def test_parallel_coordinates_show_every_trial_coloured_by_how_it_ended() -> None:
    study = _search_study()
    fig = figures.search_parallel(study, list(SPACE), metric="accuracy", rungs=RUNGS)
    (par,) = fig.data
    assert isinstance(par, go.Parcoords)
    dims = {d.label: d for d in par.dimensions}
    assert set(dims) == {"lr (log)", "dropout", "norm", "epochs trained", "validation accuracy"}
    assert all(len(d["values"]) == len(PLAN) for d in par.dimensions)
    assert list(dims["epochs trained"]["values"]) == [stop or EPOCHS for _, stop in PLAN]
    codes = [0 if stop is not None else 1 for _, stop in PLAN]
    codes[SELECTED_TRIAL] = 2
    assert list(par.line.color) == codes
    score = dims["validation accuracy"]
    _within_data(score.range, list(score["values"]))
    assert list(dims["norm"].ticktext) == ["none", "layernorm"]
    lr = [t.params["lr"] for t in study.trials]
    assert list(dims["lr (log)"]["values"]) == pytest.approx([math.log10(v) for v in lr])


def test_the_search_stage_draws_its_pruners_rungs() -> None:
    settings = SearchSettings(
        space={"lr": Dimension(low=1e-4, high=1e-2, log=True), "dropout": Dimension(low=0.0, high=0.5)},
        pruner="successive_halving",
        epochs=EPOCHS,
        min_epochs=3,
    )
    study = _search_study()
    figs = dict(Search("search", settings).figures(study))
    assert {"search-history", "search-curves", "search-parallel"} <= set(figs)
    curves = figs["search-curves"]
    assert [s.x0 for s in curves.layout.shapes] == RUNGS
    hyperband = settings.model_copy(update={"pruner": "hyperband", "min_epochs": 1})
    curves = dict(Search("search", hyperband).figures(study))["search-curves"]
    assert [s.x0 for s in curves.layout.shapes] == [1, 3, 9]
    median = settings.model_copy(update={"pruner": "median"})
    assert not dict(Search("search", median).figures(study))["search-curves"].layout.shapes
    assert "**Trials:** 2 complete, 4 pruned" in figures.stage_note(study, "search")


FOLDS = 4
# weight decay -> the folds it ran (its scores) and whether the median pruner stopped it
GRID: dict[float, tuple[list[float], bool]] = {
    0.0: ([0.60, 0.62, 0.61, 0.63], False),
    1e-4: ([0.64, 0.65, 0.63, 0.66], False),
    1e-2: ([0.40, 0.42], True),
    1e-1: ([0.30], True),
}


def _grid_study() -> optuna.Study:
    """A k-fold stage as it leaves its study under the median pruner: each point's fold scores
    reported step by step (folds 0, 1, ...), pruned points told PRUNED after their last fold."""
    study = optuna.create_study(
        study_name="p.weight_decay", storage=optuna.storages.InMemoryStorage(), direction="maximize"
    )
    study.set_user_attr(records.STAGE, "weight_decay")
    dist: dict[str, BaseDistribution] = {"weight_decay": CategoricalDistribution(list(GRID))}
    for wd, (scores, pruned) in GRID.items():
        study.enqueue_trial({"weight_decay": wd})
        trial = study.ask(dist)
        for k, value in enumerate(scores):
            trial.set_user_attr(records.FOLD_SCORES, scores[: k + 1])
            trial.report(value, k)
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            continue
        trial.set_user_attr(records.MEAN, sum(scores) / len(scores))
        trial.set_user_attr(records.STD, 0.01)
        study.tell(trial, sum(scores) / len(scores))
    return study


def test_k_fold_figures_show_pruned_points_and_their_folds() -> None:
    study = _grid_study()
    stage = GridCv(
        "weight_decay", GridCvSettings(grid={"weight_decay": list(GRID)}, folds=FOLDS, pruner="median")
    )
    figs = dict(stage.figures(study))
    assert set(figs) == {"weight-decay-cv", "weight-decay-folds"}
    cv = figs["weight-decay-cv"]
    by_name = {tr.name: tr for tr in cv.data}
    assert list(by_name["mean"].x) == ["0.0", "0.0001"]
    pruned = by_name["pruned (mean of its folds)"]
    assert list(pruned.x) == ["0.01", "0.1"] and pruned.marker.symbol == "x"
    assert list(pruned.y) == pytest.approx([0.41, 0.30])
    assert list(pruned.text) == ["pruned after fold 2 of 4", "pruned after fold 1 of 4"]
    assert list(cv.layout.xaxis.categoryarray) == ["0.0", "0.0001", "0.01", "0.1"]
    dots = [tr for tr in cv.data if tr.name == "single folds"]
    assert len(dots) == FOLDS and sum(y is not None for tr in dots for y in tr.y) == 11
    curves = figs["weight-decay-folds"]
    assert len(curves.data) == len(GRID)
    for trace, (scores, was_pruned) in zip(curves.data, GRID.values(), strict=True):
        assert list(trace.x) == list(range(1, len(scores) + 1))
        assert (trace.line.dash == "dot") == was_pruned
    assert "pruned at fold 2" in curves.data[2].hovertemplate
    _within_data(curves.layout.yaxis.range, [v for s, _ in GRID.values() for v in s])
    # without a pruner, the stage keeps its one figure
    plain = GridCv("weight_decay", GridCvSettings(grid={"weight_decay": list(GRID)}, folds=FOLDS))
    assert [fid for fid, _ in plain.figures(study)] == ["weight-decay-cv"]


PIPELINE = """
[pipeline]
name = "seen"

[data]
source = "synthetic"
rows = 3000
seed = 42

[defaults]
hidden = [32, 32]
batch_size = 64

[stages.search]
kind = "search"
n_trials = 6
batch = 3
sampler = "tpe"
pruner = "successive_halving"
epochs = 4
min_epochs = 1

[stages.search.space]
lr = { low = 1e-4, high = 3e-3, log = true }
dropout = { low = 0.0, high = 0.4 }
hidden = { choices = [[32, 32], [64, 32]] }
"""


def test_a_pruned_searchs_stored_figures_show_every_trial(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import optuna_dashboard._custom_plot_data as plot_data

    caplog.set_level(logging.INFO, logger="hpo")

    cfg = tmp_path / "seen.toml"
    cfg.write_text(PIPELINE)
    pipe = Pipeline.load(
        cfg,
        storage=f"sqlite:///{tmp_path / 'hpo.db'}",
        artifacts=tmp_path / "a",
        data_dir=Path(os.environ["HPO_DATA_DIR"]),
    )
    pipe.run()
    study = optuna.load_study(study_name="seen.search", storage=pipe.ctx.storage)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    pruned = [t.number for t in trials if t.state == TrialState.PRUNED]
    assert len(trials) == 6 and pruned  # the pruner did act
    stored = plot_data.get_plotly_graph_objects(pipe.ctx.storage.get_study_system_attrs(study._study_id))
    figs = {fid: go.Figure(json.loads(text)) for fid, text in stored.items()}
    assert {"search-history", "search-curves", "search-parallel"} <= set(figs)
    points = [tr for tr in figs["search-history"].data if tr.mode == "markers"]
    assert sorted(n for tr in points for n in tr.x) == sorted(t.number for t in trials)
    (marked,) = [tr for tr in points if tr.name == "pruned"]
    assert sorted(marked.x) == pruned and all("pruned at epoch" in text for text in marked.text)
    curves = figs["search-curves"]
    assert len(curves.data) == len(trials)
    assert [s.x0 for s in curves.layout.shapes] == [1, 3]  # min_epochs 1, reduction factor 3, 4 epochs
    _within_data(curves.layout.yaxis.range, _values(trials))
    (par,) = figs["search-parallel"].data
    assert all(len(d["values"]) == len(trials) for d in par.dimensions)
    # the study names its objective (optuna-dashboard, Optuna's plots); numerics said once at INFO
    assert study.metric_names == ["val_accuracy"]
    numerics = [r for r in caplog.records if r.levelno >= logging.INFO and "precision" in r.getMessage()]
    said = [r for r in caplog.records if r.levelno >= logging.INFO and " trains in " in r.getMessage()]
    assert numerics == [] and len(said) == 1
