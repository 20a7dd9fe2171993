"""Kind ``grid_cv``: the ``grid`` kind scored by k-fold CV (``folds``, default 5), by the name the
write-up's weight-decay stage has.

``grid = { weight_decay = [0, 1e-5, 1e-4, 1e-3, 1e-2] }`` with 5 folds of 10 epochs is the
write-up's stage; ``kind = "grid"`` with ``cv = 5`` is the same evaluation under the general kind.
A batch of claimed points trains as one stack of points x folds models (``stack`` points per
batch); with ``pruner = "median"`` one point runs at a time, its folds in sequence, and Optuna's
MedianPruner may stop it between folds.
"""

from __future__ import annotations

from typing import ClassVar

from hpo.sections import StageSettings
from hpo.stages.grid import Grid, GridCvSettings


class GridCv(Grid):
    kind: ClassVar[str] = "grid_cv"
    settings_model: ClassVar[type[StageSettings]] = GridCvSettings
