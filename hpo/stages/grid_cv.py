"""Kind ``grid_cv``: a grid over settings of the carried configuration, each point scored by k-fold CV.

The write-up's weight-decay stage is ``grid = { weight_decay = [0, 1e-5, 1e-4, 1e-3, 1e-2] }``
with 5 folds of 10 epochs. A batch of claimed points trains as one stack of points x folds
models (``stack`` points per batch); with ``pruner = "median"`` one point runs at a time, its
folds in sequence, and Optuna's MedianPruner may stop it between folds.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial
from pydantic import Field, model_validator

from hpo.present import figures
from hpo.sections import SelectingSettings, StageSettings
from hpo.settings import PositiveInt, RunConfig, param_value, setting_value
from hpo.stages._context import StageContext
from hpo.stages._jobs import Batch, Budget
from hpo.stages._protocol import GridStage, Work
from hpo.stages._scoring import Scorer
from hpo.stages._selection import Candidate, best_word, choose
from hpo.training import Callback, EvalRecord
from hpo.tuning import records, runner
from hpo.tuning.records import Selection

Choices = Annotated[dict[str, Annotated[list[Any], Field(min_length=1)]], Field(min_length=1)]


def check_choices(choices: dict[str, list[Any]], *, key: str) -> dict[str, list[Any]]:
    """Each value usable as a trial parameter, none listed twice (ValueError naming
    ``key.setting[i]``). Whether a name is a setting, and each value's type, depend on the
    pipeline's family: the study file's loader checks them (``hpo.plan``)."""
    for setting, values in choices.items():
        for i, v in enumerate(values):
            try:
                param_value(setting, v)
            except ValueError as exc:
                raise ValueError(f"{key}.{setting}[{i}] = {v!r}: {exc}") from None
        if len({repr(param_value(setting, v)) for v in values}) != len(values):
            raise ValueError(f"{key}.{setting} lists a value twice")
    return choices


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

    def tuned(self) -> dict[str, dict[str, list[Any]]]:
        return {"grid": dict(self.settings.grid)}

    def folds(self) -> int:
        return self.settings.folds

    def pruner(self) -> optuna.pruners.BasePruner:
        if self.settings.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=2)
        return optuna.pruners.NopPruner()

    def batch_size(self) -> int:
        return 1 if self.settings.pruner != "none" else self.settings.stack

    def stack_width(self, cfg: RunConfig) -> int:
        s = self.settings  # points a batch stacks, each its folds x seeds
        return min(self.batch_size(), len(self.points(cfg))) * s.folds * s.seeds if s.stack > 1 else 1

    def planned(self, cfg: RunConfig, train_rows: int) -> Work:
        s = self.settings  # each fold trains on (k - 1) / k of the training rows
        model_epochs = len(self.points(cfg)) * s.seeds * s.folds * s.epochs
        return Work(model_epochs, model_epochs * train_rows * (s.folds - 1) // s.folds)

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
        budget = Budget(epochs=s.epochs, eval_last_only=True)

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            folds = data.cv_folds(s.folds, cfg_in.seed)
            scorers = [Scorer(s.metric, data.task, f.y_val) for f in folds]
            batch = Batch(ctx, folds, ctx.study_name(self.name))
            last: dict[int, float] = {}  # each job's metric after its last epoch

            def keep_last(position: int) -> list[Callback]:
                scorer = scorers[batch.jobs[position].data]

                def see(record: EvalRecord) -> None:
                    last[position] = scorer(record)

                return [see]

            positions = [
                batch.add(
                    c.trial,
                    cfg_in.with_point({n: setting_value(n, c.point[n]) for n in s.grid}),
                    budget,
                    seeds=s.seeds,
                    data=range(s.folds),
                    folds=True,
                    attrs={"folds": s.folds, "stacked": len(claims), "seeds": s.seeds},
                    extra=keep_last,
                )
                for c in claims
            ]

            def fold_score(claim: int, k: int) -> tuple[float, list[float]]:
                """Fold k's score of a claim: the mean over seeds, and the seeds' scores."""
                mine = positions[claim][k * s.seeds : (k + 1) * s.seeds]
                per_seed = [last[p] for p in mine]
                return float(np.mean(per_seed)), per_seed

            if s.pruner == "none":
                batch.train(stack=s.stack > 1)
                out: list[runner.Outcome] = []
                for i, claim in enumerate(claims):
                    scored = [fold_score(i, k) for k in range(s.folds)]
                    for k, (value, _) in enumerate(scored):
                        claim.trial.report(value, k)
                    out.append(_record(claim.trial, [v for v, _ in scored], [p for _, p in scored]))
                return out
            # pruned between folds: the batch's points fold by fold
            scores_of: list[list[float]] = [[] for _ in claims]
            seeds_of: list[list[list[float]]] = [[] for _ in claims]
            alive = list(range(len(claims)))
            for k in range(s.folds):
                mine = [p for i in alive for p in positions[i][k * s.seeds : (k + 1) * s.seeds]]
                batch.train(stack=s.stack > 1, only=mine)
                still = []
                for i in alive:
                    value, per_seed = fold_score(i, k)
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
        current = cfg_in.settings()
        chosen, evidence, note = choose(
            candidates,
            metric=s.metric,
            policy=s.select,
            incumbent={n: param_value(n, current[n]) for n in s.grid if n in current},
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
            reason=f"{best_word(metric)} mean {metric.replace('_', ' ')} over "
            f"{s.folds}-fold stratified CV{seeds}{note}",
            config_out=records.read_config(chosen.trial.user_attrs),
            evidence=evidence,
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        s = self.settings
        return figures.grid_cv_figures(
            study, list(s.grid), metric=s.metric, folds=s.folds, fold_curves=s.pruner != "none"
        )


def _record(trial: optuna.Trial, scores: list[float], per_seed: list[list[float]]) -> float:
    trial.set_user_attr(records.FOLD_SCORES, scores)
    if len(per_seed[0]) > 1:
        trial.set_user_attr(
            records.SEED_SCORES, [float(np.mean(fold)) for fold in zip(*per_seed, strict=True)]
        )
    trial.set_user_attr(records.MEAN, float(np.mean(scores)))
    trial.set_user_attr(records.STD, float(np.std(scores)))
    return float(np.mean(scores))
