"""Tiny synthetic tasks for tests and smoke runs (no files needed).

``synthetic_pair``: two timeseries modalities; the class is readable from either (noisily), better
from both. ``synthetic_single``: one of those modalities, another label. Together they form a small
non-parallel multitask suite that trains in seconds.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import datasets
import numpy as np

from tasks.base import BuiltinTask, TaskSpec, register_task

_FEATURES = {
    "syn_a": datasets.Array2D(shape=(None, 3), dtype="float32"),
    "syn_b": datasets.Array2D(shape=(None, 2), dtype="float32"),
}


def _make(n: int, classes: int, seed: int, with_b: bool) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    rows: dict[str, list] = {"syn_a": [], "label": []}
    if with_b:
        rows["syn_b"] = []
    for y in labels:
        t = int(rng.integers(6, 12))
        base = np.sin(np.linspace(0, 3, t) * (1 + y))[:, None]
        rows["syn_a"].append((base + 0.8 * rng.standard_normal((t, 3))).astype(np.float32))
        if with_b:
            rows["syn_b"].append((np.full((t + 2, 2), y / classes) + 0.8 * rng.standard_normal((t + 2, 2))).astype(np.float32))
        rows["label"].append(int(y))
    return rows


def _build(name: str, classes: int, with_b: bool):
    def build(data_root: Path, *, size: int = 96, seed: int = 0, quiet: bool = False) -> datasets.DatasetDict:
        feats = {"syn_a": _FEATURES["syn_a"], "label": datasets.Value("int64")}
        if with_b:
            feats["syn_b"] = _FEATURES["syn_b"]
        features = datasets.Features(feats)
        splits = {}
        for i, (split, n) in enumerate([("train", size), ("validation", size // 4), ("test", size // 4)]):
            splits[split] = datasets.Dataset.from_dict(_make(n, classes, seed * 10 + i + zlib.crc32(name.encode()) % 97, with_b), features=features)
        return datasets.DatasetDict(splits)

    return build


register_task(
    BuiltinTask(
        spec=TaskSpec(
            name="synthetic_pair",
            modalities={"syn_a": "timeseries", "syn_b": "timeseries"},
            modality_options={"syn_a": {"channels": 3}, "syn_b": {"channels": 2}},
            task_type="classification",
            num_classes=3,
            metric="accuracy",
            extra_metrics=("f1",),
            description="synthetic two-modality task for tests",
        ),
        source_files=[],
        build=_build("synthetic_pair", 3, True),
        options={"size": 96, "seed": 0},
    )
)
register_task(
    BuiltinTask(
        spec=TaskSpec(
            name="synthetic_single",
            modalities={"syn_a": "timeseries"},
            modality_options={"syn_a": {"channels": 3}},
            task_type="classification",
            num_classes=2,
            metric="accuracy",
            description="synthetic one-modality task for tests",
        ),
        source_files=[],
        build=_build("synthetic_single", 2, False),
        options={"size": 64, "seed": 0},
    )
)
