"""Model families: what a pipeline tunes (``[defaults] family``). ``FAMILIES`` is the registry, the
only place a family is named (like :data:`hpo.stages.KINDS` for stage kinds).

======== ==========================================================================================
family   what it trains
======== ==========================================================================================
mlp      hpo's MLP (the default), stacked where shapes allow
torch    your ``nn.Module``: ``module = "my_net.py:make"``, called ``make(n_features, n_outputs, **params)``
sklearn  any scikit-learn-API estimator: ``estimator = "sklearn.ensemble.HistGradientBoostingClassifier"``
======== ==========================================================================================

A family's settings are hpo's settings that apply to it (:data:`hpo.settings.FAMILY_SETTINGS`,
built from :data:`FAMILY_KINDS`)
and its own parameters (``params``: the factory's keyword arguments, the estimator's constructor
arguments); stages tune either by its plain name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hpo.families._kinds import DEFAULT_FAMILY, FAMILY_KINDS, FamilyKind

if TYPE_CHECKING:
    from hpo.families._protocol import Fitting, Job, ModelFamily
    from hpo.settings import RunConfig

    FAMILIES: dict[str, ModelFamily]

__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "FAMILY_KINDS",
    "FamilyKind",
    "Fitting",
    "Job",
    "ModelFamily",
    "family_of",
    "rebuilt",
    "tunable",
]

#: where each family's class lives; imported on first use (torch, scikit-learn), so that the
#: study file's checks can read :mod:`hpo.families._kinds` at load (PEP 562)
_CLASSES = {
    "mlp": ("hpo.families.mlp", "MlpFamily"),
    "torch": ("hpo.families.torch_module", "TorchFamily"),
    "sklearn": ("hpo.families.sklearn_api", "SklearnFamily"),
}
assert tuple(_CLASSES) == tuple(FAMILY_KINDS)
_registry: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name == "FAMILIES":
        if not _registry:
            for family, (module, cls) in _CLASSES.items():
                _registry[family] = getattr(importlib.import_module(module), cls)()
        return _registry
    if name in ("Fitting", "Job", "ModelFamily"):
        return getattr(importlib.import_module("hpo.families._protocol"), name)
    raise AttributeError(f"module 'hpo.families' has no attribute {name!r}")


def family_of(cfg: RunConfig) -> ModelFamily:
    from hpo.settings import lookup

    families: dict[str, ModelFamily] = __getattr__("FAMILIES")
    return lookup(families, cfg.family, "family")


def tunable(cfg: RunConfig) -> tuple[list[str], bool]:
    """The names a stage may tune for ``cfg``'s family: hpo's settings that apply to it (but
    seed, precision and device) and its own parameters; and whether it takes any other name too
    (a factory with ``**kwargs``)."""
    from hpo.settings import UNTUNED

    own = family_of(cfg).own_params(cfg)
    names = [s for s in cfg.own if s not in UNTUNED]
    return names + sorted(own or {}), own is None


def rebuilt(base: RunConfig, carried: RunConfig, *, where: str, fix: str) -> RunConfig:
    """``base`` plus ``carried``'s values of the settings a stage may tune, each checked by
    ``base``'s family: how a configuration read from a storage is taken in, since whoever can write
    the storage must not choose the code that runs. ``carried`` must name ``base``'s family, module
    and estimator (else a :class:`~hpo.errors.ConfigError` line, ``where`` it was read and ``fix``);
    its untuned settings (seed, precision, compile, device) are ``base``'s."""
    from hpo.errors import ConfigError
    from hpo.settings import FAMILY_KEYS, UNTUNED

    for key in FAMILY_KEYS[:3]:
        if getattr(carried, key) != getattr(base, key):
            raise ConfigError(
                f"{where} {key} = {getattr(carried, key)!r}, and the study file says "
                f"{getattr(base, key)!r}: a storage does not choose what runs; {fix}"
            )
    family = family_of(base)
    point: dict[str, Any] = {}
    for name, value in carried.settings().items():
        if name in UNTUNED:
            continue
        try:
            point[name] = family.check_value(base, name, value)
        except ValueError as exc:
            raise ConfigError(f"{where} {name} = {value!r}: {exc}; {fix}") from None
    return base.with_point(point)
