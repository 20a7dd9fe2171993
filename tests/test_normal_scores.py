"""Quantile input normalisation (``[data] scaling = "quantile"``): the map's two forms agree, it
makes a skewed column normal on its training rows, it is saved and read back safely, and a study
file that does not set it stores exactly what it stored before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpo.data.normal_scores import KNOTS, NormalScores
from hpo.data.preprocess import Preprocessor
from hpo.sections import DataSettings


def _columns(n: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(0)
    skewed = np.exp(rng.standard_normal(n) * 1.5)  # log-normal
    few = rng.integers(0, 3, n).astype(np.float64)  # three values: repeated quantiles
    heavy = rng.standard_t(2, n)
    return np.stack([skewed, few, heavy], axis=1).astype(np.float32)


def test_a_skewed_column_becomes_normal_scores_on_its_training_rows() -> None:
    x = _columns()
    scores = NormalScores.fit(x).transform(x)
    for j in (0, 2):
        assert abs(scores[:, j].mean()) < 0.02 and abs(scores[:, j].std() - 1.0) < 0.05
        # monotone: the order of the rows is kept
        order = np.argsort(x[:, j], kind="stable")
        assert (np.diff(scores[order, j]) >= -1e-12).all()
    assert len(np.unique(scores[:, 1])) == 3  # three values stay three


def test_the_ramps_compute_the_same_map_as_interpolation_beyond_the_range_and_with_empty_cells() -> None:
    x = _columns()
    fit = NormalScores.fit(x)
    rows = np.concatenate([x[:200], np.array([[-1e6, -5, -1e6], [1e6, 7, 1e6], [np.nan, 1, np.nan]])])
    want = fit.transform(rows)
    start, knot, width, slope = (torch.as_tensor(a, dtype=torch.float64) for a in fit.ramps())
    t = torch.as_tensor(rows, dtype=torch.float64)
    nan = torch.isnan(t)
    safe = torch.where(nan, torch.zeros_like(t), t)
    ramp = torch.minimum(torch.clamp(safe.unsqueeze(2) - knot, min=0.0), width)
    got = torch.where(nan, t, start + (ramp * slope).sum(dim=2)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)  # the ramps are float32, as exported
    assert np.isnan(want[-1, 0]) and not np.isnan(want[-1, 1])
    assert want[-3, 0] == fit.scores[0, 0] and want[-2, 0] == fit.scores[0, int(fit.count[0]) - 1]  # flat


def test_a_preprocessor_with_quantile_scaling_is_saved_and_read_back() -> None:
    x = _columns()
    y = np.zeros(x.shape[0], dtype=np.int64)
    prep, matrix = Preprocessor.fit(
        x, None, y, numeric_names=["a", "b", "c"], n_classes=2, scaling="quantile"
    )
    assert prep.normal is not None and not prep.plain
    back = Preprocessor.from_state(prep.to_state())
    np.testing.assert_array_equal(back.transform(x), matrix)
    assert prep.to_state()["version"] == 2
    plain, _ = Preprocessor.fit(x, None, y, numeric_names=["a", "b", "c"], n_classes=2)
    assert plain.normal is None and plain.to_state()["version"] == 1 and "normal" not in plain.to_state()
    state = prep.to_state()
    state["normal"]["knots"] = torch.flip(state["normal"]["knots"], dims=[1])  # descending: refused
    with pytest.raises(ValueError, match="not ascending"):
        Preprocessor.from_state(state)
    state = prep.to_state()
    state["normal"]["count"] = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match=f"{KNOTS + 1} knots for each of 3 columns"):
        Preprocessor.from_state(state)


def test_scaling_is_stored_only_when_set() -> None:
    assert "scaling" not in DataSettings().model_dump(mode="json")
    assert DataSettings(scaling="quantile").model_dump(mode="json")["scaling"] == "quantile"


def test_an_empty_cell_stays_empty_in_a_column_of_one_value() -> None:
    x = np.stack([np.full(50, 3.0), np.arange(50.0)], axis=1).astype(np.float32)
    fit = NormalScores.fit(x)
    assert int(fit.count[0]) == 1
    out = fit.transform(np.array([[np.nan, 1.0], [3.0, np.nan], [10.0, 2.0]], dtype=np.float32))
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 1]) and out[2, 0] == out[1, 0]
