"""A user's own data end to end: hpo run, hpo report and hpo predict on CSV tables, one with a
categorical target (scikit-learn's digits, exported as a user would), one with a binned numeric
target and a group column."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpo", "-q", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def _shrunk(text: str) -> str:
    """The shipped digits study with smaller budgets (the shape is what is tested)."""
    for old, new in (
        ("verify_epochs = 10", "verify_epochs = 2"),
        ("epochs = 20", "epochs = 3"),
        ("epochs = 30", "epochs = 3"),
        ("epochs = 40", "epochs = 6"),
        ("folds = 5", "folds = 3"),
    ):
        text = text.replace(old, new)
    return text


@pytest.mark.slow
def test_digits_from_a_csv_export(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    load_digits(as_frame=True).frame.to_csv(tmp_path / "digits.csv", index=False)  # as the README says
    cfg = tmp_path / "digits.toml"
    cfg.write_text(_shrunk((REPO / "studies" / "digits.toml").read_text()))
    proc = _hpo("run", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(_hpo("status", "--config", str(cfg), "--format", "json", cwd=tmp_path).stdout)
    assert [s["state"] for s in status["stages"]] == ["complete"] * 6
    metrics = status["test_metrics"]
    assert set(metrics["per_class"]) == {str(d) for d in range(10)}
    assert metrics["accuracy"] > 0.85  # ten balanced classes: 10 % by chance; measured 0.93-0.97
    report = tmp_path / "digits.html"
    assert _hpo("report", "--config", str(cfg), "--out", str(report), cwd=tmp_path).returncode == 0
    text = report.read_text()
    assert 'data-figure="data-histograms"' in text and "pixel_4_4" in text and "66.05%" not in text
    pred = tmp_path / "pred.csv"
    proc = _hpo("predict", "--config", str(cfg), "--input", "digits.csv", "--output", str(pred), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(pred)
    assert list(got.columns) == ["class", *[f"p_{d}" for d in range(10)]] and len(got) == 1797
    truth = pd.read_csv(tmp_path / "digits.csv")["target"]
    assert (got["class"] == truth).mean() > 0.9  # mostly rows it trained on


@pytest.mark.slow
def test_a_binned_numeric_target_with_groups(tmp_path: Path) -> None:
    r = np.random.default_rng(3)
    rows = 4000
    artist = r.integers(0, 400, rows)
    style = r.normal(size=400)[artist]  # rows of one artist share a sound
    x = r.normal(size=(rows, 6))
    x[:, 0] += style
    year = 1960 + 50 / (1 + np.exp(-(x[:, 0] + 0.8 * x[:, 1] * x[:, 2]))) + r.normal(0, 3, rows)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)])
    frame.insert(0, "year", year.clip(1960, 2009.9).round(1))
    frame["artist"] = [f"artist-{a}" for a in artist]
    frame.to_csv(tmp_path / "songs.csv", index=False)
    cfg = tmp_path / "songs.toml"
    cfg.write_text(
        """
[pipeline]
name = "songs"

[data]
source = "csv"
path = "songs.csv"
target = "year"
bin_width = 10
origin = 1960
group = "artist"

[defaults]
hidden = [32, 32]
batch_size = 64

[stages.lr_range]
verify_epochs = 2

[stages.weight_decay]
kind = "grid_cv"
grid = { weight_decay = [0.0, 1e-3] }
folds = 3
epochs = 2

[stages.width]
kind = "sweep"
choices = { hidden = [[32, 32], [64, 32]] }
epochs = 3

[stages.final]
epochs = 4
patience = 2
"""
    )
    proc = _hpo("run", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(_hpo("status", "--config", str(cfg), "--format", "json", cwd=tmp_path).stdout)
    assert [s["stage"] for s in status["stages"]] == ["lr_range", "weight_decay", "width", "final"]
    metrics = status["test_metrics"]
    assert list(metrics["per_class"]) == ["1960-1970", "1970-1980", "1980-1990", "1990-2000", "2000-2010"]
    majority = max(v["support"] for v in metrics["per_class"].values()) / sum(
        v["support"] for v in metrics["per_class"].values()
    )
    assert metrics["accuracy"] > majority + 0.05
    width = status["stages"][2]["selection"]["selected"]["hidden"]
    assert width in ("32x32", "64x32")
    report = tmp_path / "r.html"
    assert _hpo("report", "--config", str(cfg), "--out", str(report), cwd=tmp_path).returncode == 0
    assert "1960-1970" in report.read_text()
    new = tmp_path / "new.csv"
    frame.head(20).drop(columns=["artist"]).to_csv(new, index=False)
    proc = _hpo("predict", "--config", str(cfg), "--input", str(new), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("class,p_1960-1970")
    assert "accuracy against the target column" in proc.stdout
