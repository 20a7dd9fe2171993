"""MSD-shaped synthetic data: a realistic stand-in for UCI's YearPredictionMSD.

The generator is a small generative model of "songs", deterministic from a seed:

1. **Labels.** The decade counts are exactly the full file's (scaled, by largest remainder, for
   a smaller draw); the year within a decade follows the within-decade shares of the real
   sample (smoothed; the 1920s start at 1922 and the 2010s hold 2010 and 2011 only).
2. **Genres.** Each song has one of ``n_genres`` latent genres whose popularity changes with the
   era (a quadratic in the year), so the genre mix itself says something about the decade.
3. **Latent features.** 90 correlated Gaussian scores (the real sample's normal-score
   correlation, as a 16-factor model) plus a signal: a genre centroid and an era displacement
   ``asinh(era) * (shared_era * shared direction + genre_era * genre's own direction)``, which a
   linear model mostly reads (the genre-specific part is small). The nonlinear part: the *spread*
   of ``era_spread_features`` features (fixed by the world) widens or narrows with the era
   (``exp(+-era_spread * tanh(era))``, as the loudness war compressed recordings), a change that
   moves no mean, so no linear model sees it. Its strength is set so that gradient boosting beats
   logistic regression by what it does on the real rows, and the MLP lands near the write-up's
   accuracy (docs/synthetic.md).
4. **Marginals.** Each latent score is turned into a normal score by its rank and mapped
   through the sinh-arcsinh marginal fitted to that feature of the real sample (scale, skew,
   heavy tails; positive features on a log scale), so features look like the real ones to a
   StandardScaler and to an MLP.

The *world* (genre centroids, directions, popularity curves) comes from a fixed seed so that
every draw, whatever its seed or size, comes from the same calibrated world; the draw itself
(labels, years, genres, noise) comes from the user's seed. Calibration: docs/synthetic.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

from hpo.data import _uci_format

logger = logging.getLogger(__name__)

N_FEATURES = 90
FULL_ROWS = 515_345
UCI_TRAIN_ROWS = 463_715
UCI_TEST_ROWS = FULL_ROWS - UCI_TRAIN_ROWS
#: Exact decade counts of the full file, 1920s ... 2010s.
DECADE_COUNTS: tuple[int, ...] = (224, 252, 356, 3102, 11739, 24745, 41814, 124713, 299003, 9397)
#: Years each decade may hold in the real file (1922-2011).
DECADE_YEARS: tuple[tuple[int, int], ...] = tuple(
    (max(1922, 1920 + 10 * d), min(2011, 1929 + 10 * d)) for d in range(10)
)
_WORLD_SEED = 20_111_922
#: Bumped whenever the generator's output changes, so cached synthetic data is re-made.
GENERATOR_VERSION = 2


@dataclass(frozen=True, kw_only=True)
class SyntheticSpec:
    """What to draw. The defaults are the calibrated full-size world (docs/synthetic.md)."""

    rows: int = FULL_ROWS
    seed: int = 0
    n_genres: int = 8
    genre_separation: float = 1.6
    shared_era: float = 0.55
    genre_era: float = 0.1
    era_center: float = 1995.0
    era_scale: float = 10.0
    era_spread_features: int = 30
    era_spread: float = 0.15

    def __post_init__(self) -> None:
        if self.rows < len(DECADE_COUNTS):
            raise ValueError(f"rows must be at least {len(DECADE_COUNTS)}, got {self.rows}")
        if not 0 <= self.era_spread_features <= N_FEATURES:
            raise ValueError(f"era_spread_features must be 0-{N_FEATURES}, got {self.era_spread_features}")

    @property
    def uci_train_rows(self) -> int:
        """Rows in the official train block: the full file's proportion, exact at full size."""
        return round(self.rows * UCI_TRAIN_ROWS / FULL_ROWS)


@dataclass(frozen=True)
class SyntheticDraw:
    years: npt.NDArray[np.int16]
    features: npt.NDArray[np.float64]
    genres: npt.NDArray[np.int8]


def provenance(rows: int, seed: int) -> dict[str, Any]:
    """What names a synthetic draw: the generator's version, its fitted profile and the draw."""
    profile = resources.files("hpo.data").joinpath("_profile/msd_profile.json").read_bytes()
    return {
        "generator_version": GENERATOR_VERSION,
        "profile_sha256": hashlib.sha256(profile).hexdigest(),
        "rows": rows,
        "seed": seed,
    }


def _load_profile() -> dict[str, Any]:
    text = resources.files("hpo.data").joinpath("_profile/msd_profile.json").read_text()
    profile: dict[str, Any] = json.loads(text)
    return profile


def scaled_counts(rows: int) -> npt.NDArray[np.int64]:
    """Decade counts for ``rows`` songs in the full file's proportions (largest remainder),
    every decade keeping at least one song."""
    full = np.asarray(DECADE_COUNTS, dtype=np.float64)
    share = full / full.sum() * rows
    counts = np.maximum(np.floor(share).astype(np.int64), 1)
    remainder = share - np.floor(share)
    order = np.argsort(-remainder, kind="stable")
    i = 0
    while counts.sum() < rows:
        counts[order[i % len(order)]] += 1
        i += 1
    while counts.sum() > rows:  # only when the minimum of one pushed past
        j = int(np.argmax(counts))
        counts[j] -= 1
    result: npt.NDArray[np.int64] = counts
    return result


def _year_probabilities(
    profile: dict[str, Any], decade: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    lo, hi = DECADE_YEARS[decade]
    base = 1920 + 10 * decade
    sample = np.asarray(profile["year_counts_in_sample"][str(decade)], dtype=np.float64)
    years = np.arange(lo, hi + 1)
    weights = sample[years - base] + 0.5
    return years, weights / weights.sum()


@dataclass(frozen=True)
class _World:
    centroids: npt.NDArray[np.float64]  # (G, 90)
    shared_direction: npt.NDArray[np.float64]  # (90,)
    genre_directions: npt.NDArray[np.float64]  # (G, 90)
    popularity: npt.NDArray[np.float64]  # (G, 3): intercept, slope, curvature in era
    loadings: npt.NDArray[np.float64]  # (90, F)
    uniqueness: npt.NDArray[np.float64]  # (90,)
    marginals: npt.NDArray[np.float64]  # (90, 5)
    spread_features: npt.NDArray[np.int64]  # (K,): features whose spread changes with the era
    spread_signs: npt.NDArray[np.float64]  # (K,): widening (+1) or narrowing (-1)


def _unit_rows(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norms: npt.NDArray[np.float64] = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / norms


def _world(spec: SyntheticSpec, profile: dict[str, Any]) -> _World:
    rng = np.random.default_rng(_WORLD_SEED)
    g = spec.n_genres
    loadings = np.asarray(profile["factor_loadings"], dtype=np.float64)
    uniqueness = np.clip(1.0 - (loadings**2).sum(axis=1), 0.05, None)
    popularity = np.column_stack([rng.normal(0.0, 0.7, g), rng.normal(0.0, 0.8, g), rng.normal(0.0, 0.25, g)])
    # drawn in this order so that version 1's world (everything above) is unchanged
    centroids = _unit_rows(rng.standard_normal((g, N_FEATURES))) * np.sqrt(N_FEATURES) / 4
    shared_direction = _unit_rows(rng.standard_normal(N_FEATURES))
    genre_directions = _unit_rows(rng.standard_normal((g, N_FEATURES)))
    spread_rng = np.random.default_rng([_WORLD_SEED, 2])
    return _World(
        centroids=centroids,
        shared_direction=shared_direction,
        genre_directions=genre_directions,
        popularity=popularity,
        loadings=loadings,
        uniqueness=uniqueness,
        marginals=np.asarray(profile["marginals"], dtype=np.float64),
        spread_features=np.sort(spread_rng.choice(N_FEATURES, spec.era_spread_features, replace=False)),
        spread_signs=spread_rng.choice([-1.0, 1.0], spec.era_spread_features),
    )


def era(years: npt.NDArray[np.integer], spec: SyntheticSpec) -> npt.NDArray[np.float64]:
    return (np.asarray(years, dtype=np.float64) - spec.era_center) / spec.era_scale


@dataclass(frozen=True)
class Latent:
    """A draw before its marginals: what :mod:`hpo.data.oracle` reads to compute the ceiling."""

    years: npt.NDArray[np.int16]
    genres: npt.NDArray[np.int8]
    scores: npt.NDArray[np.float64]  # (n, 90): the latent scores after the era's spread
    spread_mean: npt.NDArray[np.float64]  # (K,): the draw's mean of the spread features, removed
    world: _World
    profile: dict[str, Any]


def draw(spec: SyntheticSpec) -> SyntheticDraw:
    """Draw ``spec.rows`` songs: years, 90 features (float64, full precision), latent genres."""
    lat = draw_latent(spec)
    latent = lat.scores
    m = lat.world.marginals
    _normal_scores(latent)
    log_scale = np.flatnonzero(m[:, 4] > 0.5)
    for rows in _blocks(spec.rows):  # features = m0 + m1 * sinh((arcsinh(latent) + m2) / m3), in place
        block = latent[rows]
        np.arcsinh(block, out=block)
        block += m[:, 2]
        block /= m[:, 3]
        np.sinh(block, out=block)
        block *= m[:, 1]
        block += m[:, 0]
        block[:, log_scale] = np.exp(block[:, log_scale])
    return SyntheticDraw(years=lat.years, features=latent, genres=lat.genres)


def draw_latent(spec: SyntheticSpec) -> Latent:
    """The draw's years, genres and latent scores (each feature is a monotone map of its score,
    through the draw's ranks and the fitted marginal: :func:`draw`)."""
    profile = _load_profile()
    world = _world(spec, profile)
    rng = np.random.default_rng(spec.seed)
    n = spec.rows

    counts = scaled_counts(n)
    decades = rng.permutation(np.repeat(np.arange(10), counts))
    years = np.empty(n, dtype=np.int16)
    for d in range(10):
        idx = np.flatnonzero(decades == d)
        choices, p = _year_probabilities(profile, d)
        years[idx] = rng.choice(choices, size=idx.size, p=p)

    e = era(years, spec)
    pop = world.popularity
    genre_logits = pop[:, 0] + np.outer(e, pop[:, 1]) + np.outer(e**2, pop[:, 2])
    genres = np.argmax(genre_logits + rng.gumbel(size=genre_logits.shape), axis=1).astype(np.int8)

    # Memory: one n x 90 float64 array (371 MB at full size) is worked on in place, by row
    # blocks or column by column. Whole-array expressions made the full draw's process peak at
    # 2.28 GB (the top of a fresh `hpo run`); this peaks at 1.04 GB and gives the same bytes
    # (the same elementwise operations in the same order; a test compares it with the
    # whole-array expressions).
    factors = rng.standard_normal((n, world.loadings.shape[1]))
    latent = factors @ world.loadings.T
    del factors
    noise = rng.standard_normal((n, N_FEATURES))
    noise *= np.sqrt(world.uniqueness)
    latent += noise
    del noise
    ageing = np.arcsinh(e)[:, None]
    shared = spec.shared_era * world.shared_direction
    for rows in _blocks(n):
        g = genres[rows]
        latent[rows] += spec.genre_separation * world.centroids[g]
        latent[rows] += ageing[rows] * (shared + spec.genre_era * world.genre_directions[g])
    k = world.spread_features
    spread_mean = np.zeros(k.size)
    if k.size and spec.era_spread:
        spread_mean = latent[:, k].mean(axis=0)
        centred = latent[:, k] - spread_mean
        latent[:, k] = centred * np.exp(spec.era_spread * world.spread_signs * np.tanh(e)[:, None])
        del centred
    return Latent(years, genres, latent, spread_mean, world, profile)


def _blocks(n: int, size: int = 65_536) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def _normal_scores(latent: npt.NDArray[np.float64]) -> None:
    """In place, per column, the standard-normal quantile of each value's rank (a monotone map,
    so the class structure is untouched while each marginal becomes exactly the fitted one)."""
    n = latent.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    for j in range(latent.shape[1]):
        ranks[np.argsort(latent[:, j], kind="stable")] = np.arange(n)
        latent[:, j] = special.ndtri((ranks + 0.5) / n)


def write_uci_text(spec: SyntheticSpec, out: Path) -> Path:
    """Write a draw as a UCI-layout text file (atomically: a partial file is never left)."""
    sample = draw(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("wb") as fh:
        _uci_format.write_rows(fh, sample.years, sample.features)
    tmp.replace(out)
    logger.info("wrote %d synthetic rows to %s", spec.rows, out)
    return out
