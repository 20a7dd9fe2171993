"""Kind ``search``: an Optuna sampler over a declared space, with a pruner and a trial budget.

Trials are asked in batches of ``batch`` and trained as one stack (those of one shape); a trial
the pruner stops leaves the stack at once, so its compute goes to the others. Every trial is an
ordinary Optuna trial, its parameters suggested from the declared distributions and its metric
reported every epoch, so optuna-dashboard's history, importance and parallel-coordinate plots
work on it.

A batch is asked before any of its trials is told, so TPE runs with ``constant_liar`` (running
trials count as if they scored badly) to spread a batch out. Within a batch each trial reports
its epoch before the next one (in batch order), and trials are told only when the whole batch
ends: the pruner's decisions do not depend on whether the batch trains stacked or one trial after
another (tested).

The space, per setting of the pipeline's family (hpo's settings, or the family's own
parameters)::

    [stages.search.space]
    lr = { low = 1e-4, high = 1e-2, log = true }
    dropout = { low = 0.0, high = 0.5 }
    hidden = { choices = [[256, 256], [512, 256]] }

A range is an integer range where the setting is an integer (``batch_size``; a parameter whose
default is an integer; one without a numeric default whose ``low`` and ``high`` are whole
numbers; or ``integer = true``), else a float range; settings that are not numbers take
``choices``. The study file's loader types the bounds from the family's own types
(:func:`hpo.settings.setting_kind`, a parameter's default) and records the result in ``integer``.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hpo.errors import HpoError
from hpo.present import figures
from hpo.sections import Duration, StageSettings
from hpo.settings import PositiveInt, RunConfig, param_value, setting_value
from hpo.stages._context import StageContext
from hpo.stages._evaluation import Candidates, EvaluatedSettings
from hpo.stages._jobs import Budget
from hpo.stages._protocol import ALL_FAMILIES, Direction, Work, metric_direction, validation_records
from hpo.stages._selection import Candidate, best_word, choose
from hpo.tasks import CLASSIFICATION
from hpo.tuning import budget, records, runner
from hpo.tuning.locks import claim_lock
from hpo.tuning.records import Selection
from hpo.tuning.workers import share

SAMPLERS = ("tpe", "random", "qmc", "gp", "cmaes", "nsga2")
_SAMPLER_CLASSES = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "qmc": "QMCSampler",
    "gp": "GPSampler",
    "cmaes": "CmaEsSampler",
    "nsga2": "NSGAIISampler",
}
#: packages a sampler imports only when it first samples (a run would fail trials in)
SAMPLER_PACKAGES = {"CmaEsSampler": ("cmaes",), "GPSampler": ("scipy", "torch"), "QMCSampler": ("scipy",)}
PRUNERS = ("hyperband", "successive_halving", "median", "none")


class Dimension(BaseModel):
    """One setting's range: ``low``/``high`` (``log``, ``step``), or ``choices``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: Annotated[list[Any], Field(min_length=1)] | None = None
    # an integer range (default: typed by the study file's loader from the setting); not part of
    # the stored settings, which it only makes explicit (a search made before it existed resumes)
    integer: bool | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _range_or_choices(self) -> Dimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give low/high or choices, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high, or choices")
        if not self.low < self.high:
            raise ValueError(f"low = {self.low} must be below high = {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


def _whole(*values: int | float | None) -> bool:
    return all(v is None or isinstance(v, int) for v in values)


class SearchSettings(EvaluatedSettings):
    kind: Literal["search"] = "search"
    space: Annotated[dict[str, Dimension], Field(min_length=1)]
    n_trials: Annotated[int, Field(ge=1, le=10_000)] = 24
    batch: PositiveInt = 8  # trials asked together and trained as one stack
    sampler: str = "tpe"
    pruner: Literal["hyperband", "successive_halving", "median", "none"] = "hyperband"
    epochs: PositiveInt = 15
    min_epochs: PositiveInt = 1  # the pruner's first rung
    stack: bool = True  # False: a batch's trials train one after another (same decisions, slower)
    timeout: Duration | None = None  # seconds (or "10m"): ask no batch that would end past it

    @model_validator(mode="after")
    def _valid_space(self) -> SearchSettings:
        for name, dim in self.space.items():
            for i, v in enumerate(dim.choices or []):
                try:
                    param_value(name, v)
                except ValueError as exc:
                    raise ValueError(f"space.{name}.choices[{i}] = {v!r}: {exc}") from None
        sampler_class(self.sampler)
        if self.min_epochs > self.epochs:
            raise ValueError(f"min_epochs = {self.min_epochs} exceeds epochs = {self.epochs}")
        if self.cv is not None and self.pruner in ("hyperband", "successive_halving"):
            raise ValueError(
                f'cv = {self.cv} with pruner = "{self.pruner}": a cross-validated trial is compared '
                'fold by fold, not epoch by epoch; use pruner = "median" or "none"'
            )
        return self


def sampler_class(name: str) -> type[optuna.samplers.BaseSampler]:
    """The Optuna sampler class ``sampler = name`` stands for: one of :data:`SAMPLERS` or a
    sampler class of ``optuna.samplers`` that hpo can build from a seed alone, whose packages are
    installed (ValueError naming the problem and the fix, raised when the study file is read)."""
    usable = f"use {', '.join(SAMPLERS)} or a sampler class of optuna.samplers (e.g. BruteForceSampler)"
    found = None if name.startswith("_") else getattr(optuna.samplers, _SAMPLER_CLASSES.get(name, name), None)
    if (
        not isinstance(found, type)
        or not issubclass(found, optuna.samplers.BaseSampler)
        or inspect.isabstract(found)
    ):
        raise ValueError(f"sampler {name!r} is not an Optuna sampler; {usable}")
    required = [
        p.name
        for p in inspect.signature(found).parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise ValueError(
            f"sampler {name!r} needs {', '.join(required)}, which hpo does not give it (it passes only "
            f"seed); {usable}"
        )
    missing = [m for m in SAMPLER_PACKAGES.get(found.__name__, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"sampler {name!r} needs the package {', '.join(missing)}, which is not installed; "
            f"install it (pip install {' '.join(missing)}) or use another sampler"
        )
    return found


def _incumbent(cfg_in: RunConfig, settings: SearchSettings) -> dict[str, Any] | None:
    """The carried-in configuration's point in the space (None if it sets not every dimension)."""
    current = cfg_in.settings()
    if any(n not in current for n in settings.space):
        return None
    return {n: param_value(n, current[n]) for n in settings.space}


def _configure(cfg_in: RunConfig, settings: SearchSettings, claim: runner.Claim) -> RunConfig:
    return cfg_in.with_point({n: setting_value(n, claim.point[n]) for n in settings.space})


class Search:
    kind: ClassVar[str] = "search"
    settings_model: ClassVar[type[StageSettings]] = SearchSettings
    reads_test_rows: ClassVar[bool] = False
    scores_validation_rows: ClassVar[bool] = True
    families: ClassVar[frozenset[str]] = ALL_FAMILIES

    def __init__(self, name: str, settings: StageSettings, *, task: str = CLASSIFICATION.name) -> None:
        self.name = name
        assert isinstance(settings, SearchSettings)
        self.settings = settings
        self.task = task

    @property
    def direction(self) -> Direction:
        return metric_direction(self.settings.metric)

    def planned(self, cfg: RunConfig, train_rows: int) -> Work:
        s = self.settings  # every trial trained to the end: pruning only shortens it
        model_epochs = s.n_trials * s.seeds * s.epochs * self.folds()
        return Work(model_epochs, s.evaluation().samples(model_epochs, train_rows))

    def stack_width(self, cfg: RunConfig) -> int:
        s = self.settings
        return s.batch * s.seeds * self.folds() if s.stack else 1

    def tuned(self) -> dict[str, dict[str, list[Any]]]:
        space = {}
        for name, dim in self.settings.space.items():
            space[name] = list(dim.choices) if dim.choices is not None else [dim.low, dim.high]
        return {"space": space}

    def ranges(self) -> list[str]:
        """The dimensions given as a range (the rest are choices)."""
        return [n for n, dim in self.settings.space.items() if dim.choices is None]

    def library(self) -> tuple[str, ...]:
        return ()

    def kept(self) -> tuple[str, ...]:
        return ()

    def check_inputs(self, ctx: StageContext) -> None:
        return None

    def with_values(self, values: dict[str, dict[str, list[Any]]]) -> StageSettings:
        space = {}
        for name, dim in self.settings.space.items():
            typed = values.get("space", {}).get(name)
            if typed is None:
                space[name] = dim
            elif dim.choices is not None:
                space[name] = dim.model_copy(update={"choices": typed})
            else:
                low, high = typed
                integer = dim.integer if dim.integer is not None else _whole(low, high)
                space[name] = dim.model_copy(update={"low": low, "high": high, "integer": integer})
        return self.settings.model_copy(update={"space": space})

    @property
    def title(self) -> str:
        return f"{self.name} ({self.kind})"

    def folds(self) -> int:
        return self.settings.evaluation().folds

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        name = self.settings.sampler
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        cls: Any = sampler_class(name)  # checked when the study file was read
        sampler: optuna.samplers.BaseSampler = (
            cls(seed=seed) if "seed" in inspect.signature(cls).parameters else cls()
        )
        return sampler

    def pruner(self) -> optuna.pruners.BasePruner:
        s = self.settings
        if s.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=s.min_epochs, max_resource=s.epochs, reduction_factor=3
            )
        if s.pruner == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=s.min_epochs, reduction_factor=3)
        if s.pruner == "median":
            warmup = 0 if s.cv is not None else s.min_epochs  # with cv, the steps are folds
            return optuna.pruners.MedianPruner(n_startup_trials=s.batch, n_warmup_steps=warmup)
        return optuna.pruners.NopPruner()

    def distributions(self) -> dict[str, BaseDistribution]:
        out: dict[str, BaseDistribution] = {}
        for name, dim in self.settings.space.items():
            if dim.choices is not None:
                out[name] = CategoricalDistribution([param_value(name, c) for c in dim.choices])
                continue
            assert dim.low is not None and dim.high is not None
            integer = dim.integer if dim.integer is not None else _whole(dim.low, dim.high, dim.step)
            if integer:
                step = int(dim.step) if dim.step else 1
                out[name] = IntDistribution(int(dim.low), int(dim.high), log=dim.log, step=step)
            else:
                out[name] = FloatDistribution(float(dim.low), float(dim.high), log=dim.log, step=dim.step)
        return out

    def study_records(self, ctx: StageContext) -> dict[str, Any]:
        return validation_records(ctx) if self.folds() == 1 else {}

    def run(self, ctx: StageContext, study: optuna.Study, cfg_in: RunConfig) -> None:
        if self.settings.select == "keep_unless_better":
            self._enqueue_incumbent(ctx, study, cfg_in)
        runner.run(
            study,
            ctx.storage,
            work=runner.Budget(self.settings.n_trials, limit=lambda trials: self.time_limit(ctx, trials)),
            distributions=self.distributions(),
            objective=self.objective(ctx, cfg_in),
            batch_size=share(self.settings.batch, ctx.live_workers),
            deadline=ctx.deadline,
            before_claim=ctx.before_claim,
        )

    def time_limit(self, ctx: StageContext, trials: Sequence[FrozenTrial]) -> budget.TimeLimit | None:
        """The tighter of the stage's ``timeout`` and its share of the pipeline's time budget."""
        timeout = self.settings.timeout
        own = budget.TimeLimit(timeout, f"timeout = {timeout:g} s") if timeout is not None else None
        limit = budget.tightest(own, ctx.search_budget(self.name, trials))
        if limit is not None:  # the live display counts what the search may still use
            ctx.progress.limit(self.name, limit.seconds - (budget.busy(trials) or 0.0))
        return limit

    def _enqueue_incumbent(self, ctx: StageContext, study: optuna.Study, cfg_in: RunConfig) -> None:
        """The carried-in configuration runs as the first trial, so challengers face it."""
        params = _incumbent(cfg_in, self.settings)
        if params is None:
            return  # a parameter left at the factory's own default: no incumbent to enqueue
        for name, dist in self.distributions().items():
            if not dist._contains(dist.to_internal_repr(params[name])):
                return  # outside the space: keep_unless_better falls back to the best
        with claim_lock(ctx.storage, study.study_name):
            if not study.get_trials(deepcopy=False):
                study.enqueue_trial(params, user_attrs={records.WORKER: runner.WORKER_ID})

    def objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        s = self.settings
        return s.evaluation().objective(
            ctx,
            Candidates(
                label=ctx.study_name(self.name),
                configure=lambda c: _configure(cfg_in, s, c),
                budget=Budget(epochs=s.epochs),
                metric=s.metric,
                seeds=s.seeds,
                stack=s.stack,
                prune=s.pruner != "none",
                seed=cfg_in.seed,
                group_order=True,
                keep_outputs=self.name in ctx.library,
                keep_models=self.name in ctx.kept,
            ),
        )

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection:
        s = self.settings
        done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
        if not done:
            raise HpoError(f"stage {self.name}: every trial was pruned or failed; nothing to select")
        candidates = [Candidate(t, dict(t.params), float(t.value or 0.0)) for t in done]
        chosen, evidence, note = choose(
            candidates,
            metric=s.metric,
            policy=s.select,
            incumbent=_incumbent(cfg_in, s),
            how=s.evaluation().how(s.seeds),
            study_attrs=study_attrs,
            folds=self.folds(),
        )
        pruned = sum(t.state == TrialState.PRUNED for t in trials)
        described = s.evaluation().describe(s.metric, seeds=s.seeds, epochs=s.epochs)
        stopped = study_attrs.get(records.STOPPED_ASKING)
        if stopped:
            note += (
                f"; stopped asking after {stopped['trials']} of {stopped['n_trials']} trials "
                f"({stopped['why']})"
            )
        return Selection(
            selected={**chosen.label, **s.evaluation().figures_of(chosen.trial, s.metric, chosen.score)},
            reason=f"{best_word(s.metric)} {described} of {len(done)} complete trials "
            f"({pruned} pruned; sampler {s.sampler}, pruner {s.pruner}){note}",
            config_out=records.read_config(chosen.trial.user_attrs),
            evidence=evidence,
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        s = self.settings
        rungs = figures.pruner_rungs(self.pruner(), s.epochs)  # where the pruner compared trials
        return figures.search_figures(study, list(s.space), metric=s.metric, rungs=rungs)
