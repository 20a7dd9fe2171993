"""How a trial's evaluations become its score, and the trainer callbacks that report them to Optuna.

A :class:`Scorer` turns one evaluation record into the stage's metric (any metric of the task: the
record's own score or loss, or a metric recomputed from its per-row predictions). A trial may
train several seeds (models); its :class:`TrialScore` collects every seed's evaluations, reports
the mean over the seeds as the trial's intermediate value once all of them have reached a step,
asks the pruner then, and keeps each seed's best evaluation (and, for one seed, that evaluation's
per-row predictions and losses, which paired comparisons between trials need). With
``keep_outputs`` (a stage a greedy final draws its library from) it also keeps the first seed's
raw validation outputs at its scored evaluation and stores them as an Optuna artifact (float32
``.npy``; its id in ``hpo:val_outputs``), read back by :func:`read_outputs`. A stage whose
trained models a greedy final keeps (``retrain = false``) stores each trial's models
(:func:`upload_models`, read back by :func:`read_models`) and those models' own validation
outputs instead (:func:`upload_outputs`).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import optuna
import torch
from optuna.artifacts import download_artifact, upload_artifact

from hpo.tasks import Task, better, greater_is_better
from hpo.training import Callback, EvalRecord
from hpo.tuning import records


class Scorer:
    """The stage's metric of an evaluation, in the metric's direction (:data:`hpo.tasks.METRICS`)."""

    def __init__(self, metric: str, task: Task, y_val: torch.Tensor) -> None:
        self.metric = metric
        self.task = task
        self.y_val = y_val.numpy()
        self.maximize = greater_is_better(metric)

    def __call__(self, record: EvalRecord) -> float:
        if self.metric == "loss":
            return record.val_loss
        if self.metric == record.metric:
            return record.val_score
        assert record.val_pred is not None, "a metric recomputed from predictions needs the full record"
        return self.task.metric(self.metric, self.y_val, record.val_pred.numpy())

    def better(self, a: float, b: float) -> bool:
        return better(self.metric, a, b)


@dataclass
class _Seed:
    best: float | None = None
    pred: torch.Tensor | None = None
    nll: torch.Tensor | None = None
    out: torch.Tensor | None = None


@dataclass
class TrialScore:
    """One trial's evaluations over its seeds: reports, pruning, and the scored evaluation."""

    trial: optuna.Trial
    scorer: Scorer
    seeds: int = 1
    step: Literal["epoch", "step"] = "epoch"
    report: bool = True
    prune: bool = False
    last: bool = False  # score a seed by its last evaluation, not its best
    keep_outputs: bool = False  # keep the first seed's raw outputs at its scored evaluation
    pruned: bool = False
    pruned_at: int | None = None
    _seeds: list[_Seed] = field(default_factory=list)
    _pending: dict[int, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._seeds = [_Seed() for _ in range(self.seeds)]

    def callback(self, seed: int) -> Callback:
        def see(record: EvalRecord) -> bool:
            value = self.scorer(record)
            s = self._seeds[seed]
            if s.best is None or self.last or self.scorer.better(value, s.best):
                s.best = value
                if self.seeds == 1:
                    s.pred, s.nll = record.val_pred, record.val_nll
                if self.keep_outputs and seed == 0:
                    s.out = record.val_out
            at = record.epoch if self.step == "epoch" else record.step
            values = self._pending.setdefault(at, [])
            values.append(value)
            if len(values) == self.seeds and not self.pruned:
                del self._pending[at]
                if self.report:
                    self.trial.report(float(np.mean(values)), at)
                if self.prune and self.trial.should_prune():
                    self.pruned, self.pruned_at = True, at
            return self.pruned

        return see

    @property
    def seed_scores(self) -> list[float]:
        return [s.best for s in self._seeds if s.best is not None]

    @property
    def value(self) -> float:
        """The trial's score: the mean over its seeds of each seed's best (or last) evaluation."""
        return float(np.mean(self.seed_scores))

    def store(self, *, metric: str, artifacts: Any = None) -> None:
        """Write the seeds' scores and (one seed) the scored evaluation's per-row results; with
        ``keep_outputs``, the first seed's raw validation outputs into ``artifacts`` (an Optuna
        artifact store)."""
        self.trial.set_user_attr(records.SCORE, self.value)
        out = self._seeds[0].out
        if self.keep_outputs and out is not None:
            if artifacts is None:
                raise ValueError("keep_outputs needs the artifact store to write the outputs to")
            self.trial.set_user_attr(records.VAL_OUTPUTS, upload_outputs(artifacts, self.trial, out))
        if self.seeds > 1:
            self.trial.set_user_attr(records.SEED_SCORES, self.seed_scores)
            return
        s = self._seeds[0]
        if s.pred is not None:
            self.trial.set_user_attr(records.VAL_PREDICTIONS, self.scorer.task.pack_predictions(s.pred))
        if metric == "loss" and s.nll is not None:
            self.trial.set_user_attr(records.VAL_LOSSES, records.pack_floats(s.nll.numpy()))


def upload_outputs(artifacts: Any, trial: optuna.Trial, out: torch.Tensor) -> str:
    """Store a trial's raw validation outputs (float32 ``.npy``); the artifact's id."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"val_outputs_{trial.number}.npy"
        np.save(path, out.float().numpy(), allow_pickle=False)
        return upload_artifact(artifact_store=artifacts, file_path=str(path), study_or_trial=trial)


def read_outputs(artifacts: Any, artifact_id: str) -> npt.NDArray[np.float32]:
    """A trial's stored validation outputs (``hpo:val_outputs``), as float32; ``allow_pickle``
    off, so the bytes can hold numbers only."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "outputs.npy"
        download_artifact(artifact_store=artifacts, file_path=str(path), artifact_id=artifact_id)
        data = path.read_bytes()
    arr: npt.NDArray[np.float32] = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.dtype != np.float32 or arr.ndim not in (1, 2):
        raise ValueError(f"artifact {artifact_id} is not a float32 matrix of outputs")
    return arr


def upload_models(artifacts: Any, trial: optuna.Trial, payloads: Sequence[dict[str, Any]]) -> str:
    """Store a trial's trained models (one family payload per seed: tensors and plain values,
    :meth:`hpo.families.ModelFamily.payload`); the artifact's id."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"models_{trial.number}.pt"
        torch.save({"payloads": list(payloads)}, path)
        return upload_artifact(artifact_store=artifacts, file_path=str(path), study_or_trial=trial)


def read_models(artifacts: Any, artifact_id: str) -> list[dict[str, Any]]:
    """A trial's stored models (:func:`upload_models`), read with ``weights_only``: the bytes
    can hold tensors and plain values only, never code; ValueError when they are not payloads."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "models.pt"
        download_artifact(artifact_store=artifacts, file_path=str(path), artifact_id=artifact_id)
        try:
            raw = torch.load(path, weights_only=True)
        except Exception as exc:  # random bytes, a file cut short, pickled objects
            raise ValueError(
                f"artifact {artifact_id} is not a file of models ({type(exc).__name__})"
            ) from None
    payloads = raw.get("payloads") if isinstance(raw, dict) else None
    if not isinstance(payloads, list) or not payloads or not all(isinstance(p, dict) for p in payloads):
        raise ValueError(f"artifact {artifact_id} holds no list of model payloads")
    return payloads


def seed_values(base: int, seeds: int) -> Sequence[int]:
    """The seeds a candidate trains: its configuration's, then the next ones."""
    return [base + s for s in range(seeds)]
