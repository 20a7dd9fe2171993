"""The Python API: load a pipeline, run a stage or all of them, read its status and final model.

::

    import hpo

    pipe = hpo.Pipeline.load("studies/quick.toml", storage="sqlite:///hpo.db")
    pipe.run()                          # every stage in order, skipping completed ones
    pipe.status().stages[-1].selection  # what the last stage selected
    model = pipe.final_model()          # hpo.model_file.ModelFile: .model(), .outputs(x), class names

Every stage runs the same sequence: its prerequisites must be complete; the data are prepared
(a bad data file fails here, before anything is stored); its study is created with its settings
and their fingerprint, or reopened if those match; the runner works through its trials; its
selection is stored, its figures published for optuna-dashboard, and only then is it flagged
complete. A stage reads what the stages before it selected from the storage, never from
memory, so stages run in separate processes, days apart, on other machines. The CLI only parses
arguments and renders what these methods return.

The pipeline lives in private modules, re-exported here (import from this package):
:mod:`hpo.pipeline._pipeline` (the :class:`Pipeline` class, which delegates to the others),
:mod:`hpo.pipeline._study_file` (a study file named by path or by bare name),
:mod:`hpo.pipeline._lifecycle` (running one stage: readiness, prerequisites, its study's creation,
drift check and completion), :mod:`hpo.pipeline._handover` (the configuration a stage starts
from, read back from the storage), :mod:`hpo.pipeline._numerics` (the pipeline's precision and
compile), :mod:`hpo.pipeline._budget` (the time stages ran, a search's share of the time budget),
:mod:`hpo.pipeline._status` (the result objects and how a status is read) and
:mod:`hpo.pipeline._final` (the final stage's study and model).
"""

from __future__ import annotations

from hpo.pipeline._pipeline import Pipeline
from hpo.pipeline._status import PipelineStatus, RunResult, StageRun, StudyState
from hpo.pipeline._study_file import DEFAULT_STUDY_FILE, resolve_study_file

__all__ = [
    "DEFAULT_STUDY_FILE",
    "Pipeline",
    "PipelineStatus",
    "RunResult",
    "StageRun",
    "StudyState",
    "resolve_study_file",
]
