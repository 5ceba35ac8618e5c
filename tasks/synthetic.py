"""Tiny synthetic tasks for tests and smoke runs (no files needed).

``synthetic_pair``: two timeseries modalities; the class is readable from either (noisily), better
from both. ``synthetic_single``: one of those modalities, another label. Together they form a small
non-parallel multitask suite that trains in seconds. Options: ``noise`` (std of the Gaussian noise
on every value) and ``shuffle_train_labels`` (permute the training split's labels: the control of a
learning test, nothing left to learn).

Tasks with a planted structure, each built so that one training method must show its effect
(``tests/test_learning.py``):

- ``synthetic_slope`` / ``synthetic_offset`` (heterogeneity): every sample has two independent
  factors, a slope class (a trend over time along a fixed channel direction) and an offset class
  (which channel is raised). ``synthetic_slope`` is labeled by the slope and reads it through
  ``slope_x`` and ``slope_mixed`` (a fixed linear channel mix of ``slope_x`` plus fresh noise: the
  same source); ``synthetic_offset`` draws its own samples, is labeled by the offset and reads them
  through ``offset_x``. An encoder trained on one slope modality transfers to the other; one
  trained to read offsets has to be unlearned for slopes.
- ``synthetic_factor_slope`` / ``synthetic_factor_slope_b`` / ``synthetic_factor_offset`` (sharing
  analyses): one shared modality ``factors_x`` holding the slope/offset samples above; the first
  two need the same feature (the slope), the third another one (the offset). Each draws its own rows.
- ``synthetic_clusters`` (semi-supervised): three classes, each a Gaussian cluster (unit variance)
  in ``clusters_x`` (32 channels, one step); the class means lie on a circle in two of the channels,
  the other 30 are noise. A few labels fix the class direction badly; unlabeled rows show where
  the clusters are.
- ``synthetic_translate`` (co-learning): a hidden value s ~ U(0, 1) in four bins is the class.
  ``translate_primary`` reads s noisily (a linear code along one channel direction, 8 steps of
  unit noise); ``translate_secondary`` reads it cleanly (one-hot of the class and s itself).
- ``synthetic_privileged`` (co-learning with privileged information, Vapnik & Vashist 2009; Lopez-Paz
  et al. 2016's "clean labels as privileged information"): four classes; ``privileged_primary``
  reads the class noisily (amplitude ``amp`` along one of four orthonormal channel directions, 8
  steps of unit noise), ``privileged_secondary`` cleanly (its one-hot). Each training label is
  replaced by one of the other three classes with probability ``train_label_noise`` (validation and
  test labels are clean), so the labels teach the primary little per row while the secondary, seen
  only in training, still names every row's true class.
- ``synthetic_cotrain`` (co-training, Blum & Mitchell 1998): four classes read by two views,
  ``cotrain_a`` and ``cotrain_b`` (32 channels, one step each). In each view the class is amplitude
  ``amp`` along one of four orthonormal channel directions (the view's own) plus unit Gaussian noise
  drawn per view, so each view suffices alone (Bayes accuracy 0.956 at ``amp`` 3; both together
  0.996) and the views are independent given the class. With a few labeled rows a classifier fixes
  the class directions badly among the 28 noise channels; a view's confident predictions on the
  unlabeled rows label more of them for the other view.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from tasks.base import BuiltinTask, TaskSpec, register_task

_FEATURES = {
    "syn_a": datasets.Array2D(shape=(None, 3), dtype="float32"),
    "syn_b": datasets.Array2D(shape=(None, 2), dtype="float32"),
}
_SPLITS = ("train", "validation", "test")


def _make(n: int, classes: int, seed: int, with_b: bool, noise: float = 0.8) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    rows: dict[str, list] = {"syn_a": [], "label": []}
    if with_b:
        rows["syn_b"] = []
    for y in labels:
        t = int(rng.integers(6, 12))
        base = np.sin(np.linspace(0, 3, t) * (1 + y))[:, None]
        rows["syn_a"].append((base + noise * rng.standard_normal((t, 3))).astype(np.float32))
        if with_b:
            rows["syn_b"].append((np.full((t + 2, 2), y / classes) + noise * rng.standard_normal((t + 2, 2))).astype(np.float32))
        rows["label"].append(int(y))
    return rows


def _shuffled(rows: dict[str, list], seed: int) -> dict[str, list]:
    """The same rows with their labels permuted (a seeded permutation)."""
    perm = np.random.default_rng([seed, 1]).permutation(len(rows["label"]))
    return {**rows, "label": [rows["label"][i] for i in perm]}


def _build(name: str, classes: int, with_b: bool):
    def build(data_root: Path, *, size: int = 96, seed: int = 0, noise: float = 0.8, shuffle_train_labels: bool = False,
              quiet: bool = False) -> datasets.DatasetDict:
        feats = {"syn_a": _FEATURES["syn_a"], "label": datasets.Value("int64")}
        if with_b:
            feats["syn_b"] = _FEATURES["syn_b"]
        features = datasets.Features(feats)
        splits = {}
        for i, (split, n) in enumerate([("train", size), ("validation", size // 4), ("test", size // 4)]):
            split_seed = seed * 10 + i + zlib.crc32(name.encode()) % 97
            rows = _make(n, classes, split_seed, with_b, noise)
            if shuffle_train_labels and split == "train":
                rows = _shuffled(rows, split_seed)
            splits[split] = datasets.Dataset.from_dict(rows, features=features)
        return datasets.DatasetDict(splits)

    return build


def _splits(name: str, sizes: tuple[int, int, int], seed: int, make: Callable[[int, np.random.Generator], dict[str, list]],
            features: dict[str, Any]) -> datasets.DatasetDict:
    """train / validation / test of ``sizes`` rows, each from its own seeded generator."""
    feats = datasets.Features({**features, "label": datasets.Value("int64")})
    out = {}
    for i, (split, n) in enumerate(zip(_SPLITS, sizes)):
        rng = np.random.default_rng([seed, i, zlib.crc32(name.encode())])
        out[split] = datasets.Dataset.from_dict(make(n, rng), features=feats)
    return datasets.DatasetDict(out)


# ---- heterogeneity: two modalities of one source, one of another --------------------------------------
_MIX = np.array([[0.8, -0.5, 0.3], [0.4, 0.9, -0.2], [-0.3, 0.2, 1.0]])  # slope_mixed = slope_x @ _MIX.T + noise


def _slope_offset(n: int, rng: np.random.Generator, label: str, *, steps: int = 8, noise: float = 0.2) -> tuple[list, list, list]:
    """n samples [steps, 3] with a slope class and an offset class; returns (x, mixed x, labels)."""
    time = np.linspace(-1, 1, steps)[:, None]
    xs, mixed, labels = [], [], []
    for _ in range(n):
        slope, offset = (int(c) for c in rng.integers(0, 3, size=2))
        x = (slope - 1) * 1.5 * time * np.array([1.0, 0.7, -0.5]) + 1.5 * np.eye(3)[offset] + noise * rng.standard_normal((steps, 3))
        xs.append(x.astype(np.float32))
        mixed.append((x @ _MIX.T + noise * rng.standard_normal((steps, 3))).astype(np.float32))
        labels.append(slope if label == "slope" else offset)
    return xs, mixed, labels


def _build_slope(data_root: Path, *, size: int = 128, seed: int = 0, quiet: bool = False) -> datasets.DatasetDict:
    def make(n: int, rng: np.random.Generator) -> dict[str, list]:
        x, mixed, y = _slope_offset(n, rng, "slope")
        return {"slope_x": x, "slope_mixed": mixed, "label": y}

    f = datasets.Array2D(shape=(None, 3), dtype="float32")
    return _splits("synthetic_slope", (size, 64, 64), seed, make, {"slope_x": f, "slope_mixed": f})


def _build_offset(data_root: Path, *, size: int = 128, seed: int = 0, quiet: bool = False) -> datasets.DatasetDict:
    def make(n: int, rng: np.random.Generator) -> dict[str, list]:
        x, _, y = _slope_offset(n, rng, "offset")
        return {"offset_x": x, "label": y}

    return _splits("synthetic_offset", (size, 64, 64), seed, make, {"offset_x": datasets.Array2D(shape=(None, 3), dtype="float32")})


def _build_factor(label: str):
    """A task of the factor family: one shared modality ``factors_x`` (the slope/offset samples),
    labeled by ``label``; each task draws its own samples (seeded by its name)."""

    def build(data_root: Path, *, size: int = 256, seed: int = 0, quiet: bool = False) -> datasets.DatasetDict:
        name = f"synthetic_factor_{label}"

        def make(n: int, rng: np.random.Generator) -> dict[str, list]:
            x, _, y = _slope_offset(n, rng, "slope" if label.startswith("slope") else "offset")
            return {"factors_x": x, "label": y}

        return _splits(name, (size, 64, 64), seed, make, {"factors_x": datasets.Array2D(shape=(None, 3), dtype="float32")})

    return build


# ---- semi-supervised: Gaussian clusters ----------------------------------------------------------------
_CLUSTER_DIMS = 32


def _build_clusters(data_root: Path, *, size: int = 600, seed: int = 0, radius: float = 3.5, quiet: bool = False) -> datasets.DatasetDict:
    angles = 2 * np.pi * np.arange(3) / 3
    means = np.zeros((3, _CLUSTER_DIMS))
    means[:, 0], means[:, 1] = radius * np.cos(angles), radius * np.sin(angles)

    def make(n: int, rng: np.random.Generator) -> dict[str, list]:
        y = rng.integers(0, 3, size=n)
        x = means[y] + rng.standard_normal((n, _CLUSTER_DIMS))
        return {"clusters_x": [row[None, :].astype(np.float32) for row in x], "label": y.tolist()}

    f = datasets.Array2D(shape=(None, _CLUSTER_DIMS), dtype="float32")
    return _splits("synthetic_clusters", (size, size // 4, size // 2), seed, make, {"clusters_x": f})


# ---- co-learning: a clean secondary, a noisy primary ---------------------------------------------------
def _build_translate(data_root: Path, *, size: int = 96, seed: int = 0, amp: float = 2.5, quiet: bool = False) -> datasets.DatasetDict:
    direction = np.random.default_rng(1234).standard_normal(8)
    direction /= np.linalg.norm(direction)

    def make(n: int, rng: np.random.Generator) -> dict[str, list]:
        s = rng.uniform(0, 1, size=n)
        y = np.minimum((4 * s).astype(int), 3)
        primary = amp * np.sqrt(8) * (s - 0.5)[:, None, None] * direction + rng.standard_normal((n, 8, 8))
        secondary = np.concatenate([np.eye(4)[y], s[:, None]], axis=1)[:, None, :] + 0.05 * rng.standard_normal((n, 4, 5))
        return {"translate_primary": list(primary.astype(np.float32)), "translate_secondary": list(secondary.astype(np.float32)),
                "label": y.tolist()}

    feats = {"translate_primary": datasets.Array2D(shape=(None, 8), dtype="float32"),
             "translate_secondary": datasets.Array2D(shape=(None, 5), dtype="float32")}
    return _splits("synthetic_translate", (size, 64, 200), seed, make, feats)


_PRIVILEGED_CLASSES = 4


def _noisy_labels(split: datasets.Dataset, rate: float, rng: np.random.Generator, classes: int) -> datasets.Dataset:
    """``split`` with each label replaced, with probability ``rate``, by one of the other classes (uniformly)."""
    y = np.array(split["label"])
    flip = rng.uniform(size=len(y)) < rate
    y[flip] = (y[flip] + rng.integers(1, classes, size=int(flip.sum()))) % classes
    return split.remove_columns("label").add_column("label", y.tolist(), feature=split.features["label"])


def _build_privileged(data_root: Path, *, size: int = 256, seed: int = 0, amp: float = 1.5, train_label_noise: float = 0.6,
                      quiet: bool = False) -> datasets.DatasetDict:
    chance = 1 - 1 / _PRIVILEGED_CLASSES
    if not 0.0 <= train_label_noise < chance:
        raise ValueError(f"synthetic_privileged: train_label_noise must be in [0, {chance}) (at {chance} the labels say "
                         f"nothing), got {train_label_noise}")
    q, _ = np.linalg.qr(np.random.default_rng(4321).standard_normal((8, 8)))
    directions = q[:_PRIVILEGED_CLASSES]  # [4 classes, 8 channels], orthonormal

    def make(n: int, rng: np.random.Generator) -> dict[str, list]:
        y = rng.integers(0, _PRIVILEGED_CLASSES, size=n)
        primary = amp * directions[y][:, None, :] + rng.standard_normal((n, 8, 8))
        secondary = np.eye(_PRIVILEGED_CLASSES)[y][:, None, :] + 0.05 * rng.standard_normal((n, 4, _PRIVILEGED_CLASSES))
        return {"privileged_primary": list(primary.astype(np.float32)), "privileged_secondary": list(secondary.astype(np.float32)),
                "label": y.tolist()}

    feats = {"privileged_primary": datasets.Array2D(shape=(None, 8), dtype="float32"),
             "privileged_secondary": datasets.Array2D(shape=(None, _PRIVILEGED_CLASSES), dtype="float32")}
    splits = _splits("synthetic_privileged", (size, 64, 200), seed, make, feats)
    rng = np.random.default_rng([seed, len(_SPLITS), zlib.crc32(b"synthetic_privileged")])
    splits["train"] = _noisy_labels(splits["train"], train_label_noise, rng, _PRIVILEGED_CLASSES)
    return splits


# ---- co-training: two sufficient, conditionally independent views ------------------------------------
_COTRAIN_CLASSES, _COTRAIN_DIMS = 4, 32


def _build_cotrain(data_root: Path, *, size: int = 600, seed: int = 0, amp: float = 3.0, quiet: bool = False) -> datasets.DatasetDict:
    # Each view its own orthonormal class directions (fixed generators) and its own noise: the views share only the class.
    directions = [np.linalg.qr(np.random.default_rng(s).standard_normal((_COTRAIN_DIMS, _COTRAIN_DIMS)))[0][:_COTRAIN_CLASSES]
                  for s in (5678, 8765)]  # 2 x [4 classes, 32 channels]

    def make(n: int, rng: np.random.Generator) -> dict[str, list]:
        y = rng.integers(0, _COTRAIN_CLASSES, size=n)
        views = [amp * d[y][:, None, :] + rng.standard_normal((n, 1, _COTRAIN_DIMS)) for d in directions]  # 2 x [n, 1 step, 32]
        return {"cotrain_a": list(views[0].astype(np.float32)), "cotrain_b": list(views[1].astype(np.float32)), "label": y.tolist()}

    f = datasets.Array2D(shape=(None, _COTRAIN_DIMS), dtype="float32")
    return _splits("synthetic_cotrain", (size, 200, 400), seed, make, {"cotrain_a": f, "cotrain_b": f})


def _register(name: str, modalities: dict[str, tuple[str, int]], num_classes: int, build: Callable[..., datasets.DatasetDict],
              options: dict, description: str, extra_metrics: tuple[str, ...] = ()) -> None:
    register_task(
        BuiltinTask(
            spec=TaskSpec(
                name=name,
                modalities={m: kind for m, (kind, _) in modalities.items()},
                modality_options={m: {"channels": c} for m, (_, c) in modalities.items()},
                task_type="classification",
                num_classes=num_classes,
                metric="accuracy",
                extra_metrics=extra_metrics,
                description=description,
            ),
            source_files=[],
            build=build,
            options=options,
        )
    )


_register("synthetic_pair", {"syn_a": ("timeseries", 3), "syn_b": ("timeseries", 2)}, 3, _build("synthetic_pair", 3, True),
          {"size": 96, "seed": 0, "noise": 0.8, "shuffle_train_labels": False}, "synthetic two-modality task for tests",
          extra_metrics=("f1",))
_register("synthetic_single", {"syn_a": ("timeseries", 3)}, 2, _build("synthetic_single", 2, False),
          {"size": 64, "seed": 0, "noise": 0.8, "shuffle_train_labels": False}, "synthetic one-modality task for tests")
_register("synthetic_slope", {"slope_x": ("timeseries", 3), "slope_mixed": ("timeseries", 3)}, 3, _build_slope,
          {"size": 128, "seed": 0}, "synthetic: slope class through two related modalities (heterogeneity tests)")
_register("synthetic_offset", {"offset_x": ("timeseries", 3)}, 3, _build_offset,
          {"size": 128, "seed": 0}, "synthetic: offset class of independent samples (heterogeneity tests)")
for _label, _what in (("slope", "the slope class"), ("slope_b", "the slope class (other samples)"), ("offset", "the offset class")):
    _register(f"synthetic_factor_{_label}", {"factors_x": ("timeseries", 3)}, 3, _build_factor(_label), {"size": 256, "seed": 0},
              f"synthetic: {_what} of the shared modality factors_x (sharing-analysis tests)")
_register("synthetic_clusters", {"clusters_x": ("timeseries", _CLUSTER_DIMS)}, 3, _build_clusters,
          {"size": 600, "seed": 0, "radius": 3.5}, "synthetic: three Gaussian clusters in 32 dimensions (semi-supervised tests)")
_register("synthetic_translate", {"translate_primary": ("timeseries", 8), "translate_secondary": ("timeseries", 5)}, 4,
          _build_translate, {"size": 96, "seed": 0, "amp": 2.5}, "synthetic: a noisy primary and a clean secondary (co-learning tests)")
_register("synthetic_privileged", {"privileged_primary": ("timeseries", 8), "privileged_secondary": ("timeseries", _PRIVILEGED_CLASSES)},
          _PRIVILEGED_CLASSES, _build_privileged, {"size": 256, "seed": 0, "amp": 1.5, "train_label_noise": 0.6},
          "synthetic: noisy training labels, a noisy primary and a clean secondary (privileged-information co-learning tests)")


# ---- zero-shot: two modalities read one class attribute ---------------------------------------------------
_ZS_CLASSES = 6


def _build_zeroshot(data_root: Path, *, size: int = 240, seed: int = 0, noise: float = 0.3, quiet: bool = False) -> datasets.DatasetDict:
    """``synthetic_zeroshot`` (zero-shot tests): each class is a point of a 3-d attribute space (fixed,
    seeded); a row's attribute is its class point plus ``noise``. ``zs_a`` (6 steps x 6 channels) and
    ``zs_b`` (4 steps x 4 channels) are two fixed linear maps of that attribute plus unit noise, so the
    modalities share the class structure through the attribute and nothing else."""
    fixed = np.random.default_rng(4321)
    points, to_a, to_b = 2.0 * fixed.standard_normal((_ZS_CLASSES, 3)), fixed.standard_normal((3, 6)), fixed.standard_normal((3, 4))

    def make(n: int, rng: np.random.Generator) -> dict[str, list]:
        y = rng.integers(0, _ZS_CLASSES, size=n)
        attr = points[y] + noise * rng.standard_normal((n, 3))
        a = (attr @ to_a)[:, None, :] + rng.standard_normal((n, 6, 6))
        b = (attr @ to_b)[:, None, :] + rng.standard_normal((n, 4, 4))
        return {"zs_a": list(a.astype(np.float32)), "zs_b": list(b.astype(np.float32)), "label": y.tolist()}

    feats = {"zs_a": datasets.Array2D(shape=(None, 6), dtype="float32"), "zs_b": datasets.Array2D(shape=(None, 4), dtype="float32")}
    return _splits("synthetic_zeroshot", (size, 96, 192), seed, make, feats)


_register("synthetic_zeroshot", {"zs_a": ("timeseries", 6), "zs_b": ("timeseries", 4)}, _ZS_CLASSES, _build_zeroshot,
          {"size": 240, "seed": 0, "noise": 0.3}, "synthetic: two modalities of one class attribute (zero-shot tests)")


# ---- prefix tuning: the label only in a modality new to the checkpoint ----------------------------------
# synthetic_prefix: syn_a (synthetic_single's modality, here label-free noise) and prefix_x, a new
# modality whose mean level (+1 or -1 along a fixed direction, 0.5 noise) is the class; two classes like
# synthetic_single, so a model trained on synthetic_single can keep its head.
def _build_prefix(data_root: Path, *, size: int = 128, seed: int = 0, quiet: bool = False) -> datasets.DatasetDict:
    direction = np.array([1.0, -0.5, 0.5, 1.0])

    def make(n: int, rng: np.random.Generator) -> dict[str, list]:
        y = rng.integers(0, 2, size=n)
        host = [(0.8 * rng.standard_normal((int(rng.integers(6, 12)), 3))).astype(np.float32) for _ in range(n)]
        prefix = [((2 * c - 1) * direction + 0.5 * rng.standard_normal((int(rng.integers(4, 8)), 4))).astype(np.float32) for c in y]
        return {"syn_a": host, "prefix_x": prefix, "label": y.tolist()}

    feats = {"syn_a": _FEATURES["syn_a"], "prefix_x": datasets.Array2D(shape=(None, 4), dtype="float32")}
    return _splits("synthetic_prefix", (size, 64, 64), seed, make, feats)


_register("synthetic_prefix", {"syn_a": ("timeseries", 3), "prefix_x": ("timeseries", 4)}, 2, _build_prefix, {"size": 128, "seed": 0},
          "synthetic: the label only in prefix_x, a modality new to a synthetic_single model (prefix-tuning tests)")
_register("synthetic_cotrain", {"cotrain_a": ("timeseries", _COTRAIN_DIMS), "cotrain_b": ("timeseries", _COTRAIN_DIMS)},
          _COTRAIN_CLASSES, _build_cotrain, {"size": 600, "seed": 0, "amp": 3.0},
          "synthetic: two sufficient views, independent given the class (co-training tests)")


# ---- heterogeneity-aware sharing: two families that need the encoder's one attention in two places ------
# synthetic_position_<family>_<v> (family early / late, v a / b): every step of pos_<family>_<v> (6 steps x 3
# channels) is N(0, 1) noise; the class is the channel holding the largest value at step 1 (early) or step 4
# (late). The four modalities have the same statistics and only the position of the label differs: an encoder
# with one latent (one cross-attention pattern) serves either family, a shared one must split its attention.
_POSITION_STEPS, _POSITION_OF = 6, {"early": 1, "late": 4}


def _build_position(family: str, modality: str):
    def build(data_root: Path, *, size: int = 1024, seed: int = 0, quiet: bool = False) -> datasets.DatasetDict:
        def make(n: int, rng: np.random.Generator) -> dict[str, list]:
            x = rng.standard_normal((n, _POSITION_STEPS, 3))
            return {modality: list(x.astype(np.float32)), "label": x[:, _POSITION_OF[family]].argmax(axis=1).tolist()}

        return _splits(f"synthetic_{modality.replace('pos_', 'position_')}", (size, 64, 256), seed, make,
                       {modality: datasets.Array2D(shape=(None, 3), dtype="float32")})

    return build


for _family in _POSITION_OF:
    for _v in ("a", "b"):
        _register(f"synthetic_position_{_family}_{_v}", {f"pos_{_family}_{_v}": ("timeseries", 3)}, 3,
                  _build_position(_family, f"pos_{_family}_{_v}"), {"size": 1024, "seed": 0},
                  f"synthetic: the channel of the largest value at step {_POSITION_OF[_family]} (heterogeneity-aware sharing tests)")
