"""Pipeline declarations (``studies/*.toml``): loading and validation.

A study file declares the data, the starting configuration and the settings of each stage of
the fixed sequence ``baseline -> lr_range -> weight_decay -> components -> final``. Every key
is checked on load: an unknown key, a value of the wrong type, or a stage that requires a stage
that does not exist is an error naming the file and the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hpo import models
from hpo.errors import ConfigError

STAGE_ORDER: tuple[str, ...] = ("baseline", "lr_range", "weight_decay", "components", "final")
COMPONENT_SWEEPS: tuple[str, ...] = ("init", "activation", "norm", "optimizer")


@dataclass(frozen=True, kw_only=True)
class DataSection:
    source: str = "synthetic"
    rows: int | None = None
    seed: int = 42
    split: str = "stratified"
    file: str | None = None


@dataclass(frozen=True, kw_only=True)
class Defaults:
    """The configuration the first stage starts from; later stages update it."""

    hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    norm: str = "none"
    init: str = "default"
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    seed: int = 42
    precision: str = "fp32"  # "fp32" | "bf16" (CPU autocast; tested to stay within fp32's noise)


@dataclass(frozen=True, kw_only=True)
class BaselineStage:
    requires: list[str] = field(default_factory=list)
    architectures: list[list[int]] = field(default_factory=lambda: [[128, 128], [256, 256], [256, 128, 64]])
    epochs: int = 1
    max_batches: int | None = 15
    eval_every: int | None = 5


@dataclass(frozen=True, kw_only=True)
class LrRangeStage:
    requires: list[str] = field(default_factory=lambda: ["baseline"])
    end_lr: float = 1.0
    num_iter: int | None = None  # default: one epoch of batches
    smooth_f: float = 0.05
    diverge_th: float = 5.0
    skip_start: int = 10
    skip_end: int = 5
    verify_epochs: int = 5


@dataclass(frozen=True, kw_only=True)
class WeightDecayStage:
    requires: list[str] = field(default_factory=lambda: ["lr_range"])
    grid: list[float] = field(default_factory=lambda: [0.0, 1e-5, 1e-4, 1e-3, 1e-2])
    folds: int = 5
    epochs: int = 10
    pruner: str = "none"  # "none" | "median" (prunes between folds: one trial at a time, unstacked)
    stack: int = 5  # grid points trained together (x folds models); 1 = one trial at a time


@dataclass(frozen=True, kw_only=True)
class ComponentsStage:
    requires: list[str] = field(default_factory=lambda: ["weight_decay"])
    epochs: int = 15
    init: list[str] = field(default_factory=lambda: list(models.INITS))
    activation: list[str] = field(default_factory=lambda: list(models.ACTIVATIONS))
    norm: list[str] = field(default_factory=lambda: list(models.NORMS))
    optimizer: list[str] = field(default_factory=lambda: list(models.OPTIMIZERS))
    stack: int = 3  # choices of a sweep trained together (those sharing an optimizer); 1 = one at a time


@dataclass(frozen=True, kw_only=True)
class FinalStage:
    requires: list[str] = field(default_factory=lambda: ["components"])
    epochs: int = 15
    patience: int = 5


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    name: str
    path: str
    description: str = ""
    data: DataSection = field(default_factory=DataSection)
    defaults: Defaults = field(default_factory=Defaults)
    baseline: BaselineStage = field(default_factory=BaselineStage)
    lr_range: LrRangeStage = field(default_factory=LrRangeStage)
    weight_decay: WeightDecayStage = field(default_factory=WeightDecayStage)
    components: ComponentsStage = field(default_factory=ComponentsStage)
    final: FinalStage = field(default_factory=FinalStage)

    def stage(self, name: str) -> Any:
        return getattr(self, name)

    def requires(self, name: str) -> list[str]:
        required: list[str] = self.stage(name).requires
        return required


_STAGE_CLASSES: dict[str, type] = {
    "baseline": BaselineStage,
    "lr_range": LrRangeStage,
    "weight_decay": WeightDecayStage,
    "components": ComponentsStage,
    "final": FinalStage,
}


def _type_ok(value: Any, annotation: str) -> bool:
    kinds = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "list[int]": lambda v: (
            isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        ),
        "list[float]": lambda v: (
            isinstance(v, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
        ),
        "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "list[list[int]]": lambda v: (
            isinstance(v, list)
            and all(isinstance(x, list) and x and all(isinstance(h, int) and h > 0 for h in x) for x in v)
        ),
    }
    options = [a.strip() for a in annotation.split("|")]
    if value is None:
        return "None" in options
    return any(kinds[o](value) for o in options if o != "None")


def _build(cls: type, table: Mapping[str, Any], *, file: str, section: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{file}: [{section}] must be a table")
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{file}: unknown key {section}.{key}; known keys: {', '.join(sorted(known))}")
        annotation = str(known[key].type)
        if not _type_ok(value, annotation):
            raise ConfigError(f"{file}: {section}.{key} = {value!r} must be of type {annotation}")
        if annotation == "float":
            value = float(value)
        elif annotation == "list[float]":
            value = [float(v) for v in value]
        values[key] = value
    return cls(**values)


def _check_choices(file: str, key: str, values: list[str], allowed: tuple[str, ...]) -> None:
    for v in values:
        if v not in allowed:
            raise ConfigError(f"{file}: {key} has {v!r}; use values from: {', '.join(allowed)}")


def load(path: Path | str) -> PipelineConfig:
    """Load and validate a study file."""
    file = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such study file; see studies/ for the shipped ones") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc}); fix the syntax") from None
    allowed_top = {"pipeline", "data", "defaults", "stages"}
    for key in raw:
        if key not in allowed_top:
            raise ConfigError(
                f"{file}: unknown key {key}; top-level tables: {', '.join(sorted(allowed_top))}"
            )
    pipeline = raw.get("pipeline", {})
    if not isinstance(pipeline, dict) or not isinstance(pipeline.get("name"), str) or not pipeline["name"]:
        raise ConfigError(f"{file}: pipeline.name is required (a string naming the pipeline)")
    for key in pipeline:
        if key not in ("name", "description"):
            raise ConfigError(f"{file}: unknown key pipeline.{key}; known keys: description, name")
    name = pipeline["name"]
    if not all(c.isalnum() or c in "-_" for c in name):
        raise ConfigError(f"{file}: pipeline.name = {name!r} may hold only letters, digits, '-' and '_'")

    data = _build(DataSection, raw.get("data", {}), file=file, section="data")
    if data.source not in ("msd", "synthetic"):
        raise ConfigError(f"{file}: data.source = {data.source!r}; use 'msd' or 'synthetic'")
    if data.split not in ("stratified", "official"):
        raise ConfigError(f"{file}: data.split = {data.split!r}; use 'stratified' or 'official'")
    defaults = _build(Defaults, raw.get("defaults", {}), file=file, section="defaults")
    _check_choices(file, "defaults.activation", [defaults.activation], models.ACTIVATIONS)
    _check_choices(file, "defaults.norm", [defaults.norm], models.NORMS)
    _check_choices(file, "defaults.init", [defaults.init], models.INITS)
    _check_choices(file, "defaults.optimizer", [defaults.optimizer], models.OPTIMIZERS)

    stages_raw = raw.get("stages", {})
    if not isinstance(stages_raw, dict):
        raise ConfigError(f"{file}: [stages] must be a table of stage tables")
    stages: dict[str, Any] = {}
    for stage_name in stages_raw:
        if stage_name not in _STAGE_CLASSES:
            raise ConfigError(
                f"{file}: unknown stage stages.{stage_name}; stages are: {', '.join(STAGE_ORDER)}"
            )
    for stage_name, cls in _STAGE_CLASSES.items():
        stages[stage_name] = _build(
            cls, stages_raw.get(stage_name, {}), file=file, section=f"stages.{stage_name}"
        )
    for stage_name, stage in stages.items():
        for req in stage.requires:
            if req not in _STAGE_CLASSES:
                raise ConfigError(
                    f"{file}: stages.{stage_name}.requires names {req!r}, which is not a stage; "
                    f"stages are: {', '.join(STAGE_ORDER)}"
                )
            if STAGE_ORDER.index(req) >= STAGE_ORDER.index(stage_name):
                raise ConfigError(
                    f"{file}: stages.{stage_name}.requires names {req!r}, which runs after it; "
                    f"the order is {' -> '.join(STAGE_ORDER)}"
                )
    comp = stages["components"]
    for sweep, allowed in zip(
        COMPONENT_SWEEPS, (models.INITS, models.ACTIVATIONS, models.NORMS, models.OPTIMIZERS), strict=True
    ):
        choices = getattr(comp, sweep)
        if not choices:
            raise ConfigError(f"{file}: stages.components.{sweep} needs at least one choice")
        _check_choices(file, f"stages.components.{sweep}", choices, allowed)
    if not stages["baseline"].architectures:
        raise ConfigError(f"{file}: stages.baseline.architectures needs at least one architecture")
    if not stages["weight_decay"].grid or min(stages["weight_decay"].grid) < 0:
        raise ConfigError(f"{file}: stages.weight_decay.grid needs at least one value >= 0")
    if stages["weight_decay"].folds < 2:
        raise ConfigError(f"{file}: stages.weight_decay.folds must be at least 2")
    if stages["weight_decay"].pruner not in ("none", "median"):
        raise ConfigError(f"{file}: stages.weight_decay.pruner must be 'none' or 'median'")
    if defaults.precision not in ("fp32", "bf16"):
        raise ConfigError(f"{file}: defaults.precision = {defaults.precision!r}; use 'fp32' or 'bf16'")
    for stage_name in ("weight_decay", "components"):
        if stages[stage_name].stack < 1:
            raise ConfigError(f"{file}: stages.{stage_name}.stack must be at least 1 (1 = no stacking)")
    return PipelineConfig(
        name=name,
        path=file,
        description=str(pipeline.get("description", "")),
        data=data,
        defaults=defaults,
        **stages,
    )
