from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import special, stats

from hpo.data import _parse, calibration, labels, synthetic
from hpo.sections import DataSettings


def test_full_size_counts_are_the_real_files() -> None:
    assert synthetic.scaled_counts(synthetic.FULL_ROWS).tolist() == list(synthetic.DECADE_COUNTS)
    assert sum(synthetic.DECADE_COUNTS) == synthetic.FULL_ROWS
    assert synthetic.DECADE_COUNTS[8] / synthetic.FULL_ROWS == pytest.approx(0.5802, abs=5e-5)
    assert synthetic.SyntheticSpec().uci_train_rows == synthetic.UCI_TRAIN_ROWS


@pytest.mark.parametrize("rows", [10, 11, 1000, 20_000, 123_457])
def test_scaled_counts_sum_and_keep_every_decade(rows: int) -> None:
    counts = synthetic.scaled_counts(rows)
    assert counts.sum() == rows and counts.min() >= 1


def test_draw_is_deterministic_from_seed() -> None:
    a = synthetic.draw(synthetic.SyntheticSpec(rows=3000, seed=5))
    b = synthetic.draw(synthetic.SyntheticSpec(rows=3000, seed=5))
    c = synthetic.draw(synthetic.SyntheticSpec(rows=3000, seed=6))
    assert np.array_equal(a.features, b.features) and np.array_equal(a.years, b.years)
    assert not np.array_equal(a.features, c.features)


def test_written_file_uses_the_uci_layout_and_parser(tmp_path: Path) -> None:
    spec = synthetic.SyntheticSpec(rows=2000, seed=1)
    path = synthetic.write_uci_text(spec, tmp_path / "syn.txt")
    first = path.read_text().splitlines()[0].split(",")
    assert len(first) == 91 and first[0].isdigit()
    assert all(len(cell.split(".")[1]) == 5 for cell in first[1:])
    raw = _parse.parse_uci(path)
    drawn = synthetic.draw(spec)
    assert np.array_equal(raw.years, drawn.years)
    assert np.abs(raw.features - drawn.features).max() < 1e-2  # 5 decimals, then float32
    assert raw.years.min() >= 1922 and raw.years.max() <= 2011
    assert not (tmp_path / "syn.txt.partial").exists()


def test_years_stay_inside_each_decade_and_real_range() -> None:
    d = synthetic.draw(synthetic.SyntheticSpec(rows=50_000, seed=3))
    decades = labels.decades().apply(d.years, file="draw", column="year", first_line=1)
    assert np.bincount(decades, minlength=10).tolist() == synthetic.scaled_counts(50_000).tolist()
    assert set(np.unique(d.years[decades == 9]).tolist()) <= {2010, 2011}
    assert d.years.min() >= 1922


def test_features_look_like_the_real_sample(sample_dir: Path) -> None:
    """The realism figures of docs/synthetic.md (measured: IQR ratios 0.963-1.008, largest median
    offset 0.6 % of the 5-95 % range, skewness rank correlation 0.91, 99 % of the heavy-tailed
    features heavy-tailed, correlation of the correlation matrices 0.89), with a small margin."""
    real = np.concatenate([_parse.parse_uci(p).features for p in sorted(sample_dir.glob("*.txt"))])
    syn = synthetic.draw(synthetic.SyntheticSpec(rows=20_000, seed=2)).features
    q = [0.05, 0.25, 0.5, 0.75, 0.95]
    rq, sq = np.quantile(real, q, axis=0), np.quantile(syn, q, axis=0)
    iqr_ratio = (sq[3] - sq[1]) / (rq[3] - rq[1])
    assert np.all((iqr_ratio > 0.94) & (iqr_ratio < 1.03)), iqr_ratio
    spread = rq[4] - rq[0]
    assert np.all(np.abs(sq[2] - rq[2]) < 0.01 * spread)  # medians where the real ones are
    assert stats.spearmanr(stats.skew(real), stats.skew(syn)).statistic > 0.88
    heavy = stats.kurtosis(real) > 5
    assert np.mean(stats.kurtosis(syn)[heavy] > 3) > 0.95  # outliers / heavy tails kept
    positive = real.min(axis=0) > 0
    assert np.all(syn[:, positive] > 0)  # variances stay positive
    upper = np.triu_indices(90, 1)
    real_corr = np.asarray(np.corrcoef(real, rowvar=False))[upper]
    syn_corr = np.asarray(np.corrcoef(syn, rowvar=False))[upper]
    assert float(np.corrcoef(real_corr, syn_corr)[0, 1]) > 0.86


@pytest.mark.slow
def test_calibration_on_a_smaller_draw(tmp_path: Path) -> None:
    """60,000 rows (42,000 train): the majority share, logistic regression well below the MLP,
    and the MLP in the range that this draw size reaches (the full size reaches the mid-60s,
    docs/synthetic.md)."""
    result = calibration.calibrate(
        DataSettings(source="synthetic", rows=60_000, seed=11),
        config=calibration.CalibrationConfig(epochs=6, batch_size=256),
        data_dir=tmp_path,
    )
    assert result["majority_accuracy"] == pytest.approx(0.5802, abs=0.005)
    assert 0.59 < result["logreg_accuracy"] < 0.635
    assert 0.62 < result["mlp_accuracy"] < 0.68
    assert result["mlp_accuracy"] - result["logreg_accuracy"] > 0.02


def test_prepared_synthetic_values_are_those_of_the_written_text(tmp_path: Path) -> None:
    """Preparing synthetic data skips writing and parsing UCI's text layout; the values are
    bit for bit what parsing the written file gives."""
    from hpo import data
    from hpo.sections import DataSettings

    spec = synthetic.SyntheticSpec(rows=5000, seed=13)
    parsed = _parse.parse_uci(synthetic.write_uci_text(spec, tmp_path / "s.txt"))
    prepared = data.prepare(DataSettings(rows=5000, seed=13), data_dir=tmp_path / "c", progressbar=False)
    assert np.array_equal(np.asarray(prepared.features).view(np.uint32), parsed.features.view(np.uint32))
    assert np.array_equal(
        labels.decades().apply(parsed.years, file="f", column="y", first_line=1), prepared.labels
    )


@pytest.mark.slow
def test_nonlinearity_matches_the_real_rows(sample_dir: Path) -> None:
    """How much only a nonlinear model reaches (gradient boosting minus logistic regression,
    5-fold CV on 7,000 rows): a synthetic draw within 1 point of the real sample's (+1.83). Five
    draws of the shipped generator measured +1.10 to +2.43 points (mean +1.69, docs/synthetic.md);
    without the era-dependent spread one draw gives -0.25."""
    result = calibration.nonlinearity(
        config=calibration.NonlinearityConfig(draws=1), real_file=sample_dir / "random7000.txt"
    )
    assert result["real_rows"] == 7000
    assert result["real_gap"] == pytest.approx(0.0183, abs=0.002)  # the real rows: fixed, deterministic
    assert result["within_1_point"], result
    flat = calibration.nonlinearity(
        config=calibration.NonlinearityConfig(draws=1), spec=synthetic.SyntheticSpec(era_spread=0.0)
    )
    assert flat["gap_mean"] < result["gap_mean"] - 0.01  # the era-dependent spread is what adds it


def _whole_array_draw(spec: synthetic.SyntheticSpec) -> np.ndarray:
    """The generator as it was written before it worked in place (whole-array expressions)."""
    profile = synthetic._load_profile()
    world = synthetic._world(spec, profile)
    rng = np.random.default_rng(spec.seed)
    n = spec.rows
    decades = rng.permutation(np.repeat(np.arange(10), synthetic.scaled_counts(n)))
    years = np.empty(n, dtype=np.int16)
    for d in range(10):
        idx = np.flatnonzero(decades == d)
        choices, p = synthetic._year_probabilities(profile, d)
        years[idx] = rng.choice(choices, size=idx.size, p=p)
    e = synthetic.era(years, spec)
    pop = world.popularity
    genre_logits = pop[:, 0] + np.outer(e, pop[:, 1]) + np.outer(e**2, pop[:, 2])
    genres = np.argmax(genre_logits + rng.gumbel(size=genre_logits.shape), axis=1)
    latent = rng.standard_normal((n, world.loadings.shape[1])) @ world.loadings.T
    latent += rng.standard_normal((n, synthetic.N_FEATURES)) * np.sqrt(world.uniqueness)
    latent += spec.genre_separation * world.centroids[genres]
    latent += np.arcsinh(e)[:, None] * (
        spec.shared_era * world.shared_direction + spec.genre_era * world.genre_directions[genres]
    )
    k = world.spread_features
    centred = latent[:, k] - latent[:, k].mean(axis=0)
    latent[:, k] = centred * np.exp(spec.era_spread * world.spread_signs * np.tanh(e)[:, None])
    order = np.argsort(latent, axis=0, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(n)[:, None], axis=0)
    latent = special.ndtri((ranks + 0.5) / n)
    m = world.marginals
    features: np.ndarray = m[:, 0] + m[:, 1] * np.sinh((np.arcsinh(latent) + m[:, 2]) / m[:, 3])
    features[:, m[:, 4] > 0.5] = np.exp(features[:, m[:, 4] > 0.5])
    return features


@pytest.mark.slow
@pytest.mark.parametrize("rows", [7_000, 150_001])  # one row block; three, the last ragged
def test_in_place_draw_gives_the_same_bytes_as_whole_array_expressions(rows: int) -> None:
    """The generator works in place to stay small (1.04 GB peak instead of 2.28 GB at full size);
    cached data and every calibration figure depend on it giving exactly the same values."""
    spec = synthetic.SyntheticSpec(rows=rows, seed=3)
    got = synthetic.draw(spec).features
    assert got.flags["C_CONTIGUOUS"] and got.dtype == np.float64
    assert np.array_equal(got, _whole_array_draw(spec))
