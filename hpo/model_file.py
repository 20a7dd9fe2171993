"""The saved-model file (written and read here only): everything ``hpo predict`` needs, loadable
with ``torch.load(..., weights_only=True)``.

One file for every family and task: the family's payload per member (an MLP's or a user module's
weights, a scikit-learn estimator as skops bytes; one member, or the members of an ensemble, whose
outputs the task combines: :meth:`hpo.tasks.Task.combine`), the carried configuration it was trained with, the
task (classes, or the target's standardisation), the feature scaler, the feature and class names
and how a target column maps to classes. Nothing in it is unpickled: tensors, strings, numbers,
lists and dicts only (``weights_only``), and a scikit-learn estimator through skops with its
types checked (:mod:`hpo.families.sklearn_api`). Files of format 2 (an MLP classifier, before
families existed) and 3 (one model) still load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from hpo.errors import DataFileError, HpoError
from hpo.settings import RunConfig, lookup
from hpo.tasks import Task, from_record

MODEL_FORMAT = "hpo-model/4"
_FORMAT_3 = "hpo-model/3"  # one model: "payload" instead of "payloads"
_FORMAT_2 = "hpo-model/2"  # an MLP classifier: state_dict and model_config at the top level


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

    def config(self) -> RunConfig:
        return RunConfig.model_validate(self.run_config)

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

        cfg = self.config()
        if self.family != cfg.family:
            raise HpoError(
                f"{self.origin}: the model file says family {self.family!r} but was trained as {cfg.family!r}"
            )
        if not self.payloads:
            raise HpoError(f"{self.origin}: the model file holds no model; export it again")
        family = lookup(FAMILIES, self.family, "family")
        try:
            return [
                family.restore(
                    payload,
                    cfg,
                    n_features=len(self.feature_names),
                    n_outputs=self.task_of().n_outputs,
                    trusted=trusted,
                )
                for payload in self.payloads
            ]
        except ValueError as exc:
            raise HpoError(f"{self.origin}: the model cannot be loaded: {exc}") from None

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

    def outputs(self, x: npt.NDArray[np.floating[Any]], *, trusted: Sequence[str] = ()) -> torch.Tensor:
        """The model's raw outputs for raw (unscaled) feature rows (an ensemble's: its members'
        combined by the task)."""
        from hpo.families import FAMILIES

        family = lookup(FAMILIES, self.family, "family")
        task = self.task_of()
        rows = torch.as_tensor(self.scale(x))
        outs = [family.outputs(m, rows, task.n_outputs).cpu() for m in self.models(trusted=trusted)]
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
    torch.save(payload, path)


def load_model_file(path: Path) -> ModelFile:
    """Read a model file written by :func:`save_model_file` (``torch.load(weights_only=True)``)."""
    try:
        raw = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise DataFileError(
            str(path),
            f"cannot be read as a model file ({type(exc).__name__})",
            fix="export it with hpo export-model",
        ) from None
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt not in (MODEL_FORMAT, _FORMAT_3, _FORMAT_2):
        raise DataFileError(
            str(path), f"is not an hpo model file ({MODEL_FORMAT})", fix="export it with hpo export-model"
        )
    assert isinstance(raw, dict)
    if fmt == _FORMAT_2:
        family = "mlp"
        payloads = [{"state_dict": raw["state_dict"], "model_config": raw["model_config"]}]
        task = {"kind": "classification", "class_names": list(raw["class_names"])}
    elif fmt == _FORMAT_3:
        family, payloads, task = str(raw["family"]), [dict(raw["payload"])], dict(raw["task"])
    else:
        family, task = str(raw["family"]), dict(raw["task"])
        payloads = [dict(p) for p in raw["payloads"]]
    return ModelFile(
        family=family,
        payloads=payloads,
        run_config=dict(raw["config"]),
        task=task,
        scaler_mean=raw["scaler_mean"].numpy(),
        scaler_scale=raw["scaler_scale"].numpy(),
        feature_names=list(raw["feature_names"]),
        class_names=list(raw["class_names"]),
        labeling=dict(raw["labeling"]) if raw.get("labeling") else None,
        target=str(raw["target"]),
        hpo_version=str(raw["hpo_version"]),
        origin=str(path),
    )
