"""What every stage shares: the context, study naming, carry-forward and explicit grid completion.

A stage is one or more Optuna studies over a fixed list of points (a grid). Points are run by
enqueuing each missing one (``study.enqueue_trial``) and letting ``study.optimize`` take them:
Optuna's GridSampler counts a failed point as visited and repeats running points when several
workers share a study, so completion is planned here instead. A study is complete when every
point has a COMPLETE (or PRUNED) trial; then the stage writes what it selected and the full
resulting configuration (``config_out``) into the study's user attributes, where the next
stage, in any process, reads it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import sqlalchemy
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from hpo import _locks, dashboard, data, models, train
from hpo.config import PipelineConfig
from hpo.errors import HpoError, PrerequisiteError

logger = logging.getLogger("hpo.stages")

Config = dict[str, Any]
Point = dict[str, Any]
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class StageContext:
    pipeline: PipelineConfig
    storage: optuna.storages.BaseStorage
    storage_url: str
    artifacts: FileSystemArtifactStore
    data_dir: Path | None = None
    _prepared: data.Prepared | None = field(default=None, repr=False)
    _train_val: train.TensorData | None = field(default=None, repr=False)

    def prepared(self) -> data.Prepared:
        if self._prepared is None:
            d = self.pipeline.data
            spec = data.DataSpec(
                source=d.source,  # type: ignore[arg-type]
                rows=d.rows,
                seed=d.seed,
                file=Path(d.file) if d.file else None,
            )
            self._prepared = data.prepare(spec, data_dir=self.data_dir, progressbar=False)
        return self._prepared

    @property
    def split(self) -> data.Split:
        return self.prepared().split(self.pipeline.data.split)  # type: ignore[arg-type]

    def train_val(self) -> train.TensorData:
        """Training and validation rows, scaled with the scaler fit on the training rows."""
        if self._train_val is None:
            p, s = self.prepared(), self.split
            scaler = p.scaler(s.name)
            self._train_val = train.TensorData.from_numpy(
                scaler.transform(p.features[s.train]),
                p.labels[s.train],
                scaler.transform(p.features[s.val]),
                p.labels[s.val],
            )
        return self._train_val

    def train_rows(self) -> tuple[np.ndarray[Any, np.dtype[np.float32]], np.ndarray[Any, np.dtype[np.int64]]]:
        """Unscaled training rows (for k-fold CV, which fits a scaler per fold)."""
        p, s = self.prepared(), self.split
        return np.asarray(p.features[s.train], dtype=np.float32), np.asarray(
            p.labels[s.train], dtype=np.int64
        )

    def test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The test rows. Only the final stage calls this, exactly once."""
        p, s = self.prepared(), self.split
        scaler = p.scaler(s.name)
        return (
            torch.as_tensor(scaler.transform(p.features[s.test])),
            torch.as_tensor(np.asarray(p.labels[s.test], dtype=np.int64)),
        )


def study_name(pipeline: PipelineConfig, stage: str, sweep: str | None = None) -> str:
    return f"{pipeline.name}.{stage}" + (f".{sweep}" if sweep else "")


def find_study(ctx: StageContext, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=ctx.storage)
    except KeyError:
        return None


def is_complete(study: optuna.Study | None) -> bool:
    return study is not None and bool(study.user_attrs.get("complete"))


def model_config(cfg: Mapping[str, Any]) -> models.ModelConfig:
    return models.ModelConfig(
        hidden=tuple(cfg["hidden"]), activation=cfg["activation"], norm=cfg["norm"], init=cfg["init"]
    )


def optim_config(cfg: Mapping[str, Any]) -> models.OptimConfig:
    return models.OptimConfig(
        name=cfg["optimizer"], lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"])
    )


def defaults_config(pipeline: PipelineConfig) -> Config:
    d = pipeline.defaults
    return {
        "hidden": list(d.hidden),
        "activation": d.activation,
        "norm": d.norm,
        "init": d.init,
        "optimizer": d.optimizer,
        "lr": d.lr,
        "weight_decay": d.weight_decay,
        "batch_size": d.batch_size,
        "seed": d.seed,
        "precision": d.precision,
    }


def point_key(point: Mapping[str, Any]) -> str:
    return json.dumps(dict(point), sort_keys=True)


def trial_point(trial: optuna.trial.FrozenTrial, names: list[str]) -> str:
    return point_key({k: trial.params[k] for k in names if k in trial.params})


def progress_callback(label: str, total_epochs: int) -> train.Callback:
    def log(record: train.EvalRecord) -> None:
        logger.info(
            "%s epoch %d/%d step %d: train loss %.4f, val loss %.4f, val acc %.4f",
            label,
            record.epoch,
            total_epochs,
            record.step,
            record.train_loss,
            record.val_loss,
            record.val_accuracy,
        )

    return log


def fit_trial(
    trial: optuna.Trial,
    cfg: Config,
    tcfg: train.TrainConfig,
    tensors: train.TensorData,
    *,
    label: str,
    metric: Literal["val_loss", "val_accuracy"] = "val_accuracy",
    step: Literal["epoch", "step"] = "epoch",
) -> train.FitResult:
    """Train one configuration for a trial: store its full config and training settings, report
    ``metric`` at every evaluation (so pruners can act), log progress, store the history."""
    trial.set_user_attr("config", cfg)
    trial.set_user_attr("train", tcfg.to_dict())

    def report(record: train.EvalRecord) -> None:
        trial.report(getattr(record, metric), getattr(record, step))

    result = train.fit(
        model_config(cfg),
        optim_config(cfg),
        tcfg,
        tensors,
        callbacks=[report, progress_callback(f"{label} trial {trial.number}", tcfg.epochs)],
    )
    trial.set_user_attr("history", result.history_dicts())
    return result


Objective = Callable[[optuna.Trial, Point], float]


class _NothingToClaim(Exception):
    """Raised from the claiming ``ask`` when no point is left to start."""


class _Duplicate(Exception):
    """Raised in a trial whose point another trial already holds."""


def _point_of(t: optuna.trial.FrozenTrial, names: list[str]) -> str:
    params = t.params if t.params else t.system_attrs.get("fixed_params", {})
    return point_key({k: params[k] for k in names if k in params})


def _first_claim(study: optuna.Study, key: str, names: list[str]) -> int | None:
    """The trial that owns point ``key``: a finished one, else the lowest-numbered live one."""
    live = []
    for t in study.get_trials(deepcopy=False):
        if _point_of(t, names) != key or "duplicate_of" in t.user_attrs:
            continue
        if t.state in DONE_STATES:
            return t.number
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            live.append(t.number)
    return min(live) if live else None


MAX_FAILURES_PER_POINT = 3
POLL_SECONDS = 1.0
MAX_STORAGE_ERRORS = 8  # consecutive, with exponential back-off up to 30 s: about 2.5 minutes
STORAGE_ERRORS: tuple[type[Exception], ...] = (
    optuna.exceptions.StorageInternalError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
)


def _release_claimed(storage: optuna.storages.BaseStorage, claimed: list[int]) -> None:
    """Fail this process's trial if a storage error left it RUNNING (it may not have started its
    heartbeat, so no other worker would ever find it stale); its point is then run again."""
    for trial_id in list(claimed):
        try:
            if storage.get_trial(trial_id).state == TrialState.RUNNING:
                storage.set_trial_user_attr(trial_id, "storage_error", True)
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
            claimed.remove(trial_id)
        except STORAGE_ERRORS:
            return  # still unreachable: tried again after the next error or by heartbeat expiry


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open_study(
    ctx: StageContext,
    name: str,
    *,
    direction: Literal["minimize", "maximize"],
    pruner: optuna.pruners.BasePruner | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> optuna.Study:
    study = optuna.create_study(
        study_name=name,
        storage=ctx.storage,
        direction=direction,
        sampler=optuna.samplers.RandomSampler(seed=ctx.pipeline.defaults.seed),
        pruner=pruner or optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    for key, value in (attrs or {}).items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
    return study


def _raise_if_failing(
    name: str, trials: list[optuna.trial.FrozenTrial], names: list[str], point: Point
) -> None:
    """Stop a point that failed by error MAX_FAILURES_PER_POINT times (interruptions, storage
    errors and stepped-aside duplicates are not held against it)."""
    failures = [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and not t.user_attrs.get("interrupted")
        and not t.user_attrs.get("storage_error")
        and "duplicate_of" not in t.user_attrs
        and _point_of(t, names) == point_key(point)
    ]
    if len(failures) >= MAX_FAILURES_PER_POINT:
        raise HpoError(
            f"study {name}: point {point_key(point)} failed {len(failures)} times (last: trial "
            f"{failures[-1].number}); fix the cause, then re-run the stage with --force"
        )


def _back_off(ctx: StageContext, name: str, exc: Exception, attempt: int, claimed: list[int]) -> None:
    """A dropped connection or a database restart: wait (exponentially, up to 30 s), fail this
    process's claimed trials (or, if even that write is lost, they go stale and are retried
    through their heartbeats), and carry on with fresh connections (pool_pre_ping)."""
    if attempt > MAX_STORAGE_ERRORS:
        raise exc
    delay = min(2.0**attempt, 30.0)
    logger.warning("%s: storage error (%s); retrying in %.0f s", name, _first_line(exc), delay)
    time.sleep(delay)
    _release_claimed(ctx.storage, claimed)


def _all_done(study: optuna.Study, points: list[Point], names: list[str]) -> bool:
    done = {trial_point(t, names) for t in study.get_trials(deepcopy=False, states=DONE_STATES)}
    return all(point_key(p) in done for p in points)


def _wait(study: optuna.Study, name: str, *, logged: bool) -> bool:
    """Nothing to claim while other workers' trials run: say so once, then poll."""
    if not logged:
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        logger.info("%s: nothing left to start; waiting for %d running trial(s)", name, running)
    time.sleep(POLL_SECONDS)
    return True


def run_points(
    ctx: StageContext,
    name: str,
    *,
    points: list[Point],
    choices: Mapping[str, list[Any]],
    objective: Objective,
    direction: Literal["minimize", "maximize"],
    pruner: optuna.pruners.BasePruner | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> optuna.Study:
    """Create or join study ``name`` and work on it until every point has a finished trial.

    Safe with any number of workers on one storage: a worker claims a point (enqueue + ask)
    under a lock, so no point runs twice and none is skipped; a worker with nothing left to
    start waits for the others' running trials (a trial whose worker died is failed through
    Optuna's heartbeat, re-enqueued by its retry callback, and taken by a waiting worker), and
    returns when the study's points are all finished. Trials run through ``study.optimize``, so
    Optuna's heartbeats cover them.
    """
    study = _open_study(ctx, name, direction=direction, pruner=pruner, attrs=attrs)
    names = list(choices)
    original_ask = study.ask
    claimed: list[int] = []  # the trial this process is running, for clean-up after storage errors

    def claim(*args: Any, **kwargs: Any) -> optuna.Trial:
        trial = original_ask(*args, **kwargs)
        claimed[:] = [trial._trial_id]
        first_heartbeat(ctx.storage, trial._trial_id)
        return trial

    def claiming_ask(*args: Any, **kwargs: Any) -> optuna.Trial:
        with _locks.claim_lock(ctx.storage, name):
            trials = study.get_trials(deepcopy=False)
            if any(t.state == TrialState.WAITING for t in trials):
                return claim(*args, **kwargs)
            # A trial just claimed by another worker is RUNNING before its objective has
            # suggested its params: its point is read from the enqueued ``fixed_params``.
            done = {_point_of(t, names) for t in trials if t.state in DONE_STATES}
            running = {_point_of(t, names) for t in trials if t.state == TrialState.RUNNING}
            missing = [p for p in points if point_key(p) not in done | running]
            if not missing:
                raise _NothingToClaim
            point = missing[0]
            _raise_if_failing(name, trials, names, point)
            study.enqueue_trial(point)
            return claim(*args, **kwargs)

    def wrapped(trial: optuna.Trial) -> float:
        point = {k: trial.suggest_categorical(k, choices[k]) for k in names}
        first = _first_claim(study, point_key(point), names)
        if first is not None and first != trial.number:
            # Only possible if the claim lock was lost mid-claim (its connection dropped): the
            # earlier trial of this point runs it; this one steps aside, uncounted.
            trial.set_user_attr("duplicate_of", first)
            raise _Duplicate(f"trial {trial.number} duplicates trial {first}")
        logger.info("%s: trial %d %s", name, trial.number, point or "")
        try:
            return objective(trial, point)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # Optuna marks it FAIL; not held against the point
            raise

    study.ask = claiming_ask  # type: ignore[method-assign]
    waiting_logged = False
    storage_errors = 0
    try:
        while True:
            try:
                study.optimize(wrapped, n_trials=1, catch=(), gc_after_trial=False)
                waiting_logged = False
                storage_errors = 0
            except STORAGE_ERRORS as exc:
                storage_errors += 1
                _back_off(ctx, name, exc, storage_errors, claimed)
            except _Duplicate as exc:
                logger.warning("%s: %s; skipped", name, exc)
            except _NothingToClaim:
                if _all_done(study, points, names):
                    break
                waiting_logged = _wait(study, name, logged=waiting_logged)
    finally:
        del study.ask
    return study


BatchObjective = Callable[[list[tuple[optuna.Trial, Point]]], list[float]]


class _Heartbeat:
    """Records Optuna heartbeats for a batch of ask/tell trials (``study.optimize`` does this
    for one trial; a batch has to do it itself), so other workers fail them as stale if this
    process dies, and Optuna's retry callback re-enqueues them."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_ids: list[int]) -> None:
        self.storage = storage
        self.trial_ids = trial_ids
        self.stop = threading.Event()
        self.interval = storage.get_heartbeat_interval() if _heartbeats(storage) else None  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        assert self.interval is not None
        while True:
            for trial_id in self.trial_ids:
                with contextlib.suppress(*STORAGE_ERRORS):
                    self.storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> _Heartbeat:
        if self.interval is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def first_heartbeat(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """Record a heartbeat the moment a trial is claimed. Optuna only finds a trial stale once
    it has a heartbeat row, so a worker killed between ``ask`` and its heartbeat thread's first
    beat would otherwise leave the trial RUNNING for ever, and the stage waiting on it."""
    if _heartbeats(storage):
        storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]


def _heartbeats(storage: optuna.storages.BaseStorage) -> bool:
    getter = getattr(storage, "get_heartbeat_interval", None)
    return getter is not None and getter() is not None


def run_point_batches(
    ctx: StageContext,
    name: str,
    *,
    points: list[Point],
    choices: Mapping[str, list[Any]],
    objective: BatchObjective,
    direction: Literal["minimize", "maximize"],
    batch_size: int,
    attrs: Mapping[str, Any] | None = None,
) -> optuna.Study:
    """Like :func:`run_points`, but claims up to ``batch_size`` points at once and hands them to
    ``objective`` together (to train their models stacked). Every point is still its own trial,
    created with ``ask`` (params suggested at once), given its attributes and intermediate
    values by the objective, and finished with ``tell``; heartbeats are recorded for all of them.
    A worker with nothing to claim waits, failing stale trials of dead workers (which Optuna's
    retry callback re-enqueues) so they are claimed again."""
    study = _open_study(ctx, name, direction=direction, attrs=attrs)
    names = list(choices)
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for Study.optimize and that fail_stale_trials
        # is experimental; this runner records the heartbeats of its ask/tell trials itself.
        warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return _run_batches(ctx, study, name, points, choices, names, objective, batch_size)


def _run_batches(
    ctx: StageContext,
    study: optuna.Study,
    name: str,
    points: list[Point],
    choices: Mapping[str, list[Any]],
    names: list[str],
    objective: BatchObjective,
    batch_size: int,
) -> optuna.Study:
    waiting_logged = False
    storage_errors = 0
    claimed: list[int] = []
    while True:
        try:
            finished_all = _one_batch(
                ctx, study, name, points, choices, names, objective, batch_size, claimed
            )
            storage_errors = 0
        except STORAGE_ERRORS as exc:
            storage_errors += 1
            _back_off(ctx, name, exc, storage_errors, claimed)
            continue
        if finished_all is None:
            waiting_logged = _wait(study, name, logged=waiting_logged)
            continue
        waiting_logged = False
        if finished_all:
            return study


def _one_batch(
    ctx: StageContext,
    study: optuna.Study,
    name: str,
    points: list[Point],
    choices: Mapping[str, list[Any]],
    names: list[str],
    objective: BatchObjective,
    batch_size: int,
    claimed: list[int],
) -> bool | None:
    """Claim and run one batch. True: every point is done; False: ran a batch; None: nothing to
    claim while other workers' trials run."""
    if _heartbeats(ctx.storage):
        optuna.storages.fail_stale_trials(study)
    batch: list[tuple[optuna.Trial, Point]] = []
    with _locks.claim_lock(ctx.storage, name):
        trials = study.get_trials(deepcopy=False)
        taken = {_point_of(t, names) for t in trials if t.state in (*DONE_STATES, TrialState.RUNNING)}
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        todo = [p for p in points if point_key(p) not in taken]
        for p in todo:
            _raise_if_failing(name, trials, names, p)
        queued = {_point_of(t, names) for t in waiting}
        for p in todo:
            if len(waiting) + len(batch) >= batch_size:
                break
            if point_key(p) not in queued:
                study.enqueue_trial(p)
                queued.add(point_key(p))
        while len(batch) < batch_size:
            if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                break
            trial = study.ask()
            claimed.append(trial._trial_id)
            first_heartbeat(ctx.storage, trial._trial_id)
            point = {k: trial.suggest_categorical(k, choices[k]) for k in names}
            batch.append((trial, point))
    if not batch:
        return True if _all_done(study, points, names) else None
    logger.info("%s: trials %s stacked: %s", name, [t.number for t, _ in batch], [p for _, p in batch])
    with _Heartbeat(ctx.storage, [t._trial_id for t, _ in batch]):
        try:
            values = objective(batch)
        except BaseException as exc:
            if isinstance(exc, STORAGE_ERRORS):
                raise  # the caller fails what it can and retries
            for trial, _ in batch:
                if isinstance(exc, KeyboardInterrupt):
                    trial.set_user_attr("interrupted", True)
                study.tell(trial, state=TrialState.FAIL)
                claimed.remove(trial._trial_id)
            raise
    for (trial, _), value in zip(batch, values, strict=True):
        study.tell(trial, value)
        claimed.remove(trial._trial_id)

    return False


def run_grid(
    ctx: StageContext,
    name: str,
    *,
    points: list[Point],
    choices: Mapping[str, list[Any]],
    objective: Objective,
    batch_objective: BatchObjective,
    direction: Literal["minimize", "maximize"],
    stack: int,
    pruner: optuna.pruners.BasePruner | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> optuna.Study:
    """Run a stage's grid stacked (``stack`` points per batch) or, with ``stack = 1`` or a pruner
    (which acts between one trial's folds), one trial at a time."""
    if stack > 1 and pruner is None:
        return run_point_batches(
            ctx,
            name,
            points=points,
            choices=choices,
            objective=batch_objective,
            direction=direction,
            batch_size=stack,
            attrs=attrs,
        )
    return run_points(
        ctx,
        name,
        points=points,
        choices=choices,
        objective=objective,
        direction=direction,
        pruner=pruner,
        attrs=attrs,
    )


def finished(study: optuna.Study, points: list[Point], names: list[str]) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE trial of each point (the latest if a point ran twice); raise if any is missing."""
    by_point: dict[str, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        by_point[trial_point(t, names)] = t
    pruned = {trial_point(t, names) for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))}
    out = []
    for p in points:
        key = point_key(p)
        if key in by_point:
            out.append(by_point[key])
        elif key not in pruned:
            raise HpoError(
                f"study {study.study_name}: point {key} has no finished trial; run the stage again"
            )
    if not out:
        raise HpoError(f"study {study.study_name}: every point was pruned; nothing to select")
    return out


def mark_complete(
    study: optuna.Study,
    *,
    stage: str,
    selected: Mapping[str, Any],
    config_out: Config,
    why: str,
    sweep: str | None = None,
) -> None:
    """Store the selection, save the stage's figures and note for optuna-dashboard, and only
    then flag the study complete (an error in between leaves it to be finished by a re-run)."""
    study.set_user_attr("selected", dict(selected))
    study.set_user_attr("selection_reason", why)
    study.set_user_attr("config_out", config_out)
    dashboard.publish_stage(stage, study, sweep=sweep)
    study.set_user_attr("complete", True)
    logger.info("%s complete: selected %s (%s)", study.study_name, dict(selected), why)


def require(ctx: StageContext, stage: str, *, completed: Callable[[StageContext, str], bool]) -> None:
    for req in ctx.pipeline.requires(stage):
        if not completed(ctx, req):
            raise PrerequisiteError(
                f"stage {stage!r} needs stage {req!r}, which is not complete in {ctx.storage_url}; "
                f"run first: hpo run-stage {req} --config {ctx.pipeline.path}"
            )
