"""Caruana's greedy selection (hpo.ensemble) and the tasks' weighted combine."""

from __future__ import annotations

import pytest
import torch

from hpo.ensemble import greedy_select
from hpo.tasks import Classification


def _task() -> Classification:
    return Classification(("a", "b", "c"))


def test_greedy_prefers_complementary_members_over_a_duplicate() -> None:
    """Two members each right on a different half of the rows and a third worse everywhere:
    the selection takes both complementary members, and the ensemble beats each alone."""
    y = torch.tensor([0] * 50 + [1] * 50)
    strong, weak = 4.0, 0.5
    first = torch.zeros(100, 3)
    first[:50, 0] = strong  # right on the first half, unsure on the second
    second = torch.zeros(100, 3)
    second[50:, 1] = strong
    poor = torch.zeros(100, 3)
    poor[:, 2] = weak  # leans to a class that never occurs
    task = _task()
    picked = greedy_select([poor, first, second], y, task, max_members=4)
    assert picked.counts[0] == 0 and picked.counts[1] > 0 and picked.counts[2] > 0
    assert sum(picked.counts) <= 4 and picked.members == [1, 2]
    alone = min(task.evaluate(o, y).loss for o in (first, second))
    assert min(picked.losses) < alone
    assert min(picked.losses) == pytest.approx(
        task.evaluate(task.combine([first, second], [picked.counts[1], picked.counts[2]]), y).loss
    )


def test_weighted_combine_is_the_multiset_mean() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 3, generator=g), torch.randn(20, 3, generator=g)
    task = _task()
    torch.testing.assert_close(task.combine([a, b], [2, 1]), task.combine([a, a, b]))
    torch.testing.assert_close(task.combine([a, b], [1, 1]), task.combine([a, b]))


def test_a_bad_library_is_refused() -> None:
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="max_members = 0"):
        greedy_select([torch.zeros(2, 3)], y, _task(), max_members=0)
    with pytest.raises(ValueError, match="the library is empty"):
        greedy_select([], y, _task(), max_members=2)
    with pytest.raises(ValueError, match="differ in shape"):
        greedy_select([torch.zeros(2, 3), torch.zeros(3, 3)], y, _task(), max_members=2)


def test_bagged_selection_adds_each_bags_counts() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (60,), generator=g)
    library = [torch.randn(60, 3, generator=g) for _ in range(6)]
    picked = greedy_select(library, y, _task(), max_members=3, bags=4, seed=7)
    assert 3 <= sum(picked.counts) <= 12 and len(picked.losses) == 1
    again = greedy_select(library, y, _task(), max_members=3, bags=4, seed=7)
    assert again.counts == picked.counts  # a fixed seed: the same halves


def test_rounds_that_do_not_lower_the_loss_are_dropped() -> None:
    """The selection keeps the nested ensemble with the lowest validation loss: after the one
    good member, every further round (the good one again, or a poor one) lowers nothing."""
    y = torch.tensor([0, 1, 2] * 10)
    good = torch.nn.functional.one_hot(y, 3).float() * 3.0
    poor = torch.zeros(30, 3)
    picked = greedy_select([poor, good], y, _task(), max_members=5)
    assert picked.counts == [0, 1] and len(picked.losses) == 5
    assert picked.losses[0] == min(picked.losses)
