"""The stage registry: the fixed sequence of the protocol, one module per stage."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import optuna

from hpo import _locks
from hpo.config import STAGE_ORDER
from hpo.errors import ConfigError
from hpo.stages import _base, baseline, components, final, lr_range, weight_decay
from hpo.stages._base import StageContext

logger = logging.getLogger("hpo.stages")

__all__ = ["STAGES", "StageContext", "create_studies", "run_stage", "stage_complete", "stage_status"]


@dataclass(frozen=True)
class Stage:
    name: str
    studies: Callable[[StageContext], list[str]]
    run: Callable[[StageContext, _base.Config], optuna.Study]
    direction: Literal["minimize", "maximize"]


STAGES: dict[str, Stage] = {
    m.__name__.rsplit(".", 1)[1]: Stage(m.__name__.rsplit(".", 1)[1], m.studies, m.run, m.DIRECTION)
    for m in (baseline, lr_range, weight_decay, components, final)
}


def create_studies(ctx: StageContext) -> list[str]:
    """Create every stage's (empty) studies, e.g. once before many workers start. Safe to repeat."""
    names = []
    for stage in STAGES.values():
        for study_name in stage.studies(ctx):
            optuna.create_study(
                study_name=study_name, storage=ctx.storage, direction=stage.direction, load_if_exists=True
            )
            names.append(study_name)
    return names


assert tuple(STAGES) == STAGE_ORDER


def _get(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; stages are: {', '.join(STAGE_ORDER)}")
    return STAGES[name]


def stage_complete(ctx: StageContext, name: str) -> bool:
    return _base.is_complete(_base.find_study(ctx, _get(name).studies(ctx)[-1]))


def input_config(ctx: StageContext, name: str) -> _base.Config:
    """What the stage starts from: the ``config_out`` of the latest stage it requires, read from
    the storage (so stages can run in separate processes), else the study file's defaults."""
    required = ctx.pipeline.requires(name)
    if not required:
        return _base.defaults_config(ctx.pipeline)
    last = max(required, key=STAGE_ORDER.index)
    study = _base.find_study(ctx, _get(last).studies(ctx)[-1])
    assert study is not None
    cfg: _base.Config = study.user_attrs["config_out"]
    return dict(cfg)


def run_stage(ctx: StageContext, name: str, *, force: bool = False) -> dict[str, Any]:
    stage = _get(name)
    _locks.exclusive_sqlite_worker(ctx.storage, ctx.storage_url)
    _base.require(ctx, name, completed=stage_complete)
    if force:
        for study_name in stage.studies(ctx):
            if _base.find_study(ctx, study_name) is not None:
                optuna.delete_study(study_name=study_name, storage=ctx.storage)
                logger.info("deleted study %s (--force)", study_name)
    elif stage_complete(ctx, name):
        return {"stage": name, "status": "already complete", **stage_status(ctx, name)}
    start = time.perf_counter()
    stage.run(ctx, input_config(ctx, name))
    seconds = time.perf_counter() - start
    return {"stage": name, "status": "completed", "seconds": round(seconds, 1), **stage_status(ctx, name)}


def stage_status(ctx: StageContext, name: str) -> dict[str, Any]:
    studies = []
    for study_name in _get(name).studies(ctx):
        study = _base.find_study(ctx, study_name)
        if study is None:
            studies.append({"study": study_name, "state": "not started", "trials": {}})
            continue
        counts: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        entry: dict[str, Any] = {
            "study": study_name,
            "state": "complete" if _base.is_complete(study) else "incomplete",
            "trials": counts,
        }
        if "selected" in study.user_attrs:
            entry["selected"] = study.user_attrs["selected"]
            entry["reason"] = study.user_attrs.get("selection_reason", "")
        studies.append(entry)
    states = {s["state"] for s in studies}
    state = (
        "complete" if states == {"complete"} else "not started" if states == {"not started"} else "incomplete"
    )
    out: dict[str, Any] = {"state": state, "studies": studies}
    if name == "final" and state == "complete":
        study = _base.find_study(ctx, _get(name).studies(ctx)[-1])
        assert study is not None
        out["test_metrics"] = study.user_attrs.get("test_metrics")
        out["model_artifact_id"] = study.user_attrs.get("model_artifact_id")
    return out
