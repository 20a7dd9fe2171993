"""Family ``mlp``: hpo's own MLP (the default), trained as stacks of models where shapes allow.

Its settings are hpo's named ones (``hidden``, ``activation``, ``norm``, ``init``, ``dropout`` and
the training settings); members with equal :func:`~hpo.families.mlp.stacked.stack_key` train as one
stack (:func:`~hpo.families.mlp.stacked.fit_stacked`), a member alone through the one-model loop
(:func:`hpo.training.fit`), so a batch of one reproduces the one-model trainer exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from hpo.families._protocol import Fitting, ModelFamily
from hpo.families.mlp.model import MLP, build_model, count_parameters
from hpo.families.mlp.stacked import Member, StackOptions, fit_stacked, stack_key
from hpo.settings import ModelConfig, RunConfig, check_setting
from hpo.tasks import Task
from hpo.training import Callback, FitResult, TensorData, fit, predict_outputs

__all__ = [
    "MLP",
    "Member",
    "MlpFamily",
    "StackOptions",
    "build_model",
    "count_parameters",
    "fit",
    "fit_stacked",
    "stack_key",
]


class MlpFamily(ModelFamily):
    name: ClassVar[str] = "mlp"
    compiles_stacks: ClassVar[bool] = True

    def own_params(self, cfg: RunConfig) -> Mapping[str, Any] | None:
        return {}

    def complete(self, cfg: RunConfig) -> RunConfig:
        return cfg

    def check(self, cfg: RunConfig, task: str) -> None:
        return None

    def check_value(self, cfg: RunConfig, name: str, value: Any) -> Any:
        return check_setting(name, value)

    def check_model(self, cfg: RunConfig, *, n_features: int, n_outputs: int) -> None:
        return None

    def group_key(self, cfg: RunConfig) -> tuple[object, ...]:
        return (cfg.hidden, cfg.batch_size)

    def build(self, cfg: RunConfig, *, n_features: int, n_outputs: int, seed: int) -> nn.Module:
        return build_model(cfg.model(n_features=n_features, n_outputs=n_outputs), seed=seed)

    def fit_many(self, fitting: Fitting) -> list[FitResult]:
        """One result per job, in order. Jobs with equal :func:`stack_key` train as one stack."""
        n_outputs = fitting.task.n_outputs
        members = [
            Member(
                j.config.model(n_features=fitting.n_features, n_outputs=n_outputs),
                j.config.optim(),
                j.train,
                j.data,
            )
            for j in fitting.jobs
        ]
        return fit_members(
            members, fitting.datasets, fitting.task, callbacks=fitting.callbacks, stack=fitting.stack
        )

    def outputs(self, model: Any, x: torch.Tensor, n_outputs: int) -> torch.Tensor:
        return predict_outputs(model, x).cpu()

    def payload(self, model: Any) -> dict[str, Any]:
        assert isinstance(model, MLP)
        return {
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "model_config": {
                k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(model.config).items()
            },
        }

    def _rebuild(self, payload: Mapping[str, Any], cfg: RunConfig, n_features: int, n_outputs: int) -> Any:
        config = dict(payload["model_config"])
        if "n_classes" in config:  # a model file of format 2
            config["n_outputs"] = config.pop("n_classes")
        net = MLP(ModelConfig(**config))
        net.load_state_dict(payload["state_dict"])
        net.eval()
        return net


def fit_members(
    members: Sequence[Member],
    datasets: Sequence[TensorData],
    task: Task,
    *,
    callbacks: Sequence[Sequence[Callback]] | None = None,
    stack: bool = True,
) -> list[FitResult]:
    """One result per member, in order. Members with equal :func:`stack_key` train as one stack;
    a member alone (or every member, with ``stack=False``) through the one-model loop."""
    cbs = [list(c) for c in callbacks] if callbacks is not None else [[] for _ in members]
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, mb in enumerate(members):
        groups.setdefault(stack_key(mb) if stack else (i,), []).append(i)
    results: list[FitResult | None] = [None] * len(members)
    for idx in groups.values():
        if len(idx) == 1:
            mb = members[idx[0]]
            model = build_model(mb.model, seed=mb.train.seed)
            results[idx[0]] = fit(
                model, mb.optim, mb.train, datasets[mb.data], task=task, callbacks=cbs[idx[0]]
            )
            continue
        fitted = fit_stacked([members[i] for i in idx], datasets, task=task, callbacks=[cbs[i] for i in idx])
        for i, result in zip(idx, fitted, strict=True):
            results[i] = result
    return [r for r in results if r is not None]
