"""A study file read into a :class:`Plan`: the validated sections and the stages in run order.

Each ``[stages.NAME]`` table is a stage; they run in file order, except that the ``final`` stage
always runs last (it is the one that reads the test rows). A table names its ``kind``; the
kind defaults to the table's name for the kinds' own names and for the write-up's stage names,
so study files written before kinds existed keep working: ``weight_decay`` is a ``grid_cv`` over
``weight_decay`` (a ``grid = [...]`` list is its values), and ``components`` becomes four
``sweep`` stages (``components.init``, ``.activation``, ``.norm``, ``.optimizer``).

``--set KEY=VALUE`` on the command line changes one key of the file before it is validated
(``defaults.precision=fp32``, ``pipeline.name=faithful_fp32``, ``stages.final.seeds=3``); the
value is read as a TOML value, or as a string when it is not one.

Every problem is one :class:`~hpo.errors.ConfigError` line naming the file, the key path and the
fix, raised before anything is written anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from hpo._study_toml import TOP_LEVEL, apply_overrides, read_toml
from hpo.errors import ConfigError
from hpo.families import FAMILIES, ModelFamily, tunable
from hpo.sections import DataSettings, PipelineSection, ReportSettings, StageSettings
from hpo.settings import (
    FAMILY_KEY,
    FAMILY_KEYS,
    FAMILY_SETTINGS,
    SETTINGS,
    TRAINING_SETTINGS,
    UNTUNED,
    RunConfig,
    describe_error,
    error_path,
    format_input,
    setting_kind,
)
from hpo.stages import KINDS, Stage
from hpo.stages._evaluation import EvaluatedSettings, HoldOut
from hpo.tasks import metrics_of, task_kind

LEGACY_COMPONENTS = ("init", "activation", "norm", "optimizer")
# <pipeline>.workers is the registry of live workers; <pipeline>.numerics holds the decided numerics
RESERVED = {"workers": "the worker registry", "numerics": "the pipeline's decided numerics"}
#: Stage names of the write-up whose kind is implied.
IMPLIED_KINDS = {"weight_decay": "grid_cv"}


@dataclass(frozen=True)
class Plan:
    path: str
    pipeline: PipelineSection
    data: DataSettings
    defaults: RunConfig
    report: ReportSettings
    stages: tuple[Stage, ...]  # in run order
    requires: Mapping[str, tuple[str, ...]]
    overrides: tuple[str, ...] = ()  # the --set KEY=VALUE applied to the file, in order
    # each stage's track: the configuration it starts from ([defaults], or its own family's)
    bases: Mapping[str, RunConfig] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.pipeline.name

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(
            f"{self.path}: no stage {name!r}; its stages are: {', '.join(s.name for s in self.stages)}"
        )

    def folds(self) -> int:
        return max((s.folds() for s in self.stages), default=1)

    def library(self) -> frozenset[str]:
        """The stages whose trials store their validation outputs (a greedy final's library)."""
        return frozenset(name for s in self.stages for name in s.library())

    def kept(self) -> frozenset[str]:
        """Of the library, the stages whose trials also store their trained models (a greedy
        final with ``retrain = false`` keeps them as its members)."""
        return frozenset(name for s in self.stages for name in s.kept())

    def base(self, name: str) -> RunConfig:
        """What stage ``name``'s track starts from: ``[defaults]``, or its own family's defaults."""
        return self.bases.get(name, self.defaults)

    def track_bases(self) -> list[RunConfig]:
        """Each track's configuration once, in the order of their first stages: ``[defaults]``
        only where a stage starts from it."""
        out: dict[str, RunConfig] = {}
        for stage in self.stages:
            base = self.base(stage.name)
            out.setdefault(_track_key(base), base)
        return list(out.values()) or [self.defaults]

    def same_track(self, a: str, b: str) -> bool:
        return _track_key(self.base(a)) == _track_key(self.base(b))

    def track_of(self, name: str) -> str:
        """How messages name stage ``name``'s track: its family (``family "sklearn" (...)``),
        with its params where another track has the same family and module or estimator."""
        base = self.base(name)
        same = [b for b in self.track_bases() if _describe(b) == _describe(base)]
        if len(same) < 2:
            return _describe(base)
        return f"{_describe(base)} params {json.dumps(base.params, sort_keys=True)}"

    def other_tracks(self) -> list[str]:
        """How messages name the tracks besides ``[defaults]``' (none: one family)."""
        seen: set[str] = set()
        out = []
        for stage in self.stages:  # each track once, named by its first stage
            key = _track_key(self.base(stage.name))
            if key not in seen and self.base(stage.name) is not self.defaults:
                out.append(self.track_of(stage.name))
            seen.add(key)
        return out

    def tracks(self) -> dict[str, list[str]]:
        """The stages of each track in run order, keyed by how messages name its family."""
        out: dict[str, list[str]] = {}
        for stage in self.stages:
            out.setdefault(self.track_of(stage.name), []).append(stage.name)
        return out

    def input_stage(self, name: str) -> str | None:
        """The stage whose selection ``name`` starts from (the last it requires of its own
        track), if any; a required stage of another track only has to be complete first."""
        required = [r for r in self.requires[name] if self.same_track(r, name)]
        if not required:
            return None
        order = [s.name for s in self.stages]
        return max(required, key=order.index)

    def fingerprint_material(self, stage: Stage) -> dict[str, Any]:
        """What a stage's results depend on in the study file (stored with its study)."""
        material: dict[str, Any] = {
            "stage": stage.settings.model_dump(mode="json"),
            "data": self.data.model_dump(mode="json"),
        }
        if self.input_stage(stage.name) is None:
            material["defaults"] = self.base(stage.name).to_record()
        return material


def _track_key(cfg: RunConfig) -> str:
    return json.dumps({k: getattr(cfg, k) for k in FAMILY_KEYS}, sort_keys=True)


def _describe(cfg: RunConfig) -> str:
    return FAMILIES[cfg.family].describe(cfg)


def _fail(path: str, where: str, problem: str) -> ConfigError:
    """``FILE: key.path = value: problem; fix`` (or ``FILE: key.path: problem``)."""
    if not where:
        return ConfigError(f"{path}: {problem}")
    sep = " " if problem.startswith("= ") else ": "
    return ConfigError(f"{path}: {where}{sep}{problem}")


def _validate(path: str, prefix: str, model: type[BaseModel], raw: Any) -> Any:
    if not isinstance(raw, Mapping):
        raise _fail(path, prefix, f"must be a table ([{prefix}])")
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        loc = tuple(first["loc"])
        where = error_path((prefix, *loc)) if prefix else error_path(loc)
        problem = describe_error(first)
        if first["type"] == "extra_forbidden":
            known = ", ".join(k for k in model.model_fields if k != "kind")
            problem = f"unknown key; known keys here: {known}"
        elif first["type"] != "missing" and loc:
            problem = f"= {format_input(first['input'])}: {problem}"
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise _fail(path, where, problem + more) from None


def _expand(path: str, name: str, table: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A stage table as (name, table-with-kind) pairs: the legacy forms expanded."""
    table = dict(table)
    kind = table.get("kind", IMPLIED_KINDS.get(name, name))
    if name == "components" and "kind" not in table:
        common: dict[str, Any] = {k: table.pop(k) for k in ("epochs", "stack") if k in table}
        requires = table.pop("requires", None)
        defaults = {"init": None, "activation": None, "norm": None, "optimizer": None}
        for key in table:
            if key not in defaults:
                known = ", ".join(["epochs", "stack", "requires", *LEGACY_COMPONENTS])
                raise _fail(path, f"stages.components.{key}", f"unknown key; known keys here: {known}")
        from hpo.settings import ACTIVATIONS, INITS, NORMS

        # what a components table meant when it was written: the write-up's three optimizers
        # (adamw came later and is not one of them)
        choices = {
            "init": INITS,
            "activation": ACTIVATIONS,
            "norm": NORMS,
            "optimizer": ("adam", "sgd", "rmsprop"),
        }
        out = []
        for i, sweep in enumerate(LEGACY_COMPONENTS):
            values = table.get(sweep, list(choices[sweep]))
            sub: dict[str, Any] = {"kind": "sweep", "choices": {sweep: values}, **common}
            if i == 0 and requires is not None:
                sub["requires"] = requires
            out.append((f"components.{sweep}", sub))
        return out
    if not isinstance(kind, str) or kind not in KINDS:
        if "kind" not in table:
            raise _fail(path, f"stages.{name}", f'no kind; add kind = "..." (kinds: {", ".join(KINDS)})')
        raise _fail(
            path,
            f"stages.{name}.kind",
            f"= {format_input(kind)}: unknown kind; kinds are: {', '.join(KINDS)}",
        )
    table["kind"] = kind
    if name == "weight_decay" and kind == "grid_cv" and isinstance(table.get("grid"), list):
        table["grid"] = {"weight_decay": table["grid"]}
    return [(name, table)]


def _check_family(
    shown: str, cfg: RunConfig, data: DataSettings, raw: Any, prefix: str = "defaults"
) -> ModelFamily:
    """The pipeline's family (or a track's, ``prefix`` its stage), checked before anything runs:
    its settings in ``[defaults]``, its module or estimator (importable, callable, the right kind
    for the task), its params."""
    family = FAMILIES[cfg.family]
    what = family.describe(cfg)
    given = set(raw) if isinstance(raw, Mapping) else set()
    for key in SETTINGS:
        if key in given and key not in cfg.own:
            names = ", ".join(k for k in cfg.own) + (", params" if cfg.family in FAMILY_KEY else "")
            raise _fail(
                shown,
                f"{prefix}.{key}",
                f"is not a setting of {what}; its settings are: {names} (a parameter of your module "
                "or estimator goes in params = { ... })",
            )
    key = FAMILY_KEY.get(cfg.family, "family")
    where = f"{prefix}.{key}"
    shown_value = f"= {format_input(getattr(cfg, key))}: "
    try:
        family.own_params(cfg)
    except ValueError as exc:
        raise _fail(shown, where, shown_value + str(exc)) from None
    for name, value in cfg.params.items():
        try:
            family.check_value(cfg, name, value)
        except ValueError as exc:
            raise _fail(shown, f"{prefix}.params.{name}", f"= {format_input(value)}: {exc}") from None
    try:
        family.check(cfg, data.task)
    except ValueError as exc:
        raise _fail(shown, where, shown_value + str(exc)) from None
    if not task_kind(data.task).has_classes:
        for name, plain in (("label_smoothing", 0.0), ("class_weight", "none")):
            if name in cfg.own and getattr(cfg, name) != plain:
                raise _fail(
                    shown,
                    f"{prefix}.{name}",
                    f'= {format_input(getattr(cfg, name))}: applies to task = "classification"; remove it',
                )
    return family


def _for_family(shown: str, stage: Stage, cfg: RunConfig, family: ModelFamily, data: DataSettings) -> Stage:
    """``stage`` checked against the pipeline's family and task: the kind serves the family,
    every setting it tunes is one of the family's (each value checked and typed by it), its
    metric fits the task (a stage that names none selects by the task's default metric)."""
    where = f"stages.{stage.name}"
    what = family.describe(cfg)
    if family.name not in stage.families:
        serving = [k for k, c in KINDS.items() if family.name in c.families]
        raise _fail(
            shown,
            f"{where}.kind",
            f'= "{stage.kind}": does not serve {what} (it trains torch modules); '
            f"kinds for this family: {', '.join(serving)}",
        )
    names, open_ended = tunable(cfg)
    values: dict[str, dict[str, list[Any]]] = {}
    ranges = set(stage.ranges())
    for key, settings in stage.tuned().items():
        values[key] = {}
        for name, given in settings.items():
            at = f"{where}.{key}.{name}"
            if name not in names and not (open_ended and name not in TRAINING_SETTINGS):
                raise _fail(
                    shown, at, f"is not a setting of {what}; its settings are: {', '.join(names) or '(none)'}"
                )
            classes = task_kind(data.task).has_classes
            if not classes and name in ("label_smoothing", "class_weight") and name in cfg.own:
                raise _fail(shown, at, 'applies to task = "classification"; remove it')
            typed = []
            for i, value in enumerate(given):
                try:
                    typed.append(_typed(family, cfg, name, value, is_range=name in ranges))
                except ValueError as exc:
                    raise _fail(shown, f"{at}[{i}]", f"= {format_input(value)}: {exc}") from None
            values[key][name] = typed
    settings_out = stage.with_values(values)
    metric = getattr(settings_out, "metric", None)
    if metric is not None and metric not in metrics_of(data.task):
        if "metric" in settings_out.model_fields_set:
            raise _fail(
                shown,
                f"{where}.metric",
                f'= "{metric}": not a metric of task = "{data.task}"; '
                f"its metrics are: {', '.join(metrics_of(data.task))}",
            )
        settings_out = settings_out.model_copy(update={"metric": task_kind(data.task).default_metric})
    return KINDS[stage.kind](stage.name, settings_out, task=data.task)


def _typed(family: ModelFamily, cfg: RunConfig, name: str, value: Any, *, is_range: bool) -> Any:
    """One tuned value checked by the family. A range's bound is typed by what the setting is: one
    of hpo's settings by its field, one of the family's parameters by its default's type (an
    integer default: an integer range; a float default: a float range, even with whole-number
    bounds); a parameter without a numeric default by the bounds as written."""
    if is_range:
        kind = setting_kind(name) if name in cfg.own else _kind_of((family.own_params(cfg) or {}).get(name))
        if kind == "choice":
            raise ValueError(f"{name} is not a number; give choices = [...]")
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{name} is an integer; give whole-number bounds")
            value = int(value)
        elif kind == "float":
            value = float(value)
    return family.check_value(cfg, name, value)


def _kind_of(default: Any) -> str | None:
    """A parameter's kind by its default: int, float, choice (not a number), None (no default)."""
    if default is None:
        return None
    if isinstance(default, bool) or not isinstance(default, int | float):
        return "choice"
    return "int" if isinstance(default, int) else "float"


def _check_library(shown: str, stages: Sequence[Stage]) -> None:
    """Each stage a greedy final draws its library from is a stage of the pipeline that scores
    its trials on the validation rows (whose outputs it can store)."""
    by_name = {s.name: s for s in stages}
    for stage in stages:
        for name in stage.library():
            where = f"stages.{stage.name}.members_from"
            member = by_name.get(name)
            if member is None or member is stage:
                others = ", ".join(s.name for s in stages if s is not stage)
                raise _fail(
                    shown, where, f"names {name!r}, which is not a stage before it; stages are: {others}"
                )
            settings = member.settings
            if not isinstance(settings, EvaluatedSettings) or not isinstance(settings.evaluation(), HoldOut):
                raise _fail(
                    shown,
                    where,
                    f"names {name!r}, a {member.kind} stage whose trials leave no validation outputs; "
                    "name grid, sweep or search stages scored on the validation rows (cv unset)",
                )


def _track_base(shown: str, where: str, track: Mapping[str, Any], defaults: RunConfig) -> RunConfig:
    """A track's configuration: its family's defaults, with ``[defaults]``' settings of how to train
    (seed, precision, compile, device) where its family has them."""
    shared = {k: getattr(defaults, k) for k in UNTUNED if k in FAMILY_SETTINGS[str(track["family"])]}
    try:
        return RunConfig.model_validate({**shared, **track})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        at = error_path((where, *loc)) if loc else where
        raise _fail(shown, at, describe_error(first)) from None


def load(path: Path | str, *, overrides: Sequence[str] = ()) -> Plan:
    """Read and validate a study file, with ``--set KEY=VALUE`` overrides applied first."""
    file = Path(path)
    shown = str(path)
    raw = apply_overrides(shown, read_toml(file), overrides)
    if overrides:
        shown = f"{shown} (--set {' '.join(overrides)})"
    for key in raw:
        if key not in TOP_LEVEL:
            raise _fail(shown, key, f"unknown table; top-level tables: {', '.join(TOP_LEVEL)}")
    if "pipeline" not in raw:
        raise _fail(shown, "pipeline.name", 'is required (a [pipeline] table with name = "...")')
    pipeline = _validate(shown, "pipeline", PipelineSection, raw["pipeline"])
    data = _validate(shown, "data", DataSettings, raw.get("data", {}))
    defaults = _validate(shown, "defaults", RunConfig, raw.get("defaults", {}))
    report = _validate(shown, "report", ReportSettings, raw.get("report", {}))
    stages_raw = raw.get("stages", {})
    if not isinstance(stages_raw, Mapping) or not stages_raw:
        raise _fail(shown, "stages", "needs at least one [stages.NAME] table")
    declared: list[tuple[str, dict[str, Any]]] = []
    for name, table in stages_raw.items():
        if not isinstance(table, Mapping):
            raise _fail(shown, f"stages.{name}", f"must be a table ([stages.{name}])")
        if not all(c.isalnum() or c in "-_" for c in name):
            raise _fail(shown, f"stages.{name}", "a stage name may hold only letters, digits, '-' and '_'")
        if name in RESERVED:
            raise _fail(
                shown, f"stages.{name}", f"the name {name!r} is reserved ({RESERVED[name]}); rename it"
            )
        declared.extend(_expand(shown, name, table))
    family = _check_family(shown, defaults, data, raw.get("defaults", {}))
    defaults = family.complete(defaults)
    built: list[Stage] = []
    bases: dict[str, RunConfig] = {}
    tracks: dict[str, tuple[RunConfig, ModelFamily]] = {_track_key(defaults): (defaults, family)}
    for name, table in declared:
        cls = KINDS[table["kind"]]
        settings: StageSettings = _validate(shown, f"stages.{name}", cls.settings_model, table)
        base, own = defaults, family
        declared_track = settings.track()
        if declared_track is not None:
            base = _track_base(shown, f"stages.{name}", declared_track, defaults)
            own = _check_family(shown, base, data, {}, prefix=f"stages.{name}")
            base = own.complete(base)  # keyed as completed, as [defaults] is
            base, own = tracks.setdefault(_track_key(base), (base, own))
            if base is not defaults:
                bases[name] = base
        built.append(_for_family(shown, cls(name, settings), base, own, data))
    finals = [s for s in built if s.reads_test_rows]
    if len(finals) > 1:
        raise _fail(
            shown, "stages", f"{len(finals)} final stages ({', '.join(s.name for s in finals)}); keep one"
        )
    ordered = [s for s in built if not s.reads_test_rows] + finals  # final runs last
    requires: dict[str, tuple[str, ...]] = {}
    names = [s.name for s in ordered]
    for i, stage in enumerate(ordered):
        req = stage.settings.requires
        if req is None:  # the previous stage of its track
            same = [
                s.name
                for s in ordered[:i]
                if _track_key(bases.get(s.name, defaults)) == _track_key(bases.get(stage.name, defaults))
            ]
            # and a greedy final waits for its library's stages, whatever their track
            requires[stage.name] = tuple(dict.fromkeys([*same[-1:], *stage.library()]))
            continue
        for r in req:
            if r not in names:
                raise _fail(
                    shown,
                    f"stages.{stage.name}.requires",
                    f"names {r!r}, which is not a stage; stages are: {', '.join(names)}",
                )
            if names.index(r) >= i:
                raise _fail(
                    shown,
                    f"stages.{stage.name}.requires",
                    f"names {r!r}, which runs after it; the order is {' -> '.join(names)}",
                )
        requires[stage.name] = tuple(req)
    _check_library(shown, ordered)
    return Plan(
        path=shown,
        pipeline=pipeline,
        data=data,
        defaults=defaults,
        report=report,
        stages=tuple(ordered),
        requires=requires,
        overrides=tuple(overrides),
        bases=bases,
    )
