"""Kind ``final``: retrain the carried configuration with early stopping, evaluate the test rows
once per model, and save the model (weights, configuration, scaler, feature and class names) as an
Optuna artifact. It always runs last, whatever its place in the study file: it is the one stage
that reads the test rows.

With ``seeds = N`` it trains N models (stacked, from seeds ``seed, seed+1, ...``) and reports the
test metrics as their mean and standard deviation; the first seed's model is the saved one.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial
from pydantic import Field

from hpo import __version__
from hpo.model import ModelFile, count_parameters, save_model_file
from hpo.present import figures
from hpo.settings import PositiveInt, RunConfig, StageSettings
from hpo.stages._context import StageContext
from hpo.stages._protocol import GridStage
from hpo.stages._scoring import Scorer, TrialScore, callbacks_for, seed_values
from hpo.training import Member, evaluate, fit_members, resolve_device
from hpo.tuning import records, runner
from hpo.tuning.records import Selection

SUMMARISED = ("loss", "accuracy", "balanced_accuracy", "macro_f1")


class FinalSettings(StageSettings):
    kind: Literal["final"] = "final"
    epochs: PositiveInt = 15
    patience: PositiveInt | None = 5
    seeds: Annotated[int, Field(ge=1, le=64)] = 1  # models trained (stacked); test metrics as mean ± sd


class Final(GridStage):
    kind: ClassVar[str] = "final"
    settings_model: ClassVar[type[StageSettings]] = FinalSettings
    reads_test_rows: ClassVar[bool] = True
    settings: FinalSettings

    def objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        s = self.settings
        data = ctx.data()
        tv = data.train_val()
        label = ctx.study_name(self.name)

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            (claim,) = claims
            trial = claim.trial
            weights = data.class_weights(tv) if cfg_in.class_weight == "balanced" else None
            device = resolve_device(cfg_in.device)
            model_config = cfg_in.model(n_features=data.n_features, n_classes=data.n_classes)
            seeds = seed_values(cfg_in.seed, s.seeds)
            members = [
                Member(
                    model_config,
                    cfg_in.optim(),
                    cfg_in.train(
                        epochs=s.epochs, patience=s.patience, device=device, class_weights=weights, seed=seed
                    ),
                    0,
                )
                for seed in seeds
            ]
            records.write_config(trial, cfg_in)
            trial.set_user_attr(records.TRAIN, {**dataclasses.asdict(members[0].train), "seeds": s.seeds})
            scored = TrialScore(trial, Scorer("accuracy", tv.y_val, data.n_classes), seeds=s.seeds)
            callbacks = [
                callbacks_for(
                    scored,
                    k,
                    progress=ctx.progress,
                    label=f"{label} trial {trial.number}" + (f" seed {seed}" if s.seeds > 1 else ""),
                    epochs=s.epochs,
                )
                for k, seed in enumerate(seeds)
            ]
            results = fit_members(members, [tv], callbacks=callbacks)
            trial.set_user_attr(records.HISTORY, results[0].history_dicts())
            trial.set_user_attr(records.BEST_EPOCH, results[0].best.epoch)
            per_seed = []
            for seed, result in zip(seeds, results, strict=True):
                x_test, y_test = data.read_test_rows(
                    reader=f"stage {self.name}" + (f" seed {seed}" if s.seeds > 1 else "")
                )
                per_seed.append(
                    evaluate(result.model, x_test, y_test, class_names=data.class_names).to_dict()
                )
            metrics = dict(per_seed[0])
            if s.seeds > 1:
                trial.set_user_attr(records.SEED_TEST_METRICS, per_seed)
                for key in SUMMARISED:
                    values = [m[key] for m in per_seed]
                    metrics[f"{key}_mean"] = float(np.mean(values))
                    metrics[f"{key}_sd"] = float(np.std(values, ddof=1))
                    metrics[key] = float(np.mean(values))
                metrics["seeds"] = s.seeds
            trial.set_user_attr(records.TEST_METRICS, metrics)
            model_file = ModelFile(
                state_dict=results[0].model.state_dict(),
                model_config=model_config,
                run_config=cfg_in.to_record(),
                scaler_mean=data.scaler.mean,
                scaler_scale=data.scaler.scale,
                feature_names=data.feature_names,
                class_names=data.class_names,
                labeling=data.labeling.to_dict(),
                target=str(data.meta["target"]),
                hpo_version=__version__,
            )
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.pt"
                save_model_file(path, model_file)
                artifact_id = upload_artifact(
                    artifact_store=ctx.artifacts, file_path=str(path), study_or_trial=trial
                )
            trial.set_user_attr(records.MODEL_ARTIFACT, artifact_id)
            trial.set_user_attr(records.PARAMETERS, count_parameters(results[0].model))
            return [float(metrics["accuracy"])]

        return objective

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection:
        (trial,) = self.finished(trials, cfg_in)
        m = trial.user_attrs[records.TEST_METRICS]
        seeds = f"; {self.settings.seeds} seeds, test metrics their mean" if self.settings.seeds > 1 else ""
        return Selection(
            selected={
                "test_accuracy": m["accuracy"],
                "test_loss": m["loss"],
                "best_epoch": trial.user_attrs[records.BEST_EPOCH],
            },
            reason=f"retrained {self.settings.epochs} epochs, early stopping with patience "
            f"{self.settings.patience}; test rows evaluated once per model{seeds}",
            config_out=cfg_in,
            extra={"test_metrics": m, "model_artifact": trial.user_attrs[records.MODEL_ARTIFACT]},
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        return figures.final_figures(study)
