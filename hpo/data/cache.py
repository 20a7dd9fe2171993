"""The prepared-data cache: a source read once, labelled, split and scaled, then memory-mapped.

``prepare`` turns ``[data]`` into a directory of ``.npy`` arrays plus ``meta.json``: features
(float32), class labels, group codes, the row indices of the split, and the StandardScaler fit
on its training rows. For ``task = "regression"`` the target's values are kept (``targets.npy``)
with their mean and standard deviation over the training rows (the target's standardisation),
and ``labels.npy`` holds the target's deciles (``pandas.qcut``), which stratify the split and the
CV folds as classes do. Every stage and worker opens the same directory: its name is derived from
the source's content (its SHA-256, or the synthetic generator's version, seed and size) and the
settings that shape the result, so it is found again without reading the source. The directory
is built under a temporary name and renamed into place, so a failed prepare leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pooch

from hpo.data import labels as labels_mod
from hpo.data import sources, synthetic
from hpo.data.columns import NUMERIC, Column
from hpo.data.labels import Labeling
from hpo.data.splits import Scaler, Split, head_split, stratified_split
from hpo.data.targets import regression_strata, regression_target
from hpo.errors import DataError, DataFileError
from hpo.sections import TABLE_TYPING_KEYS, DataSettings
from hpo.tasks import CLASSIFICATION, task_kind

if TYPE_CHECKING:
    from hpo.tasks import Task

logger = logging.getLogger(__name__)

CACHE_VERSION = 2
PRESETS = ("msd", "synthetic")
_SHAPING_KEYS = (
    "rows",
    "seed",
    "split",
    "target",
    "features",
    "group",
    "bins",
    "bin_width",
    "origin",
    "class_names",
    "head_rows",
)


def default_data_dir() -> Path:
    """``$HPO_DATA_DIR``, else the user cache directory (``~/.cache/hpo``)."""
    env = os.environ.get("HPO_DATA_DIR")
    return Path(env) if env else Path(pooch.os_cache("hpo"))


@dataclass
class Prepared:
    """A prepared dataset, memory-mapped from its cache directory."""

    path: Path
    meta: dict[str, Any]
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]  # classes; for regression, the target's deciles (strata)
    groups: npt.NDArray[np.int64] | None
    split: Split
    targets: npt.NDArray[np.float64] | None = None  # regression: the target's values
    codes: npt.NDArray[np.int32] | None = None  # categorical columns: vocab index, -1 empty

    @property
    def categorical_names(self) -> list[str]:
        return list(self.meta.get("categorical_names", []))

    @property
    def vocab(self) -> list[list[str]]:
        return [list(v) for v in self.meta.get("vocab", [])]

    @property
    def columns(self) -> list[Column]:
        """The raw feature columns as read (a preset's, or a table prepared before column
        typing: every feature numeric)."""
        raw = self.meta.get("columns")
        if raw is None:
            return [Column(n, NUMERIC, "double") for n in self.feature_names]
        return [Column.from_dict(c) for c in raw]

    @property
    def dropped_target_rows(self) -> int:
        return int(self.meta.get("dropped_target_rows", 0))

    @property
    def task_name(self) -> str:
        return str(self.meta.get("task", CLASSIFICATION.name))

    @property
    def task(self) -> Task:
        from hpo.tasks import Classification, Regression  # torch: only once a model is trained

        if not task_kind(self.task_name).has_classes:
            return Regression(mean=float(self.meta["target_mean"]), std=float(self.meta["target_std"]))
        return Classification(tuple(self.class_names))

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.meta["n_features"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_outputs(self) -> int:
        return self.task.n_outputs

    @property
    def feature_names(self) -> list[str]:
        return list(self.meta["feature_names"])

    @property
    def labeling(self) -> Labeling | None:
        raw = self.meta.get("labeling")
        return Labeling.from_dict(raw) if raw else None

    @property
    def scaler(self) -> Scaler:
        return Scaler.from_dict(self.meta["scaler"])

    def check_class_rows(self, folds: int) -> None:
        """Every class with training rows has at least ``folds`` of them (k-fold CV needs one per
        fold). Checked for a user's classes; a preset's fixed classes (MSD's decades, whose
        1920s hold 224 of 515,345 songs) may be tiny in a small draw, as scikit-learn allows.
        A regressor's strata need no such care (a stratum too small to stratify is not used)."""
        if self.meta["source"] in PRESETS or not task_kind(self.task_name).has_classes:
            return
        check_class_rows(
            self.meta["train_class_counts"], self.class_names, folds, file=self.meta["source_file"]
        )


def check_class_rows(counts: list[int], class_names: list[str], folds: int, *, file: str) -> None:
    for name, count in zip(class_names, counts, strict=True):
        if 0 < count < folds:
            raise DataFileError(
                file,
                f"class {name!r} has {count} training row(s), fewer than the {folds} CV folds",
                fix="merge it with a neighbouring class (bins / class_names), drop its rows"
                + (f", or use folds = {count}" if count >= 2 else ""),
            )


def _settings_hash(settings: DataSettings) -> str:
    shaping = {k: getattr(settings, k) for k in _SHAPING_KEYS}
    for key in TABLE_TYPING_KEYS:  # only when set: every earlier cache keeps its name
        if getattr(settings, key) is not None:
            shaping[key] = getattr(settings, key)
    if settings.task != CLASSIFICATION.name:  # classification's caches keep the names they had
        shaping["task"] = settings.task
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:10]


def cache_key(settings: DataSettings, source_sha256: str | None) -> str:
    if settings.source == "synthetic":
        rows = settings.rows or synthetic.FULL_ROWS
        ident = f"synthetic-r{rows}-s{settings.seed}-g{synthetic.GENERATOR_VERSION}"
    else:
        assert source_sha256 is not None
        ident = f"{settings.source}-{source_sha256[:12]}"
    return f"{ident}-{_settings_hash(settings)}-v{CACHE_VERSION}"


def cache_path(settings: DataSettings, *, data_dir: Path | None = None) -> Path | None:
    """Where ``settings`` are cached, when that is known without reading the source."""
    if settings.source != "synthetic":
        return None
    return (data_dir or default_data_dir()) / "prepared" / cache_key(settings, None)


def prepare(
    settings: DataSettings,
    *,
    data_dir: Path | None = None,
    force: bool = False,
    progressbar: bool = True,
    folds: int = 2,
) -> Prepared:
    """Prepare (or find in the cache) a dataset and return it memory-mapped. ``folds``: the
    most CV folds a pipeline asks for; a class too small for them is an error, found before
    anything is written."""
    data_dir = data_dir or default_data_dir()
    path = sources.source_file(settings, data_dir, progressbar=progressbar)
    sha = sources.sha256(path) if path is not None else None
    target = data_dir / "prepared" / cache_key(settings, sha)
    if target.exists() and not force:
        logger.info("using cached data %s", target)
        prepared = load(target)
        prepared.check_class_rows(folds)
        return prepared

    table = sources.read(settings, path)  # every check before the first write
    arrays, meta = _build(settings, table, sha=sha, folds=folds)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write(work, arrays, meta)
        if force and target.exists():
            shutil.rmtree(target)
        try:
            work.rename(target)
        except OSError:  # another worker prepared the same rows first: use theirs
            if not (target / "meta.json").exists():
                raise
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("prepared %s", target)
    return load(target)


def _labels(settings: DataSettings, table: sources.Table) -> tuple[Labeling, npt.NDArray[np.int64]]:
    labeling = table.preset_labeling or labels_mod.infer(
        table.target,
        file=table.file,
        column=table.target_name,
        **settings.model_dump(include={"bins", "bin_width", "origin", "class_names"}),
    )
    y = labeling.apply(table.target, file=table.file, column=table.target_name, first_line=table.first_line)
    labels_mod.check_classes(
        y, labeling, file=table.file, column=table.target_name, allow_empty=table.preset_labeling is not None
    )
    return labeling, y


def _split(settings: DataSettings, table: sources.Table, y: npt.NDArray[np.int64]) -> Split:
    if settings.split == "stratified":
        return stratified_split(y, seed=settings.seed, groups=table.groups)
    train_rows = settings.head_rows or table.official_train_rows
    assert train_rows is not None
    if not 0 < train_rows < len(y):
        raise DataFileError(
            table.file,
            f"head_rows = {train_rows:,} leaves no test rows (the table has {len(y):,})",
            fix=f"use head_rows below {len(y):,}",
        )
    return head_split(y, train_rows=train_rows, seed=settings.seed, groups=table.groups, name=settings.split)


def inspect(settings: DataSettings, *, data_dir: Path | None = None, folds: int = 2) -> Prepared:
    """The prepared rows of ``settings`` in memory, every check done and nothing written (``hpo
    validate``): the cache's copy where it exists, else the source read and split here."""
    data_dir = data_dir or default_data_dir()
    path = sources.source_file(settings, data_dir, progressbar=False)
    sha = sources.sha256(path) if path is not None else None
    cached = data_dir / "prepared" / cache_key(settings, sha)
    if (cached / "meta.json").exists():
        return load(cached)
    arrays, meta = _build(settings, sources.read(settings, path), sha=sha, folds=folds)
    split = Split(meta["split"]["name"], arrays["split-train"], arrays["split-val"], arrays["split-test"])
    return Prepared(
        path=Path("(not prepared)"),
        meta=meta,
        features=arrays["features"],
        labels=arrays["labels"],
        groups=arrays.get("groups"),
        split=split,
        targets=arrays.get("targets"),
        codes=arrays.get("codes"),
    )


def _check_filled(table: sources.Table, rows: npt.NDArray[np.int64]) -> None:
    """A feature column empty in every training row is one line naming it (nothing can be fit
    on it: no median, no level)."""
    empty: list[str] = []
    if table.features.shape[1]:
        numeric_empty = np.asarray(np.isnan(table.features[rows]).all(axis=0)).tolist()
        owner = {}
        for c in table.columns:
            for p in c.parts:
                owner[f"{c.name}.{p}"] = c.name
        empty += [owner.get(n, n) for n, e in zip(table.feature_names, numeric_empty, strict=True) if e]
    if table.codes is not None and table.codes.shape[1]:
        cat_empty = np.asarray((table.codes[rows] < 0).all(axis=0)).tolist()
        empty += [n for n, e in zip(table.categorical_names, cat_empty, strict=True) if e]
    if empty:
        first = empty[0]
        raise DataFileError(
            table.file,
            f"feature column {first!r} is empty in every training row"
            + (f" (and {len(set(empty)) - 1} more)" if len(set(empty)) > 1 else ""),
            fix=f'leave it out: exclude = ["{first}"]',
        )


def _build(
    settings: DataSettings, table: sources.Table, *, sha: str | None, folds: int
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
    """The cache's arrays and meta, every check done (nothing is written here). A problem at a
    row names the file's own line, also where rows with an empty target were left out."""
    try:
        return _build_checked(settings, table, sha=sha, folds=folds)
    except DataFileError as exc:
        if exc.line is None or table.row_lines is None:
            raise
        row = exc.line - table.first_line
        if not 0 <= row < len(table.row_lines):
            raise
        raise DataFileError(exc.file, exc.problem, line=int(table.row_lines[row]), fix=exc.fix) from None


def _build_checked(
    settings: DataSettings, table: sources.Table, *, sha: str | None, folds: int
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
    targets: npt.NDArray[np.float64] | None = None
    if not task_kind(settings.task).has_classes:
        targets = regression_target(table)
        y = regression_strata(targets)
        split = _split(settings, table, y)
        train = targets[split.train]
        std = float(np.std(train))
        about: dict[str, Any] = {
            "task": settings.task,
            "target_mean": float(np.mean(train)),
            "target_std": std if std > 0 else 1.0,
            "target_summary": {
                "min": float(targets.min()),
                "max": float(targets.max()),
                "mean": float(targets.mean()),
                "std": float(targets.std()),
                "median": float(np.median(targets)),
            },
        }
    else:
        labeling, y = _labels(settings, table)
        split = _split(settings, table, y)
        train_counts = np.bincount(y[split.train], minlength=labeling.n_classes).tolist()
        if table.preset_labeling is None:
            check_class_rows(train_counts, labeling.class_names, folds, file=table.file)
        counts = np.bincount(y, minlength=labeling.n_classes)
        about = {
            "class_names": labeling.class_names,
            "labeling": labeling.to_dict(),
            "class_counts": counts.tolist(),
            "train_class_counts": train_counts,
            "majority_share": float(counts.max() / counts.sum()),
        }
    _check_filled(table, split.train)
    arrays: dict[str, npt.NDArray[Any]] = {"features": table.features, "labels": y}
    if targets is not None:
        arrays["targets"] = targets
    if table.groups is not None:
        arrays["groups"] = table.groups
    if table.codes is not None:
        arrays["codes"] = table.codes
    for part in ("train", "val", "test"):
        arrays[f"split-{part}"] = getattr(split, part)
    meta = {
        "version": CACHE_VERSION,
        "source": settings.source,
        "source_file": table.file,
        "source_sha256": sha or table.generated_sha256,
        "settings": settings.model_dump(mode="json"),
        "seed": settings.seed,
        "rows": int(y.size),
        "n_features": int(table.features.shape[1]),
        "feature_names": table.feature_names,
        "target": table.target_name,
        "group": settings.group,
        **about,
        "split": {
            "name": split.name,
            "sizes": {p: int(getattr(split, p).size) for p in ("train", "val", "test")},
        },
        "scaler": _scaler(table.features[split.train]),
    }
    if table.columns:  # a user's table: its columns as read (hpo.data.columns)
        meta.update(
            columns=[c.to_dict() for c in table.columns],
            left_out=table.left_out,
            categorical_names=table.categorical_names,
            vocab=table.vocab,
            dropped_target_rows=table.dropped_target_rows,
        )
    if settings.source == "synthetic":
        meta["synthetic"] = synthetic.provenance(settings.rows or synthetic.FULL_ROWS, settings.seed)
    return arrays, meta


def _scaler(x: npt.NDArray[np.float32]) -> dict[str, list[float]]:
    """The training rows' StandardScaler (NaN cells ignored); none for a table of categoricals."""
    if x.shape[1] == 0:
        return {"mean": [], "scale": []}
    return Scaler.fit(x).to_dict()


def _write(work: Path, arrays: dict[str, npt.NDArray[Any]], meta: dict[str, Any]) -> None:
    for key, values in arrays.items():
        np.save(work / f"{key}.npy", values)
    (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def load(path: Path) -> Prepared:
    """Open a prepared dataset (arrays memory-mapped, near-instant)."""
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise DataError(f"{path}: no prepared data here; run `hpo data prepare` first")
    meta = json.loads(meta_file.read_text())
    if meta.get("version") != CACHE_VERSION:
        raise DataError(f"{path}: prepared by another hpo version; run `hpo data prepare --force`")
    groups = path / "groups.npy"
    targets = path / "targets.npy"
    codes = path / "codes.npy"
    parts = {p: np.load(path / f"split-{p}.npy") for p in ("train", "val", "test")}
    return Prepared(
        path=path,
        meta=meta,
        features=np.load(path / "features.npy", mmap_mode="r"),
        labels=np.load(path / "labels.npy", mmap_mode="r"),
        groups=np.load(groups, mmap_mode="r") if groups.exists() else None,
        split=Split(meta["split"]["name"], parts["train"], parts["val"], parts["test"]),
        targets=np.load(targets, mmap_mode="r") if targets.exists() else None,
        codes=np.load(codes, mmap_mode="r") if codes.exists() else None,
    )


def summary(prepared: Prepared) -> dict[str, Any]:
    """What `hpo data prepare` shows: rows, class counts and shares, split sizes."""
    meta = prepared.meta
    total = meta["rows"]
    return {
        "path": str(prepared.path),
        "source": meta["source"],
        "source_file": meta["source_file"],
        "source_sha256": meta["source_sha256"],
        "rows": total,
        "features": meta["n_features"],
        "target": meta["target"],
        "task": prepared.task_name,
        "classes": [
            {"class": name, "count": c, "share": c / total}
            for name, c in zip(meta.get("class_names", []), meta.get("class_counts", []), strict=True)
        ],
        "majority_share": meta.get("majority_share"),
        "target_summary": meta.get("target_summary"),
        "split": meta["split"],
        "dropped_target_rows": meta.get("dropped_target_rows", 0),
    }
