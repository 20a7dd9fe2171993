"""The data layer: sources (a CSV/Parquet table, the MSD preset, the synthetic stand-in), class
labels, splits, scalers and the prepared-data cache. Knows nothing of stages or Optuna."""

from __future__ import annotations

from hpo.data.cache import Prepared, cache_path, default_data_dir, load, prepare, summary
from hpo.data.columns import Column
from hpo.data.labels import Labeling
from hpo.data.splits import Scaler, Split, cv_folds, head_split, stratified_split

__all__ = [
    "Column",
    "Labeling",
    "Prepared",
    "Scaler",
    "Split",
    "cache_path",
    "cv_folds",
    "default_data_dir",
    "head_split",
    "load",
    "prepare",
    "stratified_split",
    "summary",
]
