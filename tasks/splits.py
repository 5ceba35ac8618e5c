"""A task's splits: their names, the check every task's ``DatasetDict`` passes, and the one seeded,
stratified row splitter (dataset validation splits, the carved validation split of a bring-your-own
task, the training fraction ``train.train_fraction``, the labeled subset of semi-supervised runs and
the baselines' subsets all draw their rows here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np

from tasks.base import TaskSpec

SPLITS = ("train", "validation", "test")
# A task may also carry rows without labels (semi-supervised learning, transference/semisup.py).
OPTIONAL_SPLITS = ("unlabeled",)


def check_splits(spec: TaskSpec, splits: Any, *, where: str) -> None:
    """Check splits are train/validation/test (+ optionally ``unlabeled``) and hold every modality
    column and the target (the ``unlabeled`` split needs no target)."""
    if not isinstance(splits, datasets.DatasetDict):
        raise TypeError(f"{where}: expected a datasets.DatasetDict, got {type(splits).__name__}")
    if not set(SPLITS) <= set(splits) <= set(SPLITS) | set(OPTIONAL_SPLITS):
        raise ValueError(f"{where}: expected splits {list(SPLITS)} (and optionally {list(OPTIONAL_SPLITS)}), got {sorted(splits)}")
    for split, ds in splits.items():
        needed = spec.modalities if split in OPTIONAL_SPLITS else (*spec.modalities, spec.target)
        missing = [c for c in needed if c not in ds.column_names]
        if missing:
            raise ValueError(f"{where}: split {split!r} lacks column(s) {missing}; it has {ds.column_names}")
        if len(ds) == 0 and split in SPLITS:
            raise ValueError(f"{where}: split {split!r} of task {spec.name!r} has no rows; every task needs training, "
                             "validation and test rows")


def stratified_holdout(labels: Sequence[Any] | np.ndarray, fraction: float, seed: int = 0, *, every_class: bool = False,
                       what: str = "split") -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) positions: a seeded ``fraction`` of the rows held out, stratified by label
    (``sklearn.model_selection.train_test_split``; ``ceil(fraction * n)`` rows held out).

    Falls back to an unstratified split when a class has a single member or there are fewer
    held-out rows than classes (``train_test_split`` cannot stratify those). With ``every_class``,
    a class the split left without a held-out row gets one seeded row moved over, so every class
    is on the held-out side (the held-out side is then the subset that is used: a training
    fraction, a labeled subset). A fraction whose held-out side would be every row holds out all.

    Raises:
        ValueError: no rows, or ``fraction`` outside (0, 1]; ``what`` names the split.
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(labels).reshape(-1)
    if len(y) == 0:
        raise ValueError(f"the {what} is empty: no rows to split")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"{what}: the fraction must be in (0, 1], got {fraction}")
    idx = np.arange(len(y))
    n_held = int(np.ceil(fraction * len(y)))
    if n_held >= len(y):
        return np.zeros(0, dtype=np.int64), idx
    _, counts = np.unique(y, return_counts=True)
    smallest = counts.min() if len(counts) else 0
    stratify = y if (smallest >= 2 and n_held >= len(counts) and len(y) - n_held >= len(counts)) else None
    kept, held = train_test_split(idx, test_size=fraction, stratify=stratify, random_state=seed)
    if not every_class:
        return np.sort(kept), np.sort(held)
    chosen = np.zeros(len(y), dtype=bool)
    chosen[held] = True
    rng = np.random.default_rng([seed, 7])
    for c in np.unique(y):  # a class the split missed gets one seeded row
        members = np.flatnonzero(y == c)
        if not chosen[members].any():
            chosen[rng.choice(members)] = True
    return np.flatnonzero(~chosen), np.flatnonzero(chosen)
