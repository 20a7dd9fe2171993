"""hpo: staged, reproducible hyperparameter optimisation of an MSD decade classifier on Optuna."""

from __future__ import annotations

from hpo.errors import ConfigError, DataError, DataFileError, HpoError, PrerequisiteError, StorageError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "DataFileError",
    "HpoError",
    "PrerequisiteError",
    "StorageError",
    "__version__",
]
