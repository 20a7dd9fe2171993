"""Selections: every selecting kind picks the best under its rule (ties to the first point, pruned
points ignored), says how sure it is, and keep_unless_better keeps the carried-in value unless a
challenger wins beyond noise. Trials are made with known values; nothing trains."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import pytest
import torch
from helpers import classes
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy import stats
from sklearn import metrics as skm

from hpo.settings import RunConfig
from hpo.stages import KINDS
from hpo.tasks import Regression
from hpo.tasks.classification import _fast_metric
from hpo.tuning import records

CFG = RunConfig()
Y = np.random.default_rng(0).integers(0, 4, 2000)
STUDY_ATTRS = {records.VAL_LABELS: records.pack_labels(Y), records.N_CLASSES: 4}


def _predictions(accuracy: float, seed: int) -> np.ndarray:
    """Predictions of Y that are right on about ``accuracy`` of the rows."""
    r = np.random.default_rng(seed)
    wrong = r.random(Y.size) > accuracy
    return np.where(wrong, (Y + 1) % 4, Y)


def _trial(
    number: int,
    params: dict[str, Any],
    value: float | None,
    *,
    state: TrialState = TrialState.COMPLETE,
    attrs: dict[str, Any] | None = None,
) -> FrozenTrial:
    dists: dict[str, BaseDistribution] = {k: CategoricalDistribution([v]) for k, v in params.items()}
    point = {k: v for k, v in params.items() if k in RunConfig.model_fields}
    if "architecture" in params:
        point["hidden"] = [int(h) for h in str(params["architecture"]).split("x")]
    cfg = CFG.with_point(point)
    t = optuna.trial.create_trial(
        params=params,
        distributions=dists,
        value=value if state == TrialState.COMPLETE else None,
        state=state,
        user_attrs={records.CONFIG: cfg.to_record(), **(attrs or {})},
    )
    t.number = number
    return t


def _stage(kind: str, **settings: Any) -> Any:
    cls = KINDS[kind]
    return cls("s", cls.settings_model.model_validate({"kind": kind, **settings}))


def test_baseline_takes_the_lowest_loss_and_the_first_on_a_tie() -> None:
    stage = _stage("baseline", architectures=[[16], [32], [64]])
    preds = {a: records.pack_labels(_predictions(0.5, i)) for i, a in enumerate(("16", "32", "64"))}
    losses = records.pack_floats(np.full(Y.size, 1.0))
    trials = [
        _trial(
            0,
            {"architecture": "16"},
            1.30,
            attrs={records.VAL_PREDICTIONS: preds["16"], records.VAL_LOSSES: losses},
        ),
        _trial(
            1,
            {"architecture": "32"},
            1.10,
            attrs={records.VAL_PREDICTIONS: preds["32"], records.VAL_LOSSES: losses},
        ),
        _trial(
            2,
            {"architecture": "64"},
            1.10,
            attrs={records.VAL_PREDICTIONS: preds["64"], records.VAL_LOSSES: losses},
        ),
    ]
    selection = stage.select(trials, CFG, STUDY_ATTRS)
    assert selection.selected["architecture"] == "32" and selection.config_out.hidden == (32,)
    reordered = stage.select(trials[::-1], CFG, STUDY_ATTRS)
    assert reordered.selected["architecture"] == "32"  # a tie goes to the earlier point, in any order
    assert selection.evidence is not None and selection.evidence.runner_up == {"architecture": "64"}


def test_grid_cv_takes_the_best_mean_ignores_pruned_points_and_says_how_sure() -> None:
    stage = _stage("grid_cv", grid={"weight_decay": [0.0, 1e-4, 1e-2]}, folds=5)
    folds = {
        0.0: [0.60, 0.61, 0.62, 0.60, 0.61],
        1e-4: [0.63, 0.64, 0.63, 0.62, 0.64],
        1e-2: [0.90, 0.90, 0.90, 0.90, 0.90],
    }
    trials = [
        _trial(
            i,
            {"weight_decay": wd},
            float(np.mean(f)),
            attrs={records.FOLD_SCORES: f, records.MEAN: float(np.mean(f)), records.STD: float(np.std(f))},
        )
        for i, (wd, f) in enumerate(folds.items())
    ]
    trials[2] = _trial(2, {"weight_decay": 1e-2}, None, state=TrialState.PRUNED)
    selection = stage.select(trials, CFG, {})
    assert selection.selected["weight_decay"] == 1e-4
    assert selection.config_out.weight_decay == 1e-4
    ev = selection.evidence
    assert ev is not None and ev.runner_up == {"weight_decay": 0.0} and ev.n == 5
    diffs = np.array(folds[1e-4]) - np.array(folds[0.0])
    se = np.sqrt((1 / 5 + 1 / 4) * diffs.var(ddof=1))  # Nadeau-Bengio: n_test / n_train = 1 / (k - 1)
    half = stats.t.ppf(0.975, 4) * se
    assert ev.difference == pytest.approx(diffs.mean()) and ev.low == pytest.approx(diffs.mean() - half)
    assert not ev.within_noise and "corrected resampled t-test" in ev.method


def test_grid_cv_minimises_a_loss() -> None:
    stage = _stage("grid_cv", grid={"weight_decay": [0.0, 1e-4]}, folds=2, metric="loss")
    trials = [
        _trial(
            0,
            {"weight_decay": 0.0},
            0.9,
            attrs={records.FOLD_SCORES: [0.9, 0.9], records.MEAN: 0.9, records.STD: 0.0},
        ),
        _trial(
            1,
            {"weight_decay": 1e-4},
            0.8,
            attrs={records.FOLD_SCORES: [0.8, 0.8], records.MEAN: 0.8, records.STD: 0.0},
        ),
    ]
    assert stage.select(trials, CFG, {}).selected["weight_decay"] == 1e-4


@pytest.mark.parametrize("kind", ["sweep", "search"])
def test_sweep_and_search_take_the_highest_score_with_bootstrap_evidence(kind: str) -> None:
    settings: dict[str, Any] = (
        {"choices": {"dropout": [0.0, 0.1, 0.3]}}
        if kind == "sweep"
        else {"space": {"dropout": {"low": 0.0, "high": 0.5}}}
    )
    stage = _stage(kind, **settings)
    accs = {0.0: 0.50, 0.1: 0.70, 0.3: 0.69}
    trials = []
    for i, (d, acc) in enumerate(accs.items()):
        pred = _predictions(acc, i)
        real = float(np.mean(pred == Y))
        trials.append(
            _trial(i, {"dropout": d}, real, attrs={records.VAL_PREDICTIONS: records.pack_labels(pred)})
        )
    selection = stage.select(trials, CFG, STUDY_ATTRS)
    best = max(trials, key=lambda t: t.value or 0.0)
    assert (
        selection.selected["dropout"] == best.params["dropout"]
        and selection.config_out.dropout == best.params["dropout"]
    )
    ev = selection.evidence
    assert ev is not None and "paired bootstrap over 2,000 validation rows" in ev.method
    second = sorted(trials, key=lambda t: -(t.value or 0.0))[1]
    assert ev.runner_up == {"dropout": second.params["dropout"]}
    assert ev.difference == pytest.approx((best.value or 0.0) - (second.value or 0.0))
    assert ev.within_noise  # 0.70 vs 0.69 on 2,000 rows: about one standard error


def test_keep_unless_better_keeps_the_carried_in_value_within_noise_and_not_beyond() -> None:
    stage = _stage("sweep", choices={"dropout": [0.0, 0.1]}, select="keep_unless_better")
    base = _predictions(0.60, 1)
    close = base.copy()
    close[:10] = Y[:10]  # a few rows better: within noise
    far = _predictions(0.80, 2)
    incumbent = _trial(
        0,
        {"dropout": 0.0},
        float(np.mean(base == Y)),
        attrs={records.VAL_PREDICTIONS: records.pack_labels(base)},
    )
    near = _trial(
        1,
        {"dropout": 0.1},
        float(np.mean(close == Y)),
        attrs={records.VAL_PREDICTIONS: records.pack_labels(close)},
    )
    kept = stage.select([incumbent, near], CFG, STUDY_ATTRS)
    assert (near.value or 0) > (incumbent.value or 0) and kept.selected["dropout"] == 0.0
    assert (
        "kept the carried-in value" in kept.reason
        and kept.evidence is not None
        and kept.evidence.difference < 0
    )
    better = _trial(
        1,
        {"dropout": 0.1},
        float(np.mean(far == Y)),
        attrs={records.VAL_PREDICTIONS: records.pack_labels(far)},
    )
    taken = stage.select([incumbent, better], CFG, STUDY_ATTRS)
    assert taken.selected["dropout"] == 0.1 and "beats the carried-in value beyond noise" in taken.reason
    plain = _stage("sweep", choices={"dropout": [0.0, 0.1]}).select([incumbent, near], CFG, STUDY_ATTRS)
    assert plain.selected["dropout"] == 0.1  # the write-up's rule takes the higher score


def test_seeds_are_compared_pairwise() -> None:
    stage = _stage("sweep", choices={"dropout": [0.0, 0.1]}, seeds=3)
    a = _trial(0, {"dropout": 0.0}, 0.60, attrs={records.SEED_SCORES: [0.60, 0.61, 0.59]})
    b = _trial(1, {"dropout": 0.1}, 0.64, attrs={records.SEED_SCORES: [0.64, 0.65, 0.63]})
    selection = stage.select([a, b], CFG, STUDY_ATTRS)
    ev = selection.evidence
    assert selection.selected["dropout"] == 0.1 and ev is not None
    assert ev.method == "paired t-interval over 3 seeds" and ev.difference == pytest.approx(0.04)
    assert ev.low == pytest.approx(0.04) and ev.high == pytest.approx(0.04)  # the same gap on every seed


@pytest.mark.parametrize("metric", ["balanced_accuracy", "macro_f1"])
def test_bootstrap_metrics_match_scikit_learn(metric: str) -> None:
    a, b = _predictions(0.7, 5), _predictions(0.6, 6)
    fn = (
        skm.balanced_accuracy_score
        if metric == "balanced_accuracy"
        else lambda y, p: skm.f1_score(y, p, average="macro")
    )
    assert _fast_metric(metric, Y, a, 4) == pytest.approx(fn(Y, a))
    diff, low, high = classes(4).paired_bootstrap(metric, Y, a, b)
    assert diff == pytest.approx(fn(Y, a) - fn(Y, b)) and low < diff < high


@pytest.mark.parametrize("metric", ["rmse", "mae", "r2"])
def test_regression_bootstrap_is_in_the_targets_units_and_oriented_by_direction(metric: str) -> None:
    """A regressor's candidates compared by a paired bootstrap over the validation rows (the
    metrics in the target's units: standardised values times the target's sd), the difference
    oriented so that larger favours the selected one (lower RMSE and MAE, higher R²)."""
    r = np.random.default_rng(3)
    y = r.normal(size=3000)
    good, bad = y + r.normal(scale=0.5, size=y.size), y + r.normal(scale=0.7, size=y.size)
    task = Regression(mean=2000.0, std=10.0)
    truth, pg = y * 10 + 2000, good * 10 + 2000
    expected = {
        "rmse": np.sqrt(skm.mean_squared_error(truth, pg)),
        "mae": skm.mean_absolute_error(truth, pg),
        "r2": skm.r2_score(truth, pg),
    }[metric]
    assert task.metric(metric, y, good) == pytest.approx(expected)
    attrs = {
        records.VAL_LABELS: task.pack_predictions(torch.as_tensor(y, dtype=torch.float32)),
        records.TASK: task.to_record(),
    }
    stage = _stage("sweep", choices={"width": [1, 2]}, metric=metric)
    trials = [
        _trial(
            0,
            {"width": 1},
            task.metric(metric, y, bad),
            attrs={records.VAL_PREDICTIONS: task.pack_predictions(torch.as_tensor(bad, dtype=torch.float32))},
        ),
        _trial(
            1,
            {"width": 2},
            task.metric(metric, y, good),
            attrs={
                records.VAL_PREDICTIONS: task.pack_predictions(torch.as_tensor(good, dtype=torch.float32))
            },
        ),
    ]
    selection = stage.select(trials, CFG, attrs)
    ev = selection.evidence
    assert selection.selected["width"] == 2 and ev is not None
    gap = task.metric(metric, y, good) - task.metric(metric, y, bad)
    assert ev.difference == pytest.approx(gap if metric == "r2" else -gap, rel=1e-3)
    assert 0 < ev.low < ev.difference < ev.high and not ev.within_noise


def test_a_search_stage_ignores_pruned_trials() -> None:
    stage = _stage("search", space={"lr": {"low": 1e-4, "high": 1e-1, "log": True}})
    pred = records.pack_labels(_predictions(0.5, 1))
    trials = [
        optuna.trial.create_trial(
            params={"lr": 0.01},
            distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True)},
            state=TrialState.PRUNED,
            intermediate_values={1: 0.99},
            user_attrs={records.CONFIG: CFG.to_record()},
        ),
        _trial(1, {"lr": 0.001}, 0.5, attrs={records.VAL_PREDICTIONS: pred}),
    ]
    assert stage.select(trials, CFG, STUDY_ATTRS).selected["lr"] == 0.001
