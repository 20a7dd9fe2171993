"""Kind ``grid_cv``: a grid over settings of the carried configuration, each point scored by k-fold CV.

The write-up's weight-decay stage is ``grid = { weight_decay = [0, 1e-5, 1e-4, 1e-3, 1e-2] }``
with 5 folds of 10 epochs. A batch of claimed points trains as one stack of points x folds
models (``stack`` points per batch); with ``pruner = "median"`` one point runs at a time, its
folds in sequence, and Optuna's MedianPruner may stop it between folds.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial
from pydantic import Field, model_validator

from hpo.present import figures
from hpo.settings import (
    PositiveInt,
    RunConfig,
    SelectingSettings,
    StageSettings,
    check_setting,
    param_value,
    setting_value,
)
from hpo.stages._context import StageContext
from hpo.stages._protocol import GridStage
from hpo.stages._scoring import Scorer, seed_values
from hpo.stages._selection import Candidate, choose
from hpo.training import Callback, FitResult, Member, TensorData, fit_members, resolve_device
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


class GridCvSettings(SelectingSettings):
    kind: Literal["grid_cv"] = "grid_cv"
    grid: Choices
    folds: Annotated[int, Field(ge=2, le=20)] = 5
    epochs: PositiveInt = 10
    pruner: Literal["none", "median"] = "none"
    stack: PositiveInt = 5  # grid points trained together (x folds models); 1 = one model at a time

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

        def members_of(claim: runner.Claim, folds: list[TensorData], batch: int) -> list[list[Member]]:
            """The claim's models, by fold, one per seed."""
            cfg = cfg_in.with_point({n: setting_value(n, claim.point[n]) for n in s.grid})
            model, optim = cfg.model(n_features=data.n_features, n_classes=data.n_classes), cfg.optim()
            out = []
            for k, fold in enumerate(folds):
                weights = data.class_weights(fold) if cfg.class_weight == "balanced" else None
                seeds = seed_values(cfg.seed, s.seeds)
                out.append(
                    [
                        Member(
                            model,
                            optim,
                            cfg.train(
                                epochs=s.epochs,
                                device=device,
                                class_weights=weights,
                                eval_last_only=True,
                                seed=seed,
                            ),
                            k,
                        )
                        for seed in seeds
                    ]
                )
            records.write_config(claim.trial, cfg)
            claim.trial.set_user_attr(
                records.TRAIN,
                {**dataclasses.asdict(out[0][0].train), "folds": s.folds, "stacked": batch, "seeds": s.seeds},
            )
            return out

        def fold_scores(fold: TensorData, results: Sequence[FitResult]) -> tuple[float, list[float]]:
            """A fold's score (the mean over seeds of the metric after the last epoch) and the seeds'."""
            scorer = Scorer(s.metric, fold.y_val, data.n_classes)
            per_seed = [scorer(r.history[-1]) for r in results]
            return float(np.mean(per_seed)), per_seed

        def progress(claim: runner.Claim, k: int, seed: int) -> list[Callback]:
            name = f"{label} trial {claim.trial.number} fold {k + 1}" + (
                f" seed {seed}" if s.seeds > 1 else ""
            )
            return [ctx.progress.member(name, epochs=s.epochs, rows=folds_rows[k])]

        folds_rows: list[int] = []

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            folds = data.cv_folds(s.folds, cfg_in.seed)
            folds_rows[:] = [f.x_train.shape[0] for f in folds]
            per_claim = [members_of(c, folds, len(claims)) for c in claims]
            if s.pruner == "none":
                members = [m for by_fold in per_claim for ms in by_fold for m in ms]
                callbacks = [
                    progress(c, k, m.train.seed)
                    for c, by_fold in zip(claims, per_claim, strict=True)
                    for k, ms in enumerate(by_fold)
                    for m in ms
                ]
                results = fit_members(members, folds, callbacks=callbacks, stack=s.stack > 1)
                out: list[runner.Outcome] = []
                per = s.folds * s.seeds
                for i, claim in enumerate(claims):
                    mine = results[i * per : (i + 1) * per]
                    scored = [
                        fold_scores(f, mine[k * s.seeds : (k + 1) * s.seeds]) for k, f in enumerate(folds)
                    ]
                    for k, (value, _) in enumerate(scored):
                        claim.trial.report(value, k)
                    out.append(_record(claim.trial, [v for v, _ in scored], [p for _, p in scored]))
                return out
            # pruned between folds: the batch's points fold by fold
            scores_of: list[list[float]] = [[] for _ in claims]
            seeds_of: list[list[list[float]]] = [[] for _ in claims]
            alive = list(range(len(claims)))
            for k, fold in enumerate(folds):
                members = [m for i in alive for m in per_claim[i][k]]
                callbacks = [progress(claims[i], k, m.train.seed) for i in alive for m in per_claim[i][k]]
                results = fit_members(members, folds, callbacks=callbacks, stack=s.stack > 1)
                still = []
                for j, i in enumerate(alive):
                    value, per_seed = fold_scores(fold, results[j * s.seeds : (j + 1) * s.seeds])
                    scores_of[i].append(value)
                    seeds_of[i].append(per_seed)
                    trial = claims[i].trial
                    trial.set_user_attr(records.FOLD_SCORES, scores_of[i])
                    trial.report(value, k)
                    if trial.should_prune():
                        continue
                    still.append(i)
                alive = still
            return [
                _record(claims[i].trial, scores_of[i], seeds_of[i]) if i in alive else runner.Pruned()
                for i in range(len(claims))
            ]

        return objective

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection:
        s = self.settings
        done = self.finished(trials, cfg_in)
        candidates = [
            Candidate(t, {n: t.params[n] for n in s.grid}, float(t.user_attrs[records.MEAN])) for t in done
        ]
        chosen, evidence, note = choose(
            candidates,
            metric=s.metric,
            policy=s.select,
            incumbent={n: param_value(n, getattr(cfg_in, n)) for n in s.grid},
            how="folds",
            study_attrs=study_attrs,
            folds=s.folds,
        )
        metric = s.metric
        seeds = f" (each fold the mean of {s.seeds} seeds)" if s.seeds > 1 else ""
        return Selection(
            selected={
                **chosen.label,
                f"cv_mean_{metric}": chosen.trial.user_attrs[records.MEAN],
                f"cv_std_{metric}": chosen.trial.user_attrs[records.STD],
            },
            reason=f"{'best' if metric != 'loss' else 'lowest'} mean {metric.replace('_', ' ')} over "
            f"{s.folds}-fold stratified CV{seeds}{note}",
            config_out=records.read_config(chosen.trial.user_attrs),
            evidence=evidence,
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        return figures.grid_cv_figures(study, list(self.settings.grid), metric=self.settings.metric)


def _record(trial: optuna.Trial, scores: list[float], per_seed: list[list[float]]) -> float:
    trial.set_user_attr(records.FOLD_SCORES, scores)
    if len(per_seed[0]) > 1:
        trial.set_user_attr(
            records.SEED_SCORES, [float(np.mean(fold)) for fold in zip(*per_seed, strict=True)]
        )
    trial.set_user_attr(records.MEAN, float(np.mean(scores)))
    trial.set_user_attr(records.STD, float(np.std(scores)))
    return float(np.mean(scores))
