"""How a stage scores its candidates: on the validation rows (hold-out) or by k-fold CV.

One evaluation serves every kind that compares configurations (``grid``, ``sweep``, ``search``;
``grid_cv`` is ``grid`` with ``cv = 5``), as scikit-learn's ``cv=`` serves its searches: a kind
decides its points, and the evaluation trains them and turns their records into scores.

- :class:`HoldOut`: each candidate trains on the training rows; its score is the mean over its
  seeds of each seed's peak validation metric (the last one, with ``last``). A pruner, where the
  stage has one, compares candidates epoch by epoch. With one seed the scored evaluation's
  per-row predictions are stored for the paired comparison of the stage's selection.
- :class:`KFold`: each candidate trains ``k`` models (times its seeds) on the pipeline's CV folds,
  evaluated after the last epoch only; its score is the mean over folds (each fold the mean of
  its seeds). With ``prune``, the batch trains fold by fold and Optuna's pruner may stop a
  candidate between folds; without, the whole batch trains as one stack of points x folds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Protocol

import numpy as np
from optuna.trial import FrozenTrial
from pydantic import Field

from hpo.families import family_of
from hpo.sections import NewerKeys, SelectingSettings
from hpo.settings import RunConfig
from hpo.stages._context import StageContext
from hpo.stages._jobs import Batch, Budget, train_claims
from hpo.stages._scoring import Scorer, TrialScore, upload_models, upload_outputs
from hpo.stages._selection import How, how_compared
from hpo.training import Callback, EvalRecord, FitResult
from hpo.tuning import records, runner

Folds = Annotated[int, Field(ge=2, le=20)]
Configure = Callable[[runner.Claim], RunConfig]


class EvaluatedSettings(SelectingSettings, NewerKeys):
    """Settings of a kind that may score by k-fold CV (``cv = k``; unset: the validation rows)."""

    cv: Folds | None = None
    omitted_unset: ClassVar[frozenset[str]] = frozenset({"cv"})  # keys newer than the kind

    def evaluation(self) -> HoldOut | KFold:
        """``cv = k``: k-fold CV; unset: the validation rows."""
        return evaluation_of(self.cv)


@dataclass(frozen=True)
class Candidates:
    """What a stage asks of its evaluation: how to train and score its claimed trials."""

    label: str  # the stage's study name, for the progress display
    configure: Configure  # a claim's configuration
    budget: Budget
    metric: str
    seeds: int
    stack: bool  # train a batch as one stack where shapes allow
    prune: bool  # ask the stage's pruner
    seed: int  # the carried-in configuration's: it draws the CV folds
    group_order: bool = False  # train a batch ordered by the family's stacking groups
    keep_outputs: bool = False  # store each trial's validation outputs (a greedy final's library)
    # store each trial's trained models and their own validation outputs (the library of a greedy
    # final that keeps its members as trained: retrain = false)
    keep_models: bool = False


class Evaluation(Protocol):
    @property
    def folds(self) -> int:
        """The CV folds the pipeline must prepare (1: none)."""
        ...

    def how(self, seeds: int) -> How:
        """How two candidates' scores are compared (:func:`hpo.stages._selection.compare`)."""
        ...

    def describe(self, metric: str, *, seeds: int, epochs: int) -> str:
        """The score in words, for a selection's reason."""
        ...

    def figures_of(self, trial: FrozenTrial, metric: str, score: float) -> dict[str, float]:
        """The chosen candidate's score figures, for its selection."""
        ...

    def samples(self, model_epochs: int, train_rows: int) -> int:
        """The training rows ``model_epochs`` epochs of one candidate go through."""
        ...

    def objective(self, ctx: StageContext, run: Candidates) -> runner.BatchObjective:
        """Train a batch of claims as ``run`` says and return their outcomes."""
        ...


def _seeds_word(seeds: int, *, per_fold: bool) -> str:
    if seeds == 1:
        return ""
    return f" (each fold the mean of {seeds} seeds)" if per_fold else f" (mean of {seeds} seeds)"


@dataclass(frozen=True)
class HoldOut:
    """Scored on the validation rows: the peak (``last``: the final) validation metric."""

    last: bool = False
    folds: int = 1

    def how(self, seeds: int) -> How:
        return how_compared(cv=False, seeds=seeds)

    def describe(self, metric: str, *, seeds: int, epochs: int) -> str:
        word = "final" if self.last else "peak"
        seeds_word = _seeds_word(seeds, per_fold=False)
        return f"{word} validation {metric.replace('_', ' ')}{seeds_word} over {epochs} epochs"

    def figures_of(self, trial: FrozenTrial, metric: str, score: float) -> dict[str, float]:
        return {f"peak_val_{metric}": score}

    def samples(self, model_epochs: int, train_rows: int) -> int:
        return model_epochs * train_rows

    def objective(self, ctx: StageContext, run: Candidates) -> runner.BatchObjective:
        data = ctx.data()
        scorer = Scorer(run.metric, data.task, data.train_val().y_val)

        def objective(batch: Sequence[runner.Claim]) -> list[runner.Outcome]:
            # trials that cannot share a stack train in groups, one group after another; ordering
            # the batch by group makes "one after another" the same order, so a pruner decides
            # alike either way (each trial sees the same step of the trials before it)
            order = list(range(len(batch)))
            if run.group_order and batch:
                family = family_of(run.configure(batch[0]))
                order.sort(key=lambda i: family.group_key(run.configure(batch[i])))
            claims = [batch[i] for i in order]
            scores, results = train_claims(
                ctx,
                claims,
                label=run.label,
                configure=run.configure,
                score=lambda c: TrialScore(
                    c.trial,
                    scorer,
                    seeds=run.seeds,
                    prune=run.prune,
                    last=self.last,
                    keep_outputs=run.keep_outputs and not run.keep_models,
                ),
                budget=run.budget,
                seeds=run.seeds,
                stack=run.stack,
            )
            outcomes: dict[int, runner.Outcome] = {}
            for i, (claim, scored) in enumerate(zip(claims, scores, strict=True)):
                if scored.pruned:
                    claim.trial.set_user_attr(records.SCORE, scored.value)
                    outcomes[order[i]] = runner.Pruned()
                    continue
                scored.store(metric=run.metric, artifacts=ctx.artifacts)
                if run.keep_models:
                    _keep_models(
                        ctx, claim, run.configure(claim), results[i * run.seeds : (i + 1) * run.seeds]
                    )
                outcomes[order[i]] = scored.value
            return [outcomes[i] for i in range(len(batch))]

        return objective


def _keep_models(
    ctx: StageContext, claim: runner.Claim, cfg: RunConfig, results: Sequence[FitResult]
) -> None:
    """Store a trial's trained models (its seeds) and their own validation outputs (its seeds'
    combined, as the task combines an ensemble's): a greedy final with ``retrain = false`` selects
    on exactly the outputs of the models it keeps. Computed from the models as trained, not from
    the scored evaluation (a trial trained without early stopping ends with its last epoch's
    weights, while its score is its peak)."""
    data = ctx.data()
    task = data.task
    family = family_of(cfg)
    x_val = data.train_val().x_val
    outs = [family.outputs(r.model, x_val, task.n_outputs).float().cpu() for r in results]
    out = outs[0] if len(outs) == 1 else task.combine(outs)
    trial = claim.trial
    trial.set_user_attr(records.VAL_OUTPUTS, upload_outputs(ctx.artifacts, trial, out))
    trial.set_user_attr(
        records.TRIAL_MODELS, upload_models(ctx.artifacts, trial, [family.payload(r.model) for r in results])
    )


@dataclass(frozen=True)
class KFold:
    """Scored by k-fold CV: the mean over folds of each fold's metric after the last epoch."""

    k: int

    @property
    def folds(self) -> int:
        return self.k

    def how(self, seeds: int) -> How:
        return "folds"

    def describe(self, metric: str, *, seeds: int, epochs: int) -> str:
        seeds_word = _seeds_word(seeds, per_fold=True)
        return f"mean {metric.replace('_', ' ')} over {self.k}-fold stratified CV{seeds_word}"

    def figures_of(self, trial: FrozenTrial, metric: str, score: float) -> dict[str, float]:
        return {
            f"cv_mean_{metric}": trial.user_attrs[records.MEAN],
            f"cv_std_{metric}": trial.user_attrs[records.STD],
        }

    def samples(self, model_epochs: int, train_rows: int) -> int:
        return model_epochs * train_rows * (self.k - 1) // self.k  # each fold trains on (k-1)/k

    def objective(self, ctx: StageContext, run: Candidates) -> runner.BatchObjective:
        data = ctx.data()
        k, seeds = self.k, run.seeds
        last_only = dataclasses.replace(run.budget, eval_last_only=True)

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            folds = data.cv_folds(k, run.seed)
            scorers = [Scorer(run.metric, data.task, f.y_val) for f in folds]
            batch = Batch(ctx, folds, run.label)
            last: dict[int, float] = {}  # each job's metric after its last epoch

            def keep_last(position: int) -> list[Callback]:
                scorer = scorers[batch.jobs[position].data]

                def see(record: EvalRecord) -> None:
                    last[position] = scorer(record)

                return [see]

            positions = [
                batch.add(
                    c.trial,
                    run.configure(c),
                    last_only,
                    seeds=seeds,
                    data=range(k),
                    folds=True,
                    attrs={"folds": k, "stacked": len(claims), "seeds": seeds},
                    extra=keep_last,
                )
                for c in claims
            ]

            def fold_score(claim: int, fold: int) -> tuple[float, list[float]]:
                """A claim's score on one fold: the mean over seeds, and the seeds' scores."""
                per_seed = [last[p] for p in positions[claim][fold * seeds : (fold + 1) * seeds]]
                return float(np.mean(per_seed)), per_seed

            if not run.prune:
                batch.train(stack=run.stack)
                out: list[runner.Outcome] = []
                for i, claim in enumerate(claims):
                    scored = [fold_score(i, f) for f in range(k)]
                    for f, (value, _) in enumerate(scored):
                        claim.trial.report(value, f)
                    out.append(
                        _record_folds(
                            claim.trial.set_user_attr, [v for v, _ in scored], [p for _, p in scored]
                        )
                    )
                return out
            # pruned between folds: the batch's candidates fold by fold
            scores_of: list[list[float]] = [[] for _ in claims]
            seeds_of: list[list[list[float]]] = [[] for _ in claims]
            alive = list(range(len(claims)))
            for f in range(k):
                batch.train(
                    stack=run.stack,
                    only=[p for i in alive for p in positions[i][f * seeds : (f + 1) * seeds]],
                )
                still = []
                for i in alive:
                    value, per_seed = fold_score(i, f)
                    scores_of[i].append(value)
                    seeds_of[i].append(per_seed)
                    trial = claims[i].trial
                    trial.set_user_attr(records.FOLD_SCORES, scores_of[i])
                    trial.report(value, f)
                    if not trial.should_prune():
                        still.append(i)
                alive = still
            return [
                _record_folds(claims[i].trial.set_user_attr, scores_of[i], seeds_of[i])
                if i in alive
                else runner.Pruned()
                for i in range(len(claims))
            ]

        return objective


def _record_folds(
    set_attr: Callable[[str, Any], None], scores: list[float], per_seed: list[list[float]]
) -> float:
    set_attr(records.FOLD_SCORES, scores)
    if len(per_seed[0]) > 1:
        set_attr(records.SEED_SCORES, [float(np.mean(fold)) for fold in zip(*per_seed, strict=True)])
    set_attr(records.MEAN, float(np.mean(scores)))
    set_attr(records.STD, float(np.std(scores)))
    return float(np.mean(scores))


def evaluation_of(cv: int | None, *, last: bool = False) -> HoldOut | KFold:
    """``cv = k``: k-fold CV; unset: the validation rows."""
    return KFold(cv) if cv is not None else HoldOut(last=last)


def group_best(
    done: Sequence[FrozenTrial], label: Callable[[FrozenTrial], Mapping[str, Any]], *, maximize: bool
) -> list[tuple[dict[str, Any], FrozenTrial]]:
    """Each label's best trial (a label's candidates differ only in re-tuned nuisance settings),
    in the order the labels first appear."""
    best: dict[str, tuple[dict[str, Any], FrozenTrial]] = {}
    for t in done:
        key = dict(label(t))
        seen = best.get(repr(key))
        value = float(t.value or 0.0)
        if seen is None or (
            value > float(seen[1].value or 0.0) if maximize else value < float(seen[1].value or 0.0)
        ):
            best[repr(key)] = (key, t)
    return list(best.values())
