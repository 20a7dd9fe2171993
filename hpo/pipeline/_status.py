"""What the pipeline reports: its result objects, and a stage's or the pipeline's status read from the
storage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.stages import Stage
from hpo.tuning import numerics as numerics_mod
from hpo.tuning import records

if TYPE_CHECKING:
    from hpo.pipeline._pipeline import Pipeline


@dataclass(frozen=True)
class StudyState:
    """One stage's study as stored."""

    stage: str
    kind: str
    study: str
    state: str  # "complete" | "incomplete" | "not started"
    trials: dict[str, int]
    selection: dict[str, Any] | None = None  # records.Selection.to_dict()
    precision: list[str] = field(default_factory=list)  # what its trials trained in ("auto" resolved)
    stopped: dict[str, Any] | None = None  # a search stopped by its time limit (records.STOPPED_ASKING)
    track: str | None = None  # its track's family, where the pipeline has several (hpo.plan.Plan.tracks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PipelineStatus:
    pipeline: str
    study_file: str
    storage: str
    stages: list[StudyState]
    test_metrics: dict[str, Any] | None
    time_budget: dict[str, float] | None = None  # {"seconds": the budget, "spent": so far}
    numerics: dict[str, Any] | None = None  # hpo.tuning.numerics.Numerics, once decided

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StageRun:
    stage: str
    status: str  # "completed" | "already complete"
    seconds: float | None
    state: StudyState

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunResult:
    runs: list[StageRun]
    status: PipelineStatus
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def study_state(pipe: Pipeline, stage: Stage) -> StudyState:
    """``stage``'s study as stored: its state, trial counts, selection, precisions, stop."""
    name = pipe.ctx.study_name(stage.name)
    study = pipe.ctx.find_study(name)
    track = pipe.plan.track_of(stage.name) if len(pipe.plan.track_bases()) > 1 else None
    if study is None:
        return StudyState(stage.name, stage.kind, name, "not started", {}, track=track)
    counts: dict[str, int] = {}
    precisions: set[str] = set()
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
        train = t.user_attrs.get(records.TRAIN)
        if isinstance(train, dict) and isinstance(train.get("precision"), str):
            precisions.add(train["precision"])
    selection = study.user_attrs.get(records.SELECTION)
    state = "complete" if records.is_complete(study) else "incomplete"
    return StudyState(
        stage.name,
        stage.kind,
        name,
        state,
        counts,
        selection,
        sorted(precisions),
        study.user_attrs.get(records.STOPPED_ASKING),
        track,
    )


def status(pipe: Pipeline) -> PipelineStatus:
    """Every stage's state, the test metrics once the final stage is complete, the time budget
    and the numerics."""
    states = [pipe.study_state(s) for s in pipe.plan.stages]
    test_metrics = None
    for stage in pipe.plan.stages:
        if stage.reads_test_rows:
            study = pipe.ctx.find_study(pipe.ctx.study_name(stage.name))
            if records.is_complete(study):
                assert study is not None
                test_metrics = study.user_attrs.get(records.TEST_METRICS)
    total = pipe.plan.pipeline.time_budget
    spent = {"seconds": total, "spent": round(pipe.time_spent(), 1)} if total is not None else None
    decided = numerics_mod.stored(pipe.ctx.storage, pipe.plan.name)
    return PipelineStatus(
        pipe.plan.name,
        pipe.plan.path,
        pipe.ctx.storage_url,
        states,
        test_metrics,
        spent,
        decided.to_dict() if decided is not None else None,
    )
