"""Model families: what a pipeline tunes (``[defaults] family``). ``FAMILIES`` is the registry, the
only place a family is named (like :data:`hpo.stages.KINDS` for stage kinds).

======== ==========================================================================================
family   what it trains
======== ==========================================================================================
mlp      hpo's MLP (the default), stacked where shapes allow
torch    your ``nn.Module``: ``module = "my_net.py:make"``, called ``make(n_features, n_outputs, **params)``
sklearn  any scikit-learn-API estimator: ``estimator = "sklearn.ensemble.HistGradientBoostingClassifier"``
======== ==========================================================================================

A family's settings are hpo's settings that apply to it (:data:`hpo.settings.FAMILY_SETTINGS`)
and its own parameters (``params``: the factory's keyword arguments, the estimator's constructor
arguments); stages tune either by its plain name.
"""

from __future__ import annotations

from hpo.families._protocol import Job, ModelFamily
from hpo.families.mlp import MlpFamily
from hpo.families.sklearn_api import SklearnFamily
from hpo.families.torch_module import TorchFamily
from hpo.settings import UNTUNED, RunConfig, lookup

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (MlpFamily(), TorchFamily(), SklearnFamily())}

__all__ = ["FAMILIES", "Job", "ModelFamily", "family_of", "tunable"]


def family_of(cfg: RunConfig) -> ModelFamily:
    return lookup(FAMILIES, cfg.family, "family")


def tunable(cfg: RunConfig) -> tuple[list[str], bool]:
    """The names a stage may tune for ``cfg``'s family: hpo's settings that apply to it (but
    seed, precision and device) and its own parameters; and whether it takes any other name too
    (a factory with ``**kwargs``)."""
    own = family_of(cfg).own_params(cfg)
    names = [s for s in cfg.own if s not in UNTUNED]
    return names + sorted(own or {}), own is None
