"""Kind ``baseline``: candidate architectures, briefly trained; the lowest validation loss wins.

Serves the torch families whose models have a ``hidden`` setting: the MLP, and a factory of
your own with a ``hidden`` keyword argument (``architectures`` are its values)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial
from pydantic import Field

from hpo.present import figures
from hpo.sections import SelectingSettings, StageSettings
from hpo.settings import Hidden, Metric, PositiveInt, RunConfig, param_value, setting_value
from hpo.stages._context import StageContext
from hpo.stages._jobs import Batch, Budget
from hpo.stages._protocol import TORCH_FAMILIES, GridStage, Work
from hpo.stages._scoring import Scorer, TrialScore
from hpo.stages._selection import Candidate, best_word, choose, how_compared
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
    families: ClassVar[frozenset[str]] = TORCH_FAMILIES

    def tuned(self) -> dict[str, dict[str, list[Any]]]:
        return {"architectures": {"hidden": [list(a) for a in self.settings.architectures]}}

    def with_values(self, values: dict[str, dict[str, list[Any]]]) -> StageSettings:
        return self.settings  # the architectures are validated as layer sizes already

    def _archs(self) -> list[str]:
        return [str(param_value("hidden", a)) for a in self.settings.architectures]

    def planned(self, cfg: RunConfig, train_rows: int) -> Work:
        s = self.settings
        models = len(self.points(cfg)) * s.seeds
        per_model = s.epochs * train_rows
        if s.max_batches is not None:
            per_model = min(per_model, s.max_batches * cfg.batch_size)
        return Work(models * s.epochs, models * per_model)

    def points(self, cfg_in: RunConfig) -> list[runner.Point]:
        return [{"architecture": a} for a in self._archs()]

    def distributions(self, cfg_in: RunConfig) -> dict[str, BaseDistribution]:
        return {"architecture": CategoricalDistribution(self._archs())}

    def objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        s = self.settings
        data = ctx.data()
        tv = data.train_val()
        scorer = Scorer(s.metric, data.task, tv.y_val)
        budget = Budget(epochs=s.epochs, max_batches=s.max_batches, eval_every=s.eval_every)

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            out: list[runner.Outcome] = []
            for claim in claims:  # one after another: runs of max_batches steps do not stack
                cfg = cfg_in.with_point({"hidden": setting_value("hidden", claim.point["architecture"])})
                scored = TrialScore(claim.trial, scorer, seeds=s.seeds, step="step", last=True)
                batch = Batch(ctx, [tv], ctx.study_name(self.name))
                batch.add(claim.trial, cfg, budget, seeds=s.seeds, score=scored, attrs={"seeds": s.seeds})
                results = batch.train(stack=False)
                claim.trial.set_user_attr(records.HISTORY, results[0].history_dicts())
                scored.store(metric=s.metric)
                out.append(scored.value)
            return out

        return objective

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection:
        done = self.finished(trials, cfg_in)
        s = self.settings
        current = cfg_in.settings()  # a factory's hidden may be left at its own default
        candidates = [
            Candidate(t, {"architecture": t.params["architecture"]}, float(t.value or 0.0)) for t in done
        ]
        chosen, evidence, note = choose(
            candidates,
            metric=s.metric,
            policy=s.select,
            incumbent={"architecture": param_value("hidden", current["hidden"])}
            if "hidden" in current
            else None,
            how=how_compared(cv=False, seeds=s.seeds),
            study_attrs=study_attrs,
        )
        cfg = records.read_config(chosen.trial.user_attrs)
        return Selection(
            selected={
                "architecture": chosen.label["architecture"],
                "hidden": list(cfg.settings()["hidden"]),
                f"val_{s.metric}": chosen.score,
            },
            reason=f"{best_word(s.metric)} validation {s.metric.replace('_', ' ')} "
            f"after the baseline run{note}",
            config_out=cfg,
            evidence=evidence,
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        return figures.baseline_figures(study)
