"""Stage ``weight_decay``: each grid value scored by stratified k-fold CV on the training rows."""

from __future__ import annotations

from typing import Literal

import numpy as np
import optuna

from hpo import data, stacked, train
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
    tcfg = train.TrainConfig(
        epochs=stage.epochs,
        batch_size=base["batch_size"],
        seed=base["seed"],
        precision=base.get("precision", "fp32"),
    )
    cache: list[train.TensorData] = []

    def fold_tensors() -> list[train.TensorData]:
        """Each fold's rows, scaled by a scaler fit on that fold's training part."""
        if not cache:
            for fit_idx, held_idx in folds:
                scaler = data.Scaler.fit(x[fit_idx])
                cache.append(
                    train.TensorData.from_numpy(
                        scaler.transform(x[fit_idx]), y[fit_idx], scaler.transform(x[held_idx]), y[held_idx]
                    )
                )
        return cache

    def objective(trial: optuna.Trial, point: _base.Point) -> float:
        cfg = {**base, "weight_decay": float(point["weight_decay"])}
        trial.set_user_attr("config", cfg)
        trial.set_user_attr("train", {**tcfg.to_dict(), "folds": stage.folds})
        scores: list[float] = []
        for k, tensors in enumerate(fold_tensors()):
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

    def stacked_objective(batch: list[tuple[optuna.Trial, _base.Point]]) -> list[float]:
        """Every fold of every point in the batch as one stack (points x folds models)."""
        fold_data = fold_tensors()
        members = []
        for trial, point in batch:
            cfg = {**base, "weight_decay": float(point["weight_decay"])}
            trial.set_user_attr("config", cfg)
            trial.set_user_attr("train", {**tcfg.to_dict(), "folds": stage.folds, "stacked": len(batch)})
            members += [
                stacked.Member(_base.model_config(cfg), _base.optim_config(cfg), tcfg, k)
                for k in range(len(folds))
            ]
        callbacks = [
            [_base.progress_callback(f"{label} trial {trial.number} fold {k + 1}", tcfg.epochs)]
            for trial, _ in batch
            for k in range(len(folds))
        ]
        results = stacked.fit_stacked(members, fold_data, callbacks=callbacks)
        values = []
        for i, (trial, _) in enumerate(batch):
            scores = [r.history[-1].val_accuracy for r in results[i * len(folds) : (i + 1) * len(folds)]]
            for k, score in enumerate(scores):
                trial.report(score, k)
            trial.set_user_attr("fold_scores", scores)
            trial.set_user_attr("mean", float(np.mean(scores)))
            trial.set_user_attr("std", float(np.std(scores)))
            values.append(float(np.mean(scores)))
        return values

    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if stage.pruner == "median" else None
    study = _base.run_grid(
        ctx,
        label,
        points=points,
        choices={"weight_decay": grid},
        objective=objective,
        batch_objective=stacked_objective,
        direction=DIRECTION,
        stack=stage.stack,
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
