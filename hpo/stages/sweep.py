"""Kind ``sweep``: one setting of the carried configuration tried at each of its choices; the best
(peak validation metric) is carried forward.

Any setting of :class:`~hpo.settings.RunConfig` can be swept (``hidden``, ``activation``,
``norm``, ``init``, ``dropout``, ``optimizer``, ``lr``, ``weight_decay``, ``batch_size``,
``label_smoothing``, ``class_weight``). A batch of claimed choices trains as one stack where
their shapes allow (``stack`` choices per batch); the write-up's four component sweeps are four
stages of this kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial
from pydantic import model_validator

from hpo.present import figures
from hpo.settings import Metric, PositiveInt, RunConfig, StageSettings, param_value, setting_value
from hpo.stages._context import StageContext
from hpo.stages._protocol import GridStage, best_of, runner_up, value
from hpo.stages._scoring import Scorer, trial_callbacks
from hpo.stages.grid_cv import Choices, check_choices
from hpo.training import Member, fit_members, resolve_device
from hpo.tuning import records, runner
from hpo.tuning.records import Selection


class SweepSettings(StageSettings):
    kind: Literal["sweep"] = "sweep"
    choices: Choices
    epochs: PositiveInt = 15
    stack: PositiveInt = 3  # choices trained together (those of one shape); 1 = one at a time
    metric: Metric = "accuracy"

    @model_validator(mode="after")
    def _one_setting(self) -> SweepSettings:
        if len(self.choices) != 1:
            raise ValueError(
                f"choices names {len(self.choices)} settings; a sweep varies one "
                "(declare one sweep stage per setting, or a grid_cv stage for a grid)"
            )
        object.__setattr__(self, "choices", check_choices(self.choices, key="choices"))
        return self

    @property
    def setting(self) -> str:
        return next(iter(self.choices))


class Sweep(GridStage):
    kind: ClassVar[str] = "sweep"
    settings_model: ClassVar[type[StageSettings]] = SweepSettings
    settings: SweepSettings

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return "minimize" if self.settings.metric == "loss" else "maximize"

    def batch_size(self) -> int:
        return self.settings.stack

    def _params(self) -> list[str | int | float]:
        setting = self.settings.setting
        return [param_value(setting, v) for v in self.settings.choices[setting]]

    def points(self, cfg_in: RunConfig) -> list[runner.Point]:
        return [{self.settings.setting: p} for p in self._params()]

    def distributions(self, cfg_in: RunConfig) -> dict[str, BaseDistribution]:
        return {self.settings.setting: CategoricalDistribution(self._params())}

    def objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        s = self.settings
        setting = s.setting
        data = ctx.data()
        tv = data.train_val()
        scorer = Scorer(s.metric, tv.y_val, data.n_classes)
        label = ctx.study_name(self.name)
        device = resolve_device(cfg_in.device)

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            members: list[Member] = []
            callbacks = []
            for claim in claims:
                cfg = cfg_in.with_point({setting: setting_value(setting, claim.point[setting])})
                weights = data.class_weights(tv) if cfg.class_weight == "balanced" else None
                tcfg = cfg.train(epochs=s.epochs, device=device, class_weights=weights)
                members.append(
                    Member(
                        cfg.model(n_features=data.n_features, n_classes=data.n_classes), cfg.optim(), tcfg, 0
                    )
                )
                records.write_config(claim.trial, cfg)
                claim.trial.set_user_attr(records.TRAIN, {**dataclasses.asdict(tcfg), "stacked": len(claims)})
                callbacks.append(
                    trial_callbacks(
                        claim.trial,
                        scorer=scorer,
                        progress=ctx.progress,
                        label=f"{label} trial {claim.trial.number}",
                        epochs=s.epochs,
                    )
                )
            results = fit_members(members, [tv], callbacks=callbacks, stack=s.stack > 1)
            out: list[runner.Outcome] = []
            for claim, result in zip(claims, results, strict=True):
                claim.trial.set_user_attr(records.HISTORY, result.history_dicts())
                out.append(scorer.peak(result.history)[1])
            return out

        return objective

    def select(self, trials: Sequence[FrozenTrial], cfg_in: RunConfig) -> Selection:
        done = self.finished(trials, cfg_in)
        maximize = self.settings.metric != "loss"
        best = best_of(done, value, maximize=maximize)
        second = runner_up(done, best, value, maximize=maximize)
        setting, metric = self.settings.setting, self.settings.metric
        return Selection(
            selected={setting: best.params[setting], f"peak_val_{metric}": best.value},
            reason=f"{'highest' if maximize else 'lowest'} peak validation {metric.replace('_', ' ')} "
            f"over {self.settings.epochs} epochs",
            config_out=records.read_config(best.user_attrs),
            extra={"runner_up": second.params[setting], f"runner_up_peak_val_{metric}": second.value}
            if second
            else {},
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        return figures.sweep_figures(study, self.settings.setting, metric=self.settings.metric)
