"""The saved-model file (written and read here only): everything ``hpo predict`` needs, loadable
with ``torch.load(..., weights_only=True)``.

One file for every family and task: the family's payload per member (an MLP's or a user module's
weights, a scikit-learn estimator as skops bytes; one member, or the members of an ensemble, whose
outputs the task combines: :meth:`hpo.tasks.Task.combine`), the carried configuration it was trained with, the
task (classes, or the target's standardisation), the feature scaler, the feature and class names
and how a target column maps to classes. Nothing in it is unpickled: tensors, strings, numbers,
lists and dicts only (``weights_only``), and a scikit-learn estimator through skops with its
types checked (:mod:`hpo.families.sklearn_api`). Format 5 adds the preprocessing fit on the
training rows (:class:`hpo.data.preprocess.Preprocessor`: imputation, missing indicators,
standardisation, category levels, target encodings) and the raw input columns as read
(:class:`hpo.data.Column`), which ``hpo predict`` reads raw rows by; ``feature_names`` are those
raw columns. Format 6 adds each member's configuration (``member_configs``: a greedy ensemble's
members were tuned apart, on tracks of different families, each restored by its own
configuration's family; ``family`` is then the final stage's; a member chosen k times is held k
times, so the members' plain mean is the selection's weighted mean). Files of format 5, 4 (a
scaler, numeric complete features), 3 (one model) and 2 (an MLP classifier, before families
existed) still load, the last three as numeric-only models.

A file that is not one (random bytes, cut short, another format, a field of the wrong type), a
model that cannot be restored from it or that does not fit its own features is one line naming
the file (:class:`~hpo.errors.DataFileError`, :class:`~hpo.errors.HpoError`), never a traceback:
the file is data from outside, whatever it holds. The artifact store (``--artifacts``) is checked
before a command opens anything (:func:`check_artifact_dir`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import ValidationError

from hpo.data.columns import NUMERIC, Column
from hpo.data.preprocess import Preprocessor
from hpo.errors import DataError, DataFileError, HpoError, first_line
from hpo.families._kinds import DEFAULT_FAMILY
from hpo.settings import RunConfig, lookup
from hpo.tasks import CLASSIFICATION, Task, from_record

MODEL_FORMAT = "hpo-model/6"
_FORMAT_5 = "hpo-model/5"  # every member of one configuration
_FORMAT_4 = "hpo-model/4"  # a scaler only: numeric complete features
_FORMAT_3 = "hpo-model/3"  # one model: "payload" instead of "payloads"
_FORMAT_2 = "hpo-model/2"  # an MLP classifier: state_dict and model_config at the top level
_FIX = "export it again with hpo export-model"
#: what restoring a model or predicting with it raises on a file's bad content (a state_dict that
#: does not fit, a key missing, a shape that does not broadcast)
_BAD_CONTENT = (ValueError, RuntimeError, KeyError, TypeError, IndexError, AttributeError)


@dataclass(frozen=True)
class ModelFile:
    """A trained model and what it needs to predict from raw feature rows."""

    family: str
    payloads: list[dict[str, Any]]  # the family's, one per member (hpo.families.ModelFamily.payload)
    run_config: dict[str, Any]  # the carried configuration it was trained with (RunConfig record)
    task: dict[str, Any]  # hpo.tasks.Task.to_record()
    scaler_mean: npt.NDArray[np.float64]
    scaler_scale: npt.NDArray[np.float64]
    feature_names: list[str]
    class_names: list[str]
    labeling: dict[str, Any] | None  # how a target column maps to classes (hpo.data.Labeling)
    target: str  # the target column's name
    hpo_version: str
    origin: str = "the model file"  # where it was read from, for messages
    # format 5: the preprocessing (Preprocessor.to_state()) and the raw columns (Column.to_dict())
    preprocessor: dict[str, Any] | None = None
    columns: list[dict[str, Any]] | None = None
    # format 6: each member's configuration (RunConfig records), one per payload
    member_configs: list[dict[str, Any]] | None = None

    def config(self) -> RunConfig:
        return RunConfig.model_validate(self.run_config)

    def configs(self) -> list[RunConfig]:
        """Each member's configuration (every member's is :meth:`config` before format 6)."""
        if self.member_configs is None:
            return [self.config()] * len(self.payloads)
        return [RunConfig.model_validate(c) for c in self.member_configs]

    def prep(self) -> Preprocessor | None:
        """The preprocessing fit on the training rows (None for a file of format 4 or before:
        its scaler, :meth:`scale`)."""
        if self.preprocessor is None:
            return None
        return Preprocessor.from_state(self.preprocessor)

    def input_columns(self) -> list[Column]:
        """The raw feature columns the model reads (every feature numeric before format 5)."""
        if self.columns is None:
            return [Column(n, NUMERIC, "double") for n in self.feature_names]
        return [Column.from_dict(c) for c in self.columns]

    @property
    def n_inputs(self) -> int:
        """The model's input width (after preprocessing)."""
        prep = self.prep()
        return len(self.feature_names) if prep is None else prep.width

    def task_of(self) -> Task:
        return from_record(self.task)

    @property
    def ensemble(self) -> bool:
        return len(self.payloads) > 1

    def models(self, *, trusted: Sequence[str] = ()) -> list[Any]:
        """The trained members (``nn.Module`` in eval mode, or fitted estimators). A model of
        your module or estimator is restored only where ``trusted`` (the study file's
        ``module`` or ``estimator``, :meth:`hpo.pipeline.Pipeline.trusted`) names the one it was
        trained with: the file itself does not choose what code runs."""
        from hpo.families import FAMILIES

        configs = self.configs()
        if self.member_configs is None and self.family != configs[0].family:
            raise HpoError(
                f"{self.origin}: the model file says family {self.family!r} "
                f"but was trained as {configs[0].family!r}"
            )
        if not self.payloads:
            raise HpoError(f"{self.origin}: the model file holds no model; export it again")
        try:
            return [
                lookup(FAMILIES, cfg.family, "family").restore(
                    payload,
                    cfg,
                    n_features=self.n_inputs,
                    n_outputs=self.task_of().n_outputs,
                    trusted=trusted,
                )
                for payload, cfg in zip(self.payloads, configs, strict=True)
            ]
        except ValueError as exc:
            raise HpoError(f"{self.origin}: the model cannot be loaded: {first_line(exc, 400)}") from None
        except _BAD_CONTENT as exc:
            raise HpoError(
                f"{self.origin}: the model cannot be loaded ({type(exc).__name__}: {first_line(exc, 200)}); "
                f"{_FIX}"
            ) from None

    def model(self, *, trusted: Sequence[str] = ()) -> Any:
        """The one trained model of a file that is not an ensemble (else :meth:`models`)."""
        if self.ensemble:
            raise HpoError(
                f"{self.origin}: the model file holds an ensemble of {len(self.payloads)} models; "
                "use models() or outputs()"
            )
        return self.models(trusted=trusted)[0]

    def scale(self, x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        out = np.asarray(x, dtype=np.float32) - self.scaler_mean.astype(np.float32)
        out /= self.scaler_scale.astype(np.float32)
        return out

    def inputs(
        self, x: npt.NDArray[np.floating[Any]], slots: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.float32]:
        """The model's input for raw numeric values (NaN for an empty cell, date parts included)
        and the categorical columns' slots (:meth:`Categorical.slots_of_strings`)."""
        prep = self.prep()
        if prep is None:
            return self.scale(x)
        return prep.transform(x, slots)

    def outputs(
        self,
        x: npt.NDArray[np.floating[Any]],
        *,
        trusted: Sequence[str] = (),
        slots: npt.NDArray[np.int64] | None = None,
    ) -> torch.Tensor:
        """The model's raw outputs for raw (unscaled) feature rows (an ensemble's: its members'
        combined by the task); ``slots``: the categorical columns' (format 5)."""
        from hpo.families import FAMILIES

        task = self.task_of()
        models = self.models(trusted=trusted)
        families = [lookup(FAMILIES, c.family, "family") for c in self.configs()]
        rows = torch.as_tensor(self.inputs(x, slots))
        try:
            outs = [f.outputs(m, rows, task.n_outputs).cpu() for f, m in zip(families, models, strict=True)]
        except _BAD_CONTENT as exc:
            raise HpoError(
                f"{self.origin}: the model does not predict from its {self.n_inputs} features "
                f"({type(exc).__name__}: {first_line(exc, 200)}); {_FIX}"
            ) from None
        return outs[0] if len(outs) == 1 else task.combine(outs)


def save_model_file(path: Path, model_file: ModelFile) -> None:
    payload = {
        "format": MODEL_FORMAT,
        "hpo_version": model_file.hpo_version,
        "family": model_file.family,
        "payloads": list(model_file.payloads),
        "config": model_file.run_config,
        "task": model_file.task,
        "scaler_mean": torch.as_tensor(model_file.scaler_mean),
        "scaler_scale": torch.as_tensor(model_file.scaler_scale),
        "feature_names": list(model_file.feature_names),
        "class_names": list(model_file.class_names),
        "labeling": model_file.labeling,
        "target": model_file.target,
    }
    if model_file.preprocessor is not None:
        payload["preprocessor"] = model_file.preprocessor
        payload["columns"] = list(model_file.columns or [])
        if model_file.member_configs is None:  # one configuration: a file older hpo versions read
            payload["format"] = _FORMAT_5
        else:
            payload["member_configs"] = list(model_file.member_configs)
    elif model_file.member_configs is not None:
        raise ValueError("a model file with member configurations holds its preprocessing too")
    else:  # numeric complete features and their scaler only: a file older hpo versions read
        payload["format"] = _FORMAT_4
    torch.save(payload, path)


def load_model_file(path: Path) -> ModelFile:
    """Read a model file written by :func:`save_model_file` (``torch.load(weights_only=True)``);
    :class:`~hpo.errors.DataFileError` naming the file when it is not one."""
    try:
        raw = torch.load(path, weights_only=True)
    except Exception as exc:  # random bytes, a file cut short, pickled objects: not a model file
        raise DataFileError(
            str(path), f"cannot be read as a model file ({type(exc).__name__})", fix=_FIX
        ) from None
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt not in (MODEL_FORMAT, _FORMAT_5, _FORMAT_4, _FORMAT_3, _FORMAT_2):
        if isinstance(fmt, str) and fmt.startswith("hpo-model/"):
            raise DataFileError(
                str(path),
                f"is a model file of format {fmt!r}, which this hpo does not read "
                f"(it reads {_FORMAT_2} to {MODEL_FORMAT})",
                fix=f"use the hpo that wrote it, or {_FIX}",
            )
        raise DataFileError(str(path), f"is not an hpo model file ({MODEL_FORMAT})", fix=_FIX)
    assert isinstance(raw, dict)
    field = _Fields(raw, str(path))
    if fmt == _FORMAT_2:
        family = DEFAULT_FAMILY  # format 2 held hpo's MLP only
        payloads = [
            {"state_dict": field.get("state_dict", dict), "model_config": field.get("model_config", dict)}
        ]
        task: dict[str, Any] = {"kind": CLASSIFICATION.name, "class_names": field.strings("class_names")}
    elif fmt == _FORMAT_3:
        family, payloads, task = (
            field.get("family", str),
            [field.get("payload", dict)],
            field.get("task", dict),
        )
    else:
        family, task = field.get("family", str), field.get("task", dict)
        payloads = field.get("payloads", list)
        if not payloads or not all(isinstance(p, dict) for p in payloads):
            raise field.bad("payloads", "is not a list of the members' payloads")
    feature_names = field.strings("feature_names")
    preprocessor: dict[str, Any] | None = None
    columns: list[dict[str, Any]] | None = None
    n_scaled = len(feature_names)
    member_configs: list[dict[str, Any]] | None = None
    if fmt == MODEL_FORMAT:
        member_configs = field.get("member_configs", list)
        if len(member_configs) != len(payloads) or not all(isinstance(c, dict) for c in member_configs):
            raise field.bad("member_configs", "is not one configuration per member")
    if fmt in (MODEL_FORMAT, _FORMAT_5):
        preprocessor = field.get("preprocessor", dict)
        columns = field.get("columns", list)
        try:
            prep = Preprocessor.from_state(preprocessor)
            parsed = [Column.from_dict(c) for c in columns]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise field.bad("preprocessor", f"is not one hpo reads ({first_line(exc, 160)})") from None
        if [c.name for c in parsed] != feature_names:
            raise field.bad("columns", "do not match its feature_names")
        n_scaled = len(prep.numeric_names)
    scaler = [field.vector(key, n_scaled) for key in ("scaler_mean", "scaler_scale")]
    labeling = raw.get("labeling")
    if labeling is not None and not isinstance(labeling, dict):
        raise field.bad("labeling", "is not a table")
    model_file = ModelFile(
        family=family,
        payloads=[dict(p) for p in payloads],
        run_config=field.get("config", dict),
        task=dict(task),
        scaler_mean=scaler[0],
        scaler_scale=scaler[1],
        feature_names=feature_names,
        class_names=field.strings("class_names"),
        labeling=dict(labeling) if labeling else None,
        target=field.get("target", str),
        hpo_version=field.get("hpo_version", str),
        origin=str(path),
        preprocessor=preprocessor,
        columns=columns,
        member_configs=[dict(c) for c in member_configs] if member_configs is not None else None,
    )
    try:
        model_file.configs()
        model_file.config()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(k) for k in first["loc"])
        raise field.bad("config", f"is not a configuration hpo reads ({where}: {first['msg']})") from None
    try:
        model_file.task_of()
    except (KeyError, TypeError, ValueError) as exc:
        raise field.bad("task", f"is not a task hpo reads ({first_line(exc)})") from None
    return model_file


class _Fields:
    """The fields of a raw model file, each checked for its type (DataFileError naming it)."""

    def __init__(self, raw: dict[str, Any], file: str) -> None:
        self.raw = raw
        self.file = file

    def bad(self, key: str, problem: str) -> DataFileError:
        return DataFileError(self.file, f"is not a valid model file: its {key!r} {problem}", fix=_FIX)

    def get(self, key: str, kind: type[Any]) -> Any:
        if key not in self.raw:
            raise self.bad(key, "is missing")
        value = self.raw[key]
        if not isinstance(value, kind):
            raise self.bad(key, f"is of type {type(value).__name__}, not {kind.__name__}")
        return value

    def strings(self, key: str) -> list[str]:
        value = self.get(key, list)
        if not all(isinstance(v, str) for v in value):
            raise self.bad(key, "is not a list of names")
        return list(value)

    def vector(self, key: str, size: int) -> npt.NDArray[np.float64]:
        value = self.get(key, torch.Tensor)
        if value.ndim != 1 or value.numel() != size or not value.is_floating_point():
            raise self.bad(key, f"is not {size} numbers, one per feature")
        return np.asarray(value.numpy(), dtype=np.float64)


# --------------------------------------------------------------------------- the artifact store


def check_artifact_dir(path: Path) -> None:
    """That ``path`` can be the artifact store (a writable directory, or one that can be made
    there); :class:`~hpo.errors.DataError` naming it and the fix otherwise. Writes nothing."""
    shown = str(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"--artifacts {shown}: is not a directory; pass a directory for the model files")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(
            f"--artifacts {shown}: {existing} is not a directory; pass a directory for the model files"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be made ({existing} is not writable)"
        raise DataError(f"--artifacts {shown}: {what}; pass a directory you can write to")


def read_model_artifact(
    store: Any, artifact_id: str, path: Path, *, where: str = "", stage: str = "final"
) -> ModelFile:
    """Download the model file ``artifact_id`` of the artifact store ``store`` (the directory
    ``where``) to ``path`` and read it; one line when the store does not hold it (another
    ``--artifacts``) or it is not a model file (``stage``: the final stage, which makes it again)."""
    from optuna.artifacts import download_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    try:
        download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact_id)
    except ArtifactNotFound:
        in_store = f"the artifact store {where}" if where else "the artifact store"
        raise DataError(
            f"the final model (artifact {artifact_id}) is not in {in_store}; pass the --artifacts "
            "directory (or $HPO_ARTIFACTS) the pipeline ran with"
        ) from None
    origin = f"the final model (artifact {artifact_id})"
    try:
        model_file = load_model_file(path)
    except DataFileError as exc:
        raise DataFileError(
            origin + (f" in {where}" if where else ""),
            exc.problem,
            fix=f"train it again: hpo run-stage {stage} --force",
        ) from None
    return dataclasses.replace(model_file, origin=origin)
