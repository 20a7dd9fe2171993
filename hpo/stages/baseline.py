"""Kind ``baseline``: candidate architectures, briefly trained; the lowest validation loss wins."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial
from pydantic import Field

from hpo.present import figures
from hpo.settings import (
    Hidden,
    Metric,
    PositiveInt,
    RunConfig,
    SelectingSettings,
    StageSettings,
    param_value,
    setting_value,
)
from hpo.stages._context import StageContext
from hpo.stages._protocol import Direction, GridStage
from hpo.stages._scoring import Scorer, TrialScore, callbacks_for, seed_values
from hpo.stages._selection import Candidate, choose, how_compared
from hpo.training import fit, resolve_device
from hpo.tuning import records, runner
from hpo.tuning.records import Selection


class BaselineSettings(SelectingSettings):
    kind: Literal["baseline"] = "baseline"
    architectures: Annotated[list[Hidden], Field(min_length=1)] = Field(
        default_factory=lambda: [(128, 128), (256, 256), (256, 128, 64)]
    )
    epochs: PositiveInt = 1
    max_batches: PositiveInt | None = 15  # the write-up: 15 batches, evaluated every 5
    eval_every: PositiveInt | None = 5
    metric: Metric = "loss"  # the write-up: lowest validation loss (after the last evaluation)


class Baseline(GridStage):
    kind: ClassVar[str] = "baseline"
    settings_model: ClassVar[type[StageSettings]] = BaselineSettings
    settings: BaselineSettings
    scores_validation_rows: ClassVar[bool] = True

    @property
    def direction(self) -> Direction:
        return "minimize" if self.settings.metric == "loss" else "maximize"

    def _archs(self) -> list[str]:
        return [str(param_value("hidden", a)) for a in self.settings.architectures]

    def points(self, cfg_in: RunConfig) -> list[runner.Point]:
        return [{"architecture": a} for a in self._archs()]

    def distributions(self, cfg_in: RunConfig) -> dict[str, BaseDistribution]:
        return {"architecture": CategoricalDistribution(self._archs())}

    def objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        s = self.settings
        data = ctx.data()
        tv = data.train_val()
        scorer = Scorer(s.metric, tv.y_val, data.n_classes)

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            out: list[runner.Outcome] = []
            for claim in claims:
                trial = claim.trial
                cfg = cfg_in.with_point({"hidden": setting_value("hidden", claim.point["architecture"])})
                weights = data.class_weights(tv) if cfg.class_weight == "balanced" else None
                scored = TrialScore(trial, scorer, seeds=s.seeds, step="step", last=True)
                history = []
                for k, seed in enumerate(seed_values(cfg.seed, s.seeds)):
                    tcfg = cfg.train(
                        epochs=s.epochs,
                        max_batches=s.max_batches,
                        eval_every=s.eval_every,
                        device=resolve_device(cfg.device),
                        class_weights=weights,
                        seed=seed,
                    )
                    if k == 0:
                        records.write_config(trial, cfg)
                        trial.set_user_attr(records.TRAIN, {**dataclasses.asdict(tcfg), "seeds": s.seeds})
                    label = f"{ctx.study_name(self.name)} trial {trial.number}" + (
                        f" seed {seed}" if s.seeds > 1 else ""
                    )
                    model = cfg.model(n_features=data.n_features, n_classes=data.n_classes)
                    callbacks = callbacks_for(
                        scored,
                        k,
                        progress=ctx.progress,
                        label=label,
                        epochs=s.epochs,
                        rows=tv.x_train.shape[0],
                    )
                    result = fit(model, cfg.optim(), tcfg, tv, callbacks=callbacks)
                    history.append(result.history_dicts())
                trial.set_user_attr(records.HISTORY, history[0])
                scored.store(metric=s.metric)
                out.append(scored.value)
            return out

        return objective

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection:
        done = self.finished(trials, cfg_in)
        s = self.settings
        candidates = [
            Candidate(t, {"architecture": t.params["architecture"]}, float(t.value or 0.0)) for t in done
        ]
        chosen, evidence, note = choose(
            candidates,
            metric=s.metric,
            policy=s.select,
            incumbent={"architecture": param_value("hidden", cfg_in.hidden)},
            how=how_compared(cv=False, seeds=s.seeds),
            study_attrs=study_attrs,
        )
        cfg = records.read_config(chosen.trial.user_attrs)
        return Selection(
            selected={
                "architecture": chosen.label["architecture"],
                "hidden": list(cfg.hidden),
                f"val_{s.metric}": chosen.score,
            },
            reason=f"{'lowest' if s.metric == 'loss' else 'highest'} validation {s.metric.replace('_', ' ')} "
            f"after the baseline run{note}",
            config_out=cfg,
            evidence=evidence,
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        return figures.baseline_figures(study)
