"""What a model family is: the :class:`ModelFamily` base class, and a :class:`Job` (one model to train).

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
from typing import Any, ClassVar

import torch
from torch import nn

from hpo.families._kinds import FAMILY_KINDS
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


@dataclass(frozen=True)
class Fitting:
    """Jobs to train together: each on its dataset, reporting to its callbacks."""

    jobs: Sequence[Job]
    datasets: Sequence[TensorData]
    task: Task
    callbacks: Sequence[Sequence[Callback]]
    stack: bool  # train them as one stack where the family can

    def each(self) -> list[tuple[Job, TensorData, Sequence[Callback]]]:
        """Every job with its dataset and its callbacks, in order."""
        return [(j, self.datasets[j.data], cbs) for j, cbs in zip(self.jobs, self.callbacks, strict=True)]

    @property
    def n_features(self) -> int:
        return int(self.datasets[0].x_train.shape[1])


class ModelFamily:
    """The base class of the families (scikit-learn's ``BaseEstimator`` is the model): what a
    family must answer, and what every family answers alike (how messages name it, and the
    check that a model file names only code the study file names)."""

    name: ClassVar[str]
    #: a torch module trained by hpo's trainers (the LR range test and baselines need one)
    torch_based: ClassVar[bool] = True
    #: its stacks may train through torch.compile (hpo's stacked MLP trainer; measured per
    #: pipeline where ``compile = "auto"``, hpo.tuning.numerics)
    compiles_stacks: ClassVar[bool] = False

    def own_params(self, cfg: RunConfig) -> Mapping[str, Any] | None:
        """The family's own parameters and their defaults; None when it takes any name (a
        factory with ``**kwargs``)."""
        raise NotImplementedError

    def complete(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` with what the family would otherwise take implicitly written out (a torch
        factory's default arguments)."""
        raise NotImplementedError

    def check(self, cfg: RunConfig, task: str) -> None:
        """That ``cfg`` can be trained for ``task`` (imports, names, values); ValueError naming
        the problem and the fix."""
        raise NotImplementedError

    def check_value(self, cfg: RunConfig, name: str, value: Any) -> Any:
        """``value`` checked as setting ``name`` (ValueError if it is not one)."""
        raise NotImplementedError

    def check_model(self, cfg: RunConfig, *, n_features: int, n_outputs: int) -> None:
        """Build one model for this data once (a factory must return an ``nn.Module`` whose
        output has ``n_outputs`` columns); ValueError if it cannot be."""
        raise NotImplementedError

    def group_key(self, cfg: RunConfig) -> tuple[object, ...]:
        """Configurations with equal keys can share one training run (a stack)."""
        raise NotImplementedError

    def build(self, cfg: RunConfig, *, n_features: int, n_outputs: int, seed: int) -> nn.Module:
        """A new, seeded torch module (torch-based families)."""
        raise NotImplementedError

    def fit_many(self, fitting: Fitting) -> list[FitResult]:
        """Train every job of ``fitting`` (stacked where the family can and it says so); one
        result per job, in order."""
        raise NotImplementedError

    def outputs(self, model: Any, x: torch.Tensor, n_outputs: int) -> torch.Tensor:
        """A trained model's raw outputs ``[N, n_outputs]`` (logits or log-probabilities, or
        the standardised value) for scaled features."""
        raise NotImplementedError

    def payload(self, model: Any) -> dict[str, Any]:
        """What the model file keeps of a trained model (tensors and plain values only)."""
        raise NotImplementedError

    def describe(self, cfg: RunConfig) -> str:
        """How messages name the family of ``cfg`` (``family "torch" (my_net.py:make)``)."""
        key = FAMILY_KINDS[self.name].key
        return f'family "{self.name}"' + (f" ({getattr(cfg, key)})" if key else "")

    def restore(
        self,
        payload: Mapping[str, Any],
        cfg: RunConfig,
        *,
        n_features: int,
        n_outputs: int,
        trusted: Sequence[str] = (),
    ) -> Any:
        """The trained model back from the family's payload, rebuilt only with code the study
        file names: a model file naming another module or estimator than ``trusted`` is refused."""
        key = FAMILY_KINDS[self.name].key
        named = getattr(cfg, key) if key else None
        if named is not None and named not in trusted:
            raise ValueError(
                f"the model file names {key} {named!r}, which the study file does not "
                f"(trusted: {', '.join(trusted) or 'none'}); predict with the study file it was trained with"
            )
        return self._rebuild(payload, cfg, n_features, n_outputs)

    def _rebuild(self, payload: Mapping[str, Any], cfg: RunConfig, n_features: int, n_outputs: int) -> Any:
        """The trained model back from :meth:`payload` (the study file's code already checked)."""
        raise NotImplementedError
