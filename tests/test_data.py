from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpo import data
from hpo.data import labels, sources, synthetic
from hpo.errors import DataError, DataFileError
from hpo.sections import DataSettings


def test_decade_labels() -> None:
    decades = labels.decades()
    years = np.array([1922, 1929, 1930, 1999, 2000, 2011, 2019])
    assert decades.apply(years, file="f", column="year", first_line=1).tolist() == [0, 0, 1, 7, 8, 9, 9]
    with pytest.raises(DataFileError, match=r"f:2: year = 2020 lies outside the bins 1920..2020"):
        decades.apply(np.array([2001, 2020, 2030]), file="f", column="year", first_line=1)
    with pytest.raises(DataFileError, match="year = 1919"):
        decades.apply(np.array([1919]), file="f", column="year", first_line=1)
    assert decades.class_names == [f"{1920 + 10 * d}s" for d in range(10)]


def test_stratified_split_is_a_true_70_15_15() -> None:
    labels = np.repeat(np.arange(10), synthetic.scaled_counts(100_000))
    split = data.stratified_split(labels, seed=42)
    assert (split.train.size, split.val.size, split.test.size) == (70_000, 15_000, 15_000)
    everything = np.concatenate([split.train, split.val, split.test])
    assert np.array_equal(np.sort(everything), np.arange(100_000))
    full = np.bincount(labels) / labels.size
    for part in (split.train, split.val, split.test):
        assert np.allclose(np.bincount(labels[part], minlength=10) / part.size, full, atol=2e-4)
    again = data.stratified_split(labels, seed=42)
    assert np.array_equal(again.test, split.test)


def test_head_split_keeps_the_boundary() -> None:
    labels = np.repeat(np.arange(10), synthetic.scaled_counts(20_000))
    split = data.head_split(labels, train_rows=18_000, seed=1)
    assert np.array_equal(split.test, np.arange(18_000, 20_000))
    assert split.train.max() < 18_000 and split.val.max() < 18_000
    assert split.train.size + split.val.size == 18_000
    assert split.val.size == pytest.approx(0.15 * 18_000, abs=1)


def test_cv_folds_are_stratified_and_cover_once() -> None:
    labels = np.repeat(np.arange(10), synthetic.scaled_counts(50_000))
    seen = np.zeros(labels.size, dtype=int)
    for train, val in data.cv_folds(labels, n_splits=5, seed=42):
        seen[val] += 1
        assert np.intersect1d(train, val).size == 0
        assert abs(np.mean(labels[val] == 8) - np.mean(labels == 8)) < 0.005
    assert np.all(seen == 1)


def test_prepare_caches_the_split_and_a_train_only_scaler(small_prepared: data.Prepared) -> None:
    p = small_prepared
    assert p.rows == 6000 and p.features.shape == (6000, 90) and p.features.dtype == np.float32
    assert isinstance(p.features, np.memmap)
    split, scaler = p.split, p.scaler
    train_x = np.asarray(p.features[split.train], dtype=np.float64)
    assert np.allclose(scaler.mean, train_x.mean(axis=0), rtol=1e-5, atol=1e-4)
    assert np.allclose(scaler.scale, train_x.std(axis=0), rtol=1e-5)
    all_mean = np.asarray(p.features, dtype=np.float64).mean(axis=0)
    assert not np.allclose(scaler.mean, all_mean)  # fit on train rows only
    assert np.array_equal(np.bincount(p.labels, minlength=10), synthetic.scaled_counts(6000))
    assert p.class_names[0] == "1920s" and p.feature_names[0] == "timbre_avg_1" and p.n_features == 90


def test_official_split_is_uci_boundary(tmp_path: Path) -> None:
    p = data.prepare(DataSettings(rows=6000, seed=7, split="official"), data_dir=tmp_path, progressbar=False)
    train_rows = synthetic.SyntheticSpec(rows=6000).uci_train_rows
    assert np.array_equal(p.split.test, np.arange(train_rows, 6000))
    assert p.split.train.max() < train_rows


def test_prepare_reuses_the_cache(tmp_path: Path) -> None:
    spec = DataSettings(source="synthetic", rows=1000, seed=3)
    first = data.prepare(spec, data_dir=tmp_path, progressbar=False)
    stamp = (first.path / "meta.json").stat().st_mtime_ns
    second = data.prepare(spec, data_dir=tmp_path, progressbar=False)
    assert second.path == first.path and (second.path / "meta.json").stat().st_mtime_ns == stamp
    assert np.array_equal(second.split.test, first.split.test)


def test_failed_prepare_writes_no_cache(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("2001," + ",".join(["1.0"] * 89) + "\n")
    with pytest.raises(DataFileError, match="90 columns"):
        data.prepare(
            DataSettings(source="msd", file=str(bad)), data_dir=tmp_path / "cache", progressbar=False
        )
    prepared_dir = tmp_path / "cache" / "prepared"
    assert not prepared_dir.exists() or list(prepared_dir.iterdir()) == []


def test_msd_source_from_a_local_file(tmp_path: Path) -> None:
    src = synthetic.write_uci_text(synthetic.SyntheticSpec(rows=3000, seed=9), tmp_path / "msd.txt")
    p = data.prepare(
        DataSettings(source="msd", file=str(src)), data_dir=tmp_path / "cache", progressbar=False
    )
    assert p.meta["source"] == "msd" and p.rows == 3000
    assert p.meta["source_sha256"] == sources.sha256(src)
    sub = data.prepare(
        DataSettings(source="msd", file=str(src), rows=1000), data_dir=tmp_path / "cache", progressbar=False
    )
    assert sub.rows == 1000 and sub.path != p.path


def test_real_sample_prepares(sample_dir: Path, tmp_path: Path) -> None:
    p = data.prepare(
        DataSettings(source="msd", file=str(sample_dir / "random7000.txt")),
        data_dir=tmp_path,
        progressbar=False,
    )
    assert p.rows == 7000
    assert p.meta["class_counts"][8] / 7000 == pytest.approx(0.5771, abs=1e-4)  # README's share
    with pytest.raises(DataFileError, match="leaves no test rows"):  # all rows are from UCI's train block
        data.prepare(
            DataSettings(source="msd", file=str(sample_dir / "random7000.txt"), split="official"),
            data_dir=tmp_path,
            progressbar=False,
        )


def test_load_without_prepare_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run `hpo data prepare` first"):
        data.load(tmp_path)


def test_full_file_check() -> None:
    from hpo.data import _parse

    years = np.repeat(np.arange(1922, 2012, dtype=np.int16), 10)
    raw = _parse.RawData(years=years, features=np.zeros((years.size, 90), dtype=np.float32))
    with pytest.raises(DataFileError, match=r"900 rows .* 515,345 rows.*download it again"):
        sources.check_full_msd(raw, name="YearPredictionMSD.txt.zip", strict=True)
    sources.check_full_msd(raw, name="sample.txt", strict=False)  # a local sample: only a warning
