"""A greedy final's library and selection: the best trials of the stages in ``members_from``, their
stored validation outputs, Caruana's selection over them (:func:`hpo.ensemble.greedy_select`),
and the evidence that the ensemble beats its best single member on the validation rows.

The library is read stage by stage, each stage's ``candidates`` best complete trials (by the
stage's own objective) that stored their outputs (float32, :func:`hpo.stages._scoring.read_outputs`).
A trial's configuration is read from the storage and taken in as any handed-on configuration is
(:func:`hpo.families.rebuilt`): the family, module and estimator the study file gives its stage's
track, each tuned value checked by that family, so the storage never chooses what code runs. The
library may mix families (an MLP search beside a gradient-boosting one): outputs are compared as
the task combines them (probabilities, values), whatever model made them.

With ``retrain = false`` the library holds only trials that stored their trained models too
(:data:`hpo.tuning.records.TRIAL_MODELS`, with those models' own outputs), and the chosen ones are
restored (:func:`restored`) as the family of their stage's track restores a model file's member:
``weights_only`` bytes, the module or estimator the study file names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna
import torch
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from hpo import evidence
from hpo.ensemble import Selected, greedy_select
from hpo.errors import ConfigError, PrerequisiteError, first_line
from hpo.families import family_of, rebuilt
from hpo.settings import RunConfig
from hpo.stages._context import StageContext
from hpo.stages._scoring import read_models, read_outputs
from hpo.tasks import Task, greater_is_better
from hpo.tuning import records
from hpo.tuning.records import Evidence


@dataclass(frozen=True)
class Candidate:
    """One trial of the library."""

    stage: str
    number: int
    value: float  # its stage's objective
    config: RunConfig
    outputs: npt.NDArray[np.float32]  # raw validation outputs
    models: str | None = None  # the artifact id of its trained models (a stage whose models are kept)
    history: tuple[dict[str, float], ...] = ()  # its first model's learning curve

    @property
    def label(self) -> dict[str, str | int]:
        return {"stage": self.stage, "trial": self.number}


@dataclass(frozen=True)
class Member:
    """A chosen candidate and how many times the selection took it (its weight)."""

    candidate: Candidate
    count: int


def _stored(study: optuna.Study, *, models: bool = False) -> list[FrozenTrial]:
    """The complete trials that stored their validation outputs (``models``: and their trained
    models), best first (ties: trial order)."""
    keys = (records.VAL_OUTPUTS, records.TRIAL_MODELS) if models else (records.VAL_OUTPUTS,)
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(k in t.user_attrs for k in keys) and t.value is not None
    ]
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(trials, key=lambda t: (sign * float(t.value or 0.0), t.number))


def check_library(
    ctx: StageContext, stage: str, members_from: Sequence[str], *, models: bool = False
) -> None:
    """Each library stage is complete and stored validation outputs (``models``: and its trained
    models); one line saying what to run otherwise (nothing written)."""
    for name in members_from:
        study = ctx.find_study(ctx.study_name(name))
        if not records.is_complete(study):
            raise PrerequisiteError(
                f"stage {stage!r} draws its ensemble from stage {name!r}, which is not complete in "
                f"{ctx.storage_url}; run first: hpo run-stage {name} --config {ctx.study_file}"
            )
        assert study is not None
        if not _stored(study, models=models):
            what = "trained models" if _stored(study) else "validation outputs"
            raise PrerequisiteError(
                f"stage {name!r} in {ctx.storage_url} stored no {what} for stage {stage!r}'s "
                f"greedy ensemble (it ran before members_from named it"
                f"{' with retrain = false' if what == 'trained models' else ''}); run it again: "
                f"hpo run-stage {name} --force --config {ctx.study_file}"
            )


def library(
    ctx: StageContext, members_from: Sequence[str], candidates: int, rows: int, *, models: bool = False
) -> list[Candidate]:
    """The library: each stage's ``candidates`` best trials with stored outputs (``models``: and
    trained models), stage by stage, each configuration rebuilt on its own stage's track (its
    family, module and estimator)."""
    out: list[Candidate] = []
    for name in members_from:
        base = ctx.bases[name]
        study = ctx.find_study(ctx.study_name(name))
        assert study is not None
        for t in _stored(study, models=models)[:candidates]:
            where = f"trial {t.number} of stage {name!r} in {ctx.storage_url} holds"
            fix = f"start that stage over (hpo run-stage {name} --force --config {ctx.study_file})"
            try:
                stored = records.read_config(t.user_attrs)
            except ValidationError as exc:
                raise ConfigError(
                    f"{where} a configuration hpo does not read ({exc.errors()[0]['msg']}); {fix}"
                ) from None
            config = rebuilt(base, stored, where=where, fix=fix)
            try:
                outputs = read_outputs(ctx.artifacts, str(t.user_attrs[records.VAL_OUTPUTS]))
            except (ValueError, OSError, ArtifactNotFound) as exc:
                raise ConfigError(f"{where} validation outputs that cannot be read ({exc}); {fix}") from None
            if outputs.shape[0] != rows:
                raise ConfigError(
                    f"{where} outputs for {outputs.shape[0]} rows, not the {rows} validation rows; {fix}"
                )
            kept = str(t.user_attrs[records.TRIAL_MODELS]) if models else None
            history = tuple(t.user_attrs.get(records.HISTORY, ()))
            out.append(Candidate(name, t.number, float(t.value or 0.0), config, outputs, kept, history))
    return out


def restored(ctx: StageContext, member: Candidate, *, n_features: int, n_outputs: int) -> list[Any]:
    """A kept member's trained models (its seeds), restored by its configuration's family from
    the stored payloads; one line naming the trial and the fix when they cannot be."""
    assert member.models is not None
    cfg = member.config
    where = f"trial {member.number} of stage {member.stage!r} in {ctx.storage_url}"
    fix = f"start that stage over (hpo run-stage {member.stage} --force --config {ctx.study_file})"
    family = family_of(cfg)
    trusted = [name for name in (cfg.module, cfg.estimator) if name]
    try:
        payloads = read_models(ctx.artifacts, member.models)
        return [
            family.restore(p, cfg, n_features=n_features, n_outputs=n_outputs, trusted=trusted)
            for p in payloads
        ]
    except (ValueError, OSError, ArtifactNotFound, RuntimeError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{where} holds trained models that cannot be restored ({first_line(exc, 200)}); {fix}"
        ) from None


def select(
    lib: Sequence[Candidate], y_val: torch.Tensor, task: Task, *, max_members: int, bags: int, seed: int
) -> tuple[list[Member], Selected]:
    """Caruana's selection over the library, minimising the task's loss; the members chosen at
    least once, in library order, with their counts."""
    chosen = greedy_select(
        [torch.from_numpy(c.outputs) for c in lib], y_val, task, max_members=max_members, bags=bags, seed=seed
    )
    return [Member(lib[i], chosen.counts[i]) for i in chosen.members], chosen


def versus_best_member(
    members: Sequence[Member], y_val: torch.Tensor, task: Task, metric: str
) -> tuple[Evidence, dict[str, float], int]:
    """The ensemble against its best single member on the validation rows (paired bootstrap over
    the rows, oriented so that a positive difference favours the ensemble), both figures, and
    which member is the best."""
    outs = [torch.from_numpy(m.candidate.outputs) for m in members]
    ensemble = task.combine(outs, [float(m.count) for m in members])
    y = y_val.numpy()

    def figure(out: torch.Tensor) -> tuple[float, npt.NDArray[np.int64] | npt.NDArray[np.float64]]:
        pred = task.evaluate(out, y_val).pred.numpy()
        return task.metric(metric, y, pred), pred

    scored = [figure(o) for o in outs]
    sign = 1.0 if greater_is_better(metric) else -1.0
    best = max(range(len(outs)), key=lambda i: (sign * scored[i][0], -i))
    ens_value, ens_pred = figure(ensemble)
    mean, low, high = task.paired_bootstrap(metric, y, ens_pred, scored[best][1])
    if sign < 0:
        mean, low, high = -mean, -high, -low
    best_member = members[best].candidate
    ev = Evidence(
        runner_up={**best_member.label, "as": "its best single member"},
        metric=metric,
        difference=mean,
        low=low,
        high=high,
        method=(
            f"paired bootstrap over {y.size:,} validation rows ({evidence.BOOTSTRAP_RESAMPLES:,} resamples)"
        ),
        n=int(y.size),
    )
    return ev, {f"val_{metric}": ens_value, f"best_member_val_{metric}": scored[best][0]}, best
