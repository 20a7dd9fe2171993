"""What a stage is: the :class:`Stage` protocol, and the base class the grid-shaped kinds share.

A stage is one Optuna study. It knows its points (or, for ``search``, its budget), how to train a
batch of claimed trials (its objective, through :mod:`hpo.stages._jobs`), how to select from its
finished trials, and which figures show it. It declares the model families it serves and the
settings it tunes (by key of its table), which the study file's loader checks against the
pipeline's family before anything runs. The pipeline (:mod:`hpo.pipeline`) does the rest in the
same order for every kind: prerequisites, the study with its settings fingerprint, the runner, the
selection, the figures, the completion flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError
from hpo.families import FAMILIES
from hpo.present.figures import Figure
from hpo.sections import StageSettings
from hpo.settings import RunConfig
from hpo.stages._context import StageContext
from hpo.tasks import CLASSIFICATION, greater_is_better, task_kind
from hpo.tuning import records, runner
from hpo.tuning.records import Selection, point_key
from hpo.tuning.workers import share

Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class Work:
    """What a stage trains: model-epochs, and the training rows they go through (model-samples)."""

    model_epochs: int
    samples: int


#: every family (the kinds that train through the family's fit_many and score evaluation records)
ALL_FAMILIES = frozenset(FAMILIES)
#: families whose models are torch modules trained by hpo's trainers
TORCH_FAMILIES = frozenset(name for name, family in FAMILIES.items() if family.torch_based)


class Stage(Protocol):
    kind: ClassVar[str]
    settings_model: ClassVar[type[StageSettings]]
    reads_test_rows: ClassVar[bool]
    families: ClassVar[frozenset[str]]
    task: str

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

    def planned(self, cfg: RunConfig, train_rows: int) -> Work:
        """What the stage trains when it runs whole (no model stopped early), with ``train_rows``
        training rows: what the progress display counts its stage and pipeline ETA against."""
        ...

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection: ...

    def study_records(self, ctx: StageContext) -> dict[str, Any]: ...

    def figures(self, study: optuna.Study) -> list[Figure]: ...

    def stack_width(self, cfg: RunConfig) -> int:
        """How many models the stage trains as one stack when it runs alone: its nominal width,
        not what the live workers claim (the pipeline's numerics are probed at the widest
        stage's, :meth:`hpo.Pipeline.numerics`)."""
        ...

    def tuned(self) -> dict[str, dict[str, list[Any]]]:
        """The settings this stage tunes, by the key of its table that lists them:
        ``{"choices": {"init": [...]}}`` (a search's range as ``[low, high]``)."""
        ...

    def ranges(self) -> list[str]:
        """The tuned settings given as a ``[low, high]`` range rather than as choices."""
        ...

    def with_values(self, values: dict[str, dict[str, list[Any]]]) -> StageSettings:
        """Its settings with the tuned values replaced by ``values`` (as :meth:`tuned` gives
        them, checked and typed by the pipeline's family)."""
        ...

    def library(self) -> tuple[str, ...]:
        """The stages whose trials' stored validation outputs this stage reads (a greedy
        final's ``members_from``; none for the others)."""
        ...

    def kept(self) -> tuple[str, ...]:
        """The stages whose trials' trained models this stage keeps as they are (a greedy final
        with ``retrain = false``; none for the others): those stages store their models."""
        ...

    def check_inputs(self, ctx: StageContext) -> None:
        """That what it reads of other stages besides their selections is in the storage (one
        line saying what to run otherwise); writes nothing."""
        ...


def metric_direction(metric: str) -> Direction:
    return "maximize" if greater_is_better(metric) else "minimize"


def validation_records(ctx: StageContext) -> dict[str, Any]:
    """Study attributes of a stage that scores candidates on the validation rows: their targets
    and the task, for the paired comparison of its selection."""
    data = ctx.data()
    task = data.task
    return {
        records.VAL_LABELS: task.pack_predictions(data.train_val().y_val),
        records.N_CLASSES: data.n_classes,
        records.TASK: task.to_record(),
    }


class GridStage:
    """A stage over a fixed list of points, each run once (COMPLETE or PRUNED)."""

    kind: ClassVar[str]
    settings_model: ClassVar[type[StageSettings]]
    reads_test_rows: ClassVar[bool] = False
    scores_validation_rows: ClassVar[bool] = False
    families: ClassVar[frozenset[str]] = ALL_FAMILIES

    def __init__(self, name: str, settings: StageSettings, *, task: str = CLASSIFICATION.name) -> None:
        self.name = name
        self.settings = settings
        self.task = task

    @property
    def direction(self) -> Direction:
        metric = getattr(self.settings, "metric", None)
        return metric_direction(metric or task_kind(self.task).default_metric)

    def tuned(self) -> dict[str, dict[str, list[Any]]]:
        return {}

    def ranges(self) -> list[str]:
        return []

    def with_values(self, values: dict[str, dict[str, list[Any]]]) -> StageSettings:
        return self.settings.model_copy(update=values) if values else self.settings

    def library(self) -> tuple[str, ...]:
        return ()

    def kept(self) -> tuple[str, ...]:
        return ()

    def check_inputs(self, ctx: StageContext) -> None:
        return None

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

    def stack_width(self, cfg: RunConfig) -> int:
        return 1

    def planned(self, cfg: RunConfig, train_rows: int) -> Work:
        """Points x seeds x epochs of ``train_rows`` (the grid kinds with ``epochs``; see
        :meth:`Stage.planned`)."""
        model_epochs = (
            len(self.points(cfg)) * getattr(self.settings, "seeds", 1) * getattr(self.settings, "epochs", 1)
        )
        return Work(model_epochs, model_epochs * train_rows)

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
            deadline=ctx.deadline,
            before_claim=ctx.before_claim,
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
        return validation_records(ctx) if self.scores_validation_rows else {}

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
