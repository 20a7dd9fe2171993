"""Kind ``lr_range``: the LR range test (torch-lr-finder's method), then a verification run.

The stage keeps the carried LR when the pick diverges in verification or learns nothing there
(validation accuracy no better than the majority class's share: measured with weight decay 1e-4
on the MSD stand-in, the steepest descent lay at 0.10 and five epochs there predicted only the
2000s, without diverging).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import optuna
from optuna.trial import FrozenTrial
from pydantic import Field

from hpo.errors import ConfigError
from hpo.present import figures
from hpo.settings import LearningRate, NonNegativeInt, PositiveInt, RunConfig, StageSettings
from hpo.stages._context import StageContext
from hpo.stages._protocol import GridStage
from hpo.stages._scoring import Scorer, TrialScore, callbacks_for
from hpo.training import fit, range_test, resolve_device
from hpo.tuning import records, runner
from hpo.tuning.records import Selection


class LrRangeSettings(StageSettings):
    kind: Literal["lr_range"] = "lr_range"
    end_lr: LearningRate = 1.0
    num_iter: Annotated[int, Field(ge=2)] | None = None  # default: one epoch of batches
    smooth_f: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.05
    diverge_th: Annotated[float, Field(gt=1, allow_inf_nan=False)] = 5.0
    skip_start: NonNegativeInt = 10
    skip_end: NonNegativeInt = 5
    verify_epochs: PositiveInt = 5


class LrRange(GridStage):
    kind: ClassVar[str] = "lr_range"
    settings_model: ClassVar[type[StageSettings]] = LrRangeSettings
    settings: LrRangeSettings

    def objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        s = self.settings
        data = ctx.data()
        tv = data.train_val()
        label = ctx.study_name(self.name)
        device = resolve_device(cfg_in.device)
        model = cfg_in.model(n_features=data.n_features, n_classes=data.n_classes)

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            (claim,) = claims
            trial = claim.trial
            try:
                curve = range_test(
                    model,
                    cfg_in.optim(),
                    tv,
                    batch_size=cfg_in.batch_size,
                    seed=cfg_in.seed,
                    end_lr=s.end_lr,
                    num_iter=s.num_iter,
                    smooth_f=s.smooth_f,
                    diverge_th=s.diverge_th,
                    skip_start=s.skip_start,
                    skip_end=s.skip_end,
                    device=device,
                )
            except ValueError as exc:
                raise ConfigError(f"{ctx.study_file}: stages.{self.name}: {exc}") from None
            trial.set_user_attr(records.CURVE, {"lr": curve.lrs, "loss": curve.losses})
            trial.set_user_attr(records.SUGGESTED_LR, curve.suggested_lr)
            trial.set_user_attr(records.RANGE_DIVERGED, curve.diverged)
            if not _usable(curve.suggested_lr):  # nothing to verify: the stage keeps the defaults' LR
                trial.set_user_attr(records.VERIFICATION_DIVERGED, True)
                return [0.0]
            cfg = cfg_in.with_point({"lr": curve.suggested_lr})
            tcfg = cfg.train(
                epochs=s.verify_epochs,
                device=device,
                class_weights=data.class_weights(tv) if cfg.class_weight == "balanced" else None,
            )
            records.write_config(trial, cfg)
            trial.set_user_attr(records.TRAIN, dataclasses.asdict(tcfg))
            scored = TrialScore(trial, Scorer("accuracy", tv.y_val, data.n_classes))
            callbacks = callbacks_for(
                scored,
                0,
                progress=ctx.progress,
                label=f"{label} verification",
                epochs=s.verify_epochs,
                rows=tv.x_train.shape[0],
            )
            result = fit(model, cfg.optim(), tcfg, tv, callbacks=callbacks)
            trial.set_user_attr(records.HISTORY, result.history_dicts())
            diverged = result.diverged
            trial.set_user_attr(records.VERIFICATION_DIVERGED, diverged)
            y_val = tv.y_val.numpy()
            trial.set_user_attr(records.MAJORITY_SHARE, float(np.bincount(y_val).max() / y_val.size))
            return [result.history[-1].val_accuracy if not diverged else 0.0]

        return objective

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection:
        (trial,) = self.finished(trials, cfg_in)
        picked = float(trial.user_attrs[records.SUGGESTED_LR])
        majority = trial.user_attrs.get(records.MAJORITY_SHARE)
        if trial.user_attrs[records.VERIFICATION_DIVERGED] or not _usable(picked):
            lr, why = cfg_in.lr, f"the pick {picked:.3g} diverged in verification; kept {cfg_in.lr:g}"
        elif majority is not None and (trial.value or 0.0) <= majority:
            lr, why = (
                cfg_in.lr,
                f"the pick {picked:.3g} learned nothing in verification (validation accuracy "
                f"{trial.value:.4f}, no better than the majority class's {majority:.4f}); kept {cfg_in.lr:g}",
            )
        else:
            lr, why = picked, "steepest descent of the smoothed loss (torch-lr-finder's suggestion), verified"
        return Selection(
            selected={"lr": lr, "suggested_lr": picked, "verification_val_accuracy": trial.value},
            reason=why,
            config_out=cfg_in.with_point({"lr": lr}),
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        return figures.lr_range_figures(study)


def _usable(lr: float) -> bool:
    return math.isfinite(lr) and 0 < lr <= 100
