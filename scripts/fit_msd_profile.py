"""Fit the aggregate feature profile that the synthetic generator uses.

Reads the real YearPredictionMSD sample rows (``../shared/data/msd-sample/*.txt``; they are
not part of this project) and writes ``hpo/_profile/msd_profile.json``: aggregate statistics
only, no rows:


* per feature, the four parameters of a sinh-arcsinh marginal (location, scale, skew, tail
  weight) fitted to the feature's quantiles, and a flag for features fitted on a log scale
  (strictly positive ones), so synthetic features get the real scales, skew and outliers;
* a 16-factor loading matrix of the normal-score (Gaussian copula) correlation, so synthetic
  features are correlated like the real ones;
* the within-decade year shares.

Run: ``python scripts/fit_msd_profile.py [SAMPLE_DIR]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import optimize, stats

N_FACTORS = 16
LEVELS = np.concatenate([[0.0005, 0.001, 0.005], np.linspace(0.01, 0.99, 99), [0.995, 0.999, 0.9995]])


def sinh_arcsinh(z: np.ndarray, loc: float, scale: float, skew: float, tail: float) -> np.ndarray:
    out: np.ndarray = loc + scale * np.sinh((np.arcsinh(z) + skew) / tail)
    return out


def fit_marginal(x: np.ndarray) -> list[float]:
    q = np.quantile(x, LEVELS)
    z = stats.norm.ppf(LEVELS)
    med, iqr = np.median(x), np.subtract(*np.quantile(x, [0.75, 0.25]))

    def resid(p: np.ndarray) -> np.ndarray:
        loc, log_scale, skew, log_tail = p
        fitted = sinh_arcsinh(z, loc, np.exp(log_scale), skew, np.exp(log_tail))
        # Compare on an asinh scale so that the far tails do not outweigh the body.
        diff: np.ndarray = np.arcsinh(4 * (fitted - med) / iqr) - np.arcsinh(4 * (q - med) / iqr)
        return diff

    p0 = np.array([med, np.log(iqr / 1.35), 0.0, 0.0])
    res = optimize.least_squares(resid, p0, method="lm", max_nfev=5000)
    loc, log_scale, skew, log_tail = res.x
    return [float(loc), float(np.exp(log_scale)), float(skew), float(np.exp(log_tail))]


def main() -> None:
    sample_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/msd-sample")
    rows = np.concatenate([np.loadtxt(p, delimiter=",") for p in sorted(sample_dir.glob("*.txt"))])
    rows = np.unique(rows, axis=0)  # the two files share 14 rows
    years, x = rows[:, 0].astype(int), rows[:, 1:]
    # Strictly positive features (the variances, and the first timbre average) are fitted on
    # a log scale so that synthetic values stay positive: the marginal then carries log=1.
    positive = x.min(axis=0) > 0
    marginals = [
        [*fit_marginal(np.log(x[:, j]) if positive[j] else x[:, j]), float(positive[j])]
        for j in range(x.shape[1])
    ]

    ranks = stats.rankdata(x, axis=0) / (x.shape[0] + 1)
    scores = stats.norm.ppf(ranks)
    corr = np.corrcoef(scores, rowvar=False)
    vals, vecs = np.linalg.eigh(corr)
    order = np.argsort(vals)[::-1][:N_FACTORS]
    loadings = vecs[:, order] * np.sqrt(vals[order])
    explained = float(vals[order].sum() / vals.sum())

    year_shares: dict[str, list[float]] = {}
    for decade in range(10):
        lo = 1920 + 10 * decade
        counts = np.array([(years == y).sum() for y in range(lo, lo + 10)], dtype=float)
        year_shares[str(decade)] = [round(c, 1) for c in counts.tolist()]

    profile = {
        "source": "fitted by scripts/fit_msd_profile.py to the real MSD sample rows",
        "rows_used": int(rows.shape[0]),
        "marginals": [[round(v, 6) for v in m] for m in marginals],
        "factor_loadings": np.round(loadings, 4).tolist(),
        "factor_variance_explained": round(explained, 4),
        "year_counts_in_sample": year_shares,
    }
    out = Path(__file__).resolve().parents[1] / "hpo" / "_profile" / "msd_profile.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile, indent=1) + "\n")
    print(f"wrote {out} ({rows.shape[0]} rows, {N_FACTORS} factors explain {explained:.1%})")


if __name__ == "__main__":
    main()
