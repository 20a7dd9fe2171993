"""The configuration a stage starts from: what the stage it builds on handed on, read back from the
storage and not trusted whole."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from hpo.errors import ConfigError
from hpo.families import rebuilt
from hpo.settings import RunConfig, describe_error, error_path, format_input
from hpo.stages import Stage
from hpo.tuning import records

if TYPE_CHECKING:
    from hpo.pipeline._pipeline import Pipeline


def input_config(pipe: Pipeline, stage: Stage) -> RunConfig:
    """The handed-on configuration of the stage ``stage`` builds on, rebuilt on its track's base
    (``[defaults]``, or the stage's own family), else that base (see
    :meth:`hpo.pipeline.Pipeline.input_config`)."""
    source = pipe.plan.input_stage(stage.name)
    if source is None:
        return pipe.plan.base(stage.name)
    study = pipe.ctx.find_study(pipe.ctx.study_name(source))
    assert study is not None
    where = f"stage {source!r} in {pipe.ctx.storage_url} hands on"
    fix = (
        f"start that stage over (hpo run-stage {source} --force --config {pipe.plan.path}) and check "
        "who can write the storage"
    )
    try:
        selection = records.read_selection(study.user_attrs)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = error_path(tuple(error["loc"]))
        value = format_input(error.get("input"))
        raise ConfigError(f"{where} {key} = {value}: {describe_error(error)}; {fix}") from None
    assert selection is not None
    return rebuilt(pipe.plan.base(stage.name), selection.config_out, where=where, fix=fix)
