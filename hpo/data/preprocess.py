"""The preprocessing that is part of a model: fit on training rows only (the split's, and each CV
fold's own), saved in the model file, applied by ``hpo predict`` to raw rows.

Written with numpy over the prepared cache's arrays (float32 numeric columns with NaN for an
empty cell, int32 category codes), with scikit-learn where it fits: :class:`hpo.data.Scaler`
(``StandardScaler``) standardises, :class:`sklearn.preprocessing.TargetEncoder` cross-fits the
target encoding. Not a ``ColumnTransformer``: what is fit must be plain arrays (the model file is
read with ``torch.load(weights_only=True)``, no pickle), the width must be the same for every
fold (folds train as one stack), and a numeric complete table must give exactly today's features.

What is fit (on ``rows`` only, nothing else is read):

* **numeric** columns: the median (fills an empty cell), an indicator column (1 where the cell
  was empty) for each column whose training rows have empty cells, then the mean and standard
  deviation (:class:`hpo.data.Scaler`, on the filled values). A numeric complete table goes
  through exactly ``Scaler.fit(x).transform(x)``: byte-identical to the scaler before (tested).
  With ``[data] scaling = "quantile"`` each numeric column (filled) is first mapped to normal
  scores by its training quantiles (:mod:`hpo.data.normal_scores`), then standardised.
* **categorical** columns: the levels seen at least :data:`MIN_FREQUENCY` times in the training
  rows are kept; rarer ones, and at predict time unseen ones, join one "infrequent" level; an
  empty cell is a level of its own where the training rows have empty cells (else infrequent).
  Each value becomes a *slot*: 0 empty, 1 infrequent, 2 + i the i-th kept level.
* **Encodings** (``encoding``, chosen by the family, :func:`hpo.data.encodings.encoding_for`):

  - ``"matrix"`` (hpo's MLP, a user's torch module, estimators without native categoricals):
    one float32 matrix. A column is one-hot (a dense block of its slots) when it keeps at most
    :data:`ONEHOT_MAX` levels or its block has at most :data:`ONEHOT_CELLS` cells over the
    training rows; otherwise it is **target encoded** (scikit-learn's ``TargetEncoder``: one
    column for a regressor or two classes, one per class otherwise), cross-fitted on the
    training rows so a near-unique level does not see its own target, and looked up from the
    full fit for every other row, so memory is rows x classes whatever the cardinality (a
    4,000-level column over 240,000 training rows: 4 MB per class, where one-hot would be
    3.9 GB). Why target encoding and not learned embeddings: it keeps the torch families'
    input a plain float matrix, so ``make(n_features, n_outputs, **params)``, stacked training
    and the ONNX graph are unchanged. Why one-hot wherever it fits: measured on a generated
    table (6,000 rows, a 300-level column carrying a per-level effect, two numeric columns,
    binary target; hpo's MLP 64x64, final stage only, 30 epochs, fp32), one-hot tested 83.00 /
    83.00 / 83.33 % over seeds 42-44 against target encoding's 80.78 / 81.11 / 80.67 %, at a
    302- against a 3-column input (5.1 MB against 0.05 MB for the 4,200 training rows).
  - ``"native"`` (HistGradientBoosting*, LightGBM): numeric columns standardised with NaN kept,
    each categorical column one float column of codes (kept levels 0..K-1, infrequent K, empty
    NaN) whose indices go to ``categorical_features`` (LightGBM: ``categorical_feature`` at fit).
    At most :data:`NATIVE_MAX_LEVELS` levels are kept (the most frequent; ``max_bins - 1`` where
    the study file sets or tunes it lower), so with the infrequent code a column has at most 255
    codes, HistGradientBoosting's limit (``max_bins``); the rest join the infrequent level.

**Folds** keep the split's layout (which indicator columns, which level has which slot, which
column is one-hot or target encoded), so every fold has the same width; within it, everything
is refit on the fold's own training rows: medians, scales, target statistics, and which levels
are known (a level absent or rare in the fold's training rows maps to infrequent, even where
the split knows it). The layout passes no statistic to a fold, only which columns exist: a
level that only the fold's held-out rows have keeps its one-hot column in that fold's matrix,
always 0 in its training rows and never set for its held-out rows (they get infrequent), and a
column whose gaps lie only in the held-out rows keeps an indicator column that is 0 in training.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from hpo.data.columns import codes_of
from hpo.data.normal_scores import NormalScores
from hpo.data.splits import Scaler
from hpo.tasks import CLASSIFICATION, task_kind

MATRIX, NATIVE = "matrix", "native"
ONEHOT, TARGET = "onehot", "target"
#: a level seen fewer times than this in the training rows joins the infrequent level
MIN_FREQUENCY = 5
#: matrix encoding: a column is one-hot encoded when it keeps at most ONEHOT_MAX levels, or when
#: its one-hot block over the training rows has at most ONEHOT_CELLS cells (64 MB in float32);
#: else it is target encoded, so memory never grows with levels x rows
ONEHOT_MAX = 32
ONEHOT_CELLS = 1 << 24
#: native encoding: the most frequent levels kept, plus the infrequent code: 255 codes
NATIVE_MAX_LEVELS = 254
#: TargetEncoder's inner folds (fewer where a class has fewer training rows)
TARGET_CV = 5
STATE_VERSION = 1
NORMAL_STATE_VERSION = 2  # with quantile normalisation (hpo.data.normal_scores)
#: ``[data] scaling``: standardise the numeric columns, or map them to normal scores first
STANDARD, QUANTILE = "standard", "quantile"


@dataclass(frozen=True)
class Categorical:
    """One categorical column's layout and what is known of it."""

    name: str
    levels: list[str]  # slot 2 + i: the i-th kept level (the split's training rows)
    missing_slot: bool  # the training rows have empty cells: a level of its own
    mode: str  # ONEHOT, TARGET or NATIVE
    known: npt.NDArray[np.bool_]  # per kept level: frequent in these rows (a fold may know fewer)

    @property
    def n_slots(self) -> int:
        return 2 + len(self.levels)

    def width(self, k: int) -> int:
        if self.mode == ONEHOT:
            return int(self.missing_slot) + 1 + len(self.levels)
        if self.mode == TARGET:
            return k
        return 1

    def slots_of_strings(self, values: pa.ChunkedArray | pa.Array) -> npt.NDArray[np.int64]:
        """Raw values (text, null for empty) as slots: a value not kept, or unseen, is 1."""
        idx = codes_of(values, self.levels).astype(np.int64)
        empty = np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        return self._slots(idx, empty)

    def _slots(self, idx: npt.NDArray[np.int64], empty: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
        known = np.concatenate([[False], self.known])  # idx -1 (not a kept level) -> infrequent
        slots = np.where(known[idx + 1], idx + 2, 1)
        slots[empty] = 0 if self.missing_slot else 1
        return slots


@dataclass
class Preprocessor:
    """What is fit on training rows: see the module docstring."""

    encoding: str
    numeric_names: list[str]
    median: npt.NDArray[np.float64]
    indicator: npt.NDArray[np.bool_]
    scaler: Scaler
    categorical: list[Categorical] = field(default_factory=list)
    n_target: int = 1  # target encoding's columns per column (1, or the classes)
    normal: NormalScores | None = None  # scaling = "quantile": normal scores before standardising
    target_tables: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)  # [n_slots, k]
    # training only: each categorical column's cache code + 1 -> slot (not saved)
    remap: list[npt.NDArray[np.int64]] = field(default_factory=list, repr=False)

    # ------------------------------------------------------------------ shape

    @property
    def width(self) -> int:
        n_ind = int(self.indicator.sum()) if self.encoding == MATRIX else 0
        return len(self.numeric_names) + n_ind + sum(c.width(self.n_target) for c in self.categorical)

    @property
    def plain(self) -> bool:
        """Numeric columns only, no indicator: exactly the standardisation of before."""
        if self.categorical or self.normal is not None:
            return False
        return not (self.encoding == MATRIX and bool(self.indicator.any()))

    def categorical_columns(self) -> tuple[int, ...]:
        """Native encoding: the output columns that are categorical (``categorical_features``)."""
        if self.encoding != NATIVE:
            return ()
        start = len(self.numeric_names)
        return tuple(range(start, start + len(self.categorical)))

    def output_names(self) -> list[str]:
        names = list(self.numeric_names)
        if self.encoding == MATRIX:
            names += [f"{n}.missing" for n, i in zip(self.numeric_names, self.indicator, strict=True) if i]
        for c in self.categorical:
            if c.mode == ONEHOT:
                names += ([f"{c.name}=(empty)"] if c.missing_slot else []) + [f"{c.name}=(infrequent)"]
                names += [f"{c.name}={v}" for v in c.levels]
            elif c.mode == TARGET:
                names += [f"{c.name}.target{k}" for k in range(self.n_target)]
            else:
                names.append(c.name)
        return names

    # ------------------------------------------------------------------ fit

    @classmethod
    def fit(
        cls,
        numeric: npt.NDArray[np.float32],
        codes: npt.NDArray[np.int32] | None,
        y: npt.NDArray[Any],
        *,
        numeric_names: Sequence[str],
        categorical_names: Sequence[str] = (),
        vocab: Sequence[Sequence[str]] = (),
        encoding: str = MATRIX,
        task: str = CLASSIFICATION.name,
        n_classes: int = 0,
        seed: int = 0,
        layout: Preprocessor | None = None,
        groups: npt.NDArray[Any] | None = None,
        strata: npt.NDArray[np.int64] | None = None,
        native_levels: int = NATIVE_MAX_LEVELS,
        scaling: str = STANDARD,
    ) -> tuple[Preprocessor, npt.NDArray[np.float32]]:
        """Fit on these rows (and only these) and return the fit with these rows' matrix (target
        encoded columns cross-fitted). ``layout``: the split's fit, whose layout a fold keeps.
        ``groups`` (with ``strata``, the classes or a regressor's deciles): the target encoding's
        inner folds keep each group whole, as every other split of hpo does. ``native_levels``:
        the most levels a column keeps under the native encoding (fewer than 254 where the
        study file sets or tunes HistGradientBoosting's ``max_bins`` below 255). ``scaling``:
        ``"quantile"`` maps each numeric column to normal scores first (:mod:`hpo.data.normal_scores`,
        fit on these rows)."""
        x = np.asarray(numeric, dtype=np.float32)
        nan = np.isnan(x)
        median = _median(x, nan)
        if layout is not None:
            indicator = layout.indicator.copy()
        else:
            indicator = np.asarray(nan.any(axis=0), dtype=bool)
            if encoding != MATRIX:  # native: the estimator takes NaN itself
                indicator[:] = False
        filled: npt.NDArray[np.floating[Any]] = _fill(x, nan, median) if encoding == MATRIX else x
        normal = NormalScores.fit(filled, seed=seed) if scaling == QUANTILE and x.shape[1] else None
        if normal is not None:
            filled = normal.transform(filled)
        scaler = Scaler.fit(filled) if x.shape[1] else Scaler(np.zeros(0), np.ones(0))
        cats: list[Categorical] = []
        remap: list[npt.NDArray[np.int64]] = []
        n_cat = 0 if codes is None else codes.shape[1]
        for j in range(n_cat):
            assert codes is not None
            col = np.asarray(codes[:, j], dtype=np.int64)
            counts = np.bincount(col + 1, minlength=len(vocab[j]) + 1)  # [0]: empty cells
            frequent = counts[1:] >= MIN_FREQUENCY
            if layout is None:
                keep = np.flatnonzero(frequent)
                if encoding == NATIVE and keep.size > native_levels:
                    order = np.argsort(-counts[1:][keep], kind="stable")[:native_levels]
                    keep = np.sort(keep[order])
                levels = [vocab[j][int(i)] for i in keep]
                cells = x.shape[0] * (keep.size + 2)
                small = keep.size <= ONEHOT_MAX or cells <= ONEHOT_CELLS
                mode = NATIVE if encoding == NATIVE else (ONEHOT if small else TARGET)
                spec = Categorical(
                    categorical_names[j], levels, bool(counts[0] > 0), mode, np.ones(len(levels), dtype=bool)
                )
            else:
                spec = layout.categorical[j]
                position = {v: i for i, v in enumerate(vocab[j])}
                known = np.array([frequent[position[v]] for v in spec.levels], dtype=bool)
                spec = replace(spec, known=known)
            cats.append(spec)
            remap.append(_remap(spec, vocab[j]))
        prep = cls(
            encoding=encoding,
            numeric_names=list(numeric_names),
            median=median,
            indicator=indicator,
            scaler=scaler,
            categorical=cats,
            n_target=1 if not task_kind(task).has_classes or n_classes <= 2 else n_classes,
            normal=normal,
            remap=remap,
        )
        slots = prep.slots_of_codes(codes)
        fitted: dict[str, npt.NDArray[np.float32]] = {}
        for j, c in enumerate(cats):
            if c.mode == TARGET:
                prep.target_tables[c.name], fitted[c.name] = _target_encode(
                    slots[:, j],
                    y,
                    c.n_slots,
                    task=task,
                    n_classes=n_classes,
                    seed=seed,
                    groups=groups,
                    strata=strata,
                )
        return prep, prep.transform(x, slots, fitted=fitted)

    # ------------------------------------------------------------------ transform

    def slots_of_codes(self, codes: npt.NDArray[np.int32] | None) -> npt.NDArray[np.int64]:
        """The cache's codes (-1 empty) as slots, through this fit's remaps."""
        if codes is None or not self.categorical:
            return np.empty((0 if codes is None else codes.shape[0], 0), dtype=np.int64)
        return np.stack(
            [
                self.remap[j][np.asarray(codes[:, j], dtype=np.int64) + 1]
                for j in range(len(self.categorical))
            ],
            axis=1,
        )

    def transform(
        self,
        numeric: npt.NDArray[np.floating[Any]],
        slots: npt.NDArray[np.int64] | None = None,
        *,
        fitted: Mapping[str, npt.NDArray[np.float32]] | None = None,
    ) -> npt.NDArray[np.float32]:
        """The model's input for rows of numeric values (NaN empty) and categorical slots."""
        x = np.asarray(numeric, dtype=np.float32)
        nan = np.isnan(x) if self.encoding == MATRIX else None
        values: npt.NDArray[np.floating[Any]] = x if nan is None else _fill(x, nan, self.median)
        if self.normal is not None:
            values = self.normal.transform(values)
        scaled = self.scaler.transform(values) if x.shape[1] else x
        blocks = [scaled]
        if nan is not None and self.indicator.any():
            blocks.append(nan[:, self.indicator].astype(np.float32))
        for j, c in enumerate(self.categorical):
            assert slots is not None
            s = slots[:, j]
            if c.mode == ONEHOT:
                first = 0 if c.missing_slot else 1
                block = np.zeros((s.shape[0], c.width(self.n_target)), dtype=np.float32)
                block[np.arange(s.shape[0]), np.maximum(s - first, 0)] = 1.0
                blocks.append(block)
            elif c.mode == TARGET:
                table = self.target_tables[c.name]
                blocks.append(fitted[c.name] if fitted and c.name in fitted else table[s])
            else:
                codes = np.where(s == 0, np.nan, np.where(s == 1, len(c.levels), s - 2)).astype(np.float32)
                blocks.append(codes[:, None])
        if len(blocks) == 1:
            return blocks[0]
        return np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)

    # ------------------------------------------------------------------ saved

    def to_state(self) -> dict[str, Any]:
        """Tensors, strings, numbers, lists and dicts (``torch.load(weights_only=True)``)."""
        import torch

        normal = {} if self.normal is None else {"normal": self.normal.to_state()}
        return {
            # version 2 only where it matters: a file an older hpo would misread says so
            "version": STATE_VERSION if self.normal is None else NORMAL_STATE_VERSION,
            **normal,
            "encoding": self.encoding,
            "numeric_names": list(self.numeric_names),
            "median": torch.as_tensor(self.median, dtype=torch.float64),
            "indicator": torch.as_tensor(self.indicator, dtype=torch.bool),
            "mean": torch.as_tensor(self.scaler.mean, dtype=torch.float64),
            "scale": torch.as_tensor(self.scaler.scale, dtype=torch.float64),
            "n_target": self.n_target,
            "categorical": [
                {"name": c.name, "levels": list(c.levels), "missing_slot": c.missing_slot, "mode": c.mode}
                for c in self.categorical
            ],
            "target_tables": {k: torch.as_tensor(v) for k, v in self.target_tables.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Preprocessor:
        """The saved fit (KeyError, TypeError or ValueError on a malformed one)."""
        if state.get("version") not in (STATE_VERSION, NORMAL_STATE_VERSION):
            raise ValueError(
                f"preprocessor version {state.get('version')!r}, this hpo reads {STATE_VERSION} and "
                f"{NORMAL_STATE_VERSION}"
            )
        names = [str(n) for n in state["numeric_names"]]
        vectors = [np.asarray(state[k].numpy(), dtype=np.float64) for k in ("median", "mean", "scale")]
        indicator = np.asarray(state["indicator"].numpy(), dtype=bool)
        if any(v.shape != (len(names),) for v in (*vectors, indicator)):
            raise ValueError(f"its numeric statistics are not {len(names)} values, one per numeric column")
        cats = [
            Categorical(
                str(c["name"]),
                [str(v) for v in c["levels"]],
                bool(c["missing_slot"]),
                str(c["mode"]),
                np.ones(len(c["levels"]), dtype=bool),
            )
            for c in state["categorical"]
        ]
        if any(c.mode not in (ONEHOT, TARGET, NATIVE) for c in cats):
            raise ValueError("a categorical column's encoding is not one hpo reads")
        tables = {str(k): np.asarray(v.numpy(), dtype=np.float32) for k, v in state["target_tables"].items()}
        n_target = int(state["n_target"])
        for c in cats:
            if c.mode == TARGET and tables[c.name].shape != (c.n_slots, n_target):
                raise ValueError(f"the target encoding of {c.name!r} does not fit its levels")
        normal = None
        if state["version"] == NORMAL_STATE_VERSION:
            normal = NormalScores.from_state(state["normal"], len(names))
        return cls(
            encoding=str(state["encoding"]),
            numeric_names=names,
            median=vectors[0],
            indicator=indicator,
            scaler=Scaler(vectors[1], vectors[2]),
            categorical=cats,
            n_target=n_target,
            target_tables=tables,
            normal=normal,
        )


def _median(x: npt.NDArray[np.float32], nan: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Each column's median over its filled cells (0 where a fold's rows have none)."""
    out = np.zeros(x.shape[1], dtype=np.float64)
    if x.shape[0] == 0:
        return out
    gaps = nan.any(axis=0)
    if (~gaps).any():
        out[~gaps] = np.median(x[:, ~gaps], axis=0)
    for j in np.flatnonzero(gaps):
        filled = x[~nan[:, j], j]
        out[j] = float(np.median(filled)) if filled.size else 0.0
    return out


def _fill(
    x: npt.NDArray[np.float32], nan: npt.NDArray[np.bool_], median: npt.NDArray[np.float64]
) -> npt.NDArray[np.float32]:
    """Empty cells filled with the median; a complete matrix is returned as it is (no copy), so
    a numeric complete table standardises exactly as before."""
    if not nan.any():
        return x
    return np.where(nan, median.astype(np.float32), x)


def _remap(spec: Categorical, vocab: Sequence[str]) -> npt.NDArray[np.int64]:
    """Cache code + 1 -> slot, for this fit."""
    idx = codes_of(pa.array(list(vocab), type=pa.string()), spec.levels).astype(np.int64)
    slots = spec._slots(idx, np.zeros(len(vocab), dtype=bool))
    return np.concatenate([[0 if spec.missing_slot else 1], slots]).astype(np.int64)


def _target_encode(
    slots: npt.NDArray[np.int64],
    y: npt.NDArray[Any],
    n_slots: int,
    *,
    task: str,
    n_classes: int,
    seed: int,
    groups: npt.NDArray[Any] | None = None,
    strata: npt.NDArray[np.int64] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """scikit-learn's TargetEncoder on one column of slots: the lookup table for other rows
    ``[n_slots, k]`` (an unseen slot: the target's mean) and these rows' cross-fitted values."""
    from sklearn.preprocessing import TargetEncoder

    if not task_kind(task).has_classes:
        target_type, cv = "continuous", TARGET_CV
    else:
        target_type = "binary" if n_classes <= 2 else "multiclass"
        present = np.bincount(np.asarray(y, dtype=np.int64))
        smallest = int(present[present > 0].min()) if present.size else 0
        cv = max(2, min(TARGET_CV, smallest))
    splitter: Any = _splitter(task, cv, seed)
    if groups is not None:  # group-aware inner folds (hpo's own CV splitter), so no group leaks
        from hpo.data.splits import cv_folds

        labels = np.asarray(strata if strata is not None else y, dtype=np.int64)
        n_splits = max(2, min(cv, len(np.unique(groups))))
        splitter = list(cv_folds(labels, n_splits=n_splits, seed=seed, groups=groups))
    enc = TargetEncoder(target_type=target_type, cv=splitter)
    x = slots.reshape(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class with fewer rows than cv
        inner = np.asarray(enc.fit_transform(x, y), dtype=np.float32)
    k = 1 if target_type != "multiclass" else n_classes
    table = np.zeros((n_slots, k), dtype=np.float32)
    fitted = np.zeros((x.shape[0], k), dtype=np.float32)
    cols = list(range(k)) if target_type != "multiclass" else [int(c) for c in enc.classes_]
    means = np.atleast_1d(np.asarray(enc.target_mean_, dtype=np.float32))
    categories = np.asarray(enc.categories_[0], dtype=np.int64)
    for i, col in enumerate(cols):
        table[:, col] = means[i] if means.size > 1 else means[0]
        table[categories, col] = np.asarray(enc.encodings_[i], dtype=np.float32)
        fitted[:, col] = inner[:, i]
    return table, fitted


def _splitter(task: str, cv: int, seed: int) -> Any:
    """TargetEncoder's inner folds, shuffled with ``seed``: a splitter from scikit-learn 1.9
    (where ``shuffle`` and ``random_state`` are deprecated), the same folds as an int before."""
    import sklearn
    from sklearn.model_selection import KFold, StratifiedKFold

    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    if (major, minor) < (1, 9):
        return cv  # shuffle=False there: the inner folds follow the row order
    cls = StratifiedKFold if task_kind(task).has_classes else KFold
    return cls(n_splits=cv, shuffle=True, random_state=seed)
