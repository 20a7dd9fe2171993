"""The typed configuration: one carried :class:`RunConfig` and the sections of a study file.

A setting is followed from the study file to the trainer through one object: ``[defaults]`` is
validated into a :class:`RunConfig`; each stage hands a new one on (``with_point``); the trainers
receive its projections ``.model()``, ``.optim()`` and ``.train()``. Every constraint is written
once, as an annotated type below, and applies wherever the type is used (study file, stored
configuration, direct API calls).

Validation is pydantic v2 rather than msgspec: pydantic's errors carry the key path and the
offending input, which is what a one-line message that names the key and the fix needs, and its
``model_validator`` hooks hold the cross-field rules. Strict mode: TOML has types, so a string
where a number belongs (``lr = "1e-3"``) is an error, not a silent conversion.

Pure data, no torch: loading and checking a study file never imports a trainer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

Activation = Literal["relu", "leaky_relu", "gelu"]
Norm = Literal["none", "batchnorm", "layernorm"]
Init = Literal["default", "xavier_uniform", "kaiming_normal"]
OptimizerName = Literal["adam", "sgd", "rmsprop"]
Precision = Literal["fp32", "bf16"]
Device = Literal["auto", "cpu", "cuda"]
ClassWeight = Literal["none", "balanced"]
Metric = Literal["accuracy", "balanced_accuracy", "macro_f1", "loss"]

ACTIVATIONS: tuple[str, ...] = get_args(Activation)
NORMS: tuple[str, ...] = get_args(Norm)
INITS: tuple[str, ...] = get_args(Init)
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
METRICS: tuple[str, ...] = get_args(Metric)

MAX_WIDTH = 16_384
MAX_LAYERS = 16


def _as_tuple(value: Any) -> Any:
    """TOML and JSON have lists where the configuration keeps (hashable) tuples."""
    return tuple(value) if isinstance(value, list) else value


Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Hidden = Annotated[tuple[Width, ...], BeforeValidator(_as_tuple), Field(min_length=1, max_length=MAX_LAYERS)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
LearningRate = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]
Decay = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
ClassWeights = Annotated[
    tuple[Annotated[float, Field(gt=0, allow_inf_nan=False)], ...], BeforeValidator(_as_tuple)
]

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
_STRICT_DATACLASS = ConfigDict(strict=True, extra="forbid")


# --------------------------------------------------------------------------- what the trainers take


@pydantic_dataclass(frozen=True, kw_only=True, config=_STRICT_DATACLASS)
class ModelConfig:
    """The network: ``[Linear -> norm -> activation -> dropout] * len(hidden) -> Linear``."""

    hidden: Hidden = (256, 256)
    activation: Activation = "relu"
    norm: Norm = "none"
    init: Init = "default"
    dropout: Probability = 0.0
    n_features: PositiveInt = 90
    n_classes: Annotated[int, Field(ge=2)] = 10

    @property
    def arch(self) -> str:
        return "x".join(str(h) for h in self.hidden)


@pydantic_dataclass(frozen=True, kw_only=True, config=_STRICT_DATACLASS)
class OptimConfig:
    name: OptimizerName = "adam"
    lr: LearningRate = 1e-3
    weight_decay: Decay = 0.0


@pydantic_dataclass(frozen=True, kw_only=True, config=_STRICT_DATACLASS)
class TrainConfig:
    """How one model is trained. Knows nothing of stages or Optuna."""

    epochs: PositiveInt = 15
    batch_size: PositiveInt = 128
    seed: NonNegativeInt = 42
    patience: PositiveInt | None = None  # early stopping on validation loss, in evaluations
    restore_best: bool = True  # with patience: end with the weights of the best val loss
    max_batches: PositiveInt | None = None  # stop after this many optimizer steps
    eval_every: PositiveInt | None = None  # evaluate every N steps (default: each epoch's end)
    eval_last_only: bool = False  # evaluate after the last epoch only (k-fold CV needs no curve)
    eval_batch_size: PositiveInt = 16_384
    precision: Precision = "fp32"  # "bf16": autocast for forward passes (losses stay float32)
    device: Literal["cpu", "cuda"] = "cpu"  # resolved (see hpo.training.device)
    label_smoothing: Probability = 0.0
    class_weights: ClassWeights | None = None  # per class, for a weighted cross-entropy


# --------------------------------------------------------------------------- the carried configuration


class RunConfig(BaseModel):
    """The configuration a stage starts from and hands on: everything one training run needs
    apart from the stage's own budget (epochs, patience, ...).

    ``[defaults]`` in a study file is this model; each stage stores the one it hands on, and the
    next stage (in any process) reads it back. Frozen: stages derive new ones with
    :meth:`with_point`, which validates the changed settings."""

    model_config = _STRICT

    hidden: Hidden = (256, 256)
    activation: Activation = "relu"
    norm: Norm = "none"
    init: Init = "default"
    dropout: Probability = 0.0
    optimizer: OptimizerName = "adam"
    lr: LearningRate = 1e-3
    weight_decay: Decay = 0.0
    batch_size: Annotated[int, Field(ge=1, le=1_048_576)] = 128
    label_smoothing: Probability = 0.0
    class_weight: ClassWeight = "none"
    seed: NonNegativeInt = 42
    precision: Precision = "fp32"  # "bf16": CPU autocast (AMX); tested to stay within fp32's noise
    device: Device = "auto"  # "auto": a CUDA GPU when present, else the CPU

    def with_point(self, point: Mapping[str, Any]) -> RunConfig:
        """A copy with ``point``'s settings changed (validated)."""
        return RunConfig.model_validate({**self.model_dump(), **point})

    def model(self, *, n_features: int, n_classes: int) -> ModelConfig:
        return ModelConfig(
            hidden=self.hidden,
            activation=self.activation,
            norm=self.norm,
            init=self.init,
            dropout=self.dropout,
            n_features=n_features,
            n_classes=n_classes,
        )

    def optim(self) -> OptimConfig:
        return OptimConfig(name=self.optimizer, lr=self.lr, weight_decay=self.weight_decay)

    def train(
        self,
        *,
        epochs: int,
        device: Literal["cpu", "cuda"],
        patience: int | None = None,
        max_batches: int | None = None,
        eval_every: int | None = None,
        class_weights: Sequence[float] | None = None,
        seed: int | None = None,
        eval_last_only: bool = False,
    ) -> TrainConfig:
        """The trainer's settings: this configuration's plus the stage's budget. ``device`` is
        the resolved one (``cpu`` or ``cuda``), ``class_weights`` those of the rows trained on
        when ``class_weight = "balanced"``; ``seed`` overrides the configuration's (stages
        training several seeds)."""
        return TrainConfig(
            epochs=epochs,
            batch_size=self.batch_size,
            seed=self.seed if seed is None else seed,
            patience=patience,
            max_batches=max_batches,
            eval_every=eval_every,
            precision=self.precision,
            device=device,
            label_smoothing=self.label_smoothing,
            class_weights=tuple(class_weights) if class_weights is not None else None,
            eval_last_only=eval_last_only,
        )

    def to_record(self) -> dict[str, Any]:
        """JSON-ready form, for the storage."""
        return self.model_dump(mode="json")


SETTINGS: tuple[str, ...] = tuple(RunConfig.model_fields)
#: Settings a stage may tune (the rest describe how to train, not what).
TUNABLE: tuple[str, ...] = tuple(s for s in SETTINGS if s not in ("seed", "precision", "device"))
_SETTING_TYPES: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(field.rebuild_annotation()) for name, field in RunConfig.model_fields.items()
}


def check_setting(name: str, value: Any) -> Any:
    """``value`` validated as setting ``name`` of :class:`RunConfig` (ValueError if not)."""
    if name not in _SETTING_TYPES:
        raise ValueError(f"unknown setting {name!r}; settings are: {', '.join(TUNABLE)}")
    try:
        return _SETTING_TYPES[name].validate_python(value, strict=True)
    except ValidationError as exc:
        raise ValueError(describe_error(exc.errors()[0])) from None


def param_value(name: str, value: Any) -> str | int | float:
    """How a setting's value is stored as an Optuna parameter (a categorical choice)."""
    if name == "hidden":
        return "x".join(str(int(h)) for h in value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"setting {name!r} cannot be a trial parameter")
    return value


def setting_value(name: str, param: Any) -> Any:
    """The inverse of :func:`param_value`."""
    if name == "hidden":
        return tuple(int(h) for h in str(param).split("x"))
    return param


# --------------------------------------------------------------------------- study-file sections


class Section(BaseModel):
    model_config = _STRICT


class PipelineSection(Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$", min_length=1, max_length=80)]
    description: str = ""


SourceName = Literal["synthetic", "msd", "csv", "parquet"]
SplitName = Literal["stratified", "official", "head"]

#: Smallest dataset a pipeline runs on: enough rows for a 70/15/15 split and k-fold CV of every class.
MIN_ROWS = 1_000


class DataSettings(Section):
    """Where the rows come from and how they are labelled and split."""

    source: SourceName = "synthetic"
    rows: Annotated[int, Field(ge=MIN_ROWS)] | None = None  # synthetic: draw size; msd: random subset
    seed: NonNegativeInt = 42  # split seed (and the synthetic draw's)
    split: SplitName = "stratified"
    file: str | None = None  # msd: a local .zip/.txt instead of the download
    path: str | None = None  # csv / parquet: the table
    target: str | None = None  # csv / parquet: the label column
    features: Annotated[list[str], Field(min_length=1)] | None = None  # default: every numeric column
    group: str | None = None  # rows sharing a value never straddle train/val/test or CV folds
    bins: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=2)] | None = None
    bin_width: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    origin: Annotated[float, Field(allow_inf_nan=False)] | None = None
    class_names: Annotated[list[str], Field(min_length=2)] | None = None
    head_rows: PositiveInt | None = None  # split = "head": the first N rows train, the rest test

    @model_validator(mode="after")
    def _fits_source(self) -> DataSettings:
        problem = self.problem()
        if problem is not None:
            raise ValueError(problem)
        return self

    def problem(self) -> str | None:
        """What these settings lack for their source (naming the key); None when complete."""
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
            for key in ("path", "target", "features", "group", "bins", "bin_width", "origin", "class_names"):
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


class StageSettings(Section):
    """Settings every stage kind has. Each kind extends it (``hpo.stages``)."""

    kind: str
    requires: list[str] | None = None  # stages that must be complete first (default: the previous one)


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


_REWRITES = (
    ("Input should be a valid ", "must be a "),
    ("Input should be ", "must be "),
    ("Value error, ", ""),
    ("Extra inputs are not permitted", "unknown key"),
    ("Field required", "is required"),
)


def describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error as the problem (without the key path)."""
    message = str(error.get("msg", ""))
    for old, new in _REWRITES:
        message = message.replace(old, new)
    return message


def error_path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def format_input(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
