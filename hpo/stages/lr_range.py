"""Stage ``lr_range``: the LR range test (torch-lr-finder's method), then a verification run."""

from __future__ import annotations

import math
from typing import Literal

import optuna

from hpo import lr_finder, train
from hpo.errors import HpoError
from hpo.stages import _base

DIRECTION: Literal["minimize", "maximize"] = "maximize"


def studies(ctx: _base.StageContext) -> list[str]:
    return [_base.study_name(ctx.pipeline, "lr_range")]


def run(ctx: _base.StageContext, base: _base.Config) -> optuna.Study:
    stage = ctx.pipeline.lr_range
    tv = ctx.train_val()
    label = studies(ctx)[0]

    def objective(trial: optuna.Trial, point: _base.Point) -> float:
        try:
            curve = lr_finder.range_test(
                _base.model_config(base),
                _base.optim_config(base),
                tv,
                batch_size=base["batch_size"],
                seed=base["seed"],
                end_lr=stage.end_lr,
                num_iter=stage.num_iter,
                smooth_f=stage.smooth_f,
                diverge_th=stage.diverge_th,
                skip_start=stage.skip_start,
                skip_end=stage.skip_end,
            )
        except ValueError as exc:
            raise HpoError(f"{ctx.pipeline.path}: stages.lr_range: {exc}") from None
        trial.set_user_attr("curve", {"lr": curve.lrs, "loss": curve.losses})
        trial.set_user_attr("suggested_lr", curve.suggested_lr)
        trial.set_user_attr("range_diverged", curve.diverged)
        cfg = {**base, "lr": curve.suggested_lr}
        tcfg = train.TrainConfig(
            epochs=stage.verify_epochs,
            batch_size=base["batch_size"],
            seed=base["seed"],
            precision=base.get("precision", "fp32"),
        )
        result = _base.fit_trial(trial, cfg, tcfg, tv, label=f"{label} verification")
        trial.set_user_attr("verification_diverged", result.diverged)
        return result.history[-1].val_accuracy if not result.diverged else 0.0

    study = _base.run_points(ctx, label, points=[{}], choices={}, objective=objective, direction=DIRECTION)
    if not _base.is_complete(study):
        (trial,) = _base.finished(study, [{}], [])
        picked = float(trial.user_attrs["suggested_lr"])
        if trial.user_attrs["verification_diverged"] or not math.isfinite(picked):
            lr, why = (
                float(base["lr"]),
                f"the pick {picked:.3g} diverged in verification; kept {base['lr']:g}",
            )
        else:
            lr, why = picked, "steepest descent of the smoothed loss (torch-lr-finder's suggestion), verified"
        _base.mark_complete(
            study,
            stage="lr_range",
            selected={"lr": lr, "suggested_lr": picked, "verification_val_accuracy": trial.value},
            config_out={**base, "lr": lr},
            why=why,
        )
    return study
