"""Kind ``final``: retrain the carried configuration with early stopping, evaluate the test rows
once per model, and save the model (the family's payload, configuration, task, scaler, feature and
class names) as an Optuna artifact. It always runs last, whatever its place in the study file: it
is the one stage that reads the test rows.

With ``seeds = N`` it trains N models (stacked, from seeds ``seed, seed+1, ...``). Without
``ensemble`` the test metrics are their mean (``accuracy`` ...), with ``accuracy_mean`` and
``accuracy_sd`` beside, and the first seed's model is the saved one. With ``ensemble = true`` the
final model is the ensemble of the N members (the task combines their outputs: mean class
probabilities, mean values) and is saved whole; the top-level test metrics are the ensemble's,
each member's are kept (``seed_test_metrics``) with their mean and standard deviation beside
(``accuracy_mean``, ``accuracy_sd``). Either way the test rows are read once per member.

With ``ensemble = "greedy"`` the members are configurations, not seeds: the stages named in
``members_from`` store each trial's validation outputs, and the final stage selects among their
``candidates`` best trials by Caruana's forward selection with replacement (``max_members``
rounds, optionally ``bags`` selections on random halves of the library, :mod:`hpo.stages._greedy`),
retrains each chosen configuration with its own settings (``seeds`` models of it, stacked; a
member's outputs are its seeds' mean), tests each member and the ensemble (weighted by the
selection counts), and stores the evidence of the ensemble against its best single member on the
validation rows. With ``retrain = false`` it trains nothing: the library stages store each
trial's trained models beside the validation outputs those models give, and the chosen trials'
models are the members as their stages trained them (the search's compute is the ensemble's; the
members are then trained on the same training rows, but selected on the validation rows their
stages also scored them on, so the validation figures lean optimistic, and the test rows, read
once per model here, are the honest figure).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial
from pydantic import Field, model_validator
from torch import nn

from hpo import __version__
from hpo.data.columns import NUMERIC
from hpo.families import family_of
from hpo.families.mlp import count_parameters
from hpo.model_file import ModelFile, save_model_file
from hpo.present import figures
from hpo.sections import NewerKeys, StageSettings
from hpo.settings import PositiveInt, RunConfig
from hpo.stages import _greedy
from hpo.stages._context import StageContext
from hpo.stages._jobs import Batch, Budget
from hpo.stages._protocol import GridStage, Work
from hpo.stages._scoring import Scorer, TrialScore
from hpo.tasks import metrics_of, task_kind
from hpo.tuning import records, runner
from hpo.tuning.records import Evidence, Selection


class FinalSettings(NewerKeys):
    kind: Literal["final"] = "final"
    epochs: PositiveInt = 15  # torch families; an estimator is fitted once
    patience: PositiveInt | None = 5
    seeds: Annotated[int, Field(ge=1, le=64)] = 1  # models trained (stacked); test metrics as mean ± sd
    # true: the final model is the seeds' ensemble (needs seeds >= 2); "greedy": Caruana's
    # selection over the validation outputs of the trials of the stages in members_from
    ensemble: bool | Literal["greedy"] = False
    members_from: Annotated[list[str], Field(min_length=1)] | None = None  # the library's stages
    candidates: Annotated[int, Field(ge=1, le=100)] = 10  # each stage's best trials in the library
    max_members: Annotated[int, Field(ge=1, le=100)] = 10  # selection rounds (with replacement)
    bags: Annotated[int, Field(ge=0, le=100)] = 0  # selections on random halves of the library, summed
    # false: the members are the library trials' own trained models (stored by their stages), not
    # retrained: the final trains nothing
    retrain: bool = True
    omitted_unset: ClassVar[frozenset[str]] = frozenset(
        {"members_from", "candidates", "max_members", "bags", "retrain"}
    )

    @model_validator(mode="after")
    def _ensemble_has_members(self) -> FinalSettings:
        if self.ensemble == "greedy":
            if not self.members_from:
                raise ValueError(
                    'ensemble = "greedy" needs members_from, the stages whose trials form the '
                    'library (e.g. members_from = ["search"])'
                )
            trains = sorted({"epochs", "patience", "seeds"} & self.model_fields_set)
            if not self.retrain and trains:
                raise ValueError(
                    f"{', '.join(trains)} set with retrain = false: the members are the library trials' "
                    "own models, trained by their stages, and the final trains none; leave "
                    f"{'it' if len(trains) == 1 else 'them'} out, or retrain = true"
                )
            return self
        greedy_keys = sorted(k for k in self.omitted_unset if k in self.model_fields_set)
        if greedy_keys:
            raise ValueError(
                f"{', '.join(greedy_keys)} belong{'s' if len(greedy_keys) == 1 else ''} to a greedy "
                'ensemble; set ensemble = "greedy" '
                "or leave them out"
            )
        if self.ensemble and self.seeds < 2:
            raise ValueError(
                f"ensemble = true needs seeds >= 2 (got seeds = {self.seeds}); "
                "set seeds to the number of members"
            )
        return self

    @property
    def greedy(self) -> bool:
        return self.ensemble == "greedy"


class Final(GridStage):
    kind: ClassVar[str] = "final"
    settings_model: ClassVar[type[StageSettings]] = FinalSettings
    reads_test_rows: ClassVar[bool] = True
    settings: FinalSettings

    def stack_width(self, cfg: RunConfig) -> int:
        return self.settings.seeds

    def library(self) -> tuple[str, ...]:
        return tuple(self.settings.members_from or ()) if self.settings.greedy else ()

    def kept(self) -> tuple[str, ...]:
        return () if self.settings.retrain else self.library()

    def planned(self, cfg: RunConfig, train_rows: int) -> Work:
        return Work(0, 0) if self.kept() else super().planned(cfg, train_rows)

    def check_inputs(self, ctx: StageContext) -> None:
        if self.settings.greedy:
            _greedy.check_library(ctx, self.name, self.library(), models=bool(self.kept()))

    def objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        if self.settings.greedy:
            return self._greedy_objective(ctx, cfg_in)
        s = self.settings
        data = ctx.data()
        task = data.task
        tv = data.train_val()
        family = family_of(cfg_in)

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            (claim,) = claims
            trial = claim.trial
            scored = TrialScore(trial, Scorer(task.headline, task, tv.y_val), seeds=s.seeds)
            batch = Batch(ctx, [tv], ctx.study_name(self.name))
            batch.add(
                trial,
                cfg_in,
                Budget(epochs=s.epochs, patience=s.patience),
                seeds=s.seeds,
                score=scored,
                attrs={"seeds": s.seeds},
            )
            results = batch.train(stack=True)
            trial.set_user_attr(records.HISTORY, results[0].history_dicts())
            trial.set_user_attr(records.BEST_EPOCH, results[0].best.epoch)
            outputs, per_seed, y_test = [], [], None
            for job, result in zip(batch.jobs, results, strict=True):
                seed = job.train.seed
                x_test, y_test = data.read_test_rows(
                    reader=f"stage {self.name}" + (f" seed {seed}" if s.seeds > 1 else "")
                )
                outputs.append(family.outputs(result.model, x_test, task.n_outputs))
                per_seed.append(task.test_metrics(outputs[-1], y_test))
            assert y_test is not None
            metrics = self.test_metrics(
                per_seed, task.test_metrics(task.combine(outputs), y_test) if s.ensemble else None
            )
            metrics["task"] = task.kind
            dropped = int(data.meta.get("dropped_target_rows", 0))  # type: ignore[call-overload]
            if dropped:  # rows of the table never trained or tested on (hpo status says so)
                metrics["dropped_target_rows"] = dropped
            if s.seeds > 1:
                trial.set_user_attr(records.SEED_TEST_METRICS, per_seed)
            trial.set_user_attr(records.TEST_METRICS, metrics)
            members = results if s.ensemble else results[:1]
            _save_model(ctx, trial, cfg_in, [family.payload(r.model) for r in members])
            if isinstance(results[0].model, nn.Module):
                trial.set_user_attr(records.PARAMETERS, sum(count_parameters(r.model) for r in members))
            return [float(metrics[task.headline])]

        return objective

    def _greedy_objective(self, ctx: StageContext, cfg_in: RunConfig) -> runner.BatchObjective:
        """Select the ensemble on the library's stored validation outputs, retrain each chosen
        configuration (``seeds`` models of it, stacked where shapes allow; with ``retrain =
        false`` restore the models its stage trained instead), read the test rows
        once per model, and save the ensemble (each model's payload as many times as its
        configuration was chosen: the weighted mean is the plain mean of that multiset, so
        predict and ONNX need no weights)."""
        s = self.settings
        data = ctx.data()
        task = data.task
        tv = data.train_val()

        def objective(claims: Sequence[runner.Claim]) -> list[runner.Outcome]:
            (claim,) = claims
            trial = claim.trial
            kept = bool(self.kept())
            lib = _greedy.library(ctx, self.library(), s.candidates, int(tv.y_val.shape[0]), models=kept)
            members, chosen = _greedy.select(
                lib, tv.y_val, task, max_members=s.max_members, bags=s.bags, seed=cfg_in.seed
            )
            ev, val_figures, best = _greedy.versus_best_member(members, tv.y_val, task, task.headline)
            if kept:
                models = [
                    _greedy.restored(
                        ctx, m.candidate, n_features=int(tv.x_train.shape[1]), n_outputs=task.n_outputs
                    )
                    for m in members
                ]
                # the curves shown: the first member trained by epochs, as its stage trained it
                shown = next(
                    (m.candidate for m in members if len(m.candidate.history) > 1), members[0].candidate
                )
                trial.set_user_attr(records.HISTORY, list(shown.history))
            else:
                models = self._retrained(ctx, trial, members)
            records.write_config(trial, cfg_in)  # the carried configuration, not a member's
            outputs, per_member, y_test = [], [], None
            for m, own_models in zip(members, models, strict=True):  # a member's models: its seeds
                c = m.candidate
                family = family_of(c.config)
                own = []
                for k, model in enumerate(own_models):
                    x_test, y_test = data.read_test_rows(
                        reader=f"stage {self.name} member {c.stage} trial {c.number}"
                        + (f" model {k + 1}" if len(own_models) > 1 else "")
                    )
                    own.append(family.outputs(model, x_test, task.n_outputs))
                assert y_test is not None
                outputs.append(own[0] if len(own) == 1 else task.combine(own))
                per_member.append(task.test_metrics(outputs[-1], y_test))
            assert y_test is not None
            weights = [float(m.count) for m in members]
            metrics = dict(task.test_metrics(task.combine(outputs, weights), y_test))
            headline = task.headline
            metrics.update(
                task=task.kind,
                ensemble="greedy",
                members=len(members),
                best_member={headline: per_member[best][headline], "loss": per_member[best]["loss"]},
                member_figures=[
                    {
                        **m.candidate.label,
                        "family": family_of(m.candidate.config).describe(m.candidate.config),
                        "weight": m.count,
                        headline: pm[headline],
                        "loss": pm["loss"],
                    }
                    for m, pm in zip(members, per_member, strict=True)
                ],
            )
            trial.set_user_attr(records.TEST_METRICS, metrics)
            trial.set_user_attr(
                records.MEMBERS,
                {
                    "library": [c.label for c in lib],
                    "path": chosen.losses,
                    "evidence": ev.to_dict(),
                    "validation": val_figures,
                    "best": best,
                    "members": [
                        {
                            **m.candidate.label,
                            "family": family_of(m.candidate.config).describe(m.candidate.config),
                            "weight": m.count,
                            "val_score": m.candidate.value,
                            f"test_{headline}": pm[headline],
                            "test_loss": pm["loss"],
                            "config": m.candidate.config.to_record(),
                        }
                        for m, pm in zip(members, per_member, strict=True)
                    ],
                },
            )
            payloads, configs = [], []
            for m, own_models in zip(members, models, strict=True):
                for model in own_models:
                    payloads += [family_of(m.candidate.config).payload(model)] * m.count
                    configs += [m.candidate.config.to_record()] * m.count
            _save_model(ctx, trial, cfg_in, payloads, member_configs=configs)
            modules = [x for own_models in models for x in own_models if isinstance(x, nn.Module)]
            if modules:
                trial.set_user_attr(records.PARAMETERS, sum(count_parameters(m) for m in modules))
            return [float(metrics[headline])]

        return objective

    def _retrained(
        self, ctx: StageContext, trial: optuna.Trial, members: Sequence[_greedy.Member]
    ) -> list[list[Any]]:
        """Each member's configuration trained anew (``seeds`` models of it, stacked where shapes
        allow); each member's models, and the curves of the first trained by epochs."""
        s = self.settings
        label = ctx.study_name(self.name)
        batch = Batch(ctx, [ctx.data().train_val()], label)
        for m in members:
            c = m.candidate
            batch.add(
                trial,
                c.config,
                Budget(epochs=s.epochs, patience=s.patience),
                seeds=s.seeds,
                name=f"{label} member {c.stage} trial {c.number}",
                attrs={"members": len(members), "seeds": s.seeds},
            )
        results = batch.train(stack=True)
        # the curves shown: the first member trained by epochs (an estimator has one point)
        shown = next((r for r in results if len(r.history) > 1), results[0])
        trial.set_user_attr(records.HISTORY, shown.history_dicts())
        trial.set_user_attr(records.BEST_EPOCH, shown.best.epoch)
        return [[r.model for r in results[i * s.seeds : (i + 1) * s.seeds]] for i in range(len(members))]

    def test_metrics(
        self, per_seed: Sequence[Mapping[str, Any]], ensemble: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """What the stage stores: one model's metrics; the members' mean (without an ensemble)
        or the ensemble's (with one) at the top level, and the members' mean ± sd beside."""
        s = self.settings
        metrics = dict(ensemble if ensemble is not None else per_seed[0])
        if s.seeds > 1:
            for key in metrics_of(self.task):
                values = [m[key] for m in per_seed]
                metrics[f"{key}_mean"] = float(np.mean(values))
                metrics[f"{key}_sd"] = float(np.std(values, ddof=1))
                if ensemble is None:
                    metrics[key] = float(np.mean(values))
            metrics["seeds"] = s.seeds
        if ensemble is not None:
            metrics["ensemble"] = s.seeds
        return metrics

    def select(
        self, trials: Sequence[FrozenTrial], cfg_in: RunConfig, study_attrs: Mapping[str, Any]
    ) -> Selection:
        (trial,) = self.finished(trials, cfg_in)
        m = trial.user_attrs[records.TEST_METRICS]
        headline = task_kind(self.task).default_metric
        s = self.settings
        if s.greedy:
            return self._greedy_selection(trial, cfg_in, headline)
        if s.ensemble:
            seeds = (
                f"; an ensemble of {s.seeds} seeds, test metrics the ensemble's "
                "(the members' mean ± sd beside)"
            )
        elif s.seeds > 1:
            seeds = f"; {s.seeds} seeds, test metrics their mean, the first seed's model saved"
        else:
            seeds = ""
        how = (
            f"retrained {s.epochs} epochs, early stopping with patience {s.patience}"
            if family_of(cfg_in).torch_based
            else f"refitted {cfg_in.estimator} on the training rows"
        )
        return Selection(
            selected={
                f"test_{headline}": m[headline],
                "test_loss": m["loss"],
                "best_epoch": trial.user_attrs[records.BEST_EPOCH],
            },
            reason=f"{how}; test rows evaluated once per model{seeds}",
            config_out=cfg_in,
            extra={"test_metrics": m, "model_artifact": trial.user_attrs[records.MODEL_ARTIFACT]},
        )

    def _greedy_selection(self, trial: FrozenTrial, cfg_in: RunConfig, headline: str) -> Selection:
        s = self.settings
        m = trial.user_attrs[records.TEST_METRICS]
        ens = trial.user_attrs[records.MEMBERS]
        chosen = ", ".join(f"{x['stage']} trial {x['trial']} x{x['weight']}" for x in ens["members"])
        return Selection(
            selected={
                f"test_{headline}": m[headline],
                "test_loss": m["loss"],
                f"best_member_test_{headline}": m["best_member"][headline],
                "members": m["members"],
            },
            reason=(
                f"greedy forward selection with replacement (Caruana et al. 2004) over the stored "
                f"validation outputs of {len(ens['library'])} trial(s) of {', '.join(self.library())} "
                f"({s.max_members} rounds{f', {s.bags} bags' if s.bags else ''}): {chosen}; "
                + (
                    "each member the models its stage trained, restored (not retrained); "
                    if not s.retrain
                    else f"each retrained on the training rows (a torch model {s.epochs} epochs, early "
                    f"stopping with patience {s.patience}; an estimator refitted); "
                )
                + "test rows evaluated once per model, the ensemble's figures its weighted mean's"
            ),
            config_out=cfg_in,
            evidence=Evidence.from_dict(ens["evidence"]),
            extra={
                "test_metrics": m,
                "model_artifact": trial.user_attrs[records.MODEL_ARTIFACT],
                "members": ens["members"],
                "validation": ens["validation"],
            },
        )

    def figures(self, study: optuna.Study) -> list[figures.Figure]:
        return figures.final_figures(study)


def _save_model(
    ctx: StageContext,
    trial: optuna.Trial,
    cfg_in: RunConfig,
    payloads: list[dict[str, Any]],
    *,
    member_configs: list[dict[str, Any]] | None = None,
) -> None:
    """The model file (the family's payloads, the configuration, task, preprocessing, names) as
    the trial's Optuna artifact."""
    data = ctx.data()
    # a numeric complete table keeps format 4 (its scaler is the whole preprocessing)
    plain = (
        member_configs is None
        and data.preprocessor.normal is None
        and all(c.kind == NUMERIC and c.missing == 0 for c in data.input_columns)
    )
    model_file = ModelFile(
        family=family_of(cfg_in).name,
        payloads=payloads,
        run_config=cfg_in.to_record(),
        task=data.task.to_record(),
        scaler_mean=data.preprocessor.scaler.mean,
        scaler_scale=data.preprocessor.scaler.scale,
        feature_names=[c.name for c in data.input_columns],
        class_names=data.class_names,
        labeling=data.labeling.to_dict() if data.labeling is not None else None,
        target=str(data.meta["target"]),
        hpo_version=__version__,
        preprocessor=None if plain else data.preprocessor.to_state(),
        columns=None if plain else [c.to_dict() for c in data.input_columns],
        member_configs=member_configs,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        save_model_file(path, model_file)
        artifact_id = upload_artifact(artifact_store=ctx.artifacts, file_path=str(path), study_or_trial=trial)
    trial.set_user_attr(records.MODEL_ARTIFACT, artifact_id)
