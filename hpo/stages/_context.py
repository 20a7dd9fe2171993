"""What a stage is given: the storage, the artifact store, progress, and the rows it may train on.

The test rows are not handed out with the others: :meth:`StageData.read_test_rows` is the one
audited way to them, which the ``final`` kind calls once per model and which records every
caller, so a test can prove that no other stage saw them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial

from hpo import data
from hpo.data.encodings import describe_columns
from hpo.data.preprocess import MATRIX, NATIVE_MAX_LEVELS, STANDARD, Preprocessor
from hpo.families import family_of
from hpo.present.progress import LogProgress, Progress
from hpo.sections import DataSettings
from hpo.settings import RunConfig, TrainPrecision
from hpo.tasks import Regression, Task, balanced_class_weights
from hpo.training import TensorData, precision, resolve_device
from hpo.tuning.budget import TimeLimit
from hpo.tuning.numerics import Numerics
from hpo.tuning.stopping import Deadline

logger = logging.getLogger(__name__)


class StageData:
    """The rows stages train and validate on, preprocessed by a fit on training rows only: the
    split's training rows for train/val/test, each CV fold's own training rows for its fold
    (:class:`hpo.data.preprocess.Preprocessor`; on a numeric complete table, exactly the
    scaler's standardisation). ``encoding``: what the family takes (a float matrix, or native
    categorical codes, :func:`hpo.data.encodings.encoding_for`).

    Targets are what the task trains on: class indices, or the target standardised with the
    training rows' mean and standard deviation (:class:`hpo.tasks.Regression`)."""

    def __init__(
        self,
        prepared: data.Prepared,
        encoding: str = MATRIX,
        native_levels: int = NATIVE_MAX_LEVELS,
        scaling: str = STANDARD,
    ) -> None:
        self._prepared = prepared
        self.encoding = encoding
        self.native_levels = native_levels
        self.scaling = scaling
        self._folds: dict[tuple[int, int], list[TensorData]] = {}
        self.test_reads: list[str] = []  # who read the test rows (audit)
        self.fit_rows: list[npt.NDArray[np.int64]] = []  # rows each preprocessor was fit on (audit)

    @property
    def n_features(self) -> int:
        """The model's input width (the split's preprocessing; every fold has the same)."""
        return self.preprocessor.width

    @property
    def n_classes(self) -> int:
        return self._prepared.n_classes

    @cached_property
    def task(self) -> Task:
        return self._prepared.task

    @property
    def n_outputs(self) -> int:
        return self.task.n_outputs

    @property
    def class_names(self) -> list[str]:
        return self._prepared.class_names

    @property
    def feature_names(self) -> list[str]:
        return self._prepared.feature_names

    @property
    def input_columns(self) -> list[data.Column]:
        """The raw feature columns the model reads (what ``hpo predict`` matches by name)."""
        return self._prepared.columns

    @property
    def meta(self) -> dict[str, object]:
        return self._prepared.meta

    @property
    def labeling(self) -> data.Labeling | None:
        return self._prepared.labeling

    @property
    def scaler(self) -> data.Scaler:
        return self._prepared.scaler

    @property
    def preprocessor(self) -> Preprocessor:
        """The preprocessing fit on the split's training rows (saved with the final model)."""
        return self._split_fit[0]

    def _y(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64] | npt.NDArray[np.float32]:
        """The targets the task trains on, of ``rows``."""
        p = self._prepared
        task = self.task
        if p.targets is None or not isinstance(task, Regression):
            return np.asarray(p.labels[rows], dtype=np.int64)
        return task.standardise(p.targets[rows])

    def _codes(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int32] | None:
        codes = self._prepared.codes
        return None if codes is None else np.asarray(codes[rows], dtype=np.int32)

    def _fit(
        self, rows: npt.NDArray[np.int64], layout: Preprocessor | None = None
    ) -> tuple[Preprocessor, npt.NDArray[np.float32]]:
        """A preprocessor fit on ``rows`` (recorded for the audit) and their matrix."""
        p = self._prepared
        self.fit_rows.append(np.asarray(rows))
        return Preprocessor.fit(
            np.asarray(p.features[rows], dtype=np.float32),
            self._codes(rows),
            self._y(rows),
            numeric_names=p.feature_names,
            categorical_names=p.categorical_names,
            vocab=p.vocab,
            encoding=self.encoding,
            task=self.task.kind,
            n_classes=p.n_classes,
            seed=int(p.meta.get("seed", 0)),
            layout=layout,
            groups=None if p.groups is None else np.asarray(p.groups[rows]),
            strata=np.asarray(p.labels[rows], dtype=np.int64),
            native_levels=self.native_levels,
            scaling=self.scaling,
        )

    def _apply(self, prep: Preprocessor, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        p = self._prepared
        return prep.transform(p.features[rows], prep.slots_of_codes(self._codes(rows)))

    @cached_property
    def _split_fit(self) -> tuple[Preprocessor, npt.NDArray[np.float32]]:
        return self._fit(self._prepared.split.train)

    @cached_property
    def _train(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[Any]]:
        """Row indices, strata (classes, or the target's deciles) and targets of the training rows."""
        p = self._prepared
        rows = p.split.train
        return (
            np.asarray(rows, dtype=np.int64),
            np.asarray(p.labels[rows], dtype=np.int64),
            self._y(rows),
        )

    @cached_property
    def _train_val(self) -> TensorData:
        p = self._prepared
        s = p.split
        prep, x_train = self._split_fit
        return TensorData.from_numpy(
            x_train,
            self._y(s.train),
            self._apply(prep, s.val),
            self._y(s.val),
            categorical=prep.categorical_columns(),
        )

    @property
    def train_rows(self) -> int:
        """How many training rows the split has (without building their tensors)."""
        return len(self._prepared.split.train)

    def train_val(self) -> TensorData:
        """Training and validation rows, preprocessed by the fit on the training rows."""
        return self._train_val

    def cv_folds(self, folds: int, seed: int) -> list[TensorData]:
        """k-fold CV over the training rows (stratified, group-aware with groups), each fold
        preprocessed by a fit on its own training part (the split's layout, so every fold has
        the same width)."""
        key = (folds, seed)
        if key not in self._folds:
            rows, strata, y = self._train
            p = self._prepared
            layout = self.preprocessor
            groups = np.asarray(p.groups[p.split.train]) if p.groups is not None else None
            out = []
            for fit_idx, held_idx in data.cv_folds(strata, n_splits=folds, seed=seed, groups=groups):
                prep, x_fit = self._fit(rows[fit_idx], layout)
                out.append(
                    TensorData.from_numpy(
                        x_fit,
                        y[fit_idx],
                        self._apply(prep, rows[held_idx]),
                        y[held_idx],
                        categorical=prep.categorical_columns(),
                    )
                )
            self._folds = {key: out}  # one fold set at a time: they hold a copy of the rows
        return self._folds[key]

    def class_weights(self, tensors: TensorData) -> list[float]:
        """Balanced class weights of the rows ``tensors`` trains on (classification)."""
        return balanced_class_weights(tensors.y_train.numpy(), self.n_classes)

    def read_test_rows(self, *, reader: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The test rows, preprocessed as the training rows. Audited: only the final stage reads them."""
        self.test_reads.append(reader)
        p = self._prepared
        logger.info("%s reads the %d test rows", reader, p.split.test.size)
        return (
            torch.as_tensor(self._apply(self.preprocessor, p.split.test)),
            torch.as_tensor(self._y(p.split.test)),
        )


def column_listing(
    prepared: data.Prepared, encoding: str, native_levels: int = NATIVE_MAX_LEVELS, scaling: str = STANDARD
) -> dict[str, Any]:
    """Every column of a prepared table as read, and what the model gets of it (the split's
    preprocessing fit on its training rows, as the pipeline fits it): ``hpo validate``, ``hpo
    data explore`` and the report's data section."""
    prep = StageData(prepared, encoding, native_levels, scaling).preprocessor
    return {
        "rows": prepared.rows,
        "dropped_target_rows": prepared.dropped_target_rows,
        "encoding": encoding,
        "model_inputs": prep.width,
        "columns": describe_columns(prepared.columns, prepared.meta.get("left_out", []), prep, prepared.rows),
    }


@dataclass
class StageContext:
    """Everything a stage needs besides its settings and the configuration it starts from."""

    pipeline: str
    study_file: str
    data_settings: DataSettings
    storage: optuna.storages.BaseStorage
    storage_url: str  # redacted
    artifacts: FileSystemArtifactStore
    data_dir: Path | None = None
    folds: int = 2  # the most CV folds any stage asks for (checked against the classes)
    progress: Progress = field(default_factory=LogProgress)
    live_workers: Callable[[], int] = field(default=lambda: 1, repr=False)  # counted from heartbeats
    workers_on_host: Callable[[], int] = field(default=lambda: 1, repr=False)  # of them, on this host
    before_claim: Callable[[], None] = field(default=lambda: None, repr=False)  # e.g. share the cores
    deadline: Deadline | None = None  # claim nothing that would not finish before it
    # a search's share of the pipeline's time budget, given its stage name and trials
    search_budget: Callable[[str, Sequence[FrozenTrial]], TimeLimit | None] = field(
        default=lambda name, trials: None, repr=False
    )
    numerics: Numerics | None = None  # the pipeline's, decided before its first training
    encoding: str = MATRIX  # what the family takes (hpo.data.encodings.encoding_for)
    native_levels: int = NATIVE_MAX_LEVELS  # levels kept per column, native (sklearn_api.native_levels)
    # stages whose trials store their validation outputs: the library of a greedy final
    library: frozenset[str] = frozenset()
    # of them, the stages whose trials also store their trained models (a final keeps them)
    kept: frozenset[str] = frozenset()
    # what each stage's track starts from (hpo.plan.Plan.base): a library trial's configuration
    # is rebuilt on its own stage's
    bases: Mapping[str, RunConfig] = field(default_factory=dict)
    _data: StageData | None = field(default=None, repr=False)

    def data(self) -> StageData:
        """The prepared rows (prepared on first use; a bad data file fails here, before any
        study is written)."""
        if self._data is None:
            prepared = data.prepare(
                self.data_settings, data_dir=self.data_dir, progressbar=False, folds=self.folds
            )
            self._data = StageData(prepared, self.encoding, self.native_levels, self.data_settings.scaling)
        return self._data

    def precision(self, cfg: RunConfig) -> TrainPrecision:
        """The precision ``cfg`` trains in: its own, or for "auto" the pipeline's numerics
        (decided once, :mod:`hpo.tuning.numerics`)."""
        if cfg.precision != "auto":
            return cfg.precision
        if not family_of(cfg).torch_based:
            return "fp32"  # an estimator has no precision setting; nothing is autocast
        return self._numerics().precision

    def compile(self, cfg: RunConfig, resolved: TrainPrecision) -> bool:
        """Whether stacks of models like ``cfg`` (trained in ``resolved`` precision) train through
        ``torch.compile``: as ``cfg.compile`` pins it, or for "auto" the pipeline's numerics for
        bf16 stacks on the CPU of a family that compiles stacks (the MLP; fp32 stays eager, equal
        to the one-model trainer; a model trained alone never compiles)."""
        if cfg.compile != "auto":
            return cfg.compile
        if not family_of(cfg).compiles_stacks or resolved != "bf16" or resolve_device(cfg.device) != "cpu":
            return False
        return self._numerics().compile

    def _numerics(self) -> Numerics:
        if self.numerics is None:
            raise RuntimeError(
                "the pipeline's numerics are not decided; a stage runs through hpo.Pipeline, which "
                "decides them before training (hpo.tuning.numerics)"
            )
        return self.numerics

    def measure_numerics(self, cfg: RunConfig, width: int) -> Numerics:
        """Probe this machine for ``cfg``'s "auto" numerics, at the pipeline's model shape (the
        MLP of ``cfg``'s layers) and nominal stack ``width``: bf16 where clearly faster
        (:func:`hpo.training.precision.probe`), then for the MLP family's bf16 stacks whether a
        compiled step is clearly faster (:func:`hpo.families.mlp.stacked.measure_compile`).
        What :func:`hpo.tuning.numerics.decide` stores for the whole pipeline."""
        stage_data = self.data()
        device = resolve_device(cfg.device)
        cpu = precision.cpu_description()
        machine = {"model": cpu["model"], "bf16_flags": cpu["bf16_flags"], "torch": torch.__version__}
        source = {"precision": "measured" if cfg.precision == "auto" else "study file"}
        measured: dict[str, Any] = {}
        resolved: TrainPrecision
        if cfg.precision != "auto":
            resolved = cfg.precision
        elif device == "cuda":
            resolved = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
            measured["cuda_bf16_supported"] = resolved == "bf16"
        else:
            dims = (stage_data.n_features, *cfg.hidden, stage_data.n_outputs)
            shape = precision.probe_shape(dims, cfg.batch_size, width)
            probe = precision.measured(shape, self.data_dir or data.default_data_dir())
            resolved = probe.pick
            measured.update(
                shape=shape.key(),
                fp32_ms=round(probe.fp32_s * 1e3, 4),
                bf16_ms=round(probe.bf16_s * 1e3, 4),
                bf16_gain=round(probe.gain, 4),
                bf16_min_gain=precision.MIN_GAIN,
            )
        source["compile"] = "measured" if cfg.compile == "auto" else "study file"
        if cfg.compile != "auto":
            compiles = cfg.compile
        elif not family_of(cfg).compiles_stacks or resolved != "bf16" or device != "cpu" or width < 2:
            compiles = False
            source["compile"] = "not a candidate"
        else:
            compiles = self._measure_compile(cfg, width, measured)
        return Numerics(resolved, compiles, source, machine, measured)

    def _measure_compile(self, cfg: RunConfig, width: int, measured: dict[str, Any]) -> bool:
        from hpo.families.mlp import stacked

        stage_data = self.data()
        model = cfg.model(n_features=stage_data.n_features, n_outputs=stage_data.n_outputs)
        w = min(width, stacked.COMPILE_PROBE_MAX_WIDTH)
        dims = "-".join(map(str, (model.n_features, *model.hidden, model.n_outputs)))
        kinds = f"{model.norm}/{model.activation}/dropout {model.dropout > 0}"
        key = f"compile {dims}/{kinds}/b{cfg.batch_size}/w{w}"
        cache = self.data_dir or data.default_data_dir()
        entry = precision.recall(cache, key)
        if entry is None or not isinstance(entry.get("gain"), int | float):
            timing = stacked.measure_compile(model, batch=cfg.batch_size, width=w, task=stage_data.task)
            entry = {
                "eager_s": round(timing.a_s, 6),
                "compiled_s": round(timing.b_s, 6) if timing.b_s < float("inf") else None,
                "gain": round(timing.gain, 4),
            }
            precision.remember(cache, key, entry)
        gain = float(entry["gain"])  # type: ignore[arg-type]
        measured.update(compile_shape=key.removeprefix("compile "), compile_gain=gain)
        measured["compile_min_gain"] = stacked.COMPILE_MIN_GAIN
        return gain >= stacked.COMPILE_MIN_GAIN

    def study_name(self, stage: str) -> str:
        return f"{self.pipeline}.{stage}"

    def find_study(self, name: str) -> optuna.Study | None:
        try:
            return optuna.load_study(study_name=name, storage=self.storage)
        except KeyError:
            return None
