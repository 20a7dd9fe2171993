"""Stage ``baseline``: the write-up's architectures, briefly trained; lowest validation loss wins."""

from __future__ import annotations

from typing import Any, Literal

import optuna

from hpo import train
from hpo.stages import _base

DIRECTION: Literal["minimize", "maximize"] = "minimize"


def studies(ctx: _base.StageContext) -> list[str]:
    return [_base.study_name(ctx.pipeline, "baseline")]


def run(ctx: _base.StageContext, base: _base.Config) -> optuna.Study:
    stage = ctx.pipeline.baseline
    archs = ["x".join(str(h) for h in a) for a in stage.architectures]
    points: list[_base.Point] = [{"architecture": a} for a in archs]
    tv = ctx.train_val()
    tcfg = train.TrainConfig(
        epochs=stage.epochs,
        batch_size=base["batch_size"],
        seed=base["seed"],
        max_batches=stage.max_batches,
        eval_every=stage.eval_every,
        precision=base.get("precision", "fp32"),
    )

    def objective(trial: optuna.Trial, point: _base.Point) -> float:
        cfg = {**base, "hidden": [int(h) for h in str(point["architecture"]).split("x")]}
        result = _base.fit_trial(trial, cfg, tcfg, tv, label=studies(ctx)[0], metric="val_loss", step="step")
        last = result.history[-1]
        trial.set_user_attr("val_accuracy", last.val_accuracy)
        return last.val_loss

    study = _base.run_points(
        ctx,
        studies(ctx)[0],
        points=points,
        choices={"architecture": archs},
        objective=objective,
        direction=DIRECTION,
    )
    if not _base.is_complete(study):
        best = min(_base.finished(study, points, ["architecture"]), key=lambda t: _value(t))
        cfg: dict[str, Any] = best.user_attrs["config"]
        _base.mark_complete(
            study,
            stage="baseline",
            selected={
                "architecture": best.params["architecture"],
                "hidden": cfg["hidden"],
                "val_loss": best.value,
            },
            config_out=cfg,
            why="lowest validation loss after the baseline run",
        )
    return study


def _value(t: optuna.trial.FrozenTrial) -> float:
    assert t.value is not None
    return t.value
