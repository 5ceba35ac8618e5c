"""UCI Robot Execution Failures: five tasks ``robot_failures_lp1`` ... ``robot_failures_lp5``.

Source (under the data root): ``robot_failures/lp{1..5}.data``: per instance a class-label line,
then 15 lines of 6 tab-separated integers (Fx Fy Fz Tx Ty Tz), instances separated by blank lines.
All five tasks use the modality name ``force_torque`` (one shared embedder); the label is the
failure class *within* that LP problem (:data:`CLASS_NAMES`, sorted alphabetically).

Values reach the thousands, so by default each value is replaced by ``sign(x) * log1p(|x|)``
(option ``transform="signed_log"``; ``"none"`` keeps the raw integers as float32).

Split (``robot_failures/README.md`` allows a fixed split): ``test`` =
``train_test_split(idx, test_size=0.2, stratify=y, random_state=0)`` over the LP file in file
order; ``validation`` = the same recipe (0.2, stratified, random_state=0) on the remaining indices;
``train`` = the rest. Rows keep file order within a split. If a class is too small to stratify
(fewer than 2 instances in the pool, or fewer held-out rows than classes), that step falls back to
an unstratified split with the same seed and warns; the shipped files never need it. Sizes
(train / validation / test): LP1 56/14/18, LP2 29/8/10, LP3 29/8/10, LP4 74/19/24, LP5 104/27/33;
LP3's 3 ``lost`` instances land 2 in train, 0 in validation, 1 in test.
Within-file exact repeats (one in LP2, LP3, LP4, two in LP5) are kept as the README does.

The README's protocol is stratified K-fold CV, so the column ``fold`` holds each instance's fold
under ``StratifiedKFold(n_splits=5, shuffle=True, random_state=0)`` (LP3: 3 folds) over the whole
LP file in file order; a CV script can ignore the fixed split and concatenate the three.

Columns: ``force_torque`` float32 [15, 6], ``label`` (int64), ``fold`` (int64).
``ds.with_format("numpy")[i]["force_torque"]`` is float32 [15, 6].
"""

from __future__ import annotations

import warnings
from pathlib import Path

import datasets
import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from tasks._io import decode_text, make_dataset
from tasks.base import BuiltinTask, TaskSpec, register_task

# Bump when the built dataset changes for the same files and options (part of the cache key).
CODE_VERSION = "1"

STEPS, CHANNELS = 15, 6
CLASS_NAMES = {
    1: sorted(["normal", "collision", "fr_collision", "obstruction"]),
    2: sorted(["normal", "front_col", "back_col", "right_col", "left_col"]),
    3: sorted(["ok", "slightly_moved", "moved", "lost"]),
    4: sorted(["normal", "collision", "obstruction"]),
    5: sorted(["normal", "bottom_collision", "bottom_obstruction", "collision_in_part", "collision_in_tool"]),
}
PROBLEMS = {
    1: "approach to grasp",
    2: "transfer of a part",
    3: "position of the part after a transfer failure",
    4: "approach to ungrasp",
    5: "motion with part",
}
NUM_FOLDS = {1: 5, 2: 5, 3: 3, 4: 5, 5: 5}
ROBOT_TASKS = [f"robot_failures_lp{lp}" for lp in PROBLEMS]


def parse_lp_file(path: Path, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse an ``lp*.data`` file into int64 [n, 15, 6] readings and [n] class indices."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e})") from e
    lines = [(number, line.strip()) for number, line in enumerate(decode_text(raw, str(path)).split("\n"), start=1)]
    lines = [(number, line) for number, line in lines if line]
    readings, labels = [], []
    i = 0
    while i < len(lines):
        number, name = lines[i]
        if name not in class_names:
            raise ValueError(
                f"{path}: line {number}: expected a class label (one of {class_names}), got {name!r}"
            )
        rows = lines[i + 1 : i + 1 + STEPS]
        if len(rows) < STEPS:
            raise ValueError(
                f"{path}: line {number}: instance {name!r} has {len(rows)} of {STEPS} rows (truncated file?)"
            )
        block = []
        for row_number, row in rows:
            try:
                values = [int(v) for v in row.split()]
            except ValueError as e:
                raise ValueError(f"{path}: line {row_number}: expected {CHANNELS} integers, got {row!r}") from e
            if len(values) != CHANNELS:
                raise ValueError(f"{path}: line {row_number}: expected {CHANNELS} integers, got {len(values)}: {row!r}")
            block.append(values)
        readings.append(block)
        labels.append(class_names.index(name))
        i += 1 + STEPS
    if not readings:
        raise ValueError(f"{path}: no instances found")
    return np.array(readings, dtype=np.int64), np.array(labels, dtype=np.int64)


def seeded_split(idx: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``train_test_split(idx, test_size=0.2, stratify=y, random_state=0)``, unstratified if impossible."""
    try:
        return train_test_split(idx, test_size=0.2, stratify=y, random_state=0)
    except ValueError as e:
        warnings.warn(f"{where}: cannot stratify ({e}); using an unstratified split", stacklevel=2)
        return train_test_split(idx, test_size=0.2, random_state=0)


def fold_ids(y: np.ndarray, n_splits: int, where: str) -> np.ndarray:
    """Each instance's test fold under ``StratifiedKFold(n_splits, shuffle=True, random_state=0)``."""
    n_splits = min(n_splits, len(y))
    if n_splits < 2:
        raise ValueError(f"{where}: needs at least 2 instances for cross-validation folds, has {len(y)}")
    folds = np.full(len(y), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # sklearn warns when the rarest class has fewer members than folds; the folds stay valid
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, test) in enumerate(StratifiedKFold(n_splits, shuffle=True, random_state=0).split(y, y)):
            folds[test] = fold
    return folds


def make_build(lp: int):
    """The ``build(data_root, transform="signed_log", quiet=False)`` function of problem ``lp``."""
    task = f"robot_failures_lp{lp}"

    def build(data_root: Path, *, transform: str = "signed_log", quiet: bool = False) -> datasets.DatasetDict:
        if transform not in ("signed_log", "none"):
            raise ValueError(f"task {task!r}: option transform must be 'signed_log' or 'none', got {transform!r}")
        path = Path(data_root) / f"robot_failures/lp{lp}.data"
        readings, y = parse_lp_file(path, CLASS_NAMES[lp])  # ~1 ms: no progress bar needed
        x = readings.astype(np.float64)
        if transform == "signed_log":
            x = np.sign(x) * np.log1p(np.abs(x))
        x = x.astype(np.float32)
        folds = fold_ids(y, NUM_FOLDS[lp], str(path))
        idx = np.arange(len(y))
        pool, test = seeded_split(idx, y, f"{path} (test split)")
        train, validation = seeded_split(pool, y[pool], f"{path} (validation split)")
        features = datasets.Features({
            "force_torque": datasets.Array2D(shape=(STEPS, CHANNELS), dtype="float32"),
            "label": datasets.Value("int64"),
            "fold": datasets.Value("int64"),
        })
        return datasets.DatasetDict({
            split: make_dataset({"force_torque": x[rows], "label": y[rows], "fold": folds[rows]}, features)
            for split, rows in (("train", np.sort(train)), ("validation", np.sort(validation)), ("test", np.sort(test)))
        })

    build.__name__ = f"build_{task}"
    build.__doc__ = f"Build {task!r} (see the module docstring). Columns: force_torque, label, fold."
    return build


TASKS = {
    lp: register_task(BuiltinTask(
        spec=TaskSpec(
            name=f"robot_failures_lp{lp}",
            modalities={"force_torque": "timeseries"},
            task_type="classification",
            num_classes=len(CLASS_NAMES[lp]),
            metric="accuracy",
            modality_options={"force_torque": {"channels": CHANNELS}},
            class_names=CLASS_NAMES[lp],
            description=f"UCI robot execution failures, LP{lp} ({problem}): failure class from 15x6 force/torque",
        ),
        source_files=[f"robot_failures/lp{lp}.data"],
        build=make_build(lp),
        options={"transform": "signed_log"},
        how_to_get=(
            "put the UCI 'Robot Execution Failures' files lp1.data ... lp5.data in <data root>/robot_failures/ "
            "(from https://archive.ics.uci.edu/dataset/138/robot+execution+failures; not downloaded automatically: "
            "UCI serves them inside a zip whose copies are not verified against robot_failures/README.md's checksums)"
        ),
    ))
    for lp, problem in PROBLEMS.items()
}
