"""A candidate configuration as trainer members: one per seed, with the callbacks that score it.

Shared by the stages that train one configuration per trial on the training/validation rows
(sweeps and searches); they differ only in how they pick the configurations and whether the
pruner may stop a trial (:func:`train_claims` takes both as arguments).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

from hpo.settings import RunConfig
from hpo.stages._context import StageContext, StageData
from hpo.stages._scoring import TrialScore, callbacks_for, seed_values
from hpo.training import Callback, Member, TensorData, fit_members
from hpo.tuning import records, runner


def trial_members(
    ctx: StageContext,
    data: StageData,
    tv: TensorData,
    claim: runner.Claim,
    cfg: RunConfig,
    scored: TrialScore,
    *,
    label: str,
    epochs: int,
    seeds: int,
    device: Literal["cpu", "cuda"],
    batch: int,
) -> tuple[list[Member], list[list[Callback]]]:
    """The trial's members (one per seed, each reporting to ``scored``) and their callbacks;
    records the trial's full configuration and training settings on it first."""
    weights = data.class_weights(tv) if cfg.class_weight == "balanced" else None
    model = cfg.model(n_features=data.n_features, n_classes=data.n_classes)
    members: list[Member] = []
    callbacks: list[list[Callback]] = []
    for k, seed in enumerate(seed_values(cfg.seed, seeds)):
        tcfg = cfg.train(epochs=epochs, device=device, class_weights=weights, seed=seed)
        members.append(Member(model, cfg.optim(), tcfg, 0))
        name = f"{label} trial {claim.trial.number}" + (f" seed {seed}" if seeds > 1 else "")
        rows = tv.x_train.shape[0]
        progress = ctx.progress
        callbacks.append(callbacks_for(scored, k, progress=progress, label=name, epochs=epochs, rows=rows))
    records.write_config(claim.trial, cfg)
    claim.trial.set_user_attr(
        records.TRAIN, {**dataclasses.asdict(members[0].train), "stacked": batch, "seeds": seeds}
    )
    return members, callbacks


def train_claims(
    ctx: StageContext,
    data: StageData,
    tv: TensorData,
    claims: Sequence[runner.Claim],
    *,
    configure: Callable[[runner.Claim], RunConfig],
    score: Callable[[runner.Claim], TrialScore],
    label: str,
    epochs: int,
    seeds: int,
    device: Literal["cpu", "cuda"],
    stack: bool,
) -> list[TrialScore]:
    """Train every claim's configuration (``seeds`` members each; stacked where shapes allow
    and ``stack``), record each trial's history of its first seed, and return the scores in
    claim order for the caller to store or prune."""
    members: list[Member] = []
    callbacks: list[list[Callback]] = []
    scores: list[TrialScore] = []
    for claim in claims:
        scored = score(claim)
        scores.append(scored)
        more, their_callbacks = trial_members(
            ctx,
            data,
            tv,
            claim,
            configure(claim),
            scored,
            label=label,
            epochs=epochs,
            seeds=seeds,
            device=device,
            batch=len(claims),
        )
        members += more
        callbacks += their_callbacks
    results = fit_members(members, [tv], callbacks=callbacks, stack=stack)
    for i, claim in enumerate(claims):
        claim.trial.set_user_attr(records.HISTORY, results[i * seeds].history_dicts())
    return scores
