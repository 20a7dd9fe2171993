"""Kind ``sweep``: the ``grid`` kind over one setting of the carried configuration, tried at each of
its choices; the best (peak validation metric, or with ``cv = k`` the k-fold CV mean) is carried
forward.

Any setting of the pipeline's family can be swept: for the MLP ``hidden``, ``activation``,
``norm``, ``init``, ``dropout``, ``optimizer``, ``lr``, ``weight_decay``, ``batch_size``,
``label_smoothing``, ``class_weight``; for your module or estimator its own parameters too. A
batch of claimed choices trains as one stack where their shapes allow (``stack`` choices per
batch); the write-up's four component sweeps are four stages of this kind.

**Fair comparisons** (Google's Deep Learning Tuning Playbook: a nuisance setting must be re-tuned
for each value of the one under study): ``retune = { lr = [...] }`` trains every choice at every
listed value of the nuisance settings; a choice scores by its best, and carries that value on
(:mod:`hpo.stages.grid`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import model_validator

from hpo.sections import StageSettings
from hpo.stages.grid import Choices, Grid, PointsSettings


class SweepSettings(PointsSettings):
    kind: Literal["sweep"] = "sweep"
    choices: Choices
    studied_key: ClassVar[str] = "choices"

    @model_validator(mode="after")
    def _one_setting(self) -> SweepSettings:
        if len(self.choices) != 1:
            raise ValueError(
                f"choices names {len(self.choices)} settings; a sweep varies one "
                '(declare one sweep stage per setting, or a stage of kind = "grid" for a grid)'
            )
        return self

    @property
    def setting(self) -> str:
        return next(iter(self.choices))

    @property
    def studied(self) -> dict[str, list[Any]]:
        return dict(self.choices)


class Sweep(Grid):
    kind: ClassVar[str] = "sweep"
    settings_model: ClassVar[type[StageSettings]] = SweepSettings
