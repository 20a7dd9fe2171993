"""Kind ``grid``: every combination of listed values of some settings of the carried configuration;
the best is carried forward.

``grid = { weight_decay = [0, 1e-4], dropout = [0.0, 0.2] }`` trains the four points on the
training rows and scores each on the validation rows (its peak validation metric); with ``cv = 5``
each point is scored by 5-fold CV instead (:mod:`hpo.stages._evaluation`). ``grid_cv`` and
``sweep`` are this kind under the names the write-up's stages have: ``grid_cv`` scores by k-fold
CV (``folds``, default 5), ``sweep`` varies one setting.

**Fair comparisons** (Google's Deep Learning Tuning Playbook: a nuisance setting must be re-tuned
for each value of the one under study): ``retune = { lr = [...] }`` trains every point at every
listed value of the nuisance settings; a point scores by its best, and carries that value on.
A batch of claimed points trains as one stack where their shapes allow (``stack`` points per
batch, times their folds and seeds); with ``pruner = "median"`` Optuna's MedianPruner may stop a
point between epochs (hold-out) or between folds (CV: one point at a time).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial
from pydantic import Field, model_validator

from hpo.present import figures
from hpo.sections import StageSettings
from hpo.settings import PositiveInt, RunConfig, param_value, setting_value
from hpo.stages._context import StageContext
from hpo.stages._evaluation import (
    Candidates,
    EvaluatedSettings,
    Folds,
    HoldOut,
    KFold,
    group_best,
)
from hpo.stages._jobs import Budget
from hpo.stages._protocol import GridStage, Work
from hpo.stages._selection import Candidate, best_word, choose
from hpo.tasks import greater_is_better
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


def check_retune(
    retune: dict[str, list[Any]] | None, studied: Mapping[str, Any]
) -> dict[str, list[Any]] | None:
    if retune is None:
        return None
    both = [n for n in retune if n in studied]
    if both:
        raise ValueError(f"retune names the studied setting {both[0]!r}; retune the others")
    return check_choices(retune, key="retune")


class PointsSettings(EvaluatedSettings):
    """Settings of the kinds over a fixed list of points: what they study, re-tune and train."""

    epochs: PositiveInt = 15
    stack: PositiveInt = 3  # points trained together (x folds x seeds models); 1 = one at a time
    retune: Choices | None = None  # nuisance settings re-tuned for every studied point
    studied_key: ClassVar[str] = "grid"  # the table key listing the studied settings

    @property
    def studied(self) -> dict[str, list[Any]]:
        """The settings the stage compares."""
        raise NotImplementedError

    @property
    def nuisance(self) -> dict[str, list[Any]]:
        """The settings re-tuned for every studied point."""
        return dict(self.retune or {})

    @property
    def prunes(self) -> bool:
        return False

    @model_validator(mode="after")
    def _valid_points(self) -> PointsSettings:
        key = self.studied_key
        object.__setattr__(self, key, check_choices(self.studied, key=key))
        object.__setattr__(self, "retune", check_retune(self.retune, self.studied))
        return self


class _GridTable(PointsSettings):
    grid: Choices
    pruner: Literal["none", "median"] = "none"

    @property
    def studied(self) -> dict[str, list[Any]]:
        return dict(self.grid)

    @property
    def prunes(self) -> bool:
        return self.pruner == "median"


class GridSettings(_GridTable):
    kind: Literal["grid"] = "grid"


class GridCvSettings(_GridTable):
    kind: Literal["grid_cv"] = "grid_cv"
    folds: Folds = 5
    epochs: PositiveInt = 10
    stack: PositiveInt = 5  # grid points trained together (x folds models); 1 = one model at a time
    omitted_unset: ClassVar[frozenset[str]] = frozenset({"cv", "retune"})

    @model_validator(mode="after")
    def _folds_not_cv(self) -> GridCvSettings:
        if self.cv is not None:
            raise ValueError(f'cv = {self.cv}: grid_cv takes folds = k (or use kind = "grid" with cv = k)')
        return self

    def evaluation(self) -> HoldOut | KFold:
        return KFold(self.folds)


class Grid(GridStage):
    """Points: the studied settings' combinations (times the nuisance settings'); scored by the
    stage's evaluation; the best (by its best nuisance values) carried forward."""

    kind: ClassVar[str] = "grid"
    settings_model: ClassVar[type[StageSettings]] = GridSettings
    scores_validation_rows: ClassVar[bool] = True
    settings: PointsSettings

    def studied(self) -> dict[str, list[Any]]:
        return self.settings.studied

    def nuisance(self) -> dict[str, list[Any]]:
        return self.settings.nuisance

    def evaluation(self) -> HoldOut | KFold:
        return self.settings.evaluation()

    def prunes(self) -> bool:
        return self.settings.prunes

    def tuned(self) -> dict[str, dict[str, list[Any]]]:
        out = {self.settings.studied_key: self.studied()}
        if self.nuisance():
            out["retune"] = self.nuisance()
        return out

    def folds(self) -> int:
        return self.evaluation().folds

    def pruner(self) -> optuna.pruners.BasePruner:
        return (
            optuna.pruners.MedianPruner(n_startup_trials=2) if self.prunes() else optuna.pruners.NopPruner()
        )

    def _stack(self) -> int:
        return self.settings.stack

    def batch_size(self) -> int:
        return 1 if self.prunes() and self.folds() > 1 else self._stack()

    def stack_width(self, cfg: RunConfig) -> int:
        if self._stack() == 1:
            return 1
        return min(self.batch_size(), len(self.points(cfg))) * self.folds() * self._seeds()

    def _seeds(self) -> int:
        return self.settings.seeds

    def _epochs(self) -> int:
        return self.settings.epochs

    def planned(self, cfg: RunConfig, train_rows: int) -> Work:
        model_epochs = len(self.points(cfg)) * self._seeds() * self.folds() * self._epochs()
        return Work(model_epochs, self.evaluation().samples(model_epochs, train_rows))

    def _grid(self) -> dict[str, list[str | int | float | bool | None]]:
        settings = {**self.studied(), **self.nuisance()}
        return {n: [param_value(n, v) for v in vs] for n, vs in settings.items()}

    def points(self, cfg_in: RunConfig) -> list[runner.Point]:
        grid = self._grid()
        return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]

    def distributions(self, cfg_in: RunConfig) -> dict[str, BaseDistribution]:
        return {n: CategoricalDistribution(vs) for n, vs in self._grid().items()}

    def study_records(self, ctx: StageContext) -> dict[str, Any]:
        return super().study_records(ctx) if self.folds() == 1 else {}

    def objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        names = list(self._grid())
        return self.evaluation().objective(
            ctx,
            Candidates(
                label=ctx.study_name(self.name),
                configure=lambda c: cfg_in.with_point({n: setting_value(n, c.point[n]) for n in names}),
                budget=Budget(epochs=self._epochs()),
                metric=self.settings.metric,
                seeds=self._seeds(),
                stack=self._stack() > 1,
                prune=self.prunes(),
                seed=cfg_in.seed,
                keep_outputs=self.name in ctx.library,
                keep_models=self.name in ctx.kept,
            ),
        )

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection:
        metric = self.settings.metric
        studied = list(self.studied())
        evaluation = self.evaluation()
        groups = group_best(
            self.finished(trials, cfg_in),
            lambda t: {n: t.params[n] for n in studied},
            maximize=greater_is_better(metric),
        )
        current = cfg_in.settings()
        chosen, evidence, note = choose(
            [Candidate(t, label, float(t.value or 0.0)) for label, t in groups],
            metric=metric,
            policy=self.settings.select,
            incumbent={n: param_value(n, current[n]) for n in studied}
            if all(n in current for n in studied)
            else None,
            how=evaluation.how(self._seeds()),
            study_attrs=study_attrs,
            folds=self.folds(),
        )
        retuned = {n: chosen.trial.params[n] for n in self.nuisance()}
        at = f" at its best {', '.join(f'{n} = {v}' for n, v in retuned.items())}" if retuned else ""
        described = evaluation.describe(metric, seeds=self._seeds(), epochs=self._epochs())
        return Selection(
            selected={**chosen.label, **retuned, **evaluation.figures_of(chosen.trial, metric, chosen.score)},
            reason=f"{best_word(metric)} {described}{at}{note}",
            config_out=records.read_config(chosen.trial.user_attrs),
            evidence=evidence,
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        metric = self.settings.metric
        if self.folds() > 1:
            return figures.grid_cv_figures(
                study, list(self.studied()), metric=metric, folds=self.folds(), fold_curves=self.prunes()
            )
        return figures.sweep_figures(study, list(self.studied()), metric=metric)
