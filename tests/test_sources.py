"""A user's own table: CSV and Parquet sources, classes from a categorical or a binned numeric
target, group-disjoint splits, and every bad input as one line naming the file, the column or
line, and the fix, with nothing written to the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from hpo import cli, data
from hpo.errors import DataFileError
from hpo.sections import DataSettings


def table(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    r = np.random.default_rng(seed)
    x = r.normal(size=(rows, 5))
    score = x[:, 0] + 0.5 * x[:, 1] * x[:, 2]
    return pd.DataFrame(
        {
            "f0": x[:, 0],
            "f1": x[:, 1],
            "f2": x[:, 2],
            "f3": x[:, 3],
            "f4": x[:, 4].astype(np.float32),
            "kind": np.where(score > 0.5, "high", np.where(score < -0.5, "low", "mid")),
            "year": (1950 + 60 * (1 / (1 + np.exp(-score)))).round().astype(int),
            "artist": r.integers(0, 300, rows),
            "note": "x",
        }
    )


def _prepare(tmp_path: Path, **settings: Any) -> data.Prepared:
    return data.prepare(DataSettings(**settings), data_dir=tmp_path / "cache", progressbar=False, folds=5)


def _empty_cache(tmp_path: Path) -> bool:
    prepared = tmp_path / "cache" / "prepared"
    return not prepared.exists() or not any(prepared.iterdir())


def test_csv_with_a_categorical_target(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    table().drop(columns=["note"]).to_csv(path, index=False)
    p = _prepare(tmp_path, source="csv", path=str(path), target="kind")
    assert p.class_names == ["high", "low", "mid"]
    assert p.feature_names == ["f0", "f1", "f2", "f3", "f4", "year", "artist"]  # every numeric column
    assert p.n_features == 7 and p.features.dtype == np.float32
    sizes = p.meta["split"]["sizes"]
    assert (sizes["train"], sizes["val"], sizes["test"]) == (2100, 450, 450)
    again = _prepare(tmp_path, source="csv", path=str(path), target="kind")
    assert again.path == p.path  # found in the cache by the file's content


def test_parquet_with_a_binned_target_and_groups(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    table().to_parquet(path)
    p = _prepare(
        tmp_path,
        source="parquet",
        path=str(path),
        target="year",
        features=["f0", "f1", "f2", "f3", "f4"],
        group="artist",
        bin_width=10,
        origin=1950,
    )
    assert p.class_names == ["1950-1960", "1960-1970", "1970-1980", "1980-1990", "1990-2000", "2000-2010"]
    assert p.groups is not None
    parts = [set(np.asarray(p.groups)[idx].tolist()) for idx in (p.split.train, p.split.val, p.split.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    train_groups = np.asarray(p.groups)[p.split.train]
    y = np.asarray(p.labels)[p.split.train]
    for fit_idx, held_idx in data.cv_folds(y, n_splits=5, seed=42, groups=train_groups):
        assert not set(train_groups[fit_idx]) & set(train_groups[held_idx])  # group-aware CV


def test_explicit_bins_and_head_split(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    table().to_csv(path, index=False)
    p = _prepare(
        tmp_path,
        source="csv",
        path=str(path),
        target="year",
        features=["f0", "f1"],
        bins=[1950, 1980, 2000, 2010],
        class_names=["old", "middle", "new"],
        split="head",
        head_rows=2500,
    )
    assert p.class_names == ["old", "middle", "new"]
    assert np.array_equal(p.split.test, np.arange(2500, 3000))
    years = table()["year"].to_numpy()
    expected = np.digitize(years, [1980, 2000]).astype(np.int64)
    assert np.array_equal(np.asarray(p.labels), expected)  # 2010 falls in the closed last bin


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "t.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _date_frame(bad: str | None = None) -> pd.DataFrame:
    f = table()
    when = pd.date_range("2020-01-01", periods=len(f), freq="D").strftime("%Y-%m-%d").to_series()
    f["when"] = when.to_numpy()
    if bad is not None:
        f.loc[11, "when"] = bad
    return f


def _inf_frame() -> pd.DataFrame:
    f = table()
    f.loc[7, "f3"] = np.inf
    return f


def _rare_frame() -> pd.DataFrame:
    f = table()
    f.loc[:2, "kind"] = "rare"
    return f


BAD: list[tuple[str, Any, dict[str, Any], str]] = [
    ("missing file", None, {"target": "kind"}, "no such file; check data.path"),
    ("missing target", table(), {"target": "label"}, "no target column 'label'; columns are: f0, f1"),
    (
        "missing feature",
        table(),
        {"target": "kind", "features": ["f0", "f9"]},
        "feature 'f9' is not a column",
    ),
    (
        "exclude unknown",
        table(),
        {"target": "kind", "exclude": ["f9"]},
        "data.exclude names 'f9', which is not a column; columns are: f0, f1",
    ),
    (
        "categorical unknown",
        table(),
        {"target": "kind", "categorical": ["zip"]},
        "data.categorical names 'zip', which is not a column",
    ),
    (
        "target empty",
        table().assign(kind=None),
        {"target": "kind"},
        "target column 'kind' has no values (every cell is empty)",
    ),
    (
        "feature empty in training rows",
        table().assign(f2=np.nan),
        {"target": "kind"},
        "feature column 'f2' is empty in every training row; fix: leave it out: exclude = [\"f2\"]",
    ),
    (
        "bad date",
        _date_frame(bad="2021-13-45"),
        {"target": "kind"},
        ":13: date-time column 'when' has '2021-13-45', which is not an ISO-8601 date",
    ),
    (
        "stray text in numbers",
        table().assign(f1=lambda f: f["f1"].astype(str).where(f.index != 20, "n.a.")),
        {"target": "kind"},
        ":22: column 'f1' is numbers but one cell is 'n.a.'",
    ),
    (
        "inf",
        _inf_frame(),
        {"target": "kind", "features": ["f3"]},
        ":9: column 'f3' is inf; values must be finite numbers",
    ),
    (
        "one class",
        table().assign(kind="same"),
        {"target": "kind", "features": ["f0"]},
        "target column 'kind' has one class (same)",
    ),
    ("tiny class", _rare_frame(), {"target": "kind", "features": ["f0"]}, "class 'rare' has"),
    (
        "numeric target",
        table(),
        {"target": "f0", "features": ["f1"]},
        "target column 'f0' is numeric with 3,000 distinct values; fix: make classes with bins",
    ),
    (
        "group missing",
        table(),
        {"target": "kind", "group": "band", "features": ["f0"]},
        "no group column 'band'",
    ),
    (
        "bins miss",
        table(),
        {"target": "year", "features": ["f0"], "bins": [1960, 2000]},
        "lies outside the bins 1960..2000",
    ),
]


@pytest.mark.parametrize(("case", "frame", "settings", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_tables_are_one_line_and_write_no_cache(
    tmp_path: Path, case: str, frame: pd.DataFrame | None, settings: dict[str, Any], needle: str
) -> None:
    path = tmp_path / "t.csv" if frame is None else _write(tmp_path, frame)
    with pytest.raises(DataFileError) as err:
        _prepare(tmp_path, source="csv", path=str(path), **settings)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert needle.replace("; fix:", ";") in message, message
    assert _empty_cache(tmp_path)


def test_tiny_class_says_how_to_fix(tmp_path: Path) -> None:
    path = _write(tmp_path, _rare_frame())
    with pytest.raises(
        DataFileError,
        match=r"class 'rare' has \d training row\(s\), fewer than the 5 CV folds; "
        r"merge it with a neighbouring class \(bins / class_names\), drop its rows",
    ):
        _prepare(tmp_path, source="csv", path=str(path), target="kind", features=["f0"])


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "file is empty"),
        (b"a,b,label\n", "has a header but no rows"),
        (b"a,b,label\n1,2,x\n3,4\n", ":3: 2 cells, the header has 3"),
    ],
)
def test_empty_header_only_and_ragged_csv(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=needle):
        _prepare(tmp_path, source="csv", path=str(path), target="label")
    assert _empty_cache(tmp_path)


def test_parquet_that_is_not_parquet_and_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    table().to_csv(path, index=False)
    with pytest.raises(
        DataFileError, match=r"is not a readable Parquet file .*; for a text table use source = \"csv\""
    ):
        _prepare(tmp_path, source="parquet", path=str(path), target="kind")
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    with pytest.raises(
        DataFileError, match=r"is a directory, not a data file; point data\.path at the file itself"
    ):
        _prepare(tmp_path, source="csv", path=str(folder), target="kind")
    assert _empty_cache(tmp_path)


def test_an_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, table())
    real_open = Path.open

    def refuse(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(DataFileError, match=r"cannot be read \(Permission denied\); check its permissions"):
        _prepare(tmp_path, source="csv", path=str(path), target="kind")


def test_the_cli_says_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, table())
    code = cli.main(
        [
            "data",
            "prepare",
            "--source",
            "csv",
            "--path",
            str(path),
            "--target",
            "nope",
            "--data-dir",
            str(tmp_path / "c"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith(f"hpo: error: {path}: no target column 'nope'") and "Traceback" not in err
    directory = tmp_path / "some_dir.txt"
    directory.mkdir()
    code = cli.main(
        ["data", "prepare", "--source", "msd", "--file", str(directory), "--data-dir", str(tmp_path / "c")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (
        f"hpo: error: {directory}: is a directory, not a data file; "
        "point data.file (or --file) at the file itself"
    )
