"""The synthetic world's ceiling (hpo.data.oracle): the Bayes-optimal posterior from the
generator's latent scores is calibrated (on tiny draws its accuracy matches the accuracy it
expects of itself, a Monte Carlo check of the whole posterior), and a model trained on a larger
draw does not beat it beyond noise on the same test rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpo.data import oracle, synthetic
from hpo.errors import ConfigError
from hpo.sections import DataSettings


@pytest.mark.slow
def test_the_posterior_is_calibrated_on_tiny_draws() -> None:
    gaps, accs = [], []
    for seed in range(4):
        spec = synthetic.SyntheticSpec(rows=5_000, seed=seed)
        latent = synthetic.draw_latent(spec)
        post = oracle.posterior(spec, latent, np.arange(spec.rows))
        assert np.allclose(post.decade.sum(axis=1), 1.0)
        decade = (latent.years.astype(np.int64) - 1920) // 10
        hit = post.decade.argmax(axis=1) == decade
        gaps.append(hit.mean() - post.decade.max(axis=1).mean())  # realised - expected
        accs.append(hit.mean())
        lo, hi = synthetic.DECADE_YEARS[0][0], synthetic.DECADE_YEARS[-1][1]
        assert ((post.mean_year >= lo) & (post.mean_year <= hi)).all()
    se = np.sqrt(np.mean(accs) * (1 - np.mean(accs)) / (4 * 5_000))
    assert abs(np.mean(gaps)) < 3 * se, (gaps, se)  # a wrong likelihood is off by several points


@pytest.mark.slow
def test_no_trained_model_beats_the_ceiling(tmp_path: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import log_loss

    from hpo.data import prepare

    settings = DataSettings(source="synthetic", rows=40_000, seed=7)
    found = oracle.oracle(settings, data_dir=tmp_path)
    prepared = prepare(settings, data_dir=tmp_path, progressbar=False)
    assert (prepared.path / "oracle.json").is_file()
    assert oracle.oracle(settings, data_dir=tmp_path) == found  # read back, not recomputed
    split = prepared.split
    model = HistGradientBoostingClassifier(max_iter=200, random_state=0)
    model.fit(prepared.features[split.train], prepared.labels[split.train])
    y = np.asarray(prepared.labels[split.test])
    acc = float(np.mean(model.predict(prepared.features[split.test]) == y))
    se = np.sqrt(found["accuracy"] * (1 - found["accuracy"]) / y.size)
    assert acc <= found["accuracy"] + 2 * se, (acc, found)
    p = model.predict_proba(prepared.features[split.test])
    assert log_loss(y, p, labels=model.classes_) > found["loss"], found
    majority = float(np.mean(y == np.bincount(prepared.labels[split.train]).argmax()))
    assert found["accuracy"] > majority + 0.05


def test_the_ceiling_of_a_regression_draw_is_an_rmse(tmp_path: Path) -> None:
    settings = DataSettings(source="synthetic", rows=6_000, seed=3, task="regression")
    found = oracle.oracle(settings, data_dir=tmp_path)
    base = oracle.baselines(settings, data_dir=tmp_path)
    assert found["task"] == "regression"
    assert 0 < found["rmse"] < base["linear_rmse"] < base["mean_rmse"], (found, base)


def test_only_a_synthetic_draw_has_a_ceiling(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the ceiling is known only for a synthetic draw"):
        oracle.oracle(DataSettings(source="csv", path=str(tmp_path / "x.csv"), target="y"), data_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_hpo_data_oracle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from hpo import cli

    common = ["--data-dir", str(tmp_path / "data"), "--format", "json"]
    args = ["-q", "data", "oracle", "--source", "synthetic", "--rows", "3000", "--seed", "2", *common]
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ceiling"]["test_rows"] == 450 and 0.58 < out["ceiling"]["accuracy"] < 0.8
    assert out["baselines"]["majority_accuracy"] < out["ceiling"]["accuracy"]
    table = tmp_path / "t.csv"
    table.write_text("x,y\n1,a\n2,b\n")
    csv = ["-q", "data", "oracle", "--source", "csv", "--path", str(table), "--target", "y"]
    assert cli.main([*csv, "--data-dir", str(tmp_path / "csv")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hpo: error:")]
    assert err == [
        "hpo: error: data.source = 'csv': the ceiling is known only for a synthetic draw, whose "
        'generator hpo knows; use data.source = "synthetic"'
    ]
    assert not (tmp_path / "csv").exists()
