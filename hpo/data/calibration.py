"""How hard is a dataset? Majority class, multinomial logistic regression and the write-up's MLP;
for a regression target the training mean as a constant prediction, ridge regression and the MLP.

Used to calibrate the synthetic generator against the published numbers for the real data
(majority 58.02 %, tuned MLP 66.05 %), and by a test that re-checks it on a smaller draw; for a
regression pipeline, the baselines a tuned model is judged against on the same split.
``hpo data calibrate`` prints the result.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import accuracy_score, mean_absolute_error, mean_squared_error, r2_score

from hpo.data import labels as labels_mod
from hpo.data.cache import Prepared, prepare
from hpo.families.mlp import build_model
from hpo.sections import DataSettings
from hpo.settings import ModelConfig, OptimConfig, TrainConfig
from hpo.tasks import REGRESSION, Classification, Regression, task_kind
from hpo.training import TensorData, fit, predict_outputs


@dataclass(frozen=True, kw_only=True)
class CalibrationConfig:
    epochs: int = 15
    batch_size: int = 128
    patience: int = 5
    weight_decay: float = 1e-4  # the write-up's selected value
    logreg_max_iter: int = 500
    seed: int = 42


def calibrate(
    settings: DataSettings, *, config: CalibrationConfig | None = None, data_dir: Path | None = None
) -> dict[str, Any]:
    """Test-split accuracy of the majority class, logistic regression and the MLP (for a
    regression target: :func:`calibrate_regression`)."""
    cfg = config or CalibrationConfig()
    prepared = prepare(settings, data_dir=data_dir, progressbar=False)
    if not task_kind(prepared.task_name).has_classes:
        return calibrate_regression(prepared, cfg)
    split, scaler = prepared.split, prepared.scaler
    x_train = scaler.transform(prepared.features[split.train])
    x_val = scaler.transform(prepared.features[split.val])
    x_test = scaler.transform(prepared.features[split.test])
    y_train = np.asarray(prepared.labels[split.train], dtype=np.int64)
    y_val = np.asarray(prepared.labels[split.val], dtype=np.int64)
    y_test = np.asarray(prepared.labels[split.test], dtype=np.int64)

    t0 = time.perf_counter()
    linear = linear_references(prepared, logreg_max_iter=cfg.logreg_max_iter)
    t1 = time.perf_counter()
    task = Classification(tuple(prepared.class_names))
    model = build_model(
        ModelConfig(hidden=(256, 256), n_features=prepared.n_features, n_outputs=prepared.n_classes),
        seed=cfg.seed,
    )
    fitted = fit(
        model,
        OptimConfig(name="adam", lr=1e-3, weight_decay=cfg.weight_decay),
        TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, patience=cfg.patience, seed=cfg.seed),
        TensorData.from_numpy(x_train, y_train, x_val, y_val),
        task=task,
    )
    test = task.test_metrics(predict_outputs(fitted.model, torch.as_tensor(x_test)), torch.as_tensor(y_test))
    t2 = time.perf_counter()
    return {
        "source": prepared.meta["source"],
        "rows": prepared.rows,
        "train_rows": int(split.train.size),
        "test_rows": int(split.test.size),
        "majority_accuracy": linear["majority_accuracy"],
        "logreg_accuracy": linear["logreg_accuracy"],
        "mlp_accuracy": test["accuracy"],
        "mlp_loss": test["loss"],
        "mlp_balanced_accuracy": test["balanced_accuracy"],
        "mlp_macro_f1": test["macro_f1"],
        "mlp_epochs_run": fitted.history[-1].epoch,
        "logreg_seconds": round(t1 - t0, 1),
        "mlp_seconds": round(t2 - t1, 1),
        "mlp": "256x256 relu, Adam lr 1e-3, weight decay "
        f"{cfg.weight_decay:g}, batch {cfg.batch_size}, {cfg.epochs} epochs, patience {cfg.patience}",
    }


#: ridge's penalties, chosen by RidgeCV's efficient leave-one-out on the training rows
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 15))


def linear_references(prepared: Prepared, *, logreg_max_iter: int = 500) -> dict[str, Any]:
    """On the test rows, what needs no tuning: the majority class and multinomial logistic
    regression, or for a regression target the training mean and ridge regression (RidgeCV over
    :data:`RIDGE_ALPHAS`), each fitted on the standardised training rows."""
    split, scaler = prepared.split, prepared.scaler
    x_train = scaler.transform(prepared.features[split.train])
    x_test = scaler.transform(prepared.features[split.test])
    if task_kind(prepared.task_name).has_classes:
        y_train = np.asarray(prepared.labels[split.train], dtype=np.int64)
        y_test = np.asarray(prepared.labels[split.test], dtype=np.int64)
        logreg = LogisticRegression(max_iter=logreg_max_iter).fit(x_train, y_train)
        return {
            "majority_accuracy": float(np.mean(y_test == np.bincount(y_train).argmax())),
            "logreg_accuracy": float(accuracy_score(y_test, logreg.predict(x_test))),
        }
    assert prepared.targets is not None
    targets = np.asarray(prepared.targets, dtype=np.float64)
    t_train, t_test = targets[split.train], targets[split.test]
    ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit(x_train, t_train)
    return {
        "constant": _regression_scores(t_test, np.full(t_test.shape, float(np.mean(t_train)))),
        "ridge": _regression_scores(t_test, np.asarray(ridge.predict(x_test), dtype=np.float64)),
        "ridge_alpha": float(ridge.alpha_),
    }


def _regression_scores(y: npt.NDArray[np.float64], pred: npt.NDArray[np.float64]) -> dict[str, float]:
    return {
        "rmse": float(np.sqrt(mean_squared_error(y, pred))),
        "mae": float(mean_absolute_error(y, pred)),
        "r2": float(r2_score(y, pred)),
    }


def calibrate_regression(prepared: Prepared, cfg: CalibrationConfig) -> dict[str, Any]:
    """Test-split RMSE, MAE and R² (in the target's units) of the training mean as a constant
    prediction, ridge regression on the standardised features (scikit-learn's RidgeCV), and the
    write-up's MLP trained as a regressor (the target standardised on the training rows)."""
    split, scaler = prepared.split, prepared.scaler
    assert prepared.targets is not None
    x_train = scaler.transform(prepared.features[split.train])
    x_val = scaler.transform(prepared.features[split.val])
    x_test = scaler.transform(prepared.features[split.test])
    targets = np.asarray(prepared.targets, dtype=np.float64)
    y_train, y_val, y_test = targets[split.train], targets[split.val], targets[split.test]
    task = prepared.task
    assert isinstance(task, Regression)

    def scores(pred: npt.NDArray[np.float64]) -> dict[str, float]:
        return _regression_scores(y_test, pred)

    t0 = time.perf_counter()
    linear = linear_references(prepared)
    t1 = time.perf_counter()
    model = build_model(
        ModelConfig(hidden=(256, 256), n_features=prepared.n_features, n_outputs=1), seed=cfg.seed
    )

    fitted = fit(
        model,
        OptimConfig(name="adam", lr=1e-3, weight_decay=cfg.weight_decay),
        TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, patience=cfg.patience, seed=cfg.seed),
        TensorData.from_numpy(x_train, task.standardise(y_train), x_val, task.standardise(y_val)),
        task=task,
    )
    mlp_scores = scores(task.predictions(predict_outputs(fitted.model, torch.as_tensor(x_test))))
    t2 = time.perf_counter()
    return {
        "task": REGRESSION.name,
        "source": prepared.meta["source"],
        "rows": prepared.rows,
        "train_rows": int(split.train.size),
        "test_rows": int(split.test.size),
        "constant": linear["constant"],
        "ridge": linear["ridge"],
        "ridge_alpha": linear["ridge_alpha"],
        "mlp": mlp_scores,
        "mlp_epochs_run": fitted.history[-1].epoch,
        "ridge_seconds": round(t1 - t0, 1),
        "mlp_seconds": round(t2 - t1, 1),
        "mlp_model": "256x256 relu, Adam lr 1e-3, weight decay "
        f"{cfg.weight_decay:g}, batch {cfg.batch_size}, {cfg.epochs} epochs, patience {cfg.patience}",
    }


@dataclass(frozen=True, kw_only=True)
class NonlinearityConfig:
    """The check's protocol: at equal size, 5-fold stratified CV (decades below the 1960s merged
    into one stratum), logistic regression on standardised features against LightGBM."""

    rows: int = 7_000
    folds: int = 5
    draws: int = 5
    trees: int = 300
    learning_rate: float = 0.05
    leaves: int = 31
    min_child_samples: int = 50
    seed: int = 42


def boosting_gap(
    years: npt.NDArray[np.integer[Any]], features: npt.NDArray[np.floating[Any]], config: NonlinearityConfig
) -> float:
    """Mean CV accuracy of gradient boosting minus that of logistic regression (decade classes)."""
    import lightgbm
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    y = labels_mod.decades().apply(np.asarray(years), file="rows", column="year", first_line=1)
    strata = np.maximum(y, 3)  # the 1920s-1950s hold ~1 % of songs: one stratum
    gaps = []
    splitter = StratifiedKFold(n_splits=config.folds, shuffle=True, random_state=config.seed)
    for fit_idx, held_idx in splitter.split(features, strata):
        scaler = StandardScaler().fit(features[fit_idx])
        lr = LogisticRegression(max_iter=2000).fit(scaler.transform(features[fit_idx]), y[fit_idx])
        lr_acc = accuracy_score(y[held_idx], lr.predict(scaler.transform(features[held_idx])))
        gb = lightgbm.LGBMClassifier(
            n_estimators=config.trees,
            learning_rate=config.learning_rate,
            num_leaves=config.leaves,
            min_child_samples=config.min_child_samples,
            random_state=config.seed,
            verbose=-1,
            n_jobs=2,
        ).fit(features[fit_idx], y[fit_idx])
        gb_acc = accuracy_score(y[held_idx], gb.predict(features[held_idx]))
        gaps.append(gb_acc - lr_acc)
    return float(np.mean(gaps))


def nonlinearity(
    *, config: NonlinearityConfig | None = None, real_file: Path | None = None, spec: Any = None
) -> dict[str, Any]:
    """The gradient-boosting-minus-logistic-regression gap on ``draws`` synthetic draws of
    ``rows`` rows (and on the real sample file, when given): how much of the decade signal only a
    nonlinear model reaches. The stand-in should match the real rows' gap within 1 point."""
    from hpo.data import _parse, synthetic

    cfg = config or NonlinearityConfig()
    gaps = []
    for draw_seed in range(cfg.draws):
        s = spec or synthetic.SyntheticSpec()
        d = synthetic.draw(dataclasses.replace(s, rows=cfg.rows, seed=1000 + draw_seed))
        gaps.append(boosting_gap(d.years, d.features, cfg))
    out: dict[str, Any] = {
        "rows": cfg.rows,
        "folds": cfg.folds,
        "draws": cfg.draws,
        "gaps": [round(g, 4) for g in gaps],
        "gap_mean": float(np.mean(gaps)),
        "real_gap": None,
    }
    if real_file is not None:
        raw = _parse.parse_uci(real_file)
        keep = np.arange(raw.years.size)
        if keep.size > cfg.rows:  # the same size as a draw: the gap depends on the rows available
            keep = np.sort(np.random.default_rng(cfg.seed).choice(keep.size, cfg.rows, replace=False))
        out["real_gap"] = boosting_gap(raw.years[keep], raw.features[keep].astype(np.float64), cfg)
        out["real_rows"] = int(keep.size)
        out["real_file"] = str(real_file)
        out["within_1_point"] = abs(out["gap_mean"] - out["real_gap"]) <= 0.01
    return out
