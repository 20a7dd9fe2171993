"""Plotly figures for the data and for every stage kind, built from what the storage holds.

Pure functions: they take arrays or Optuna studies and return ``(figure_id, figure)`` pairs; the
dashboard module saves them into studies, the report embeds them in one HTML page. Figures carry
precomputed summaries (histogram counts, box-plot quartiles), never raw rows, so they stay small
for any dataset size. Figure ids are namespaced by stage name so a pipeline's ids never collide.

The figures live in five modules, re-exported here (import from this module):
:mod:`hpo.present._figures_common` (shared helpers: colours, layout, a study's trials and curves,
one trial's learning curves), :mod:`hpo.present._figures_data` (the data),
:mod:`hpo.present._figures_stages` (baselines, LR range test, grid CV, sweeps, a stage's note),
:mod:`hpo.present._figures_search` (every trial of a search, the pruner's rungs) and
:mod:`hpo.present._figures_final` (the final stage's test figures, recall comparison).
"""

from __future__ import annotations

from hpo.present._figures_common import OTHER, PRUNED, SELECTED, Figure, learning_curves
from hpo.present._figures_data import data_figures, target_figure
from hpo.present._figures_final import final_figures, recall_comparison, regression_figures
from hpo.present._figures_search import (
    intermediate_figure,
    pruner_rungs,
    rung_steps,
    search_curves,
    search_figures,
    search_history,
    search_parallel,
)
from hpo.present._figures_stages import (
    baseline_figures,
    grid_cv_figures,
    lr_range_figures,
    stage_note,
    sweep_figures,
)

__all__ = [
    "OTHER",
    "PRUNED",
    "SELECTED",
    "Figure",
    "baseline_figures",
    "data_figures",
    "final_figures",
    "grid_cv_figures",
    "intermediate_figure",
    "learning_curves",
    "lr_range_figures",
    "pruner_rungs",
    "recall_comparison",
    "regression_figures",
    "rung_steps",
    "search_curves",
    "search_figures",
    "search_history",
    "search_parallel",
    "stage_note",
    "sweep_figures",
    "target_figure",
]
