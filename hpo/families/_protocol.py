"""What a model family is: the :class:`ModelFamily` protocol, and a :class:`Job` (one model to train).

A family owns everything that differs between kinds of model: which names are its settings
(hpo's settings that apply to it, and its own parameters), how a value of each is checked, how
many models are trained at once (the MLP stacks them), how a trained model is saved and loaded
and how it predicts. Stages hand a family jobs and read back :class:`~hpo.training.FitResult`
(histories of evaluation records, the same for every family), so a stage kind never asks which
family it trains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from hpo.settings import RunConfig, TrainConfig
from hpo.tasks import Task
from hpo.training import Callback, FitResult, TensorData


@dataclass(frozen=True)
class Job:
    """One model to train: its configuration, its training settings (the stage's budget and its
    seed), and the index of the dataset (e.g. the CV fold) it trains on."""

    config: RunConfig
    train: TrainConfig
    data: int


class ModelFamily(Protocol):
    name: ClassVar[str]
    #: a torch module trained by hpo's trainers (the LR range test and baselines need one)
    torch_based: ClassVar[bool]
    #: its stacks may train through torch.compile (hpo's stacked MLP trainer; measured per
    #: pipeline where ``compile = "auto"``, hpo.tuning.numerics)
    compiles_stacks: ClassVar[bool]

    def describe(self, cfg: RunConfig) -> str:
        """How messages name the family of ``cfg`` (``family "torch" (my_net.py:make)``)."""
        ...

    def own_params(self, cfg: RunConfig) -> Mapping[str, Any] | None:
        """The family's own parameters and their defaults; None when it takes any name (a
        factory with ``**kwargs``)."""
        ...

    def complete(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` with what the family would otherwise take implicitly written out (a torch
        factory's default arguments)."""
        ...

    def check(self, cfg: RunConfig, task: str) -> None:
        """That ``cfg`` can be trained for ``task`` (imports, names, values); ValueError naming
        the problem and the fix."""
        ...

    def check_value(self, cfg: RunConfig, name: str, value: Any) -> Any:
        """``value`` checked as setting ``name`` (ValueError if it is not one)."""
        ...

    def check_model(self, cfg: RunConfig, *, n_features: int, n_outputs: int) -> None:
        """Build one model for this data once (a factory must return an ``nn.Module`` whose
        output has ``n_outputs`` columns); ValueError if it cannot be."""
        ...

    def group_key(self, cfg: RunConfig) -> tuple[object, ...]:
        """Configurations with equal keys can share one training run (a stack)."""
        ...

    def build(self, cfg: RunConfig, *, n_features: int, n_outputs: int, seed: int) -> nn.Module:
        """A new, seeded torch module (torch-based families)."""
        ...

    def fit_many(
        self,
        jobs: Sequence[Job],
        datasets: Sequence[TensorData],
        task: Task,
        *,
        callbacks: Sequence[Sequence[Callback]],
        stack: bool,
    ) -> list[FitResult]:
        """Train every job (stacked where the family can and ``stack``); one result per job."""
        ...

    def outputs(self, model: Any, x: torch.Tensor, n_outputs: int) -> torch.Tensor:
        """A trained model's raw outputs ``[N, n_outputs]`` (logits or log-probabilities, or
        the standardised value) for scaled features."""
        ...

    def payload(self, model: Any) -> dict[str, Any]:
        """What the model file keeps of a trained model (tensors and plain values only)."""
        ...

    def restore(
        self,
        payload: Mapping[str, Any],
        cfg: RunConfig,
        *,
        n_features: int,
        n_outputs: int,
        trusted: Sequence[str] = (),
    ) -> Any:
        """The trained model back from :meth:`payload`; ``trusted``: import paths the caller
        vouches for (the study file's), beyond the family's own trusted packages."""
        ...
