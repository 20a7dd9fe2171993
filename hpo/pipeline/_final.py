"""The final stage's study and its model, read back from the storage and the artifact store."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from hpo.errors import PrerequisiteError
from hpo.model_file import ModelFile, read_model_artifact
from hpo.tuning import records

if TYPE_CHECKING:
    from hpo.pipeline._pipeline import Pipeline


def final_study(pipe: Pipeline) -> optuna.Study:
    """The final stage's study, once complete, else one line saying what to run."""
    finals = [s for s in pipe.plan.stages if s.reads_test_rows]
    study = pipe.ctx.find_study(pipe.ctx.study_name(finals[0].name)) if finals else None
    if not records.is_complete(study):
        name = finals[0].name if finals else "final"
        raise PrerequisiteError(
            f"no final model in {pipe.ctx.storage_url} for pipeline {pipe.plan.name!r}; "
            f"run first: hpo run-stage {name} --config {pipe.plan.path}"
        )
    assert study is not None
    return study


def final_model(pipe: Pipeline) -> ModelFile:
    """The final stage's model file, read back from the artifact store."""
    finals = [s.name for s in pipe.plan.stages if s.reads_test_rows]
    with tempfile.TemporaryDirectory() as tmp:
        return read_model_artifact(
            pipe.ctx.artifacts,
            pipe.final_model_artifact(),
            Path(tmp) / "model.pt",
            stage=finals[0] if finals else "final",
        )
