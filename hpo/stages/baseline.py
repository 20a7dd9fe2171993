"""Kind ``baseline``: candidate architectures, briefly trained; the lowest validation loss wins."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial
from pydantic import Field

from hpo.present import figures
from hpo.settings import Hidden, PositiveInt, RunConfig, StageSettings, param_value, setting_value
from hpo.stages._context import StageContext
from hpo.stages._protocol import Direction, GridStage, best_of, runner_up, value
from hpo.stages._scoring import Scorer, trial_callbacks
from hpo.training import fit, resolve_device
from hpo.tuning import records, runner
from hpo.tuning.records import Selection


class BaselineSettings(StageSettings):
    kind: Literal["baseline"] = "baseline"
    architectures: Annotated[list[Hidden], Field(min_length=1)] = Field(
        default_factory=lambda: [(128, 128), (256, 256), (256, 128, 64)]
    )
    epochs: PositiveInt = 1
    max_batches: PositiveInt | None = 15  # the write-up: 15 batches, evaluated every 5
    eval_every: PositiveInt | None = 5


class Baseline(GridStage):
    kind: ClassVar[str] = "baseline"
    settings_model: ClassVar[type[StageSettings]] = BaselineSettings
    settings: BaselineSettings

    @property
    def direction(self) -> Direction:
        return "minimize"

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
        scorer = Scorer("loss", tv.y_val, data.n_classes)

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            out: list[runner.Outcome] = []
            for claim in claims:
                trial = claim.trial
                cfg = cfg_in.with_point({"hidden": setting_value("hidden", claim.point["architecture"])})
                tcfg = cfg.train(
                    epochs=s.epochs,
                    max_batches=s.max_batches,
                    eval_every=s.eval_every,
                    device=resolve_device(cfg.device),
                    class_weights=data.class_weights(tv) if cfg.class_weight == "balanced" else None,
                )
                records.write_config(trial, cfg)
                trial.set_user_attr(records.TRAIN, dataclasses.asdict(tcfg))
                callbacks = trial_callbacks(
                    trial,
                    scorer=scorer,
                    progress=ctx.progress,
                    label=f"{ctx.study_name(self.name)} trial {trial.number}",
                    epochs=s.epochs,
                    step="step",
                )
                result = fit(
                    cfg.model(n_features=data.n_features, n_classes=data.n_classes),
                    cfg.optim(),
                    tcfg,
                    tv,
                    callbacks=callbacks,
                )
                trial.set_user_attr(records.HISTORY, result.history_dicts())
                trial.set_user_attr(records.VAL_ACCURACY, result.history[-1].val_accuracy)
                out.append(result.history[-1].val_loss)
            return out

        return objective

    def select(self, trials: Sequence[FrozenTrial], cfg_in: RunConfig) -> Selection:
        done = self.finished(trials, cfg_in)
        best = best_of(done, value, maximize=False)
        second = runner_up(done, best, value, maximize=False)
        cfg = records.read_config(best.user_attrs)
        return Selection(
            selected={
                "architecture": best.params["architecture"],
                "hidden": list(cfg.hidden),
                "val_loss": best.value,
            },
            reason="lowest validation loss after the baseline run",
            config_out=cfg,
            extra={"runner_up": second.params["architecture"], "runner_up_val_loss": second.value}
            if second
            else {},
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        return figures.baseline_figures(study)
