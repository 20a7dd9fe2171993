"""The one place where a stage's trials become training jobs: configuration, family, task,
callbacks, budget and records.

A stage kind decides its points (which configurations), its scoring and its selection; for the
training itself it adds each trial to a :class:`Batch` (the trial's configuration and the
stage's :class:`Budget`; one job per dataset and seed) and trains the batch through the
configuration's family (:meth:`hpo.families.ModelFamily.fit_many`: stacked where the family
can). The batch records every trial's full configuration and training settings on it (its
precision and compile: the pipeline's numerics, the same for every trial), resolves the device
once, computes balanced class weights for the rows each job trains on, and hands every job its
callbacks (the trial's score, then the progress display). Like LightGBMTuner's steps, each stage
kind's objective is then a short call of this helper.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from hpo.families import Fitting, Job, family_of
from hpo.settings import RunConfig
from hpo.stages._context import StageContext
from hpo.stages._scoring import TrialScore, seed_values
from hpo.training import Callback, FitResult, TensorData, resolve_device
from hpo.tuning import records, runner


@dataclass(frozen=True)
class Budget:
    """How long a stage trains each model."""

    epochs: int
    patience: int | None = None
    max_batches: int | None = None
    eval_every: int | None = None
    eval_last_only: bool = False


@dataclass
class Batch:
    """The jobs of a batch of trials, trained together."""

    ctx: StageContext
    datasets: Sequence[TensorData]
    label: str  # the stage's study name, for the progress display
    jobs: list[Job] = field(default_factory=list)
    callbacks: list[list[Callback]] = field(default_factory=list)

    def add(
        self,
        trial: optuna.Trial,
        cfg: RunConfig,
        budget: Budget,
        *,
        seeds: int = 1,
        score: TrialScore | None = None,
        data: Sequence[int] = (0,),
        folds: bool = False,
        attrs: Mapping[str, Any] | None = None,
        name: str | None = None,
        extra: Callable[[int], Sequence[Callback]] | None = None,
    ) -> range:
        """Add ``trial``'s jobs: for each dataset in ``data`` (``folds``: CV folds, named so in
        the display), one job per seed (``cfg.seed`` and the next ones), each reporting to
        ``score``'s callback for its seed (and to ``extra(position)``'s callbacks). Records the
        configuration and the training settings (with ``attrs``) on the trial. Returns the
        positions of its jobs in the batch."""
        stage_data = self.ctx.data()
        device = resolve_device(cfg.device)
        precision = self.ctx.precision(cfg)
        compiles = self.ctx.compile(cfg, precision)
        start = len(self.jobs)
        for d in data:
            tensors = self.datasets[d]
            weights = stage_data.class_weights(tensors) if cfg.class_weight == "balanced" else None
            for k, seed in enumerate(seed_values(cfg.seed, seeds)):
                train = cfg.train(
                    epochs=budget.epochs,
                    device=device,
                    patience=budget.patience,
                    max_batches=budget.max_batches,
                    eval_every=budget.eval_every,
                    class_weights=weights,
                    seed=seed,
                    eval_last_only=budget.eval_last_only,
                    precision=precision,
                    compile=compiles,
                )
                self.jobs.append(Job(cfg, train, d))
                shown = name or (
                    f"{self.label} trial {trial.number}"
                    + (f" fold {d + 1}" if folds else "")
                    + (f" seed {seed}" if seeds > 1 else "")
                )
                rows = int(tensors.x_train.shape[0])
                callbacks: list[Callback] = [score.callback(k)] if score is not None else []
                if extra is not None:
                    callbacks += extra(len(self.jobs) - 1)
                callbacks.append(self.ctx.progress.member(shown, epochs=budget.epochs, rows=rows))
                self.callbacks.append(callbacks)
        records.write_config(trial, cfg)
        trial.set_user_attr(records.TRAIN, {**dataclasses.asdict(self.jobs[start].train), **(attrs or {})})
        return range(start, len(self.jobs))

    def train(self, *, stack: bool, only: Sequence[int] | None = None) -> list[FitResult]:
        """Train the batch's jobs (``only``: those at these positions), stacked where the
        family can and ``stack``; one result per job, in order. A batch may hold jobs of several
        families (a greedy final's members): each family trains its own."""
        picked = list(range(len(self.jobs))) if only is None else list(only)
        by_family: dict[str, list[int]] = {}
        for i in picked:
            by_family.setdefault(self.jobs[i].config.family, []).append(i)
        results: dict[int, FitResult] = {}
        for positions in by_family.values():
            jobs = [self.jobs[i] for i in positions]
            callbacks = [self.callbacks[i] for i in positions]
            fitting = Fitting(jobs, self.datasets, self.ctx.data().task, callbacks, stack)
            results.update(zip(positions, family_of(jobs[0].config).fit_many(fitting), strict=True))
        return [results[i] for i in picked]


def train_claims(
    ctx: StageContext,
    claims: Sequence[runner.Claim],
    *,
    label: str,
    configure: Callable[[runner.Claim], RunConfig],
    score: Callable[[runner.Claim], TrialScore],
    budget: Budget,
    seeds: int,
    stack: bool,
) -> tuple[list[TrialScore], list[FitResult]]:
    """Train every claim's configuration on the training/validation rows (``seeds`` jobs each;
    stacked where shapes allow and ``stack``), record each trial's history of its first seed,
    and return the scores in claim order for the caller to store or prune (sweeps, searches),
    with the results (a claim's ``seeds`` in a row)."""
    batch = Batch(ctx, [ctx.data().train_val()], label)
    scores: list[TrialScore] = []
    for claim in claims:
        scored = score(claim)
        scores.append(scored)
        batch.add(
            claim.trial,
            configure(claim),
            budget,
            seeds=seeds,
            score=scored,
            attrs={"stacked": len(claims), "seeds": seeds},
        )
    results = batch.train(stack=stack)
    for i, claim in enumerate(claims):
        claim.trial.set_user_attr(records.HISTORY, results[i * seeds].history_dicts())
    return scores, results
