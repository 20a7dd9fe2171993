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
from typing import Annotated, Any, Literal, TypeVar, get_args

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

from hpo.families._kinds import DEFAULT_FAMILY, FAMILY_KINDS

Activation = Literal["relu", "leaky_relu", "gelu"]
Norm = Literal["none", "batchnorm", "layernorm"]
Init = Literal["default", "xavier_uniform", "kaiming_normal"]
OptimizerName = Literal["adam", "adamw", "sgd", "rmsprop"]
Precision = Literal["auto", "fp32", "bf16"]  # "auto": the faster here (hpo.training.precision)
Compile = Literal["auto"] | bool  # "auto": where measured clearly faster (hpo.tuning.numerics)
TrainPrecision = Literal["fp32", "bf16"]  # what a training run uses: "auto" resolved
Device = Literal["auto", "cpu", "cuda"]
ClassWeight = Literal["none", "balanced"]
Metric = Literal["accuracy", "balanced_accuracy", "macro_f1", "loss", "rmse", "mae", "r2"]
TaskName = Literal["classification", "regression"]

ACTIVATIONS: tuple[str, ...] = get_args(Activation)
NORMS: tuple[str, ...] = get_args(Norm)
INITS: tuple[str, ...] = get_args(Init)
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
METRICS: tuple[str, ...] = get_args(Metric)
TASKS: tuple[str, ...] = get_args(TaskName)


T = TypeVar("T")

FamilyName = Literal["mlp", "torch", "sklearn"]
FAMILY_NAMES: tuple[str, ...] = get_args(FamilyName)
assert tuple(FAMILY_KINDS) == FAMILY_NAMES
FAMILY_KEYS = ("family", "module", "estimator", "params")
#: the [defaults] key naming what a family trains (hpo's MLP: its named settings)
FAMILY_KEY: dict[str, str] = {k.name: k.key for k in FAMILY_KINDS.values() if k.key is not None}
#: hpo's settings of the MLP (its architecture) and of every model trained by hpo's torch trainers
MLP_SETTINGS = FAMILY_KINDS[DEFAULT_FAMILY].model_settings
TRAINING_SETTINGS = (
    "optimizer",
    "lr",
    "weight_decay",
    "batch_size",
    "label_smoothing",
    "class_weight",
    "seed",
    "precision",
    "compile",
    "device",
)
#: Which of hpo's settings apply to each family; every other setting of a family is one of its
#: own parameters (a torch factory's keyword arguments, an estimator's constructor arguments).
#: An estimator gets ``seed`` as its ``random_state``.
FAMILY_SETTINGS: dict[str, tuple[str, ...]] = {
    k.name: k.model_settings + (TRAINING_SETTINGS if k.trained_by_hpo else ("seed",))
    for k in FAMILY_KINDS.values()
}
MAX_WIDTH = 16_384
MAX_LAYERS = 16


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """``table[name]``; an unknown name raises, naming the known ones (no silent fallback)."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; {what}s are: {', '.join(table)}") from None


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
    """The MLP: ``[Linear -> norm -> activation -> dropout] * len(hidden) -> Linear``; ``n_outputs``
    is the number of classes (logits), or 1 for a regressor."""

    hidden: Hidden = (256, 256)
    activation: Activation = "relu"
    norm: Norm = "none"
    init: Init = "default"
    dropout: Probability = 0.0
    n_features: PositiveInt = 90
    n_outputs: PositiveInt = 10

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
    precision: TrainPrecision = "fp32"  # "bf16": autocast for forward passes (losses stay float32)
    # torch.compile the stacked trainer's step, resolved by measurement (StageContext.compile)
    compile: bool = False
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

    family: FamilyName = "mlp"  # hpo.families.FAMILIES: mlp, torch (your module), sklearn (an estimator)
    module: str | None = None  # torch: your factory, "my_net.py:make" or "package.module:make"
    estimator: str | None = (
        None  # sklearn: the estimator class, "sklearn.ensemble.HistGradientBoostingClassifier"
    )
    params: dict[str, Any] = Field(
        default_factory=dict
    )  # the family's own parameters (factory / constructor)
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
    precision: Precision = "auto"  # bf16 autocast where measured faster here, else fp32
    # torch.compile the stacked MLP trainer's step: "auto" where measured clearly faster, once
    # per pipeline (hpo.tuning.numerics); true / false pin it
    compile: Compile = "auto"
    device: Device = "auto"  # "auto": a CUDA GPU when present, else the CPU

    @model_validator(mode="after")
    def _fits_family(self) -> RunConfig:
        for kind in FAMILY_KINDS.values():
            if kind.key is None:
                continue
            value = getattr(self, kind.key)
            if self.family == kind.name and not value:
                raise ValueError(
                    f'{kind.key} is required for family = "{kind.name}" (e.g. {kind.key} = "{kind.example}")'
                )
            if self.family != kind.name and value is not None:
                raise ValueError(
                    f'{kind.key} is for family = "{kind.name}"; '
                    f'this configuration\'s family is "{self.family}"'
                )
        if FAMILY_KINDS[self.family].key is None and self.params:
            raise ValueError(
                f"params are the parameters of a torch factory or an estimator; family = "
                f'"{self.family}" has named settings ({", ".join(FAMILY_SETTINGS[self.family])})'
            )
        for name, value in self.params.items():
            if not is_json_value(value):
                raise ValueError(
                    f"params.{name} = {value!r}: must be a number, string, boolean or a list of them"
                )
        return self

    @property
    def own(self) -> tuple[str, ...]:
        """hpo's settings that apply to this configuration's family (the rest are ``params``)."""
        return FAMILY_SETTINGS[self.family]

    def with_point(self, point: Mapping[str, Any]) -> RunConfig:
        """A copy with ``point``'s settings changed (validated): hpo's settings of the family by
        field, any other name as one of the family's own ``params``."""
        fields = {k: v for k, v in point.items() if k in self.own}
        params = {k: v for k, v in point.items() if k not in self.own}
        merged = {**self.model_dump(), **fields}
        if params:
            merged["params"] = {**self.params, **params}
        return RunConfig.model_validate(merged)

    def settings(self) -> dict[str, Any]:
        """Every setting of this configuration by its plain name: hpo's settings of the family
        and the family's own parameters."""
        return {**{k: getattr(self, k) for k in self.own}, **self.params}

    def model(self, *, n_features: int, n_outputs: int) -> ModelConfig:
        return ModelConfig(
            hidden=self.hidden,
            activation=self.activation,
            norm=self.norm,
            init=self.init,
            dropout=self.dropout,
            n_features=n_features,
            n_outputs=n_outputs,
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
        precision: TrainPrecision | None = None,
        compile: bool = False,
    ) -> TrainConfig:
        """The trainer's settings: this configuration's plus the stage's budget. ``device`` is
        the resolved one (``cpu`` or ``cuda``), ``class_weights`` those of the rows trained on
        when ``class_weight = "balanced"``; ``seed`` overrides the configuration's (stages
        training several seeds); ``precision`` is the resolved one, required when this
        configuration's is "auto" (see :meth:`hpo.stages.StageContext.precision`); ``compile``
        whether a stack of such models trains through ``torch.compile`` (measured, see
        :meth:`hpo.stages.StageContext.compile`)."""
        if precision is None:
            if self.precision == "auto":
                raise ValueError('precision "auto" must be resolved before training (StageContext.precision)')
            precision = self.precision
        return TrainConfig(
            epochs=epochs,
            batch_size=self.batch_size,
            seed=self.seed if seed is None else seed,
            patience=patience,
            max_batches=max_batches,
            eval_every=eval_every,
            precision=precision,
            compile=compile,
            device=device,
            label_smoothing=self.label_smoothing,
            class_weights=tuple(class_weights) if class_weights is not None else None,
            eval_last_only=eval_last_only,
        )

    def to_record(self) -> dict[str, Any]:
        """JSON-ready form, for the storage: the settings of this family only (an MLP's record is
        the one hpo wrote before families existed, and ``compile`` appears only where it is
        pinned, so stored fingerprints still match)."""
        full = self.model_dump(mode="json")
        keys = [k for k in full if k in self.own and not (k == "compile" and full[k] == "auto")]
        if self.family in FAMILY_KEY:
            keys = ["family", FAMILY_KEY[self.family], "params", *keys]
        return {k: full[k] for k in keys}


def is_json_value(value: Any) -> bool:
    """A number, string, boolean or None, or a list of them: what a stored configuration holds."""
    if value is None or isinstance(value, str | int | float | bool):
        return not isinstance(value, float) or math.isfinite(value)
    return isinstance(value, list | tuple) and all(is_json_value(v) for v in value)


SETTINGS: tuple[str, ...] = tuple(k for k in RunConfig.model_fields if k not in FAMILY_KEYS)
#: Settings that describe how to train, not what: set in [defaults], never tuned by a stage.
UNTUNED: tuple[str, ...] = ("seed", "precision", "compile", "device")
#: The MLP's settings a stage may tune (other families: :func:`hpo.families.tunable`).
TUNABLE: tuple[str, ...] = tuple(s for s in SETTINGS if s not in UNTUNED)
_SETTING_TYPES: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(field.rebuild_annotation()) for name, field in RunConfig.model_fields.items()
}


def setting_kind(name: str) -> Literal["int", "float", "choice"]:
    """Whether one of hpo's settings is an integer, a float, or one of some values (a search
    range needs a number; the rest take ``choices``): read from the field's type."""
    annotation = RunConfig.model_fields[name].annotation
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    return "choice"


def check_setting(name: str, value: Any) -> Any:
    """``value`` validated as setting ``name`` of :class:`RunConfig` (ValueError if not)."""
    if name not in _SETTING_TYPES:
        raise ValueError(f"unknown setting {name!r}; settings are: {', '.join(TUNABLE)}")
    try:
        return _SETTING_TYPES[name].validate_python(value, strict=True)
    except ValidationError as exc:
        raise ValueError(describe_error(exc.errors()[0])) from None


def param_value(name: str, value: Any) -> str | int | float | bool | None:
    """How a setting's value is stored as an Optuna parameter (a categorical choice); layer
    sizes as ``"256x256"``."""
    if name == "hidden" and isinstance(value, list | tuple):
        return "x".join(str(int(h)) for h in value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError(f"{value!r} cannot be a tuned value of {name!r}; give numbers, strings or booleans")


def setting_value(name: str, param: Any) -> Any:
    """The inverse of :func:`param_value`."""
    if name == "hidden" and isinstance(param, str):
        return tuple(int(h) for h in str(param).split("x"))
    return param


# --------------------------------------------------------------------------- study-file sections


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
