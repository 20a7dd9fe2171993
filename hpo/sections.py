"""The study file's sections besides ``[defaults]`` (:class:`hpo.settings.RunConfig`):
``[pipeline]``, ``[data]``, ``[report]`` and the base of every stage's table, validated by
pydantic as the rest of the configuration is (strict, unknown keys refused, the bad value echoed).

Pure data, no torch, like :mod:`hpo.settings`, on which it builds.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from hpo.settings import _STRICT, FamilyName, Metric, NonNegativeInt, PositiveInt, TaskName
from hpo.tasks._kinds import task_kind


class Section(BaseModel):
    model_config = _STRICT


_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$"
)


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a string such as ``"90m"``, ``"1h30m"``, ``"45s"``
    (what ``time_budget`` and ``timeout`` take); above zero."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)) and any(m.groups()):
        h, mins, sec = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mins * 60 + sec
    if seconds is None:
        raise ValueError(
            f'{value!r} is not a duration; give seconds (5400) or a string such as "90m", "1h30m"'
        )
    if not seconds > 0:
        raise ValueError(f"{value!r} must be above zero")
    return seconds


#: Seconds, from a number or a string such as "90m" (:func:`parse_duration`).
Duration = Annotated[float, BeforeValidator(parse_duration)]


class PipelineSection(Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$", min_length=1, max_length=80)]
    description: str = ""
    # wall-clock seconds for the whole pipeline: searches stop asking so the stages after them fit
    time_budget: Duration | None = None


SourceName = Literal["synthetic", "msd", "csv", "parquet"]
SplitName = Literal["stratified", "official", "head"]

#: Smallest dataset a pipeline runs on: enough rows for a 70/15/15 split and k-fold CV of every class.
MIN_ROWS = 1_000


#: [data] keys added with column typing (issue 29): left out of dumps while unset
TABLE_TYPING_KEYS = ("exclude", "categorical")


class DataSettings(Section):
    """Where the rows come from and how they are labelled and split."""

    source: SourceName = "synthetic"
    task: TaskName = "classification"  # "regression": the numeric target itself (MSD: the year)
    rows: Annotated[int, Field(ge=MIN_ROWS)] | None = None  # synthetic: draw size; msd: random subset
    seed: NonNegativeInt = 42  # split seed (and the synthetic draw's)
    split: SplitName = "stratified"
    file: str | None = None  # msd: a local .zip/.txt instead of the download
    path: str | None = None  # csv / parquet: the table
    target: str | None = None  # csv / parquet: the label column
    features: Annotated[list[str], Field(min_length=1)] | None = None  # default: every column
    exclude: Annotated[list[str], Field(min_length=1)] | None = None  # columns left out (leaks, ids)
    categorical: Annotated[list[str], Field(min_length=1)] | None = None  # integer codes read as levels
    group: str | None = None  # rows sharing a value never straddle train/val/test or CV folds
    bins: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=2)] | None = None
    bin_width: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    origin: Annotated[float, Field(allow_inf_nan=False)] | None = None
    class_names: Annotated[list[str], Field(min_length=2)] | None = None
    head_rows: PositiveInt | None = None  # split = "head": the first N rows train, the rest test
    # "quantile": numeric columns to normal scores by their training quantiles, then standardised
    # (hpo.data.normal_scores); stored only when set
    scaling: Literal["standard", "quantile"] = "standard"

    @model_serializer(mode="wrap")
    def _without_unset_table_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``exclude`` and ``categorical`` appear only when set, so the stored fingerprints and
        prepared caches of every study file written before they existed still match."""
        out: dict[str, Any] = handler(self)
        for key in TABLE_TYPING_KEYS:
            if out.get(key) is None:
                out.pop(key, None)
        if out.get("scaling") == "standard":
            out.pop("scaling")
        return out

    @model_validator(mode="after")
    def _fits_source(self) -> DataSettings:
        problem = self.problem()
        if problem is not None:
            raise ValueError(problem)
        return self

    def problem(self) -> str | None:
        """What these settings lack for their source (naming the key); None when complete."""
        if not task_kind(self.task).has_classes:
            for key in ("bins", "bin_width", "origin", "class_names"):
                if getattr(self, key) is not None:
                    return (
                        f'data.{key} makes classes; task = "regression" predicts the target as a number '
                        f'(remove {key}, or use task = "classification")'
                    )
        table = self.source in ("csv", "parquet")
        if table:
            if self.path is None:
                return f'data.path is required for source = "{self.source}" (the table to read)'
            if self.target is None:
                return f'data.target is required for source = "{self.source}" (the label column)'
            if self.split == "official":
                return 'data.split = "official" is MSD\'s split; use split = "head" with head_rows = N'
            if self.file is not None:
                return f'data.file is for source = "msd"; use data.path for source = "{self.source}"'
            if self.split == "head" and self.head_rows is None:
                return 'data.split = "head" needs head_rows = N (the first N rows train, the rest test)'
        else:
            for key in (
                "path",
                "target",
                "features",
                "exclude",
                "categorical",
                "group",
                "bins",
                "bin_width",
                "origin",
                "class_names",
            ):
                if getattr(self, key) is not None:
                    return f'data.{key} is for source = "csv" or "parquet"; "{self.source}" has fixed columns'
            if self.source == "synthetic" and self.file is not None:
                return 'data.file is for source = "msd"; synthetic data is generated'
        if self.origin is not None and self.bin_width is None:
            return "data.origin goes with data.bin_width (the bins start at origin)"
        if self.bins is not None and self.bin_width is not None:
            return "data.bins and data.bin_width are alternatives; keep one"
        return None


class ReportSettings(Section):
    features: Annotated[list[str], Field(min_length=1, max_length=48)] | None = None  # histograms, box plots


#: A stage's own family (a track, :mod:`hpo.plan`): stored only when set, so the fingerprints of
#: study files written before tracks existed still match.
TRACK_KEYS: tuple[str, ...] = ("family", "module", "estimator", "params")


class StageSettings(Section):
    """Settings every stage kind has. Each kind extends it (``hpo.stages``).

    ``family`` (with ``module`` / ``estimator`` / ``params``) puts the stage on a track of its own:
    it starts from that family's defaults (``[defaults]``' seed, precision, compile and device
    beside), and its selection carries forward only to later stages naming the same family, module,
    estimator and params (:meth:`hpo.plan.Plan.input_stage`)."""

    kind: str
    requires: list[str] | None = None  # stages that must be complete first (default: the previous one)
    family: FamilyName | None = None  # a track of its own (hpo.families)
    module: str | None = None  # family = "torch": your factory
    estimator: str | None = None  # family = "sklearn": the estimator class
    params: dict[str, Any] | None = None  # the family's own parameters (factory / constructor)
    omitted_unset: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _track_keys_need_a_family(self) -> StageSettings:
        if self.family is None:
            given = [k for k in TRACK_KEYS[1:] if getattr(self, k) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} belong to a stage's own family; add family = "
                    '"torch" or "sklearn" beside them (or set them in [defaults])'
                )
        return self

    @model_serializer(mode="wrap")
    def _newer_keys_only_when_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        fields = type(self).model_fields
        for key in self.omitted_unset | frozenset(TRACK_KEYS):
            if key in out and out[key] == fields[key].default:
                del out[key]
        return out

    def track(self) -> dict[str, Any] | None:
        """The stage's own family declaration (None: the pipeline's, ``[defaults]``)."""
        if self.family is None:
            return None
        return {k: getattr(self, k) for k in TRACK_KEYS if getattr(self, k) is not None}


class NewerKeys(StageSettings):
    """A kind with keys newer than the kind itself (``omitted_unset``): they are stored only when
    set to other than their default, so the stored fingerprints of study files written before
    they existed still match."""


SelectPolicy = Literal["best", "keep_unless_better"]


class SelectingSettings(StageSettings):
    """Settings of a stage that selects among candidates."""

    metric: Metric = "accuracy"
    # "best": the best score wins (the write-up's rule); "keep_unless_better": the carried-in
    # value stays unless a challenger beats it beyond noise (its 95 % interval above 0)
    select: SelectPolicy = "best"
    seeds: Annotated[int, Field(ge=1, le=64)] = (
        1  # seeds per candidate, trained stacked; scored by their mean
    )


# --------------------------------------------------------------------------- error messages
