"""Running one stage: readiness and prerequisites, its study's creation or reopening with a drift check,
the run, and its completion (selection, figures, the complete flag)."""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

import optuna

from hpo.errors import ConfigError, PrerequisiteError
from hpo.families import family_of
from hpo.pipeline._status import StageRun
from hpo.present import dashboard, figures
from hpo.settings import FAMILY_KEY, RunConfig
from hpo.stages import Stage
from hpo.tasks import task_kind
from hpo.tuning import records

if TYPE_CHECKING:
    from hpo.pipeline._pipeline import Pipeline

logger = logging.getLogger("hpo.pipeline")


def run_stage(pipe: Pipeline, stage: Stage, cfg_in: RunConfig, *, force: bool) -> StageRun:
    """Create or reopen ``stage``'s study (deleting it first with ``force``), run it and finish it;
    a complete one is left as it is."""
    ctx = pipe.ctx
    study_name = ctx.study_name(stage.name)
    existing = ctx.find_study(study_name)
    if force and existing is not None:
        optuna.delete_study(study_name=study_name, storage=ctx.storage)
        logger.info("deleted study %s (--force)", study_name)
        existing = None
    if existing is not None and records.SETTINGS not in existing.user_attrs:
        # another worker is creating it this moment (its settings follow), or it is foreign
        if existing.get_trials(deepcopy=False) or any(not k.startswith("hpo:") for k in existing.user_attrs):
            raise ConfigError(
                f"study {study_name} in {ctx.storage_url} was not made by this version of hpo; "
                f"start stage {stage.name!r} over with --force"
            )
        existing = pipe.create_study(stage, cfg_in)
    if existing is not None:
        pipe.check_drift(stage, existing, cfg_in)
        if records.is_complete(existing):
            return StageRun(stage.name, "already complete", None, pipe.study_state(stage))
    start = time.perf_counter()
    ctx.numerics = pipe.numerics()
    study = existing or pipe.create_study(stage, cfg_in)
    stage.run(ctx, study, cfg_in)
    pipe.finish(stage, study, cfg_in)
    seconds = round(time.perf_counter() - start, 1)
    return StageRun(stage.name, "completed", seconds, pipe.study_state(stage))


def check_ready(pipe: Pipeline) -> None:
    """Prepare the data and check each track's model for them, and for every value a stage tunes."""
    data = pipe.ctx.data()
    shape = {"n_features": data.n_features, "n_outputs": data.n_outputs}
    owners = {"defaults": pipe.plan.defaults}  # each track's model, where the study file declares it
    for stage in pipe.plan.stages:
        if stage.name in pipe.plan.bases and pipe.plan.bases[stage.name] not in owners.values():
            owners[f"stages.{stage.name}"] = pipe.plan.bases[stage.name]
    for where, cfg in owners.items():
        try:
            family_of(cfg).check_model(cfg, **shape)
        except ValueError as exc:
            key = FAMILY_KEY.get(cfg.family, "family")
            raise ConfigError(f"{pipe.plan.path}: {where}.{key} = {getattr(cfg, key)!r}: {exc}") from None
    for stage in pipe.plan.stages:  # every value a stage tunes of the family's own parameters
        cfg = pipe.plan.base(stage.name)
        family = family_of(cfg)
        for key, settings in stage.tuned().items():
            for name, values in settings.items():
                for value in values if name not in cfg.own else ():
                    try:
                        family.check_model(cfg.with_point({name: value}), **shape)
                    except ValueError as exc:
                        raise ConfigError(
                            f"{pipe.plan.path}: stages.{stage.name}.{key}.{name} = {value!r}: {exc}"
                        ) from None


def check_prerequisites(pipe: Pipeline, stage: Stage) -> None:
    """Every stage ``stage`` requires is complete in the storage, else one line saying what to run."""
    for required in pipe.plan.requires[stage.name]:
        if not records.is_complete(pipe.ctx.find_study(pipe.ctx.study_name(required))):
            raise PrerequisiteError(
                f"stage {stage.name!r} needs stage {required!r}, which is not complete in "
                f"{pipe.ctx.storage_url}; run first: hpo run-stage {required} --config {pipe.plan.path}"
            )
    stage.check_inputs(pipe.ctx)


def material(pipe: Pipeline, stage: Stage, cfg_in: RunConfig) -> dict[str, Any]:
    """What a stage's study is fingerprinted by: its settings and the configuration it starts from."""
    return {**pipe.plan.fingerprint_material(stage), "carried_in": cfg_in.to_record()}


def create_study(pipe: Pipeline, stage: Stage, cfg_in: RunConfig) -> optuna.Study:
    """Create ``stage``'s study (or join the one another worker just created) with its records."""
    ctx = pipe.ctx
    settings = material(pipe, stage, cfg_in)
    study = optuna.create_study(
        study_name=ctx.study_name(stage.name),
        storage=ctx.storage,
        direction=stage.direction,
        sampler=stage.sampler(cfg_in.seed),
        pruner=stage.pruner(),
        load_if_exists=True,
    )
    with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if study.metric_names is None:  # optuna-dashboard and Optuna's plots name the objective
            study.set_metric_names([pipe.objective_name(stage)])
    attrs = {
        records.STAGE: stage.name,
        records.KIND: stage.kind,
        records.SETTINGS: settings,
        records.FINGERPRINT: records.fingerprint(settings),
        records.CARRIED_IN: cfg_in.to_record(),
        **stage.study_records(ctx),
    }
    for key, value in attrs.items():
        if key not in study.user_attrs:  # another worker may have created it first
            study.set_user_attr(key, value)
    return reopen(pipe, stage, study.study_name, cfg_in)


def objective_name(pipe: Pipeline, stage: Stage) -> str:
    """What ``stage``'s trials report as their value: where it is measured, then the metric."""
    metric = getattr(stage.settings, "metric", None) or task_kind(pipe.plan.data.task).default_metric
    where = "test" if stage.reads_test_rows else "cv_mean" if stage.folds() > 1 else "val"
    return f"{where}_{metric}"


def reopen(pipe: Pipeline, stage: Stage, name: str, cfg_in: RunConfig) -> optuna.Study:
    """Study ``name`` loaded with ``stage``'s sampler and pruner."""
    return optuna.load_study(
        study_name=name,
        storage=pipe.ctx.storage,
        sampler=stage.sampler(cfg_in.seed),
        pruner=stage.pruner(),
    )


def check_drift(pipe: Pipeline, stage: Stage, study: optuna.Study, cfg_in: RunConfig) -> None:
    """The settings ``study`` was created with are still the stage's, else one line naming the first
    that changed."""
    stored = study.user_attrs[records.SETTINGS]
    current = material(pipe, stage, cfg_in)
    drift = records.settings_drift(stored, current)
    if drift is not None:
        key, was, now = drift
        raise ConfigError(
            f"stage {stage.name!r}: {key} was {was!r} when its study was created and is {now!r} now; "
            "restore it, or start the stage over: "
            f"hpo run-stage {stage.name} --force --config {pipe.plan.path}"
        )


def finish(pipe: Pipeline, stage: Stage, study: optuna.Study, cfg_in: RunConfig) -> None:
    """Select, publish the figures and note, then flag the study complete."""
    study = reopen(pipe, stage, study.study_name, cfg_in)
    selection = stage.select(study.get_trials(deepcopy=False), cfg_in, study.user_attrs)
    records.write_selection(study, selection)
    if stage.reads_test_rows:
        study.set_user_attr(records.TEST_METRICS, selection.extra["test_metrics"])
        study.set_user_attr(records.MODEL_ARTIFACT, selection.extra["model_artifact"])
    dashboard.publish(study, stage.figures(study), figures.stage_note(study, stage.title))
    study.set_user_attr(records.COMPLETE, True)
    logger.info("%s complete: selected %s (%s)", study.study_name, selection.selected, selection.reason)
