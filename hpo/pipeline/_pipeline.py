"""The :class:`Pipeline` class: a study file bound to a storage, thin, delegating to the package's modules."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from hpo import data
from hpo import plan as plan_mod
from hpo.families.sklearn_api import data_encoding, native_levels
from hpo.model_file import ModelFile
from hpo.pipeline import _budget, _final, _handover, _lifecycle, _numerics, _status
from hpo.pipeline._status import PipelineStatus, RunResult, StageRun, StudyState
from hpo.pipeline._study_file import resolve_study_file
from hpo.plan import Plan
from hpo.present.progress import LogProgress, Progress
from hpo.settings import RunConfig
from hpo.stages import Stage, StageContext
from hpo.tuning import budget, records
from hpo.tuning.locks import exclusive_sqlite_worker
from hpo.tuning.numerics import Numerics
from hpo.tuning.storage import artifact_store, open_storage, redact, storage_url
from hpo.tuning.workers import Registry


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
            encoding=data_encoding(*plan.track_bases()),
            native_levels=native_levels(plan.track_bases(), plan.stages),
            library=plan.library(),
            kept=plan.kept(),
            bases={s.name: plan.base(s.name) for s in plan.stages},
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
        planned = [(s.name, *astuple(s.planned(self.plan.base(s.name), rows))) for s in self.plan.stages]
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
            return _lifecycle.run_stage(self, stage, cfg_in, force=force)

    def check_ready(self) -> None:
        """Prepare (and check) the data, and build the family's model for it once (a factory
        must return a module of the right output width), before anything is stored."""
        _lifecycle.check_ready(self)

    def check_prerequisites(self, stage: Stage) -> None:
        _lifecycle.check_prerequisites(self, stage)

    def input_config(self, stage: Stage) -> RunConfig:
        """What the stage starts from: the configuration the stage it builds on handed on, read
        from the storage, else the study file's ``[defaults]``.

        What is read is not trusted whole: whoever can write the storage must not choose the
        code every worker imports and runs. The handed-on family, module and estimator must be
        the study file's (else one line, nothing imported), and the configuration is rebuilt
        from ``[defaults]`` plus the handed-on values of the settings a stage may tune, each
        checked by the study file's family; the untuned ones (seed, precision, compile, device)
        are the study file's."""
        return _handover.input_config(self, stage)

    def numerics(self) -> Numerics | None:
        """The pipeline's numerics (precision, compile): stored by the first worker that needed
        them, else measured here now and stored (:mod:`hpo.tuning.numerics`); values pinned in
        ``[defaults]`` win. None for a family that trains no torch model. Read once per process
        and said once at INFO."""
        if self._numerics is None:
            self._numerics = _numerics.decide(self)
        return self._numerics

    def create_study(self, stage: Stage, cfg_in: RunConfig) -> optuna.Study:
        return _lifecycle.create_study(self, stage, cfg_in)

    def objective_name(self, stage: Stage) -> str:
        """What a stage's trials report as their value: ``val_accuracy``, ``cv_mean_rmse``,
        ``test_accuracy`` (the final stage), ... (the stage's metric, else the task's own)."""
        return _lifecycle.objective_name(self, stage)

    def check_drift(self, stage: Stage, study: optuna.Study, cfg_in: RunConfig) -> None:
        _lifecycle.check_drift(self, stage, study, cfg_in)

    def finish(self, stage: Stage, study: optuna.Study, cfg_in: RunConfig) -> None:
        """Select, publish the figures and note, then flag the study complete (an error in
        between leaves it to be finished by a re-run)."""
        _lifecycle.finish(self, stage, study, cfg_in)

    # ------------------------------------------------------------------ reading

    def study_state(self, stage: Stage) -> StudyState:
        return _status.study_state(self, stage)

    def status(self) -> PipelineStatus:
        return _status.status(self)

    # ------------------------------------------------------------------ the time budget

    def time_spent(self) -> float:
        """Seconds the pipeline's stages have run (the time some trial of theirs was running,
        :func:`hpo.tuning.budget.busy`), the time a ``time_budget`` counts."""
        return _budget.time_spent(self)

    def search_budget(self, name: str, trials: Sequence[FrozenTrial]) -> budget.TimeLimit | None:
        """Search ``name``'s share of ``[pipeline] time_budget``: what is left of it after the
        stages before, less the estimated time of the stages after (their planned model-samples
        at the rate its own finished trials trained, times :data:`budget.RESERVE_FACTOR`). None
        without a budget, or before a trial of it finished (the first batch always runs)."""
        return _budget.search_budget(self, name, trials)

    def dataset(self) -> data.Prepared:
        """The prepared dataset, all of it (for the report and the data explorer, not for stages)."""
        return data.prepare(
            self.plan.data, data_dir=self.ctx.data_dir, progressbar=False, folds=self.plan.folds()
        )

    def final_study(self) -> optuna.Study:
        return _final.final_study(self)

    def final_model_artifact(self) -> str:
        return str(self.final_study().user_attrs[records.MODEL_ARTIFACT])

    def trusted(self) -> list[str]:
        """What the study file vouches for: the modules and estimators of its tracks, the only code
        a saved model of those families may be restored with."""
        return [e for b in self.plan.track_bases() for e in (b.module, b.estimator) if e]

    def final_model(self) -> ModelFile:
        """The final stage's model, read back from the artifact store (load it with
        ``.model(trusted=pipe.trusted())``)."""
        return _final.final_model(self)

    def trial_seconds(self, stage: Stage) -> float | None:
        """Seconds from the first trial's start to the last one's end."""
        return _budget.trial_seconds(self, stage)
