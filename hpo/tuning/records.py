"""What hpo keeps in the storage: namespaced attribute keys, and typed writers and readers.

Every user attribute hpo writes is named here (``hpo:...``, as optuna-integration's
LightGBMTuner names its ``lightgbm_tuner:...`` keys), so stages, the runner, figures, the report
and predict agree on one spelling. The carried configuration is written and read back in one
place (:func:`write_config` / :func:`read_config`), and so is a stage's selection.

A stage's settings are stored with its study when it is created, with their fingerprint; a
later run with other settings is refused (:func:`settings_drift`), so a pipeline never mixes
trials of two configurations.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna

from hpo.settings import RunConfig
from hpo.tasks import CLASSIFICATION

# study attributes
STAGE = "hpo:stage"
KIND = "hpo:kind"
SETTINGS = "hpo:settings"
FINGERPRINT = "hpo:fingerprint"
CARRIED_IN = "hpo:carried_in"
SELECTION = "hpo:selection"
COMPLETE = "hpo:complete"
VAL_LABELS = "hpo:val_labels"  # the validation rows' targets (packed), for paired comparisons
N_CLASSES = "hpo:n_classes"
TASK = "hpo:task"  # the pipeline's task (hpo.tasks.Task.to_record); absent: classification
TEST_METRICS = "hpo:test_metrics"
MODEL_ARTIFACT = "hpo:model_artifact"

# trial attributes written by the runner
POINT = "hpo:point"
WORKER = "hpo:worker"
WORKER_PLACE = "hpo:worker_place"  # host, pid and Slurm job of a registry entry
ERROR = "hpo:error"
INTERRUPTED = "hpo:interrupted"
DUPLICATE_OF = "hpo:duplicate_of"

# trial attributes written by stages
CONFIG = "hpo:config"
TRAIN = "hpo:train"
HISTORY = "hpo:history"
SCORE = "hpo:score"  # the stage's metric of the trial (its objective value, also when pruned)
FOLD_SCORES = "hpo:fold_scores"
SEED_SCORES = "hpo:seed_scores"
MEAN = "hpo:mean"
STD = "hpo:std"
VAL_PREDICTIONS = "hpo:val_predictions"  # at the scored evaluation (packed)
VAL_LOSSES = "hpo:val_losses"  # per-row cross-entropy at the scored evaluation (packed float16)
#: the artifact id of the raw validation outputs at the scored evaluation (float32 .npy), stored for
#: the stages a greedy final draws its library from (hpo.stages._scoring.read_outputs)
VAL_OUTPUTS = "hpo:val_outputs"
#: the artifact id of a library trial's trained models (its seeds' family payloads, torch-saved,
#: read back with ``weights_only``), stored for the stages a greedy final with ``retrain = false``
#: draws its members from (hpo.stages._scoring.read_models); its ``hpo:val_outputs`` are then
#: those models' own outputs
TRIAL_MODELS = "hpo:trial_models"
#: the final stage's greedy ensemble: its members (stage, trial, configuration, weight)
MEMBERS = "hpo:members"
VAL_ACCURACY = "hpo:val_accuracy"
CURVE = "hpo:curve"
SUGGESTED_LR = "hpo:suggested_lr"
RANGE_DIVERGED = "hpo:range_diverged"
VERIFICATION_DIVERGED = "hpo:verification_diverged"
#: the validation score of a model that learned nothing (the majority class's share; the RMSE of
#: the training mean): a verification that does not beat it learned nothing
TRIVIAL_SCORE = "hpo:trivial_score"
MAJORITY_SHARE = "hpo:majority_share"  # what studies made before tasks existed stored instead
BEST_EPOCH = "hpo:best_epoch"
PARAMETERS = "hpo:parameters"
SEED_TEST_METRICS = "hpo:seed_test_metrics"
# study attribute: why a search asked fewer than n_trials (hpo.tuning.budget)
STOPPED_ASKING = "hpo:stopped_asking"


def point_key(point: Mapping[str, Any]) -> str:
    """A grid point as a stable string (the same point, the same key, in every process)."""
    return json.dumps(dict(point), sort_keys=True)


def write_config(trial: optuna.Trial, config: RunConfig) -> None:
    trial.set_user_attr(CONFIG, config.to_record())


def read_config(attrs: Mapping[str, Any], key: str = CONFIG) -> RunConfig:
    return RunConfig.model_validate(attrs[key])


# --------------------------------------------------------------------------- selections


@dataclass(frozen=True)
class Evidence:
    """How sure a selection is: the runner-up, the difference, a 95 % interval for it, the method."""

    runner_up: dict[str, Any]
    metric: str
    difference: float  # selected minus runner-up, in the direction where larger is better
    low: float
    high: float
    method: str
    n: int  # folds, seeds or validation rows the interval rests on

    @property
    def within_noise(self) -> bool:
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {
            "runner_up": self.runner_up,
            "metric": self.metric,
            "difference": self.difference,
            "interval": [self.low, self.high],
            "method": self.method,
            "n": self.n,
            "within_noise": self.within_noise,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Evidence:
        low, high = d["interval"]
        return cls(
            runner_up=dict(d["runner_up"]),
            metric=str(d["metric"]),
            difference=float(d["difference"]),
            low=float(low),
            high=float(high),
            method=str(d["method"]),
            n=int(d["n"]),
        )


@dataclass(frozen=True)
class Selection:
    """What a stage chose, why, and the configuration it hands on."""

    selected: dict[str, Any]
    reason: str
    config_out: RunConfig
    evidence: Evidence | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # shown with the selection (scores, ...)

    def to_dict(self) -> dict[str, Any]:
        return {
            "selected": self.selected,
            "reason": self.reason,
            "config_out": self.config_out.to_record(),
            "evidence": self.evidence.to_dict() if self.evidence else None,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Selection:
        return cls(
            selected=dict(d["selected"]),
            reason=str(d["reason"]),
            config_out=RunConfig.model_validate(d["config_out"]),
            evidence=Evidence.from_dict(d["evidence"]) if d.get("evidence") else None,
            extra=dict(d.get("extra", {})),
        )


def write_selection(study: optuna.Study, selection: Selection) -> None:
    study.set_user_attr(SELECTION, selection.to_dict())


def read_selection(study_attrs: Mapping[str, Any]) -> Selection | None:
    raw = study_attrs.get(SELECTION)
    return Selection.from_dict(raw) if raw else None


def is_complete(study: optuna.Study | None) -> bool:
    return study is not None and bool(study.user_attrs.get(COMPLETE))


# --------------------------------------------------------------------------- settings drift


def fingerprint(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k in value:
            _flatten(f"{prefix}.{k}" if prefix else str(k), value[k], out)
    else:
        out[prefix] = value


def _range_precision(current: Mapping[str, Any]) -> Any:
    """The precision an LR range test runs in: its own, or the carried configuration's."""
    own = current.get("stage.range_precision")
    return own if own is not None else current.get("carried_in.precision", current.get("defaults.precision"))


#: Settings a later hpo added, by their full key in a stage's stored settings, with what a study
#: made before meant: a stored study without the key is refused only if the current value means
#: something else. ``data.task`` came with regression (before: classification); an LR range
#: test's ``range_precision`` came when the range test began to honour precision (before, it
#: ran in fp32 whatever the configuration said); a final stage's ``ensemble`` came with
#: ensembles (before: the first seed's model alone).
ADDED_LATER: dict[str, tuple[Any, Callable[[Mapping[str, Any]], Any]]] = {
    "data.task": (CLASSIFICATION.name, lambda current: current.get("data.task")),
    "stage.range_precision": ("fp32", _range_precision),
    "stage.ensemble": (False, lambda current: current.get("stage.ensemble")),
}

#: Settings that decide how long a stage runs, not what its trials mean: a study resumes under
#: any value of them (a search given more time goes on asking).
NOT_COMPARED = frozenset({"stage.timeout"})


def settings_drift(stored: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first setting that differs, with its stored and current values; None if they agree."""
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _flatten("", stored, a)
    _flatten("", current, b)
    for key in sorted(set(a) | set(b)):
        if key in NOT_COMPARED:
            continue
        if key not in a and key in ADDED_LATER:
            before, meaning = ADDED_LATER[key]
            now = meaning(b)
            if now != before:
                return key, before, now
            continue
        if a.get(key) != b.get(key):
            return key, a.get(key), b.get(key)
    return None


# --------------------------------------------------------------------------- compact arrays


def pack_labels(values: npt.NDArray[np.integer[Any]]) -> str:
    """Class indices (validation predictions) as a compact string for a user attribute:
    uint8/uint16, zlib-compressed, base64 (77,302 predictions take ~30 kB)."""
    arr = np.asarray(values)
    dtype = np.uint8 if arr.size == 0 or int(arr.max()) < 256 else np.uint16
    raw = zlib.compress(arr.astype(dtype).tobytes(), 6)
    return f"{np.dtype(dtype).name}:" + base64.b64encode(raw).decode("ascii")


def unpack_labels(text: str) -> npt.NDArray[np.int64]:
    dtype, _, payload = text.partition(":")
    return np.frombuffer(zlib.decompress(base64.b64decode(payload)), dtype=dtype).astype(np.int64)


def pack_floats(values: npt.NDArray[np.floating[Any]], dtype: type[np.floating[Any]] = np.float16) -> str:
    """Per-row values, zlib-compressed, base64: float16 for per-row losses (paired comparisons
    need no more), float32 for a regressor's predictions (float16 would round a standardised
    value of 2-4 to 0.002, the size of the differences compared)."""
    raw = zlib.compress(np.asarray(values, dtype=dtype).tobytes(), 6)
    return f"{np.dtype(dtype).name}:" + base64.b64encode(raw).decode("ascii")


def unpack_floats(text: str) -> npt.NDArray[np.float64]:
    dtype, _, payload = text.partition(":")
    return np.frombuffer(zlib.decompress(base64.b64decode(payload)), dtype=dtype).astype(np.float64)
