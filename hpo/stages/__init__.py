"""Stage kinds. ``KINDS`` is the registry: the only place a kind is named; study files declare
stages of these kinds, in the order they run.

========== =====================================================================================
kind       what it does
========== =====================================================================================
baseline   candidate architectures, briefly trained; lowest validation loss wins
lr_range   the LR range test (torch-lr-finder's method) and a verification run
grid       every combination of listed values of some settings (optionally re-tuning
           nuisance settings for each), scored on the validation rows or with ``cv = k`` by
           k-fold CV; the best is carried forward
grid_cv    ``grid`` scored by k-fold CV (``folds``, default 5): the write-up's weight-decay stage
sweep      ``grid`` over one setting: the write-up's component sweeps
search     an Optuna sampler over a declared space, with a pruner and a trial budget (scored
           on the validation rows or with ``cv = k`` by k-fold CV)
final      retrain (N seeds), evaluate the test rows once per model, save the model
========== =====================================================================================
"""

from __future__ import annotations

from hpo.stages._context import StageContext, StageData
from hpo.stages._protocol import GridStage, Stage, Work
from hpo.stages.baseline import Baseline, BaselineSettings
from hpo.stages.final import Final, FinalSettings
from hpo.stages.grid import Grid, GridCvSettings, GridSettings
from hpo.stages.grid_cv import GridCv
from hpo.stages.lr_range import LrRange, LrRangeSettings
from hpo.stages.search import Search, SearchSettings
from hpo.stages.sweep import Sweep, SweepSettings

StageClass = type[GridStage] | type[Search]
KINDS: dict[str, StageClass] = {
    cls.kind: cls for cls in (Baseline, LrRange, Grid, GridCv, Sweep, Search, Final)
}

__all__ = [
    "KINDS",
    "BaselineSettings",
    "FinalSettings",
    "GridCvSettings",
    "GridSettings",
    "GridStage",
    "LrRangeSettings",
    "SearchSettings",
    "Stage",
    "StageContext",
    "StageData",
    "SweepSettings",
    "Work",
]
