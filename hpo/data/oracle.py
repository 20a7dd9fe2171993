"""The synthetic world's ceiling: the Bayes-optimal prediction of each row from the generator's
own latent variables (:mod:`hpo.data.synthetic`), which no tuner can beat but by chance.

Each feature of a draw is a monotone map of its latent score (the draw's ranks, then the fitted
marginal), so the posterior given the features equals the posterior given the scores ``z``. The
generator, read backwards: a year ``y`` (the decade's exact share of the draw, then the year
within it), a genre ``g`` (softmax of the era's popularity: the Gumbel-max draw), then
``v ~ N(mu(g, y), S)`` with ``S = L L^T + diag(uniqueness)`` (the factor model) and
``mu = separation * centroid_g + asinh(era) * (shared * d + genre_era * d_g)``, and last, for
the spread features, ``z_k = (v_k - c_k) * s_k(y)`` with ``s_k = exp(era_spread * sign_k *
tanh(era))`` and ``c_k`` the draw's own mean. So

    log p(z | g, y) = log N(v(z, y); mu(g, y), S) - sum_k log s_k(y),

summed over the genres with their prior and over each decade's years: the decade's posterior.
Its argmax is the Bayes classifier; ``E[year | z]`` the posterior-mean year (the regression
ceiling in RMSE). One triangular solve of the rows per year (90 years), in row blocks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import linalg, special

from hpo.data import synthetic
from hpo.data.cache import Prepared, prepare
from hpo.errors import ConfigError, DataError
from hpo.sections import DataSettings
from hpo.tasks import task_kind

logger = logging.getLogger(__name__)

#: Rows per block of the posterior (the year loop's arrays stay ~ a few tens of MB).
BLOCK = 16_384


@dataclass(frozen=True)
class Posterior:
    """Per row: the decade's posterior ``[n, 10]`` and the posterior-mean year."""

    decade: npt.NDArray[np.float64]
    mean_year: npt.NDArray[np.float64]


def _year_prior(spec: synthetic.SyntheticSpec, profile: dict[str, object]) -> tuple[list[int], list[float]]:
    counts = synthetic.scaled_counts(spec.rows).astype(np.float64)
    share = counts / counts.sum()
    years: list[int] = []
    prior: list[float] = []
    for d in range(10):
        ys, p = synthetic._year_probabilities(profile, d)
        years += [int(y) for y in ys]
        prior += [float(share[d] * q) for q in p]
    return years, prior


def posterior(
    spec: synthetic.SyntheticSpec, latent: synthetic.Latent, rows: npt.NDArray[np.int64]
) -> Posterior:
    """The posterior of the decade and the year of ``rows`` of the draw ``latent`` of ``spec``."""
    w = latent.world
    years, prior = _year_prior(spec, latent.profile)
    cov = w.loadings @ w.loadings.T + np.diag(w.uniqueness)
    chol = linalg.cholesky(cov, lower=True)
    log_norm = -float(np.log(np.diag(chol)).sum()) - 0.5 * synthetic.N_FEATURES * math.log(2 * math.pi)
    k, signs = w.spread_features, w.spread_signs
    spread = bool(k.size and spec.era_spread)
    decades = np.asarray([(y - 1920) // 10 for y in years])
    out_decade = np.empty((rows.size, 10))
    out_year = np.empty(rows.size)
    for start, block in _blocks(rows):
        z = latent.scores[block]
        joint = np.empty((block.size, len(years)))  # log p(y, z)
        for j, (year, p_year) in enumerate(zip(years, prior, strict=True)):
            e = float(synthetic.era(np.asarray([year]), spec)[0])
            logits = w.popularity[:, 0] + e * w.popularity[:, 1] + e * e * w.popularity[:, 2]
            log_genre = logits - special.logsumexp(logits)
            v = z.copy()
            jacobian = 0.0
            if spread:
                s = np.exp(spec.era_spread * signs * math.tanh(e))
                v[:, k] = z[:, k] / s + latent.spread_mean
                jacobian = -float(np.log(s).sum())
            mu = spec.genre_separation * w.centroids + math.asinh(e) * (
                spec.shared_era * w.shared_direction + spec.genre_era * w.genre_directions
            )  # (G, 90)
            u = linalg.solve_triangular(chol, v.T, lower=True).T  # (rows, 90)
            m = linalg.solve_triangular(chol, mu.T, lower=True).T  # (G, 90)
            dist = (u * u).sum(axis=1)[:, None] - 2.0 * u @ m.T + (m * m).sum(axis=1)[None, :]
            per_genre = log_genre[None, :] - 0.5 * dist  # (rows, G)
            joint[:, j] = math.log(p_year) + log_norm + jacobian + special.logsumexp(per_genre, axis=1)
        joint -= special.logsumexp(joint, axis=1, keepdims=True)
        p = np.exp(joint)
        for d in range(10):
            out_decade[start : start + block.size, d] = p[:, decades == d].sum(axis=1)
        out_year[start : start + block.size] = p @ np.asarray(years, dtype=np.float64)
    return Posterior(decade=out_decade, mean_year=out_year)


def _blocks(rows: npt.NDArray[np.int64]) -> Iterator[tuple[int, npt.NDArray[np.int64]]]:
    for start in range(0, rows.size, BLOCK):
        yield start, rows[start : start + BLOCK]


def _check(settings: DataSettings) -> synthetic.SyntheticSpec:
    if settings.source != "synthetic":
        raise ConfigError(
            f"data.source = {settings.source!r}: the ceiling is known only for a synthetic draw, whose "
            'generator hpo knows; use data.source = "synthetic"'
        )
    return synthetic.SyntheticSpec(rows=settings.rows or synthetic.FULL_ROWS, seed=settings.seed)


def oracle(
    settings: DataSettings, *, data_dir: Path | None = None, prepared: Prepared | None = None
) -> dict[str, Any]:
    """The Bayes-optimal figures on the test rows of the synthetic draw ``settings`` prepares:
    for classification its accuracy and log loss, for regression its RMSE. Stored beside the
    prepared cache (``oracle.json``) and read back: the same draw always gives the same figures.
    ``prepared``: the draw's prepared data where the caller holds it."""
    spec = _check(settings)
    if prepared is None:
        prepared = prepare(settings, data_dir=data_dir, progressbar=False)
    stored = prepared.path / "oracle.json"
    if stored.is_file():
        found: dict[str, Any] = json.loads(stored.read_text())
        return found
    t0 = time.perf_counter()
    result = _compute(spec, prepared)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    fd, tmp = tempfile.mkstemp(dir=prepared.path, prefix=".oracle-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(result, fh, indent=1)
    Path(tmp).replace(stored)
    return result


def _compute(spec: synthetic.SyntheticSpec, prepared: Prepared) -> dict[str, Any]:
    latent = synthetic.draw_latent(spec)
    test = np.asarray(prepared.split.test, dtype=np.int64)
    years = latent.years[test].astype(np.int64)
    if prepared.targets is not None:
        same = np.array_equal(np.asarray(prepared.targets[test], dtype=np.int64), years)
    else:
        same = np.array_equal(np.asarray(prepared.labels[test], dtype=np.int64), (years - 1920) // 10)
    if not same:
        raise DataError(
            f"the prepared data in {prepared.path} is not the draw rows={spec.rows} seed={spec.seed}; "
            "prepare it again (hpo data prepare --force)"
        )
    logger.info(
        "computing the Bayes-optimal prediction of %d test rows from the draw's latent scores", test.size
    )
    post = posterior(spec, latent, test)
    out: dict[str, Any] = {"rows": spec.rows, "seed": spec.seed, "test_rows": int(test.size)}
    if task_kind(prepared.task_name).has_classes:
        decade = (years - 1920) // 10
        p_true = post.decade[np.arange(test.size), decade]
        out.update(
            task=prepared.task_name,
            accuracy=float(np.mean(post.decade.argmax(axis=1) == decade)),
            expected_accuracy=float(post.decade.max(axis=1).mean()),
            loss=float(-np.log(np.maximum(p_true, 1e-300)).mean()),
        )
    else:
        out.update(
            task=prepared.task_name,
            rmse=float(np.sqrt(np.mean((post.mean_year - years) ** 2))),
            mae=float(np.mean(np.abs(post.mean_year - years))),
        )
    return out


def baselines(settings: DataSettings, *, data_dir: Path | None = None) -> dict[str, Any]:
    """The majority class (or the training mean) and a linear model on the same test rows:
    :func:`hpo.data.calibration.linear_references`."""
    from hpo.data.calibration import linear_references

    _check(settings)
    prepared = prepare(settings, data_dir=data_dir, progressbar=False)
    found = linear_references(prepared)
    if task_kind(prepared.task_name).has_classes:
        return {
            "majority_accuracy": found["majority_accuracy"],
            "linear_accuracy": found["logreg_accuracy"],
            "linear": "logistic regression (lbfgs, 500 iterations) on the standardised features",
        }
    return {
        "mean_rmse": found["constant"]["rmse"],
        "linear_rmse": found["ridge"]["rmse"],
        "linear": f"ridge regression (RidgeCV, alpha {found['ridge_alpha']:.3g}) on standardised features",
    }
