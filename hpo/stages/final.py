"""Kind ``final``: retrain the carried configuration with early stopping, evaluate the test rows
once, and save the model (weights, configuration, scaler, feature and class names) as an Optuna
artifact. It always runs last, whatever its place in the study file: it is the one stage that
reads the test rows."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial

from hpo import __version__
from hpo.model import ModelFile, count_parameters, save_model_file
from hpo.present import figures
from hpo.settings import PositiveInt, RunConfig, StageSettings
from hpo.stages._context import StageContext
from hpo.stages._protocol import GridStage
from hpo.stages._scoring import Scorer, trial_callbacks
from hpo.training import evaluate, fit, resolve_device
from hpo.tuning import records, runner
from hpo.tuning.records import Selection


class FinalSettings(StageSettings):
    kind: Literal["final"] = "final"
    epochs: PositiveInt = 15
    patience: PositiveInt | None = 5


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
            tcfg = cfg_in.train(
                epochs=s.epochs,
                patience=s.patience,
                device=resolve_device(cfg_in.device),
                class_weights=weights,
            )
            records.write_config(trial, cfg_in)
            trial.set_user_attr(records.TRAIN, dataclasses.asdict(tcfg))
            callbacks = trial_callbacks(
                trial,
                scorer=Scorer("accuracy", tv.y_val, data.n_classes),
                progress=ctx.progress,
                label=f"{label} trial {trial.number}",
                epochs=s.epochs,
            )
            model_config = cfg_in.model(n_features=data.n_features, n_classes=data.n_classes)
            result = fit(model_config, cfg_in.optim(), tcfg, tv, callbacks=callbacks)
            trial.set_user_attr(records.HISTORY, result.history_dicts())
            trial.set_user_attr(records.BEST_EPOCH, result.best.epoch)
            x_test, y_test = data.read_test_rows(reader=f"stage {self.name}")
            metrics = evaluate(result.model, x_test, y_test, class_names=data.class_names)
            trial.set_user_attr(records.TEST_METRICS, metrics.to_dict())
            model_file = ModelFile(
                state_dict=result.model.state_dict(),
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
            trial.set_user_attr(records.PARAMETERS, count_parameters(result.model))
            return [metrics.accuracy]

        return objective

    def select(self, trials: Sequence[FrozenTrial], cfg_in: RunConfig) -> Selection:
        (trial,) = self.finished(trials, cfg_in)
        m = trial.user_attrs[records.TEST_METRICS]
        return Selection(
            selected={
                "test_accuracy": m["accuracy"],
                "test_loss": m["loss"],
                "best_epoch": trial.user_attrs[records.BEST_EPOCH],
            },
            reason=f"retrained {self.settings.epochs} epochs, early stopping with patience "
            f"{self.settings.patience}; test rows evaluated once",
            config_out=cfg_in,
            extra={"test_metrics": m, "model_artifact": trial.user_attrs[records.MODEL_ARTIFACT]},
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        return figures.final_figures(study)
