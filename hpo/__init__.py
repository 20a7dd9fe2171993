"""hpo: staged, reproducible hyperparameter optimisation of tabular models on Optuna (its MLP,
your torch module, scikit-learn estimators; classification or regression).

The Python API is :class:`hpo.Pipeline` (``hpo.Pipeline.load("studies/quick.toml").run()``);
the ``hpo`` command line renders what it returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError, DataError, DataFileError, HpoError, PrerequisiteError, StorageError

if TYPE_CHECKING:
    from hpo.pipeline import Pipeline

__version__ = "0.2.0"

__all__ = [
    "ConfigError",
    "DataError",
    "DataFileError",
    "HpoError",
    "Pipeline",
    "PrerequisiteError",
    "StorageError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Pipeline":  # imported on first use: the CLI's --help need not load torch
        from hpo.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
