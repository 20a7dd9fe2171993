"""The pipeline's numerics (precision, compile): stored, or measured now, with the study file's pins."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from hpo.families import family_of
from hpo.training import precision, resolve_device
from hpo.tuning import numerics as numerics_mod
from hpo.tuning.numerics import Numerics

if TYPE_CHECKING:
    from hpo.pipeline._pipeline import Pipeline

logger = logging.getLogger("hpo.pipeline")


def decide(pipe: Pipeline) -> Numerics | None:
    """The numerics the storage holds (else measured here now and stored), with the values pinned in
    ``[defaults]``, checked runnable here; said at INFO. None where no track trains a torch model.
    One set per pipeline: every track shares it (the tracks take ``[defaults]``' precision and
    compile)."""
    decided = _decide(pipe)
    if decided is not None:
        logger.info("pipeline %s trains in %s", pipe.plan.name, decided.describe())
    return decided


def _decide(pipe: Pipeline) -> Numerics | None:
    trained = [b for b in pipe.plan.track_bases() if family_of(b).torch_based]
    if not trained:
        return None
    cfg = trained[0]  # [defaults], else the first track that trains a torch model
    width = max(s.stack_width(pipe.plan.base(s.name)) for s in pipe.plan.stages)
    decided = numerics_mod.decide(
        pipe.ctx.storage, pipe.plan.name, lambda: pipe.ctx.measure_numerics(cfg, width)
    )
    if cfg.precision != "auto" and cfg.precision != decided.precision:
        source = {**decided.source, "precision": "study file"}
        decided = dataclasses.replace(decided, precision=cfg.precision, source=source)
    if cfg.compile != "auto" and cfg.compile != decided.compile:
        source = {**decided.source, "compile": "study file"}
        decided = dataclasses.replace(decided, compile=cfg.compile, source=source)
    numerics_mod.check_runnable(
        decided,
        has_bf16=precision.has_bf16(),
        device=resolve_device(cfg.device),
        pipeline=pipe.plan.name,
    )
    return decided
