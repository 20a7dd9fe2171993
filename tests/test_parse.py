from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from hpo.data import _parse
from hpo.errors import DataFileError

GOOD = "2001," + ",".join(f"{i}.12345" for i in range(90)) + "\n"


def _write(tmp_path: Path, text: str, name: str = "data.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def _rows(n: int) -> str:
    return "".join(
        f"{1990 + i % 20}," + ",".join(f"{i * 0.5 + j:.5f}" for j in range(90)) + "\n" for i in range(n)
    )


def test_good_file_parses(tmp_path: Path) -> None:
    raw = _parse.parse_uci(_write(tmp_path, _rows(5)))
    assert raw.features.shape == (5, 90) and raw.features.dtype == np.float32
    assert raw.years.tolist() == [1990, 1991, 1992, 1993, 1994]
    assert raw.features[2, 3] == pytest.approx(4.0)


def test_zip_parses_like_text(tmp_path: Path) -> None:
    text = _rows(20)
    zpath = tmp_path / "YearPredictionMSD.txt.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("YearPredictionMSD.txt", text)
    a = _parse.parse_uci(zpath)
    b = _parse.parse_uci(_write(tmp_path, text))
    assert np.array_equal(a.features, b.features) and np.array_equal(a.years, b.years)


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (GOOD + GOOD.replace(",0.12345", "", 1) + GOOD, 2, "90 columns, expected 91"),
        (GOOD + GOOD.rstrip("\n") + ",1.0\n", 2, "92 columns, expected 91"),
        (GOOD * 3 + GOOD.replace("5.12345", "abc"), 4, "column 7 is not a number: 'abc'"),
        (GOOD + GOOD.replace("5.12345", "nan"), 2, "column 7 is 'nan'"),
        (GOOD + GOOD.replace("5.12345", "inf"), 2, "column 7 is 'inf'"),
        (GOOD + GOOD.replace("5.12345", "-Infinity"), 2, "values must be finite"),
        (GOOD + GOOD.replace("2001,", "1919,"), 2, "year '1919' is outside 1920-2019"),
        (GOOD + GOOD.replace("2001,", "2020,"), 2, "year '2020' is outside"),
        (GOOD + GOOD.replace("2001,", "2001.5,"), 2, "year '2001.5'"),
        (GOOD + "\n" + GOOD, 2, "empty line"),
        (GOOD * 2 + GOOD[:200], 3, "file stops mid-row"),
        (GOOD + GOOD.replace("3.12345", ""), 2, "column 5 is not a number: ''"),
    ],
    ids=[
        "too-few-columns",
        "too-many-columns",
        "non-numeric",
        "nan",
        "inf",
        "neg-infinity",
        "year-too-early",
        "year-too-late",
        "fractional-year",
        "blank-line",
        "truncated-mid-row",
        "empty-cell",
    ],
)
def test_bad_rows_are_named(tmp_path: Path, text: str, line: int, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataFileError) as err:
        _parse.parse_uci(path)
    assert err.value.line == line
    assert needle in str(err.value)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p.write_bytes(b""), "file is empty"),
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
    ids=["empty", "missing", "directory"],
)
def test_unusable_files(tmp_path: Path, make: object, needle: str) -> None:
    path = tmp_path / "data.txt"
    make(path)  # type: ignore[operator]
    with pytest.raises(DataFileError, match=needle):
        _parse.parse_uci(path)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, GOOD)

    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)  # chmod 0 does not stop root, who runs CI
    with pytest.raises(DataFileError, match=r"cannot be read \(Permission denied\); check its permissions"):
        _parse.parse_uci(path)


def test_truncated_zip(tmp_path: Path) -> None:
    zpath = tmp_path / "YearPredictionMSD.txt.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("YearPredictionMSD.txt", _rows(2000))
    data = zpath.read_bytes()
    zpath.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match=r"not a readable zip archive.*download it again"):
        _parse.parse_uci(zpath)


def test_corrupt_zip_member(tmp_path: Path) -> None:
    zpath = tmp_path / "YearPredictionMSD.txt.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("YearPredictionMSD.txt", _rows(2000))
    data = bytearray(zpath.read_bytes())
    for i in range(200, 400):  # scramble compressed bytes; the directory stays intact
        data[i] ^= 0x5A
    zpath.write_bytes(bytes(data))
    with pytest.raises(DataFileError, match=r"YearPredictionMSD\.txt\.zip"):
        _parse.parse_uci(zpath)


def test_zip_without_text_member(tmp_path: Path) -> None:
    zpath = tmp_path / "other.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("readme.md", "hello")
    with pytest.raises(DataFileError, match=r"holds 0 \.txt files"):
        _parse.parse_uci(zpath)


@pytest.mark.parametrize("name", ["head1176.txt", "random7000.txt"])
def test_real_sample_rows_parse_exactly(sample_dir: Path, name: str) -> None:
    path = sample_dir / name
    raw = _parse.parse_uci(path)
    reference = np.loadtxt(path, delimiter=",")
    assert raw.features.shape == (reference.shape[0], 90)
    assert np.array_equal(raw.years, reference[:, 0].astype(np.int16))
    assert np.array_equal(raw.features, reference[:, 1:].astype(np.float32))
    if name == "head1176.txt":
        assert raw.years[0] == 2001
        assert raw.features[0, :5].tolist() == pytest.approx(
            [49.94357, 21.47114, 73.07750, 8.74861, -17.40628]
        )
