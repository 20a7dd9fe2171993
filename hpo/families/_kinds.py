"""What each model family is before anything is imported: its name, the ``[defaults]`` key that
names what it trains, hpo's own settings of its model, and whether hpo's torch trainers train it.

The registry's data (:data:`hpo.families.FAMILIES` holds the families themselves): the study
file's checks (:mod:`hpo.settings`) read it at load, so it imports nothing of hpo, and nothing
outside :mod:`hpo.families` names a family.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyKind:
    """A family as a study file names it (``[defaults] family``)."""

    name: str
    key: str | None  # the [defaults] key naming what it trains; None: hpo's own model
    example: str  # an example of that key's value, for error lines
    model_settings: tuple[str, ...]  # hpo's named settings of its model (the MLP's architecture)
    trained_by_hpo: bool  # hpo's torch trainers fit it: hpo's training settings apply
    what: str


MLP = FamilyKind(
    "mlp",
    None,
    "",
    ("hidden", "activation", "norm", "init", "dropout"),
    True,
    "hpo's MLP, stacked where shapes allow",
)
TORCH = FamilyKind(
    "torch", "module", "my_net.py:make", (), True, "your nn.Module, called make(n_features, n_outputs)"
)
SKLEARN = FamilyKind(
    "sklearn",
    "estimator",
    "sklearn.ensemble.HistGradientBoostingClassifier",
    (),
    False,
    "a scikit-learn estimator",
)

#: Every family by name; the first is a study file's default.
FAMILY_KINDS: dict[str, FamilyKind] = {k.name: k for k in (MLP, TORCH, SKLEARN)}
DEFAULT_FAMILY = MLP.name
