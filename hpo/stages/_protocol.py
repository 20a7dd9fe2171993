"""What a stage is: the :class:`Stage` protocol, and the base class the grid-shaped kinds share.

A stage is one Optuna study. It knows its points (or, for ``search``, its budget), how to train
a batch of claimed trials (its objective), how to select from its finished trials, and which
figures show it. The pipeline (:mod:`hpo.pipeline`) does the rest in the same order for every
kind: prerequisites, the study with its settings fingerprint, the runner, the selection, the
figures, the completion flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError
from hpo.present.figures import Figure
from hpo.settings import RunConfig, StageSettings
from hpo.stages._context import StageContext
from hpo.tuning import records, runner
from hpo.tuning.records import Selection, point_key
from hpo.tuning.workers import share

Direction = Literal["minimize", "maximize"]


class Stage(Protocol):
    kind: ClassVar[str]
    settings_model: ClassVar[type[StageSettings]]
    reads_test_rows: ClassVar[bool]

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> StageSettings: ...

    @property
    def direction(self) -> Direction: ...

    @property
    def title(self) -> str: ...

    def folds(self) -> int: ...

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler: ...

    def pruner(self) -> optuna.pruners.BasePruner: ...

    def run(self, ctx: StageContext, study: optuna.Study, cfg_in: RunConfig) -> None: ...

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection: ...

    def study_records(self, ctx: StageContext) -> dict[str, Any]: ...

    def figures(self, study: optuna.Study) -> list[Figure]: ...


class GridStage:
    """A stage over a fixed list of points, each run once (COMPLETE or PRUNED)."""

    kind: ClassVar[str]
    settings_model: ClassVar[type[StageSettings]]
    reads_test_rows: ClassVar[bool] = False
    scores_validation_rows: ClassVar[bool] = False

    def __init__(self, name: str, settings: StageSettings) -> None:
        self.name = name
        self.settings = settings

    @property
    def direction(self) -> Direction:
        return "maximize"

    @property
    def title(self) -> str:
        return f"{self.name} ({self.kind})"

    def folds(self) -> int:
        return 1

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)  # unused: every point is queued

    def pruner(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()

    def points(self, cfg_in: RunConfig) -> list[runner.Point]:
        return [{}]

    def distributions(self, cfg_in: RunConfig) -> dict[str, BaseDistribution]:
        return {}

    def batch_size(self) -> int:
        return 1

    def objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        raise NotImplementedError

    def run(self, ctx: StageContext, study: optuna.Study, cfg_in: RunConfig) -> None:
        runner.run(
            study,
            ctx.storage,
            work=runner.Grid(self.points(cfg_in)),
            distributions=self.distributions(cfg_in),
            objective=self.objective(ctx, cfg_in),
            batch_size=share(self.batch_size(), ctx.live_workers),
        )

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection:
        """What the stage selects from its finished trials (``study_attrs``: its study's
        attributes, e.g. the validation rows' classes that paired comparisons need)."""
        raise NotImplementedError

    def study_records(self, ctx: StageContext) -> dict[str, Any]:
        """Attributes stored with the study when it is created: a stage that scores candidates on
        the validation rows keeps their classes, for the paired comparison of its selection."""
        if not self.scores_validation_rows:
            return {}
        data = ctx.data()
        return {
            records.VAL_LABELS: records.pack_labels(data.train_val().y_val.numpy()),
            records.N_CLASSES: data.n_classes,
        }

    def finished(self, trials: Sequence[FrozenTrial], cfg_in: RunConfig) -> list[FrozenTrial]:
        """The COMPLETE trial of each point, in point order (a point that ran twice: the latest);
        raises if a point has no finished trial or every point was pruned."""
        by_point: dict[str, FrozenTrial] = {}
        pruned: set[str] = set()
        for t in sorted(trials, key=lambda t: t.number):
            key = point_key(t.params)
            if t.state == TrialState.COMPLETE:
                by_point[key] = t
            elif t.state == TrialState.PRUNED:
                pruned.add(key)
        out = []
        for p in self.points(cfg_in):
            key = point_key(p)
            if key in by_point:
                out.append(by_point[key])
            elif key not in pruned:
                raise HpoError(f"stage {self.name}: point {key} has no finished trial; run the stage again")
        if not out:
            raise HpoError(f"stage {self.name}: every point was pruned; nothing to select")
        return out

    def figures(self, study: optuna.Study) -> list[Figure]:
        return []
