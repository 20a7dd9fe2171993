from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpo import cli


def test_prepare_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-q", "data", "prepare", "--rows", "2000", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "prepared 2,000 rows from synthetic" in out
    assert "2000s" in out and "58.0" in out and "split stratified: 1,400 train, 300 val, 300 test" in out
    assert (
        cli.main(["-q", "data", "prepare", "--rows", "2000", "--data-dir", str(tmp_path), "--format", "json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 2000 and summary["split"] == {
        "name": "stratified",
        "sizes": {"train": 1400, "val": 300, "test": 300},
    }
    assert sum(d["count"] for d in summary["classes"]) == 2000


def test_bad_file_is_one_line_exit_2_and_no_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("2001," + ",".join(["1.5"] * 90) + "\n" + "2001,abc" + ",1.0" * 89 + "\n")
    code = cli.main(
        ["data", "prepare", "--source", "msd", "--file", str(bad), "--data-dir", str(tmp_path / "c")]
    )
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("hpo: error:")]
    assert lines == [
        f"hpo: error: {bad}:2: column 2 is not a number: 'abc'; "
        "download it again or pass the intact file with --file"
    ]
    assert "Traceback" not in err
    assert not (tmp_path / "c" / "prepared").exists() or not any((tmp_path / "c" / "prepared").iterdir())


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpo",
            "--debug",
            "data",
            "prepare",
            "--source",
            "msd",
            "--file",
            str(tmp_path / "nope.zip"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "DataFileError" in proc.stderr


def test_missing_file_without_debug(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpo",
            "data",
            "prepare",
            "--source",
            "msd",
            "--file",
            str(tmp_path / "nope.zip"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"hpo: error: {tmp_path / 'nope.zip'}: no such file; check data.file (or --file) "
        "(relative paths start at the working directory)"
    )


def test_synth_writes_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "syn.txt"
    assert cli.main(["-q", "data", "synth", "--out", str(out), "--rows", "500"]) == 0
    assert len(out.read_text().splitlines()) == 500
    assert "wrote 500 rows" in capsys.readouterr().out


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["data", "prepare", "--rows", "0"])
    assert exc.value.code == 2
    assert "0 must be at least 1" in capsys.readouterr().err
