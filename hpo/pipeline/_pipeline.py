"""The Python API: load a pipeline, run a stage or all of them, read its status and final model.

::

    import hpo

    pipe = hpo.Pipeline.load("studies/quick.toml", storage="sqlite:///hpo.db")
    pipe.run()                          # every stage in order, skipping completed ones
    pipe.status().stages[-1].selection  # what the last stage selected
    model = pipe.final_model()          # hpo.model_file.ModelFile: .model(), .outputs(x), class names

Every stage runs the same sequence: its prerequisites must be complete; the data are prepared
(a bad data file fails here, before anything is stored); its study is created with its settings
and their fingerprint, or reopened if those match; the runner works through its trials; its
selection is stored, its figures published for optuna-dashboard, and only then is it flagged
complete. A stage reads what the stages before it selected from the storage, never from
memory, so stages run in separate processes, days apart, on other machines. The CLI only parses
arguments and renders what these methods return.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from hpo import data
from hpo import plan as plan_mod
from hpo.errors import ConfigError, PrerequisiteError
from hpo.families import family_of
from hpo.families.sklearn_api import data_encoding, native_levels
from hpo.model_file import ModelFile, read_model_artifact
from hpo.plan import Plan
from hpo.present import dashboard, figures
from hpo.present.progress import LogProgress, Progress
from hpo.settings import (
    FAMILY_KEY,
    FAMILY_KEYS,
    UNTUNED,
    RunConfig,
    describe_error,
    error_path,
    format_input,
)
from hpo.stages import Stage, StageContext
from hpo.tasks import task_kind
from hpo.training import precision, resolve_device
from hpo.tuning import budget, records
from hpo.tuning import numerics as numerics_mod
from hpo.tuning.locks import exclusive_sqlite_worker
from hpo.tuning.numerics import Numerics
from hpo.tuning.storage import artifact_store, open_storage, redact, storage_url
from hpo.tuning.workers import Registry

logger = logging.getLogger(__name__)

DEFAULT_STUDY_FILE = "msd_decade"
_PACKAGED_STUDIES = Path(__file__).resolve().parents[1] / "studies"


def resolve_study_file(value: Path | str | None) -> Path:
    """A study file path, or a bare name (``quick``) looked up in ``./studies`` and then in the
    ``studies/`` folder beside the installed package (a source checkout)."""
    text = str(value or DEFAULT_STUDY_FILE)
    path = Path(text)
    if path.suffix == ".toml" or path.exists():
        return path
    for folder in (Path("studies"), _PACKAGED_STUDIES):
        candidate = folder / f"{text}.toml"
        if candidate.exists():
            return candidate
    return Path("studies") / f"{text}.toml"  # the loader names it in its error


# --------------------------------------------------------------------------- results


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


@dataclass
class Pipeline:
    """A study file bound to a storage, an artifact store and a data cache."""

    plan: Plan
    ctx: StageContext
    progress: Progress = field(default_factory=LogProgress)
    _registry: Registry | None = field(default=None, repr=False)
    _numerics: Numerics | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls,
        study_file: Path | str | None = None,
        *,
        storage: str | None = None,
        artifacts: Path | str | None = None,
        data_dir: Path | None = None,
        progress: Progress | None = None,
        overrides: Sequence[str] = (),
    ) -> Pipeline:
        plan = plan_mod.load(resolve_study_file(study_file), overrides=overrides)
        url = storage_url(storage)
        ctx = StageContext(
            pipeline=plan.name,
            study_file=plan.path,
            data_settings=plan.data,
            storage=open_storage(url),
            storage_url=redact(url),
            artifacts=artifact_store(artifacts),
            data_dir=data_dir,
            folds=plan.folds(),
            progress=progress or LogProgress(),
            encoding=data_encoding(plan.defaults),
            native_levels=native_levels(plan.defaults, plan.stages),
        )
        pipe = cls(plan=plan, ctx=ctx, progress=ctx.progress)
        ctx.search_budget = pipe.search_budget
        return pipe

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self.plan.stages

    # ------------------------------------------------------------------ running

    def run(self, *, force: bool = False) -> RunResult:
        """Every stage in order, skipping completed ones; with other workers on the same storage,
        joining whatever stage they are on and splitting its points with them."""
        start = time.perf_counter()
        with self.registered():
            self.announce(force=force)
            runs = []
            for stage in self.plan.stages:
                runs.append(self.run_stage(stage.name, force=force))
                self.progress.stage_done(stage.name)
        return RunResult(runs=runs, status=self.status(), seconds=round(time.perf_counter() - start, 1))

    def announce(self, *, force: bool) -> None:
        """Tell the progress display every stage's planned work, and which are complete already."""
        rows = self.ctx.data().train_rows
        cfg = self.plan.defaults
        planned = [(s.name, *astuple(s.planned(cfg, rows))) for s in self.plan.stages]
        complete = [] if force else [s.name for s in self.plan.stages if self._complete(s)]
        self.progress.pipeline(self.plan.name, planned, complete)

    def _complete(self, stage: Stage) -> bool:
        return records.is_complete(self.ctx.find_study(self.ctx.study_name(stage.name)))

    @contextlib.contextmanager
    def registered(self) -> Iterator[None]:
        """This process counted among the pipeline's live workers while it works."""
        if self._registry is not None:
            yield
            return
        exclusive_sqlite_worker(self.ctx.storage, self.ctx.storage_url)
        self.check_ready()
        with Registry(self.ctx.storage, self.plan.name) as registry:
            self._registry = registry
            self.ctx.live_workers = registry.live
            self.ctx.workers_on_host = registry.on_host
            try:
                yield
            finally:
                self._registry = None
                self.ctx.live_workers = lambda: 1
                self.ctx.workers_on_host = lambda: 1

    def run_stage(self, name: str, *, force: bool = False) -> StageRun:
        stage = self.plan.stage(name)
        exclusive_sqlite_worker(self.ctx.storage, self.ctx.storage_url)
        self.check_prerequisites(stage)
        cfg_in = self.input_config(stage)
        self.check_ready()
        with self.registered():
            return self._run_stage(stage, cfg_in, force=force)

    def _run_stage(self, stage: Stage, cfg_in: RunConfig, *, force: bool) -> StageRun:
        study_name = self.ctx.study_name(stage.name)
        existing = self.ctx.find_study(study_name)
        if force and existing is not None:
            optuna.delete_study(study_name=study_name, storage=self.ctx.storage)
            logger.info("deleted study %s (--force)", study_name)
            existing = None
        if existing is not None and records.SETTINGS not in existing.user_attrs:
            # another worker is creating it this moment (its settings follow), or it is foreign
            if existing.get_trials(deepcopy=False) or any(
                not k.startswith("hpo:") for k in existing.user_attrs
            ):
                raise ConfigError(
                    f"study {study_name} in {self.ctx.storage_url} was not made by this version of hpo; "
                    f"start stage {stage.name!r} over with --force"
                )
            existing = self.create_study(stage, cfg_in)
        if existing is not None:
            self.check_drift(stage, existing, cfg_in)
            if records.is_complete(existing):
                return StageRun(stage.name, "already complete", None, self.study_state(stage))
        start = time.perf_counter()
        self.ctx.numerics = self.numerics()
        study = existing or self.create_study(stage, cfg_in)
        stage.run(self.ctx, study, cfg_in)
        self.finish(stage, study, cfg_in)
        seconds = round(time.perf_counter() - start, 1)
        return StageRun(stage.name, "completed", seconds, self.study_state(stage))

    def check_ready(self) -> None:
        """Prepare (and check) the data, and build the family's model for it once (a factory
        must return a module of the right output width), before anything is stored."""
        data = self.ctx.data()
        cfg = self.plan.defaults
        family = family_of(cfg)
        shape = {"n_features": data.n_features, "n_outputs": data.n_outputs}
        try:
            family.check_model(cfg, **shape)
        except ValueError as exc:
            key = FAMILY_KEY.get(cfg.family, "family")
            raise ConfigError(f"{self.plan.path}: defaults.{key} = {getattr(cfg, key)!r}: {exc}") from None
        for stage in self.plan.stages:  # every value a stage tunes of the family's own parameters
            for key, settings in stage.tuned().items():
                for name, values in settings.items():
                    for value in values if name not in cfg.own else ():
                        try:
                            family.check_model(cfg.with_point({name: value}), **shape)
                        except ValueError as exc:
                            raise ConfigError(
                                f"{self.plan.path}: stages.{stage.name}.{key}.{name} = {value!r}: {exc}"
                            ) from None

    def check_prerequisites(self, stage: Stage) -> None:
        for required in self.plan.requires[stage.name]:
            if not records.is_complete(self.ctx.find_study(self.ctx.study_name(required))):
                raise PrerequisiteError(
                    f"stage {stage.name!r} needs stage {required!r}, which is not complete in "
                    f"{self.ctx.storage_url}; run first: hpo run-stage {required} --config {self.plan.path}"
                )

    def input_config(self, stage: Stage) -> RunConfig:
        """What the stage starts from: the configuration the stage it builds on handed on, read
        from the storage, else the study file's ``[defaults]``.

        What is read is not trusted whole: whoever can write the storage must not choose the
        code every worker imports and runs. The handed-on family, module and estimator must be
        the study file's (else one line, nothing imported), and the configuration is rebuilt
        from ``[defaults]`` plus the handed-on values of the settings a stage may tune, each
        checked by the study file's family; the untuned ones (seed, precision, compile, device)
        are the study file's."""
        source = self.plan.input_stage(stage.name)
        if source is None:
            return self.plan.defaults
        study = self.ctx.find_study(self.ctx.study_name(source))
        assert study is not None
        where = f"stage {source!r} in {self.ctx.storage_url} hands on"
        fix = (
            f"start that stage over (hpo run-stage {source} --force --config {self.plan.path}) and check "
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
        return self._rebuild(selection.config_out, where, fix)

    def _rebuild(self, carried: RunConfig, where: str, fix: str) -> RunConfig:
        cfg = self.plan.defaults
        for key in FAMILY_KEYS[:3]:
            if getattr(carried, key) != getattr(cfg, key):
                raise ConfigError(
                    f"{where} {key} = {getattr(carried, key)!r}, and {self.plan.path} says "
                    f"{getattr(cfg, key)!r}: a storage does not choose what runs; {fix}"
                )
        family = family_of(cfg)
        point: dict[str, Any] = {}
        for name, value in carried.settings().items():
            if name in UNTUNED:
                continue
            try:
                point[name] = family.check_value(cfg, name, value)
            except ValueError as exc:
                raise ConfigError(f"{where} {name} = {value!r}: {exc}; {fix}") from None
        return cfg.with_point(point)

    def numerics(self) -> Numerics | None:
        """The pipeline's numerics (precision, compile): stored by the first worker that needed
        them, else measured here now and stored (:mod:`hpo.tuning.numerics`); values pinned in
        ``[defaults]`` win. None for a family that trains no torch model. Read once per process
        and said once at INFO."""
        if self._numerics is None:
            self._numerics = self._decide_numerics()
            if self._numerics is not None:
                logger.info("pipeline %s trains in %s", self.plan.name, self._numerics.describe())
        return self._numerics

    def _decide_numerics(self) -> Numerics | None:
        cfg = self.plan.defaults
        if not family_of(cfg).torch_based:
            return None
        width = max(s.stack_width(cfg) for s in self.plan.stages)
        decided = numerics_mod.decide(
            self.ctx.storage, self.plan.name, lambda: self.ctx.measure_numerics(cfg, width)
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
            pipeline=self.plan.name,
        )
        return decided

    def _material(self, stage: Stage, cfg_in: RunConfig) -> dict[str, Any]:
        return {**self.plan.fingerprint_material(stage), "carried_in": cfg_in.to_record()}

    def create_study(self, stage: Stage, cfg_in: RunConfig) -> optuna.Study:
        material = self._material(stage, cfg_in)
        study = optuna.create_study(
            study_name=self.ctx.study_name(stage.name),
            storage=self.ctx.storage,
            direction=stage.direction,
            sampler=stage.sampler(cfg_in.seed),
            pruner=stage.pruner(),
            load_if_exists=True,
        )
        with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if study.metric_names is None:  # optuna-dashboard and Optuna's plots name the objective
                study.set_metric_names([self.objective_name(stage)])
        attrs = {
            records.STAGE: stage.name,
            records.KIND: stage.kind,
            records.SETTINGS: material,
            records.FINGERPRINT: records.fingerprint(material),
            records.CARRIED_IN: cfg_in.to_record(),
            **stage.study_records(self.ctx),
        }
        for key, value in attrs.items():
            if key not in study.user_attrs:  # another worker may have created it first
                study.set_user_attr(key, value)
        return self._reopen(stage, study.study_name, cfg_in)

    def objective_name(self, stage: Stage) -> str:
        """What a stage's trials report as their value: ``val_accuracy``, ``cv_mean_rmse``,
        ``test_accuracy`` (the final stage), ... (the stage's metric, else the task's own)."""
        metric = getattr(stage.settings, "metric", None) or task_kind(self.plan.data.task).default_metric
        where = "test" if stage.reads_test_rows else "cv_mean" if stage.folds() > 1 else "val"
        return f"{where}_{metric}"

    def _reopen(self, stage: Stage, name: str, cfg_in: RunConfig) -> optuna.Study:
        return optuna.load_study(
            study_name=name,
            storage=self.ctx.storage,
            sampler=stage.sampler(cfg_in.seed),
            pruner=stage.pruner(),
        )

    def check_drift(self, stage: Stage, study: optuna.Study, cfg_in: RunConfig) -> None:
        stored = study.user_attrs[records.SETTINGS]
        current = self._material(stage, cfg_in)
        drift = records.settings_drift(stored, current)
        if drift is not None:
            key, was, now = drift
            raise ConfigError(
                f"stage {stage.name!r}: {key} was {was!r} when its study was created and is {now!r} now; "
                "restore it, or start the stage over: "
                f"hpo run-stage {stage.name} --force --config {self.plan.path}"
            )

    def finish(self, stage: Stage, study: optuna.Study, cfg_in: RunConfig) -> None:
        """Select, publish the figures and note, then flag the study complete (an error in
        between leaves it to be finished by a re-run)."""
        study = self._reopen(stage, study.study_name, cfg_in)
        selection = stage.select(study.get_trials(deepcopy=False), cfg_in, study.user_attrs)
        records.write_selection(study, selection)
        if stage.reads_test_rows:
            study.set_user_attr(records.TEST_METRICS, selection.extra["test_metrics"])
            study.set_user_attr(records.MODEL_ARTIFACT, selection.extra["model_artifact"])
        dashboard.publish(study, stage.figures(study), figures.stage_note(study, stage.title))
        study.set_user_attr(records.COMPLETE, True)
        logger.info("%s complete: selected %s (%s)", study.study_name, selection.selected, selection.reason)

    # ------------------------------------------------------------------ reading

    def study_state(self, stage: Stage) -> StudyState:
        name = self.ctx.study_name(stage.name)
        study = self.ctx.find_study(name)
        if study is None:
            return StudyState(stage.name, stage.kind, name, "not started", {})
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
        )

    def status(self) -> PipelineStatus:
        states = [self.study_state(s) for s in self.plan.stages]
        test_metrics = None
        for stage in self.plan.stages:
            if stage.reads_test_rows:
                study = self.ctx.find_study(self.ctx.study_name(stage.name))
                if records.is_complete(study):
                    assert study is not None
                    test_metrics = study.user_attrs.get(records.TEST_METRICS)
        total = self.plan.pipeline.time_budget
        spent = {"seconds": total, "spent": round(self.time_spent(), 1)} if total is not None else None
        decided = numerics_mod.stored(self.ctx.storage, self.plan.name)
        return PipelineStatus(
            self.plan.name,
            self.plan.path,
            self.ctx.storage_url,
            states,
            test_metrics,
            spent,
            decided.to_dict() if decided is not None else None,
        )

    # ------------------------------------------------------------------ the time budget

    def _trials(self, stage: Stage) -> list[FrozenTrial]:
        study = self.ctx.find_study(self.ctx.study_name(stage.name))
        return study.get_trials(deepcopy=False) if study is not None else []

    def time_spent(self) -> float:
        """Seconds the pipeline's stages have run (the time some trial of theirs was running,
        :func:`hpo.tuning.budget.busy`), the time a ``time_budget`` counts."""
        return sum(budget.busy(self._trials(s)) or 0.0 for s in self.plan.stages)

    def search_budget(self, name: str, trials: Sequence[FrozenTrial]) -> budget.TimeLimit | None:
        """Search ``name``'s share of ``[pipeline] time_budget``: what is left of it after the
        stages before, less the estimated time of the stages after (their planned model-samples
        at the rate its own finished trials trained, times :data:`budget.RESERVE_FACTOR`). None
        without a budget, or before a trial of it finished (the first batch always runs)."""
        total = self.plan.pipeline.time_budget
        if total is None:
            return None
        names = [s.name for s in self.plan.stages]
        i = names.index(name)
        stage, before, after = self.plan.stages[i], self.plan.stages[:i], self.plan.stages[i + 1 :]
        done = [
            t
            for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and t.datetime_start is not None
            and t.datetime_complete is not None
        ]
        seconds = budget.busy(done)
        if not done or not seconds:
            return None
        rows = self.ctx.data().train_rows
        seeds = int(getattr(stage.settings, "seeds", 1))
        trained = sum(len(t.user_attrs.get(records.HISTORY, [])) for t in done) * seeds * rows
        if trained == 0:
            return None
        spent = sum(budget.busy(self._trials(s)) or 0.0 for s in before)
        later = sum(s.planned(self.plan.defaults, rows).samples for s in after)
        keep = later * seconds / trained * budget.RESERVE_FACTOR
        return budget.TimeLimit(
            total - spent - keep,
            f"time_budget = {total:g} s: {spent:.0f} s spent before it, "
            f"{keep:.{0 if keep >= 10 else 1}f} s kept for {', '.join(names[i + 1 :]) or 'nothing after it'}",
        )

    def dataset(self) -> data.Prepared:
        """The prepared dataset, all of it (for the report and the data explorer, not for stages)."""
        return data.prepare(
            self.plan.data, data_dir=self.ctx.data_dir, progressbar=False, folds=self.plan.folds()
        )

    def final_study(self) -> optuna.Study:
        finals = [s for s in self.plan.stages if s.reads_test_rows]
        study = self.ctx.find_study(self.ctx.study_name(finals[0].name)) if finals else None
        if not records.is_complete(study):
            name = finals[0].name if finals else "final"
            raise PrerequisiteError(
                f"no final model in {self.ctx.storage_url} for pipeline {self.plan.name!r}; "
                f"run first: hpo run-stage {name} --config {self.plan.path}"
            )
        assert study is not None
        return study

    def final_model_artifact(self) -> str:
        return str(self.final_study().user_attrs[records.MODEL_ARTIFACT])

    def trusted(self) -> list[str]:
        """What the study file vouches for: its module or estimator, the only code a saved model
        of those families may be restored with."""
        return [e for e in (self.plan.defaults.module, self.plan.defaults.estimator) if e]

    def final_model(self) -> ModelFile:
        """The final stage's model, read back from the artifact store (load it with
        ``.model(trusted=pipe.trusted())``)."""
        finals = [s.name for s in self.plan.stages if s.reads_test_rows]
        with tempfile.TemporaryDirectory() as tmp:
            return read_model_artifact(
                self.ctx.artifacts,
                self.final_model_artifact(),
                Path(tmp) / "model.pt",
                stage=finals[0] if finals else "final",
            )

    def trial_seconds(self, stage: Stage) -> float | None:
        """Seconds from the first trial's start to the last one's end."""
        study = self.ctx.find_study(self.ctx.study_name(stage.name))
        if study is None:
            return None
        trials = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.datetime_start and t.datetime_complete
        ]
        if not trials:
            return None
        start = min(t.datetime_start for t in trials if t.datetime_start)
        end = max(t.datetime_complete for t in trials if t.datetime_complete)
        return (end - start).total_seconds()
