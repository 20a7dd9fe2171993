"""Stage ``final``: retrain the selected configuration with early stopping, evaluate on the
test rows exactly once, and save the model (weights, config, scaler, class names) as an
Optuna artifact."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import optuna
import torch
from optuna.artifacts import upload_artifact

from hpo import __version__, data, models, train
from hpo.stages import _base

MODEL_FORMAT = "hpo-model/1"


DIRECTION: Literal["minimize", "maximize"] = "maximize"


def studies(ctx: _base.StageContext) -> list[str]:
    return [_base.study_name(ctx.pipeline, "final")]


def model_payload(model: torch.nn.Module, cfg: _base.Config, scaler: data.Scaler) -> dict[str, object]:
    """Everything needed to predict, as types that ``torch.load(weights_only=True)`` accepts."""
    return {
        "format": MODEL_FORMAT,
        "hpo_version": __version__,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "model_config": _base.model_config(cfg).to_dict(),
        "config": dict(cfg),
        "scaler_mean": torch.as_tensor(scaler.mean),
        "scaler_scale": torch.as_tensor(scaler.scale),
        "class_names": list(data.CLASS_NAMES),
    }


def run(ctx: _base.StageContext, base: _base.Config) -> optuna.Study:
    stage = ctx.pipeline.final
    label = studies(ctx)[0]
    tcfg = train.TrainConfig(
        epochs=stage.epochs,
        batch_size=base["batch_size"],
        seed=base["seed"],
        patience=stage.patience,
        precision=base.get("precision", "fp32"),
    )

    def objective(trial: optuna.Trial, point: _base.Point) -> float:
        result = _base.fit_trial(trial, base, tcfg, ctx.train_val(), label=label)
        trial.set_user_attr("best_epoch", result.best.epoch)
        x_test, y_test = ctx.test_tensors()
        metrics = train.evaluate(result.model, x_test, y_test, class_names=data.CLASS_NAMES)
        trial.set_user_attr("test_metrics", metrics.to_dict())
        scaler = ctx.prepared().scaler(ctx.split.name)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt"
            torch.save(model_payload(result.model, base, scaler), path)
            artifact_id = upload_artifact(
                artifact_store=ctx.artifacts, file_path=str(path), study_or_trial=trial
            )
        trial.set_user_attr("model_artifact_id", artifact_id)
        trial.set_user_attr("parameters", models.count_parameters(result.model))
        return metrics.accuracy

    study = _base.run_points(ctx, label, points=[{}], choices={}, objective=objective, direction=DIRECTION)
    if not _base.is_complete(study):
        (trial,) = _base.finished(study, [{}], [])
        m = trial.user_attrs["test_metrics"]
        study.set_user_attr("test_metrics", m)
        study.set_user_attr("model_artifact_id", trial.user_attrs["model_artifact_id"])
        _base.mark_complete(
            study,
            stage="final",
            selected={
                "test_accuracy": m["accuracy"],
                "test_loss": m["loss"],
                "best_epoch": trial.user_attrs["best_epoch"],
            },
            config_out=base,
            why=f"retrained {stage.epochs} epochs, early stopping with patience {stage.patience}; "
            "test rows evaluated once",
        )
    return study
