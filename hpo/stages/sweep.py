"""Kind ``sweep``: one setting of the carried configuration tried at each of its choices; the best
(peak validation metric) is carried forward.

Any setting of the pipeline's family can be swept: for the MLP ``hidden``, ``activation``,
``norm``, ``init``, ``dropout``, ``optimizer``, ``lr``, ``weight_decay``, ``batch_size``,
``label_smoothing``, ``class_weight``; for your module or estimator its own parameters too. A
batch of claimed choices trains as one stack where their shapes allow (``stack`` choices per
batch); the write-up's four component sweeps are four stages of this kind.

**Fair comparisons** (Google's Deep Learning Tuning Playbook: a nuisance setting must be re-tuned
for each value of the one under study): ``retune = { lr = [...] }`` trains every choice at every
listed value of the nuisance settings; a choice scores by its best, and carries that value on.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial
from pydantic import model_validator

from hpo.present import figures
from hpo.sections import SelectingSettings, StageSettings
from hpo.settings import PositiveInt, RunConfig, param_value, setting_value
from hpo.stages._context import StageContext
from hpo.stages._jobs import Budget, train_claims
from hpo.stages._protocol import GridStage
from hpo.stages._scoring import Scorer, TrialScore
from hpo.stages._selection import Candidate, best_word, choose, how_compared
from hpo.stages.grid_cv import Choices, check_choices
from hpo.tasks import greater_is_better
from hpo.tuning import records, runner
from hpo.tuning.records import Selection


class SweepSettings(SelectingSettings):
    kind: Literal["sweep"] = "sweep"
    choices: Choices
    retune: Choices | None = None  # nuisance settings re-tuned for every choice
    epochs: PositiveInt = 15
    stack: PositiveInt = 3  # points trained together (those of one shape); 1 = one at a time

    @model_validator(mode="after")
    def _one_setting(self) -> SweepSettings:
        if len(self.choices) != 1:
            raise ValueError(
                f"choices names {len(self.choices)} settings; a sweep varies one "
                "(declare one sweep stage per setting, or a grid_cv stage for a grid)"
            )
        object.__setattr__(self, "choices", check_choices(self.choices, key="choices"))
        if self.retune is not None:
            if self.setting in self.retune:
                raise ValueError(f"retune names the swept setting {self.setting!r}; retune the others")
            object.__setattr__(self, "retune", check_choices(self.retune, key="retune"))
        return self

    @property
    def setting(self) -> str:
        return next(iter(self.choices))

    @property
    def nuisance(self) -> dict[str, list[Any]]:
        return dict(self.retune or {})


class Sweep(GridStage):
    kind: ClassVar[str] = "sweep"
    settings_model: ClassVar[type[StageSettings]] = SweepSettings
    scores_validation_rows: ClassVar[bool] = True
    settings: SweepSettings

    def tuned(self) -> dict[str, dict[str, list[Any]]]:
        out = {"choices": dict(self.settings.choices)}
        if self.settings.retune:
            out["retune"] = dict(self.settings.retune)
        return out

    def batch_size(self) -> int:
        return self.settings.stack

    def stack_width(self, cfg: RunConfig) -> int:
        s = self.settings
        return min(s.stack, len(self.points(cfg))) * s.seeds if s.stack > 1 else 1

    def _grid(self) -> dict[str, list[str | int | float | bool | None]]:
        settings = {**self.settings.choices, **self.settings.nuisance}
        return {n: [param_value(n, v) for v in vs] for n, vs in settings.items()}

    def points(self, cfg_in: RunConfig) -> list[runner.Point]:
        grid = self._grid()
        return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]

    def distributions(self, cfg_in: RunConfig) -> dict[str, BaseDistribution]:
        return {n: CategoricalDistribution(vs) for n, vs in self._grid().items()}

    def objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        s = self.settings
        data = ctx.data()
        scorer = Scorer(s.metric, data.task, data.train_val().y_val)

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            scores = train_claims(
                ctx,
                claims,
                label=ctx.study_name(self.name),
                configure=lambda c: cfg_in.with_point(
                    {n: setting_value(n, c.point[n]) for n in self._grid()}
                ),
                score=lambda c: TrialScore(c.trial, scorer, seeds=s.seeds),
                budget=Budget(epochs=s.epochs),
                seeds=s.seeds,
                stack=s.stack > 1,
            )
            out: list[runner.Outcome] = []
            for scored in scores:
                scored.store(metric=s.metric)
                out.append(scored.value)
            return out

        return objective

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection:
        s = self.settings
        setting = s.setting
        done = self.finished(trials, cfg_in)
        maximize = greater_is_better(s.metric)
        # with retune, a choice is represented by its best nuisance values
        by_choice: dict[Any, FrozenTrial] = {}
        for t in done:
            c = t.params[setting]
            best = by_choice.get(c)
            if best is None or (
                (t.value or 0.0) > (best.value or 0.0) if maximize else (t.value or 0.0) < (best.value or 0.0)
            ):
                by_choice[c] = t
        candidates = [Candidate(t, {setting: c}, float(t.value or 0.0)) for c, t in by_choice.items()]
        chosen, evidence, note = choose(
            candidates,
            metric=s.metric,
            policy=s.select,
            incumbent={setting: param_value(setting, cfg_in.settings()[setting])}
            if setting in cfg_in.settings()
            else None,
            how=how_compared(cv=False, seeds=s.seeds),
            study_attrs=study_attrs,
        )
        retuned = {n: chosen.trial.params[n] for n in s.nuisance}
        at = f" at its best {', '.join(f'{n} = {v}' for n, v in retuned.items())}" if retuned else ""
        seeds = f" (mean of {s.seeds} seeds)" if s.seeds > 1 else ""
        return Selection(
            selected={setting: chosen.label[setting], **retuned, f"peak_val_{s.metric}": chosen.score},
            reason=f"{best_word(s.metric)} peak validation "
            f"{s.metric.replace('_', ' ')}{seeds} over {s.epochs} epochs{at}{note}",
            config_out=records.read_config(chosen.trial.user_attrs),
            evidence=evidence,
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        return figures.sweep_figures(study, self.settings.setting, metric=self.settings.metric)
