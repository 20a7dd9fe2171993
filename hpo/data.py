"""The data layer: sources, decade labels, splits, scalers and the prepared-data cache.

``prepare`` turns a source (the real UCI file, or a synthetic draw written in the same layout
and parsed by the same parser) into a directory of ``.npy`` arrays plus ``meta.json``:
features (float32), years, decade labels, and the row indices of both splits with the
StandardScaler parameters fit on each split's training rows. Later runs memory-map the arrays.
The directory is built under a temporary name and renamed into place, so a failed prepare never
leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pooch
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.preprocessing import StandardScaler

from hpo import _download, _parse, synthetic
from hpo.errors import DataError, DataFileError

logger = logging.getLogger(__name__)

SourceName = Literal["msd", "synthetic"]
SplitName = Literal["stratified", "official"]
SPLITS: tuple[SplitName, ...] = ("stratified", "official")
N_CLASSES = 10
CLASS_NAMES: tuple[str, ...] = tuple(f"{1920 + 10 * d}s" for d in range(N_CLASSES))
CACHE_VERSION = 1
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15


def default_data_dir() -> Path:
    """``$HPO_DATA_DIR``, else the user cache directory (``~/.cache/hpo``)."""
    env = os.environ.get("HPO_DATA_DIR")
    return Path(env) if env else Path(pooch.os_cache("hpo"))


def decade_of(years: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """Decade class of a year: ``(year - 1920) // 10``, 0 (1920s) ... 9 (2010s)."""
    y = np.asarray(years, dtype=np.int64)
    if y.size and (y.min() < _parse.YEAR_MIN or y.max() > _parse.YEAR_MAX):
        bad = int(y[(y < _parse.YEAR_MIN) | (y > _parse.YEAR_MAX)][0])
        raise DataError(f"year {bad} is outside 1920-2019: it has no decade class 0-9")
    return ((y - 1920) // 10).astype(np.int8)


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """Row indices (into the prepared arrays) of one train/val/test split."""

    name: SplitName
    train: npt.NDArray[np.int64]
    val: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]


def stratified_split(labels: npt.NDArray[np.integer], *, seed: int) -> Split:
    """A true stratified 70/15/15 split.

    The write-up's code produced 72.25/13.9/13.9 through a slip in its split formula; here the
    test and validation parts are 15 % of all rows each (as row counts), the rest is training.
    """
    n = len(labels)
    idx = np.arange(n)
    n_test, n_val = round(TEST_FRACTION * n), round(VAL_FRACTION * n)  # counts: no float slips
    rest, test = train_test_split(idx, test_size=n_test, stratify=_strat_labels(labels), random_state=seed)
    train, val = train_test_split(
        rest, test_size=n_val, stratify=_strat_labels(labels[rest]), random_state=seed
    )
    return Split("stratified", np.sort(train), np.sort(val), np.sort(test))


def official_split(labels: npt.NDArray[np.integer], *, train_rows: int, seed: int) -> Split:
    """UCI's split: the first ``train_rows`` rows train (+ a stratified 15 % validation part),
    the rest test (artist-disjoint in the real file)."""
    block = np.arange(train_rows)
    train, val = train_test_split(
        block, test_size=VAL_FRACTION, stratify=_strat_labels(labels[block]), random_state=seed
    )
    return Split("official", np.sort(train), np.sort(val), np.arange(train_rows, len(labels)))


def _strat_labels(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.integer] | None:
    """Labels usable for stratification (None when some class has a single row)."""
    counts = np.bincount(labels.astype(np.int64))
    return labels if counts[counts > 0].min() >= 2 else None


def cv_folds(
    labels: npt.NDArray[np.integer], *, n_splits: int, seed: int
) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Stratified k-fold over positions ``0..len(labels)-1`` (scikit-learn's splitter)."""
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    yield from splitter.split(np.zeros(len(labels)), labels)


@dataclass(frozen=True)
class Scaler:
    """StandardScaler parameters (fit on training rows only)."""

    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]

    @classmethod
    def fit(cls, x: npt.NDArray[np.floating]) -> Scaler:
        sk = StandardScaler().fit(x)
        assert sk.mean_ is not None and sk.scale_ is not None
        return cls(mean=np.asarray(sk.mean_), scale=np.asarray(sk.scale_))

    def transform(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        out = np.asarray(x, dtype=np.float32) - self.mean.astype(np.float32)
        out /= self.scale.astype(np.float32)
        return out

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        return cls(
            mean=np.asarray(d["mean"], dtype=np.float64), scale=np.asarray(d["scale"], dtype=np.float64)
        )


# --------------------------------------------------------------------------- prepared data


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Which prepared dataset: the source, its size and the split seed."""

    source: SourceName = "synthetic"
    rows: int | None = None  # synthetic: draw size (default full size); msd: random subset
    seed: int = 42  # split seed (the write-up's); also the synthetic draw's seed
    file: Path | None = None  # msd: local .zip/.txt instead of downloading

    def key(self, source_hash: str | None = None) -> str:
        if self.source == "synthetic":
            rows = self.rows or synthetic.FULL_ROWS
            return f"synthetic-r{rows}-s{self.seed}-g{synthetic.GENERATOR_VERSION}-v{CACHE_VERSION}"
        assert source_hash is not None
        subset = f"-r{self.rows}" if self.rows else ""
        return f"msd-{source_hash[:12]}{subset}-s{self.seed}-v{CACHE_VERSION}"


@dataclass
class Prepared:
    """A prepared dataset, memory-mapped from its cache directory."""

    path: Path
    meta: dict[str, Any]
    features: npt.NDArray[np.float32]
    years: npt.NDArray[np.int16]
    labels: npt.NDArray[np.int8]
    _splits: dict[str, Split] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])

    def split(self, name: SplitName) -> Split:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        if name not in self._splits:
            parts = {p: np.load(self.path / f"split-{name}-{p}.npy") for p in ("train", "val", "test")}
            self._splits[name] = Split(name, parts["train"], parts["val"], parts["test"])
        return self._splits[name]

    def scaler(self, name: SplitName) -> Scaler:
        return Scaler.from_dict(self.meta["splits"][name]["scaler"])


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _summary(labels: npt.NDArray[np.int8]) -> dict[str, Any]:
    counts = np.bincount(labels.astype(np.int64), minlength=N_CLASSES)
    return {
        "decade_counts": dict(zip(CLASS_NAMES, counts.tolist(), strict=True)),
        "majority_share": float(counts.max() / counts.sum()),
    }


def check_full_msd(raw: _parse.RawData, *, name: str, strict: bool) -> None:
    """The real file has 515,345 rows with years 1922-2011. A downloaded file that differs is
    an error (an incomplete or wrong download); a local ``--file`` that differs (a sample, a
    subset) is only logged, and the official split's boundary is capped at its row count."""
    rows = int(raw.years.shape[0])
    lo, hi = int(raw.years.min()), int(raw.years.max())
    if rows == synthetic.FULL_ROWS and (lo, hi) == (1922, 2011):
        return
    problem = f"{rows:,} rows with years {lo}-{hi}; the full YearPredictionMSD has 515,345 rows, 1922-2011"
    if strict:
        raise DataFileError(name, problem, fix="delete it from the cache and download it again")
    logger.warning("%s: %s (using it as given)", name, problem)


def _resolve_source(spec: DataSpec, data_dir: Path, *, progressbar: bool) -> tuple[Path, str | None]:
    """The text/zip file to parse and, for msd, its hash (None for synthetic)."""
    if spec.source == "synthetic":
        if spec.file is not None:
            raise DataError("--file is for --source msd; synthetic data is generated (hpo data synth)")
        return Path(), None
    path = spec.file or _download.fetch_msd(cache_dir=data_dir / "downloads", progressbar=progressbar)
    if not path.exists():
        raise DataFileError(str(path), "no such file", fix="check the path, or omit --file to download")
    return path, _file_sha256(path)


def cache_path(spec: DataSpec, *, data_dir: Path | None = None) -> Path | None:
    """Where ``spec`` is cached, when that is known without reading the source."""
    if spec.source != "synthetic":
        return None
    return (data_dir or default_data_dir()) / "prepared" / spec.key()


def prepare(
    spec: DataSpec, *, data_dir: Path | None = None, force: bool = False, progressbar: bool = True
) -> Prepared:
    """Prepare (or find in the cache) a dataset and return it memory-mapped."""
    data_dir = data_dir or default_data_dir()
    source_path, source_hash = _resolve_source(spec, data_dir, progressbar=progressbar)
    target = data_dir / "prepared" / spec.key(source_hash)
    if target.exists() and not force:
        logger.info("using cached data %s", target)
        return load(target)

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if spec.source == "synthetic":
            syn = synthetic.SyntheticSpec(rows=spec.rows or synthetic.FULL_ROWS, seed=spec.seed)
            source_path = synthetic.write_uci_text(syn, work / "synthetic.txt")
            train_rows = syn.uci_train_rows
            source_hash = _file_sha256(source_path)
        raw = _parse.parse_uci(source_path)
        if spec.source == "synthetic":
            source_path.unlink()
        if spec.source == "msd":
            check_full_msd(raw, name=str(source_path), strict=spec.file is None)
            n_file = raw.years.shape[0]
            train_rows = min(synthetic.UCI_TRAIN_ROWS, n_file)
            if spec.rows and spec.rows < n_file:
                keep = np.sort(np.random.default_rng(spec.seed).choice(n_file, spec.rows, replace=False))
                train_rows = int(np.searchsorted(keep, train_rows))
                raw = _parse.RawData(years=raw.years[keep], features=raw.features[keep])
        _write_prepared(
            work, spec, raw, train_rows=train_rows, source_hash=source_hash, source_path=source_path
        )
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("prepared %s", target)
    return load(target)


def _write_prepared(
    work: Path,
    spec: DataSpec,
    raw: _parse.RawData,
    *,
    train_rows: int,
    source_hash: str | None,
    source_path: Path,
) -> None:
    labels = decade_of(raw.years)
    np.save(work / "features.npy", raw.features)
    np.save(work / "years.npy", raw.years)
    np.save(work / "labels.npy", labels)
    splits_meta: dict[str, Any] = {}
    for split in (
        stratified_split(labels, seed=spec.seed),
        official_split(labels, train_rows=train_rows, seed=spec.seed),
    ):
        for part in ("train", "val", "test"):
            np.save(work / f"split-{split.name}-{part}.npy", getattr(split, part))
        splits_meta[split.name] = {
            "sizes": {p: int(getattr(split, p).size) for p in ("train", "val", "test")},
            "scaler": Scaler.fit(raw.features[split.train]).to_dict(),
        }
    meta = {
        "version": CACHE_VERSION,
        "source": spec.source,
        "source_file": source_path.name if spec.source == "msd" else "synthetic (hpo.synthetic)",
        "source_sha256": source_hash,
        "seed": spec.seed,
        "rows": int(labels.size),
        "n_features": int(raw.features.shape[1]),
        "class_names": list(CLASS_NAMES),
        **_summary(labels),
        "splits": splits_meta,
    }
    (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def load(path: Path) -> Prepared:
    """Open a prepared dataset (arrays memory-mapped, near-instant)."""
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise DataError(f"{path}: no prepared data here; run `hpo data prepare` first")
    meta = json.loads(meta_file.read_text())
    if meta.get("version") != CACHE_VERSION:
        raise DataError(f"{path}: prepared by another hpo version; run `hpo data prepare --force`")
    return Prepared(
        path=path,
        meta=meta,
        features=np.load(path / "features.npy", mmap_mode="r"),
        years=np.load(path / "years.npy", mmap_mode="r"),
        labels=np.load(path / "labels.npy", mmap_mode="r"),
    )


def summary(prepared: Prepared) -> dict[str, Any]:
    """What `hpo data prepare` shows: rows, decade counts and shares, split sizes."""
    meta = prepared.meta
    counts = meta["decade_counts"]
    total = meta["rows"]
    return {
        "path": str(prepared.path),
        "source": meta["source"],
        "source_sha256": meta["source_sha256"],
        "rows": total,
        "decades": [{"decade": name, "count": c, "share": c / total} for name, c in counts.items()],
        "majority_share": meta["majority_share"],
        "splits": {name: s["sizes"] for name, s in meta["splits"].items()},
    }
