"""The one stratified splitter (tasks/splits.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.splits import stratified_holdout


def test_holdout_is_stratified_seeded_sorted_and_disjoint():
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    kept, held = stratified_holdout(y, 0.2, seed=3)
    assert len(held) == 20 and len(kept) == 80 and not set(kept) & set(held)
    assert np.array_equal(held, np.sort(held)) and np.array_equal(kept, np.sort(kept))
    np.testing.assert_array_equal(np.bincount(y[held], minlength=4), [10, 6, 3, 1])
    np.testing.assert_array_equal(stratified_holdout(y, 0.2, seed=3)[1], held)
    assert not np.array_equal(stratified_holdout(y, 0.2, seed=4)[1], held)


def test_every_class_keeps_a_held_row_and_a_fraction_of_one_holds_all():
    y = np.array([0] * 200 + [1] * 60 + [2] * 3 + [3])
    for fraction in (0.01, 0.05, 0.1, 0.5):
        _, held = stratified_holdout(y, fraction, seed=0, every_class=True)
        assert (np.bincount(y[held], minlength=4) >= 1).all(), fraction
        assert int(np.ceil(fraction * len(y))) <= len(held) <= int(np.ceil(fraction * len(y))) + 4
    kept, held = stratified_holdout(y, 1.0, seed=0)
    assert len(kept) == 0 and len(held) == len(y)
    # a class with one member cannot be stratified: the split falls back to a plain seeded one
    kept, held = stratified_holdout([0, 0, 0, 1], 0.5, seed=0)
    assert len(held) == 2


def test_bad_fraction_and_empty_split_are_named():
    with pytest.raises(ValueError, match=r"training split of task 'x': the fraction must be in \(0, 1\]"):
        stratified_holdout([0, 1], 0.0, what="training split of task 'x'")
    with pytest.raises(ValueError, match="the training split is empty"):
        stratified_holdout([], 0.5, what="training split")
