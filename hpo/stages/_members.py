"""A candidate configuration as trainer members: one per seed, with the callbacks that score it.

Shared by the stages that train one configuration per trial on the training/validation rows
(sweeps and searches); they differ only in how they pick the configurations and whether the
pruner may stop a trial.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from hpo.settings import RunConfig
from hpo.stages._context import StageContext, StageData
from hpo.stages._scoring import TrialScore, callbacks_for, seed_values
from hpo.training import Callback, Member, TensorData
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
