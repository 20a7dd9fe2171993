"""What the report reads of a pipeline: a read-only view, so presentation depends on the plan,
the stage context, the prepared data and the status, not on the orchestrator that runs stages.

:class:`hpo.pipeline.Pipeline` satisfies it; a test or another front end may pass anything that
answers these five members.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hpo import data
    from hpo.pipeline._status import PipelineStatus
    from hpo.plan import Plan
    from hpo.stages import Stage, StageContext


class PipelineView(Protocol):
    """A pipeline as the report sees it."""

    @property
    def plan(self) -> Plan: ...

    @property
    def ctx(self) -> StageContext: ...

    def dataset(self) -> data.Prepared: ...

    def status(self) -> PipelineStatus: ...

    def trial_seconds(self, stage: Stage) -> float | None: ...
