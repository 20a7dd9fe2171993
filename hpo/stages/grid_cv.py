"""Kind ``grid_cv``: a grid over settings of the carried configuration, each point scored by k-fold CV.

The write-up's weight-decay stage is ``grid = { weight_decay = [0, 1e-5, 1e-4, 1e-3, 1e-2] }``
with 5 folds of 10 epochs. A batch of claimed points trains as one stack of points x folds
models (``stack`` points per batch); with ``pruner = "median"`` one point runs at a time, its
folds in sequence, and Optuna's MedianPruner may stop it between folds.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial
from pydantic import Field, model_validator

from hpo.present import figures
from hpo.settings import (
    Metric,
    PositiveInt,
    RunConfig,
    StageSettings,
    check_setting,
    param_value,
    setting_value,
)
from hpo.stages._context import StageContext
from hpo.stages._protocol import GridStage, best_of, runner_up
from hpo.stages._scoring import Scorer
from hpo.training import FitResult, Member, TensorData, fit_members, resolve_device
from hpo.tuning import records, runner
from hpo.tuning.records import Selection

Choices = Annotated[dict[str, Annotated[list[Any], Field(min_length=1)]], Field(min_length=1)]


def check_choices(choices: dict[str, list[Any]], *, key: str) -> dict[str, list[Any]]:
    """Each value validated as its setting (ValueError naming ``key.setting[i]``)."""
    out: dict[str, list[Any]] = {}
    for setting, values in choices.items():
        checked = []
        for i, v in enumerate(values):
            try:
                good = check_setting(setting, v)
                param_value(setting, good)
            except ValueError as exc:
                raise ValueError(f"{key}.{setting}[{i}] = {v!r}: {exc}") from None
            checked.append(good)
        if len({str(param_value(setting, v)) for v in checked}) != len(checked):
            raise ValueError(f"{key}.{setting} lists a value twice")
        out[setting] = checked
    return out


class GridCvSettings(StageSettings):
    kind: Literal["grid_cv"] = "grid_cv"
    grid: Choices
    folds: Annotated[int, Field(ge=2, le=20)] = 5
    epochs: PositiveInt = 10
    pruner: Literal["none", "median"] = "none"
    stack: PositiveInt = 5  # grid points trained together (x folds models); 1 = one model at a time
    metric: Metric = "accuracy"

    @model_validator(mode="after")
    def _valid_grid(self) -> GridCvSettings:
        object.__setattr__(self, "grid", check_choices(self.grid, key="grid"))
        return self


class GridCv(GridStage):
    kind: ClassVar[str] = "grid_cv"
    settings_model: ClassVar[type[StageSettings]] = GridCvSettings
    settings: GridCvSettings

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return "minimize" if self.settings.metric == "loss" else "maximize"

    def folds(self) -> int:
        return self.settings.folds

    def pruner(self) -> optuna.pruners.BasePruner:
        if self.settings.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=2)
        return optuna.pruners.NopPruner()

    def batch_size(self) -> int:
        return 1 if self.settings.pruner != "none" else self.settings.stack

    def points(self, cfg_in: RunConfig) -> list[runner.Point]:
        names = list(self.settings.grid)
        values = [[param_value(n, v) for v in self.settings.grid[n]] for n in names]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]

    def distributions(self, cfg_in: RunConfig) -> dict[str, BaseDistribution]:
        return {
            n: CategoricalDistribution([param_value(n, v) for v in vs])
            for n, vs in self.settings.grid.items()
        }

    def objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        s = self.settings
        data = ctx.data()
        label = ctx.study_name(self.name)
        device = resolve_device(cfg_in.device)

        def members_of(claim: runner.Claim, folds: list[TensorData], batch: int) -> list[Member]:
            cfg = cfg_in.with_point({n: setting_value(n, claim.point[n]) for n in s.grid})
            model, optim = cfg.model(n_features=data.n_features, n_classes=data.n_classes), cfg.optim()
            out = []
            for k, fold in enumerate(folds):
                weights = data.class_weights(fold) if cfg.class_weight == "balanced" else None
                tcfg = cfg.train(epochs=s.epochs, device=device, class_weights=weights, eval_last_only=True)
                out.append(Member(model, optim, tcfg, k))
            records.write_config(claim.trial, cfg)
            claim.trial.set_user_attr(
                records.TRAIN, {**dataclasses.asdict(out[0].train), "folds": s.folds, "stacked": batch}
            )
            return out

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            folds = data.cv_folds(s.folds, cfg_in.seed)
            per_claim = [members_of(c, folds, len(claims)) for c in claims]
            if s.pruner == "none":
                members = [m for ms in per_claim for m in ms]
                callbacks = [
                    [ctx.progress.member(f"{label} trial {c.trial.number} fold {k + 1}", epochs=s.epochs)]
                    for c in claims
                    for k in range(s.folds)
                ]
                results = fit_members(members, folds, callbacks=callbacks, stack=s.stack > 1)
                out: list[runner.Outcome] = []
                for i, claim in enumerate(claims):
                    fold_results = results[i * s.folds : (i + 1) * s.folds]
                    scores = [
                        _fold_score(Scorer(s.metric, f.y_val, data.n_classes), r)
                        for f, r in zip(folds, fold_results, strict=True)
                    ]
                    for k, value in enumerate(scores):
                        claim.trial.report(value, k)
                    out.append(_record(claim.trial, scores))
                return out
            # pruned between folds: the batch's points fold by fold
            scores_of: list[list[float]] = [[] for _ in claims]
            alive = list(range(len(claims)))
            for k, fold in enumerate(folds):
                fold_scorer = Scorer(s.metric, fold.y_val, data.n_classes)
                members = [per_claim[i][k] for i in alive]
                callbacks = [
                    [
                        ctx.progress.member(
                            f"{label} trial {claims[i].trial.number} fold {k + 1}", epochs=s.epochs
                        )
                    ]
                    for i in alive
                ]
                results = fit_members(members, folds, callbacks=callbacks, stack=s.stack > 1)
                still = []
                for i, result in zip(alive, results, strict=True):
                    scores_of[i].append(_fold_score(fold_scorer, result))
                    trial = claims[i].trial
                    trial.set_user_attr(records.FOLD_SCORES, scores_of[i])
                    trial.report(scores_of[i][-1], k)
                    if trial.should_prune():
                        continue
                    still.append(i)
                alive = still
            return [
                _record(claims[i].trial, scores_of[i]) if i in alive else runner.Pruned()
                for i in range(len(claims))
            ]

        return objective

    def select(self, trials: Sequence[FrozenTrial], cfg_in: RunConfig) -> Selection:
        done = self.finished(trials, cfg_in)
        maximize = self.settings.metric != "loss"

        def mean(t: FrozenTrial) -> float:
            return float(t.user_attrs[records.MEAN])

        best = best_of(done, mean, maximize=maximize)
        second = runner_up(done, best, mean, maximize=maximize)
        metric = self.settings.metric
        return Selection(
            selected={
                **{n: best.params[n] for n in self.settings.grid},
                f"cv_mean_{metric}": best.user_attrs[records.MEAN],
                f"cv_std_{metric}": best.user_attrs[records.STD],
            },
            reason=f"best mean {metric.replace('_', ' ')} over {self.settings.folds}-fold stratified CV",
            config_out=records.read_config(best.user_attrs),
            extra={"runner_up": {n: second.params[n] for n in self.settings.grid}} if second else {},
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        return figures.grid_cv_figures(study, list(self.settings.grid), metric=self.settings.metric)


def _fold_score(scorer: Scorer, result: FitResult) -> float:
    """A fold's score: the metric after its last epoch."""
    return scorer(result.history[-1])


def _record(trial: optuna.Trial, scores: list[float]) -> float:
    trial.set_user_attr(records.FOLD_SCORES, scores)
    trial.set_user_attr(records.MEAN, float(np.mean(scores)))
    trial.set_user_attr(records.STD, float(np.std(scores)))
    return float(np.mean(scores))
