"""Kind ``final``: retrain the carried configuration with early stopping, evaluate the test rows
once per model, and save the model (the family's payload, configuration, task, scaler, feature and
class names) as an Optuna artifact. It always runs last, whatever its place in the study file: it
is the one stage that reads the test rows.

With ``seeds = N`` it trains N models (stacked, from seeds ``seed, seed+1, ...``). Without
``ensemble`` the test metrics are their mean (``accuracy`` ...), with ``accuracy_mean`` and
``accuracy_sd`` beside, and the first seed's model is the saved one. With ``ensemble = true`` the
final model is the ensemble of the N members (the task combines their outputs: mean class
probabilities, mean values) and is saved whole; the top-level test metrics are the ensemble's,
each member's are kept (``seed_test_metrics``) with their mean and standard deviation beside
(``accuracy_mean``, ``accuracy_sd``). Either way the test rows are read once per member.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial
from pydantic import Field, model_validator
from torch import nn

from hpo import __version__
from hpo.data.columns import NUMERIC
from hpo.families import family_of
from hpo.families.mlp import count_parameters
from hpo.model_file import ModelFile, save_model_file
from hpo.present import figures
from hpo.sections import StageSettings
from hpo.settings import PositiveInt, RunConfig
from hpo.stages._context import StageContext
from hpo.stages._jobs import Batch, Budget
from hpo.stages._protocol import GridStage
from hpo.stages._scoring import Scorer, TrialScore
from hpo.tasks import metrics_of, task_kind
from hpo.tuning import records, runner
from hpo.tuning.records import Selection


class FinalSettings(StageSettings):
    kind: Literal["final"] = "final"
    epochs: PositiveInt = 15  # torch families; an estimator is fitted once
    patience: PositiveInt | None = 5
    seeds: Annotated[int, Field(ge=1, le=64)] = 1  # models trained (stacked); test metrics as mean ± sd
    ensemble: bool = False  # the final model is the seeds' ensemble (needs seeds >= 2)

    @model_validator(mode="after")
    def _ensemble_has_members(self) -> FinalSettings:
        if self.ensemble and self.seeds < 2:
            raise ValueError(
                f"ensemble = true needs seeds >= 2 (got seeds = {self.seeds}); "
                "set seeds to the number of members"
            )
        return self


class Final(GridStage):
    kind: ClassVar[str] = "final"
    settings_model: ClassVar[type[StageSettings]] = FinalSettings
    reads_test_rows: ClassVar[bool] = True
    settings: FinalSettings

    def stack_width(self, cfg: RunConfig) -> int:
        return self.settings.seeds

    def objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        s = self.settings
        data = ctx.data()
        task = data.task
        tv = data.train_val()
        family = family_of(cfg_in)

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            (claim,) = claims
            trial = claim.trial
            scored = TrialScore(trial, Scorer(task.headline, task, tv.y_val), seeds=s.seeds)
            batch = Batch(ctx, [tv], ctx.study_name(self.name))
            batch.add(
                trial,
                cfg_in,
                Budget(epochs=s.epochs, patience=s.patience),
                seeds=s.seeds,
                score=scored,
                attrs={"seeds": s.seeds},
            )
            results = batch.train(stack=True)
            trial.set_user_attr(records.HISTORY, results[0].history_dicts())
            trial.set_user_attr(records.BEST_EPOCH, results[0].best.epoch)
            outputs, per_seed, y_test = [], [], None
            for job, result in zip(batch.jobs, results, strict=True):
                seed = job.train.seed
                x_test, y_test = data.read_test_rows(
                    reader=f"stage {self.name}" + (f" seed {seed}" if s.seeds > 1 else "")
                )
                outputs.append(family.outputs(result.model, x_test, task.n_outputs))
                per_seed.append(task.test_metrics(outputs[-1], y_test))
            assert y_test is not None
            metrics = self.test_metrics(
                per_seed, task.test_metrics(task.combine(outputs), y_test) if s.ensemble else None
            )
            metrics["task"] = task.kind
            dropped = int(data.meta.get("dropped_target_rows", 0))  # type: ignore[call-overload]
            if dropped:  # rows of the table never trained or tested on (hpo status says so)
                metrics["dropped_target_rows"] = dropped
            if s.seeds > 1:
                trial.set_user_attr(records.SEED_TEST_METRICS, per_seed)
            trial.set_user_attr(records.TEST_METRICS, metrics)
            members = results if s.ensemble else results[:1]
            # a numeric complete table keeps format 4 (its scaler is the whole preprocessing)
            plain = all(c.kind == NUMERIC and c.missing == 0 for c in data.input_columns)
            model_file = ModelFile(
                family=family.name,
                payloads=[family.payload(r.model) for r in members],
                run_config=cfg_in.to_record(),
                task=task.to_record(),
                scaler_mean=data.preprocessor.scaler.mean,
                scaler_scale=data.preprocessor.scaler.scale,
                feature_names=[c.name for c in data.input_columns],
                class_names=data.class_names,
                labeling=data.labeling.to_dict() if data.labeling is not None else None,
                target=str(data.meta["target"]),
                hpo_version=__version__,
                preprocessor=None if plain else data.preprocessor.to_state(),
                columns=None if plain else [c.to_dict() for c in data.input_columns],
            )
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.pt"
                save_model_file(path, model_file)
                artifact_id = upload_artifact(
                    artifact_store=ctx.artifacts, file_path=str(path), study_or_trial=trial
                )
            trial.set_user_attr(records.MODEL_ARTIFACT, artifact_id)
            if isinstance(results[0].model, nn.Module):
                trial.set_user_attr(records.PARAMETERS, sum(count_parameters(r.model) for r in members))
            return [float(metrics[task.headline])]

        return objective

    def test_metrics(
        self, per_seed: Sequence[Mapping[str, Any]], ensemble: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """What the stage stores: one model's metrics; the members' mean (without an ensemble)
        or the ensemble's (with one) at the top level, and the members' mean ± sd beside."""
        s = self.settings
        metrics = dict(ensemble if ensemble is not None else per_seed[0])
        if s.seeds > 1:
            for key in metrics_of(self.task):
                values = [m[key] for m in per_seed]
                metrics[f"{key}_mean"] = float(np.mean(values))
                metrics[f"{key}_sd"] = float(np.std(values, ddof=1))
                if ensemble is None:
                    metrics[key] = float(np.mean(values))
            metrics["seeds"] = s.seeds
        if ensemble is not None:
            metrics["ensemble"] = s.seeds
        return metrics

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection:
        (trial,) = self.finished(trials, cfg_in)
        m = trial.user_attrs[records.TEST_METRICS]
        headline = task_kind(self.task).default_metric
        s = self.settings
        if s.ensemble:
            seeds = (
                f"; an ensemble of {s.seeds} seeds, test metrics the ensemble's "
                "(the members' mean ± sd beside)"
            )
        elif s.seeds > 1:
            seeds = f"; {s.seeds} seeds, test metrics their mean, the first seed's model saved"
        else:
            seeds = ""
        how = (
            f"retrained {s.epochs} epochs, early stopping with patience {s.patience}"
            if family_of(cfg_in).torch_based
            else f"refitted {cfg_in.estimator} on the training rows"
        )
        return Selection(
            selected={
                f"test_{headline}": m[headline],
                "test_loss": m["loss"],
                "best_epoch": trial.user_attrs[records.BEST_EPOCH],
            },
            reason=f"{how}; test rows evaluated once per model{seeds}",
            config_out=cfg_in,
            extra={"test_metrics": m, "model_artifact": trial.user_attrs[records.MODEL_ARTIFACT]},
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        return figures.final_figures(study)
