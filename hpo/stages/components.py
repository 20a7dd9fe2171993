"""Stage ``components``: init, activation, normalisation and optimizer swept one at a time,
each in its own study, the best (peak validation accuracy) carried into the next sweep."""

from __future__ import annotations

from typing import Literal

import optuna

from hpo import train
from hpo.config import COMPONENT_SWEEPS
from hpo.stages import _base

DIRECTION: Literal["minimize", "maximize"] = "maximize"


def studies(ctx: _base.StageContext) -> list[str]:
    return [_base.study_name(ctx.pipeline, "components", s) for s in COMPONENT_SWEEPS]


def run(ctx: _base.StageContext, base: _base.Config) -> optuna.Study:
    stage = ctx.pipeline.components
    tv = ctx.train_val()
    cfg_in = dict(base)
    study: optuna.Study | None = None
    for sweep, name in zip(COMPONENT_SWEEPS, studies(ctx), strict=True):
        existing = _base.find_study(ctx, name)
        if _base.is_complete(existing):
            assert existing is not None
            cfg_in = existing.user_attrs["config_out"]
            study = existing
            continue
        study = _run_sweep(ctx, name, sweep, list(getattr(stage, sweep)), cfg_in, tv, stage.epochs)
        cfg_in = study.user_attrs["config_out"]
    assert study is not None
    return study


def _run_sweep(
    ctx: _base.StageContext,
    name: str,
    sweep: str,
    choices: list[str],
    base: _base.Config,
    tv: train.TensorData,
    epochs: int,
) -> optuna.Study:
    points: list[_base.Point] = [{sweep: c} for c in choices]
    tcfg = train.TrainConfig(epochs=epochs, batch_size=base["batch_size"], seed=base["seed"])

    def objective(trial: optuna.Trial, point: _base.Point) -> float:
        result = _base.fit_trial(trial, {**base, sweep: point[sweep]}, tcfg, tv, label=name)
        return result.peak_val_accuracy

    study = _base.run_points(
        ctx,
        name,
        points=points,
        choices={sweep: choices},
        objective=objective,
        direction=DIRECTION,
        attrs={"carried_in": base},
    )
    if not _base.is_complete(study):
        best = max(_base.finished(study, points, [sweep]), key=lambda t: t.value or 0.0)
        _base.mark_complete(
            study,
            stage="components",
            sweep=sweep,
            selected={sweep: best.params[sweep], "peak_val_accuracy": best.value},
            config_out=best.user_attrs["config"],
            why=f"highest peak validation accuracy over {epochs} epochs",
        )
    return study
