"""How sure a selection is: the difference between the selected candidate and the runner-up, with
a 95 % interval, by the method that fits how the two were scored. Pure numpy/scipy.

* **k-fold CV** (both scored on the same folds): the corrected resampled t-test of Nadeau and
  Bengio (2003), "Inference for the Generalization Error": the per-fold differences' variance is
  inflated by ``n_test / n_train`` (``1 / (k - 1)`` for k-fold CV) because the folds' training
  sets overlap; as in scikit-learn's example "Statistical comparison of models using grid search".
* **Seeds** (both trained with the same N seeds): a paired t-interval over the per-seed
  differences.
* **One validation set** (both scored on the same rows): a paired bootstrap over the rows of
  the two candidates' predictions (2,000 resamples; the metric recomputed on each), whatever the
  task: classes for a classifier, values (squared or absolute errors) for a regressor.

A difference is *within noise* when its interval contains 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

BOOTSTRAP_RESAMPLES = 2_000
LEVEL = 0.95


def corrected_t(diffs: Sequence[float], *, test_over_train: float) -> tuple[float, float, float]:
    """Mean difference and its interval under the corrected resampled t-test."""
    d = np.asarray(diffs, dtype=np.float64)
    k = d.size
    mean = float(d.mean())
    if k < 2:
        return mean, -np.inf, np.inf
    var = float(d.var(ddof=1))
    se = np.sqrt((1.0 / k + test_over_train) * var)
    half = float(stats.t.ppf(0.5 + LEVEL / 2, df=k - 1) * se)
    return mean, mean - half, mean + half


def paired_t(diffs: Sequence[float]) -> tuple[float, float, float]:
    """Mean difference and its t-interval (paired observations, e.g. seeds)."""
    return corrected_t(diffs, test_over_train=0.0)


def paired_bootstrap(
    y_true: npt.NDArray[Any],
    pred_a: npt.NDArray[Any],
    pred_b: npt.NDArray[Any],
    *,
    metric: Callable[[npt.NDArray[Any], npt.NDArray[Any]], float],
    per_row: Callable[[npt.NDArray[Any], npt.NDArray[Any]], npt.NDArray[np.float64]] | None = None,
    fast: Callable[[npt.NDArray[Any], npt.NDArray[Any]], float] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``metric(a) - metric(b)`` on the rows, and its percentile interval over row resamples.

    ``per_row``: the metric is the mean of these per-row values (vectorised: the mean of per-row
    differences); else each resample recomputes it, with ``fast`` (an equivalent cheaper form,
    e.g. from one confusion matrix) where given."""
    y, a, b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    observed = metric(y, a) - metric(y, b)
    rng = np.random.default_rng(seed)
    n = y.size
    if per_row is not None:
        diffs = per_row(y, a) - per_row(y, b)
        draws = np.array([diffs[rng.integers(0, n, n)].mean() for _ in range(resamples)])
    else:
        f = fast or metric
        draws = np.empty(resamples)
        for i in range(resamples):
            idx = rng.integers(0, n, n)
            draws[i] = f(y[idx], a[idx]) - f(y[idx], b[idx])
    low, high = np.percentile(draws, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(observed), float(low), float(high)


def paired_mean_bootstrap(
    per_row: npt.NDArray[np.floating[Any]], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """The mean of per-row paired differences and its percentile interval over row resamples."""
    d = np.asarray(per_row, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = np.array([d[rng.integers(0, d.size, d.size)].mean() for _ in range(resamples)])
    low, high = np.percentile(draws, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(d.mean()), float(low), float(high)
