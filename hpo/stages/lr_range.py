"""Kind ``lr_range``: the LR range test (torch-lr-finder's method), then a verification run.

The stage keeps the carried LR when the pick diverges in verification or learns nothing there
(its validation score no better than a model that learned nothing: the majority class's share
for a classifier, the training mean for a regressor; measured with weight decay 1e-4 on the MSD
stand-in, the steepest descent lay at 0.10 and five epochs there predicted only the 2000s,
without diverging).

The test trains through the configuration's training settings and the task's loss (precision,
label smoothing and class weights apply), on a model the family builds: the MLP, or your module.
``range_precision`` sets the range test's own precision. The pick is sensitive to it: measured
on the Xeon of 2026-11-30 (full-size MSD stand-in, 256x256, Adam from 1e-3 to 1.0), the fp32
curve diverged at iteration 2,588 with its steepest descent at 1.03e-3 (the first points after
trimming), while the bf16 curve ran the whole epoch without diverging and its steepest descent
lay at 0.357, in the recovery after a spike (verification then learned nothing and the carried
LR was kept). The faithful study file sets ``range_precision = "fp32"``, as the write-up's
torch-lr-finder ran.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import optuna
from optuna.trial import FrozenTrial
from pydantic import Field

from hpo.errors import ConfigError
from hpo.families import family_of
from hpo.present import figures
from hpo.sections import StageSettings
from hpo.settings import LearningRate, NonNegativeInt, PositiveInt, Precision, RunConfig
from hpo.stages._context import StageContext
from hpo.stages._jobs import Batch, Budget
from hpo.stages._protocol import TORCH_FAMILIES, GridStage, Work
from hpo.stages._scoring import Scorer, TrialScore
from hpo.tasks import better, greater_is_better, task_kind
from hpo.training import range_test, resolve_device
from hpo.training.seeding import seeded
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
    # the range test's own precision (default: the carried configuration's); the verification
    # run trains with the carried configuration's
    range_precision: Precision | None = None


#: the settings that go to the range test itself (the rest shape the stage)
FINDER_KEYS = ("end_lr", "num_iter", "smooth_f", "diverge_th", "skip_start", "skip_end")


class LrRange(GridStage):
    kind: ClassVar[str] = "lr_range"
    settings_model: ClassVar[type[StageSettings]] = LrRangeSettings
    settings: LrRangeSettings
    families: ClassVar[frozenset[str]] = TORCH_FAMILIES

    def planned(self, cfg: RunConfig, train_rows: int) -> Work:
        s = self.settings  # the range test (one epoch of batches by default), then the verification
        test = train_rows if s.num_iter is None else s.num_iter * cfg.batch_size
        return Work(s.verify_epochs, test + s.verify_epochs * train_rows)

    def objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        s = self.settings
        data = ctx.data()
        task = data.task
        tv = data.train_val()
        label = ctx.study_name(self.name)
        family = family_of(cfg_in)
        worst = 0.0 if greater_is_better(task.headline) else math.inf

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            (claim,) = claims
            trial = claim.trial
            weights = data.class_weights(tv) if cfg_in.class_weight == "balanced" else None
            own = cfg_in if s.range_precision is None else cfg_in.with_point({"precision": s.range_precision})
            train = cfg_in.train(
                epochs=1,
                device=resolve_device(cfg_in.device),
                class_weights=weights,
                precision=ctx.precision(own),
            )
            model = family.build(
                cfg_in, n_features=data.n_features, n_outputs=task.n_outputs, seed=cfg_in.seed
            )
            try:
                with seeded(cfg_in.seed):  # a user module's dropout draws from the global generator
                    curve = range_test(
                        model,
                        cfg_in.optim(),
                        train,
                        tv,
                        task=task,
                        **s.model_dump(include=set(FINDER_KEYS)),
                    )
            except ValueError as exc:
                raise ConfigError(f"{ctx.study_file}: stages.{self.name}: {exc}") from None
            trial.set_user_attr(records.CURVE, {"lr": curve.lrs, "loss": curve.losses})
            trial.set_user_attr(records.SUGGESTED_LR, curve.suggested_lr)
            trial.set_user_attr(records.RANGE_DIVERGED, curve.diverged)
            if not _usable(curve.suggested_lr):  # nothing to verify: the stage keeps the defaults' LR
                trial.set_user_attr(records.VERIFICATION_DIVERGED, True)
                return [worst]
            scored = TrialScore(trial, Scorer(task.headline, task, tv.y_val))
            batch = Batch(ctx, [tv], label)
            cfg = cfg_in.with_point({"lr": curve.suggested_lr})
            batch.add(trial, cfg, Budget(epochs=s.verify_epochs), score=scored, name=f"{label} verification")
            (result,) = batch.train(stack=False)
            trial.set_user_attr(records.HISTORY, result.history_dicts())
            diverged = result.diverged
            trial.set_user_attr(records.VERIFICATION_DIVERGED, diverged)
            trivial = task.trivial_score(tv.y_train.numpy(), tv.y_val.numpy())
            trial.set_user_attr(records.TRIVIAL_SCORE, trivial)
            return [result.history[-1].val_score if not diverged else worst]

        return objective

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection:
        (trial,) = self.finished(trials, cfg_in)
        picked = float(trial.user_attrs[records.SUGGESTED_LR])
        trivial = trial.user_attrs.get(records.TRIVIAL_SCORE, trial.user_attrs.get(records.MAJORITY_SHARE))
        headline = task_kind(self.task).default_metric
        value = float(trial.value if trial.value is not None else math.nan)
        if trial.user_attrs[records.VERIFICATION_DIVERGED] or not _usable(picked):
            lr, why = cfg_in.lr, f"the pick {picked:.3g} diverged in verification; kept {cfg_in.lr:g}"
        elif trivial is not None and not better(headline, value, float(trivial)):
            what = task_kind(self.task).trivial
            lr, why = (
                cfg_in.lr,
                f"the pick {picked:.3g} learned nothing in verification "
                f"(validation {headline.replace('_', ' ')} "
                f"{value:.4f}, no better than {what} {float(trivial):.4f}); kept {cfg_in.lr:g}",
            )
        else:
            lr, why = picked, "steepest descent of the smoothed loss (torch-lr-finder's suggestion), verified"
        return Selection(
            selected={"lr": lr, "suggested_lr": picked, f"verification_val_{headline}": trial.value},
            reason=why,
            config_out=cfg_in.with_point({"lr": lr}),
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        return figures.lr_range_figures(study)


def _usable(lr: float) -> bool:
    return math.isfinite(lr) and 0 < lr <= 100
