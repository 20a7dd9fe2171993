"""Stage ``components``: init, activation, normalisation and optimizer swept one at a time,
each in its own study, the best (peak validation accuracy) carried into the next sweep."""

from __future__ import annotations

from typing import Literal

import optuna

from hpo import stacked, train
from hpo.config import COMPONENT_SWEEPS
from hpo.stages import _base

DIRECTION: Literal["minimize", "maximize"] = "maximize"


def studies(ctx: _base.StageContext) -> list[str]:
    return [_base.study_name(ctx.pipeline, "components", s) for s in COMPONENT_SWEEPS]


def run(ctx: _base.StageContext, base: _base.Config) -> optuna.Study:
    stage = ctx.pipeline.components
    tv = ctx.train_val()
    cfg_in = dict(base)
    study: optuna.Study | None = None
    for sweep, name in zip(COMPONENT_SWEEPS, studies(ctx), strict=True):
        existing = _base.find_study(ctx, name)
        if _base.is_complete(existing):
            assert existing is not None
            cfg_in = existing.user_attrs["config_out"]
            study = existing
            continue
        study = _run_sweep(
            ctx, name, sweep, list(getattr(stage, sweep)), cfg_in, tv, stage.epochs, stack=stage.stack
        )
        cfg_in = study.user_attrs["config_out"]
    assert study is not None
    return study


def _callbacks(trial: optuna.Trial, name: str, epochs: int) -> list[stacked.MemberCallback]:
    def report(record: train.EvalRecord) -> None:
        trial.report(record.val_accuracy, record.epoch)

    return [report, _base.progress_callback(f"{name} trial {trial.number}", epochs)]


def _run_sweep(
    ctx: _base.StageContext,
    name: str,
    sweep: str,
    choices: list[str],
    base: _base.Config,
    tv: train.TensorData,
    epochs: int,
    *,
    stack: int,
) -> optuna.Study:
    points: list[_base.Point] = [{sweep: c} for c in choices]
    tcfg = train.TrainConfig(
        epochs=epochs,
        batch_size=base["batch_size"],
        seed=base["seed"],
        precision=base.get("precision", "fp32"),
    )

    def objective(trial: optuna.Trial, point: _base.Point) -> float:
        result = _base.fit_trial(trial, {**base, sweep: point[sweep]}, tcfg, tv, label=name)
        return result.peak_val_accuracy

    def stacked_objective(batch: list[tuple[optuna.Trial, _base.Point]]) -> list[float]:
        """The batch's choices trained together; choices with another optimizer (the optimizer
        sweep) cannot share a stack and form their own."""
        members: list[stacked.Member] = []
        for trial, point in batch:
            cfg = {**base, sweep: point[sweep]}
            trial.set_user_attr("config", cfg)
            trial.set_user_attr("train", {**tcfg.to_dict(), "stacked": len(batch)})
            members.append(stacked.Member(_base.model_config(cfg), _base.optim_config(cfg), tcfg, 0))
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, mb in enumerate(members):
            groups.setdefault(stacked.stack_key(mb), []).append(i)
        values = [0.0] * len(batch)
        for idx in groups.values():
            callbacks = [_callbacks(batch[i][0], name, epochs) for i in idx]
            results = stacked.fit_stacked([members[i] for i in idx], [tv], callbacks=callbacks)
            for i, result in zip(idx, results, strict=True):
                batch[i][0].set_user_attr("history", result.history_dicts())
                values[i] = result.peak_val_accuracy
        return values

    study = _base.run_grid(
        ctx,
        name,
        points=points,
        choices={sweep: choices},
        objective=objective,
        batch_objective=stacked_objective,
        direction=DIRECTION,
        stack=stack,
        attrs={"carried_in": base},
    )
    if not _base.is_complete(study):
        best = max(_base.finished(study, points, [sweep]), key=lambda t: t.value or 0.0)
        _base.mark_complete(
            study,
            stage="components",
            sweep=sweep,
            selected={sweep: best.params[sweep], "peak_val_accuracy": best.value},
            config_out=best.user_attrs["config"],
            why=f"highest peak validation accuracy over {epochs} epochs",
        )
    return study
