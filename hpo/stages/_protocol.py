"""What a stage is: the :class:`Stage` protocol, and the base class the grid-shaped kinds share.

A stage is one Optuna study. It knows its points (or, for ``search``, its budget), how to train
a batch of claimed trials (its objective), how to select from its finished trials, and which
figures show it. The pipeline (:mod:`hpo.pipeline`) does the rest in the same order for every
kind: prerequisites, the study with its settings fingerprint, the runner, the selection, the
figures, the completion flag.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, Literal, Protocol

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError
from hpo.present.figures import Figure
from hpo.settings import RunConfig, StageSettings
from hpo.stages._context import StageContext
from hpo.tuning import runner
from hpo.tuning.records import Selection, point_key

Direction = Literal["minimize", "maximize"]


class Stage(Protocol):
    kind: ClassVar[str]
    settings_model: ClassVar[type[StageSettings]]
    reads_test_rows: ClassVar[bool]
    name: str
    settings: StageSettings

    @property
    def direction(self) -> Direction: ...

    @property
    def title(self) -> str: ...

    def folds(self) -> int: ...

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler: ...

    def pruner(self) -> optuna.pruners.BasePruner: ...

    def run(self, ctx: StageContext, study: optuna.Study, cfg_in: RunConfig) -> None: ...

    def select(self, trials: Sequence[FrozenTrial], cfg_in: RunConfig) -> Selection: ...

    def figures(self, study: optuna.Study) -> list[Figure]: ...


class GridStage:
    """A stage over a fixed list of points, each run once (COMPLETE or PRUNED)."""

    kind: ClassVar[str]
    settings_model: ClassVar[type[StageSettings]]
    reads_test_rows: ClassVar[bool] = False

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
            batch_size=self.batch_size(),
        )

    def select(self, trials: Sequence[FrozenTrial], cfg_in: RunConfig) -> Selection:
        raise NotImplementedError

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


def best_of(
    trials: Sequence[FrozenTrial], key: Callable[[FrozenTrial], float], *, maximize: bool
) -> FrozenTrial:
    """The best trial under ``key``; a tie goes to the earliest in ``trials`` (point order)."""
    best = trials[0]
    for t in trials[1:]:
        if (key(t) > key(best)) if maximize else (key(t) < key(best)):
            best = t
    return best


def runner_up(
    trials: Sequence[FrozenTrial], chosen: FrozenTrial, key: Callable[[FrozenTrial], float], *, maximize: bool
) -> FrozenTrial | None:
    rest = [t for t in trials if t.number != chosen.number]
    return best_of(rest, key, maximize=maximize) if rest else None


def value(t: FrozenTrial) -> float:
    assert t.value is not None
    return float(t.value)
