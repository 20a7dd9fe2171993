"""Stage ``weight_decay``: each grid value scored by stratified k-fold CV on the training rows."""

from __future__ import annotations

from typing import Literal

import numpy as np
import optuna

from hpo import data, train
from hpo.stages import _base

DIRECTION: Literal["minimize", "maximize"] = "maximize"


def studies(ctx: _base.StageContext) -> list[str]:
    return [_base.study_name(ctx.pipeline, "weight_decay")]


def run(ctx: _base.StageContext, base: _base.Config) -> optuna.Study:
    stage = ctx.pipeline.weight_decay
    grid = list(stage.grid)
    points: list[_base.Point] = [{"weight_decay": v} for v in grid]
    x, y = ctx.train_rows()
    folds = list(data.cv_folds(y, n_splits=stage.folds, seed=base["seed"]))
    label = studies(ctx)[0]
    tcfg = train.TrainConfig(epochs=stage.epochs, batch_size=base["batch_size"], seed=base["seed"])

    def objective(trial: optuna.Trial, point: _base.Point) -> float:
        cfg = {**base, "weight_decay": float(point["weight_decay"])}
        trial.set_user_attr("config", cfg)
        trial.set_user_attr("train", {**tcfg.to_dict(), "folds": stage.folds})
        scores: list[float] = []
        for k, (fit_idx, held_idx) in enumerate(folds):
            scaler = data.Scaler.fit(x[fit_idx])  # refit on each fold's training part
            tensors = train.TensorData.from_numpy(
                scaler.transform(x[fit_idx]), y[fit_idx], scaler.transform(x[held_idx]), y[held_idx]
            )
            result = train.fit(
                _base.model_config(cfg),
                _base.optim_config(cfg),
                tcfg,
                tensors,
                callbacks=[
                    _base.progress_callback(f"{label} trial {trial.number} fold {k + 1}", tcfg.epochs)
                ],
            )
            scores.append(result.history[-1].val_accuracy)
            trial.set_user_attr("fold_scores", scores)
            trial.report(scores[-1], k)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {k + 1}")
        trial.set_user_attr("mean", float(np.mean(scores)))
        trial.set_user_attr("std", float(np.std(scores)))
        return float(np.mean(scores))

    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if stage.pruner == "median" else None
    study = _base.run_points(
        ctx,
        label,
        points=points,
        choices={"weight_decay": grid},
        objective=objective,
        direction=DIRECTION,
        pruner=pruner,
    )
    if not _base.is_complete(study):
        best = max(_base.finished(study, points, ["weight_decay"]), key=lambda t: t.user_attrs["mean"])
        _base.mark_complete(
            study,
            stage="weight_decay",
            selected={
                "weight_decay": best.params["weight_decay"],
                "cv_mean_accuracy": best.user_attrs["mean"],
                "cv_std_accuracy": best.user_attrs["std"],
            },
            config_out=best.user_attrs["config"],
            why=f"best mean accuracy over {stage.folds}-fold stratified CV",
        )
    return study
