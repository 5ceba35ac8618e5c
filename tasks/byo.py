"""Bring-your-own tasks: a YAML or JSON spec pointing at Arrow or Parquet data.

The spec (``docs/interfaces.md``)::

    name: my_task                 # required; becomes the head's name
    path: hf                      # required; relative to the spec file
    format: huggingface_datasets_save_to_disk   # or parquet; inferred when absent
    splits: {train: train, test: test}           # optional; validation optional
    modalities: {accelerometer: timeseries, gyroscope: timeseries}   # required; column -> kind
    target: label                 # required
    task_type: classification     # classification (default) | multilabel | regression
    num_classes: 4                # required for classification / multilabel (unless target is a ClassLabel)
    metric: accuracy              # default: accuracy, auroc (multilabel), mse (regression)
    extra_metrics: [f1]           # optional
    class_names: [a, b, c, d]     # optional (default: the ClassLabel's names)
    description: free text        # optional
    modality_options: {accelerometer: {channels: 3}}   # optional; column -> embedder options

Data: ``huggingface_datasets_save_to_disk`` is a ``DatasetDict.save_to_disk`` folder; ``parquet`` is
a folder of ``<split>.parquet`` files (``train.parquet``, ``test.parquet``, optional
``validation.parquet``) or whatever file names ``splits`` maps to. ``splits`` maps
``train`` / ``validation`` / ``test`` to the data's split names (or parquet file names). Without
``splits``, ``validation`` may also be called ``val``, ``valid`` or ``dev``. Without a validation
split, a seeded (seed 0) 10% of train is held out, stratified by class for classification. An
optional ``unlabeled`` split (``splits: {unlabeled: ...}``, or a split of that name) holds rows
without labels for ``train.semi`` (highmmt/semisup.py): it needs the modality columns, not the target.

Column types accepted per kind (nested lists are Arrow lists, ``datasets.List``/``Sequence`` or
``Array2D``..``Array5D``; numbers may be any int/float/bool; each sample must be rectangular):

==========================  ==================================================================
image                       [h][w][c] or [h][w] numbers (uint8 stays uint8), or ``datasets.Image``
video                       [t][h][w][c] or [t][h][w] numbers
audio                       [s] floats in [-1, 1]; give ``sample_rate`` in modality_options
timeseries                  [t][c] or [t] numbers
pose                        [t][j][c] numbers
set                         [n][c] or [n] numbers
text                        string
tabular                     struct {numeric: [f], numeric_observed: [f] bool (optional),
                            categorical: [g] ints, -1 = missing (optional)}, or [f] numbers;
                            NaN = missing
irregular_timeseries        struct {values: [t][c], times: [t] hours, observed: [t][c] bool
                            (optional)}; NaN = unobserved
==========================  ==================================================================

The data is read in place (no cache): ``save_to_disk`` folders are memory-mapped, parquet files
are read into memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.table import InMemoryTable

from tasks.base import KINDS, TASK_TYPES, TaskSpec
from tasks.cache import OPTIONAL_SPLITS, SPLITS, check_splits, stratified_holdout

FORMATS = ("huggingface_datasets_save_to_disk", "parquet")
REQUIRED_KEYS = ("name", "path", "modalities", "target")
OPTIONAL_KEYS = ("format", "splits", "task_type", "num_classes", "metric", "extra_metrics", "class_names",
                 "description", "modality_options")
DEFAULT_METRIC = {"classification": "accuracy", "multilabel": "auroc", "regression": "mse"}
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val", "valid", "dev"), "test": ("test",),
                 "unlabeled": ("unlabeled",)}
VALIDATION_FRACTION = 0.1
# kind -> allowed nesting depths of a list column
_DEPTHS = {"image": (2, 3), "video": (3, 4), "audio": (1,), "timeseries": (1, 2), "pose": (3,), "set": (1, 2)}


class SpecError(ValueError):
    """A bring-your-own spec problem; the message names the spec file and the key."""

    def __init__(self, spec_file: Path, key: str, message: str) -> None:
        super().__init__(f"task spec {str(spec_file)!r}, key {key!r}: {message}")
        self.spec_file, self.key = spec_file, key


def load_byo_spec(
    path: str | os.PathLike[str], *, return_path: bool = False
) -> tuple[TaskSpec, datasets.DatasetDict] | tuple[TaskSpec, datasets.DatasetDict, Path]:
    """Read a spec file and its data: ``(spec, splits)`` (and the data path with ``return_path``)."""
    spec_file = Path(path)
    raw = read_spec_file(spec_file)
    unknown = sorted(set(raw) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise SpecError(spec_file, unknown[0], f"unknown key(s) {unknown}; known: {sorted(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in raw or raw[key] in (None, "", {}):
            raise SpecError(spec_file, key, "required key is missing")
    modalities = raw["modalities"]
    if not isinstance(modalities, Mapping):
        raise SpecError(spec_file, "modalities", f"expected a mapping column -> kind, got {modalities!r}")
    for col, kind in modalities.items():
        if kind not in KINDS:
            raise SpecError(spec_file, f"modalities.{col}", f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    task_type = raw.get("task_type", "classification")
    if task_type not in TASK_TYPES:
        raise SpecError(spec_file, "task_type", f"expected one of {TASK_TYPES}, got {task_type!r}")

    data_path = Path(raw["path"]).expanduser()
    if not data_path.is_absolute():
        data_path = spec_file.parent / data_path
    fmt = raw.get("format") or infer_format(spec_file, data_path)
    if fmt not in FORMATS:
        raise SpecError(spec_file, "format", f"expected one of {FORMATS}, got {fmt!r}")
    splits = _read_splits(spec_file, data_path, fmt, raw.get("splits"))

    target = str(raw["target"])
    train_features = splits["train"].features
    for split, ds in splits.items():
        for col, kind in modalities.items():
            if col not in ds.column_names:
                raise SpecError(spec_file, f"modalities.{col}", f"split {split!r} has no column {col!r}; "
                                                                 f"columns: {ds.column_names}")
            _check_kind(spec_file, col, kind, ds.features[col])
        if target not in ds.column_names and split not in OPTIONAL_SPLITS:
            raise SpecError(spec_file, "target", f"split {split!r} has no column {target!r}; columns: {ds.column_names}")

    target_feature = train_features[target]
    num_classes = raw.get("num_classes")
    class_names = raw.get("class_names")
    if isinstance(target_feature, datasets.ClassLabel):
        num_classes = target_feature.num_classes if num_classes is None else num_classes
        class_names = list(target_feature.names) if class_names is None and num_classes == target_feature.num_classes else class_names
    if num_classes is None:
        if task_type != "regression":
            raise SpecError(spec_file, "num_classes", f"required for task_type {task_type!r}")
        num_classes = 1
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise SpecError(spec_file, "num_classes", f"expected a positive integer, got {num_classes!r}")
    for split, ds in splits.items():
        if split not in OPTIONAL_SPLITS:  # an unlabeled split's labels, if any, are never read
            _check_target(spec_file, split, ds, target, task_type, num_classes)

    try:
        spec = TaskSpec(
            name=raw["name"],
            modalities=dict(modalities),
            task_type=task_type,
            num_classes=num_classes,
            metric=raw.get("metric", DEFAULT_METRIC[task_type]),
            modality_options={k: dict(v) for k, v in (raw.get("modality_options") or {}).items()},
            target=target,
            extra_metrics=tuple(raw.get("extra_metrics") or ()),
            class_names=tuple(class_names) if class_names is not None else None,
            description=str(raw.get("description", "")),
        )
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"task spec {str(spec_file)!r}: {e}") from e

    if "validation" not in splits:
        splits = _carve_validation(splits, spec)
    out = datasets.DatasetDict({s: splits[s] for s in (*SPLITS, *OPTIONAL_SPLITS) if s in splits})
    check_splits(spec, out, where=f"task spec {str(spec_file)!r}")
    return (spec, out, data_path) if return_path else (spec, out)


def read_spec_file(spec_file: Path) -> dict[str, Any]:
    """The spec as a dict (YAML for .yaml/.yml, JSON for .json)."""
    if not spec_file.is_file():
        raise FileNotFoundError(f"task spec {str(spec_file)!r} does not exist")
    import yaml

    text = spec_file.read_text()
    try:
        raw = json.loads(text) if spec_file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"task spec {str(spec_file)!r}: cannot parse ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"task spec {str(spec_file)!r}: expected a mapping of keys, got {type(raw).__name__}")
    return raw


def infer_format(spec_file: Path, data_path: Path) -> str:
    if (data_path / "dataset_dict.json").is_file():
        return "huggingface_datasets_save_to_disk"
    if data_path.is_dir() and any(data_path.glob("*.parquet")):
        return "parquet"
    if not data_path.exists():
        raise SpecError(spec_file, "path", f"{str(data_path)!r} does not exist")
    raise SpecError(spec_file, "format", f"cannot tell the format of {str(data_path)!r} (no dataset_dict.json, "
                                         f"no *.parquet); set format to one of {FORMATS}")


def _read_splits(spec_file: Path, data_path: Path, fmt: str, mapping: Any) -> dict[str, datasets.Dataset]:
    if mapping is not None:
        if not isinstance(mapping, Mapping):
            raise SpecError(spec_file, "splits", f"expected a mapping like {{train: train, test: test}}, got {mapping!r}")
        bad = sorted(set(mapping) - set(SPLITS) - set(OPTIONAL_SPLITS))
        if bad:
            raise SpecError(spec_file, f"splits.{bad[0]}", f"unknown split; expected keys among {list(SPLITS + OPTIONAL_SPLITS)}")
    if fmt == "huggingface_datasets_save_to_disk":
        try:
            loaded = datasets.load_from_disk(str(data_path))
        except Exception as e:  # noqa: BLE001 - FileNotFoundError and datasets' own errors
            raise SpecError(spec_file, "path", f"cannot load {str(data_path)!r} with datasets.load_from_disk ({e})") from e
        if not isinstance(loaded, datasets.DatasetDict):
            raise SpecError(spec_file, "path", f"{str(data_path)!r} holds a single Dataset; save a DatasetDict "
                                               f"with train and test splits")
        available = sorted(loaded)

        def fetch(name: str) -> datasets.Dataset:
            return loaded[name]
    else:
        files = sorted(data_path.glob("*.parquet")) if data_path.is_dir() else []
        available = [f.name.removesuffix(".parquet") for f in files]

        def fetch(name: str) -> datasets.Dataset:
            import pyarrow.parquet as pq

            f = data_path / (name if name.endswith(".parquet") else f"{name}.parquet")
            try:
                table = pq.read_table(f)
            except (OSError, pa.ArrowException) as e:
                raise SpecError(spec_file, "path", f"cannot read {str(f)!r} ({e})") from e
            return datasets.Dataset(InMemoryTable(table))

    out = {}
    for split in (*SPLITS, *OPTIONAL_SPLITS):
        if mapping is not None:
            source = mapping.get(split)
            if source is None:
                continue
            source = str(source)
            if source.removesuffix(".parquet") not in available:
                raise SpecError(spec_file, f"splits.{split}", f"no split {source!r} in {str(data_path)!r}; found {available}")
        else:
            source = next((a for a in SPLIT_ALIASES[split] if a in available), None)
            if source is None:
                continue
        out[split] = fetch(source)
    for split in ("train", "test"):
        if split not in out:
            raise SpecError(spec_file, "splits", f"no {split!r} split in {str(data_path)!r} (found {available}); "
                                                 f"name it {split!r} or map it with splits: {{{split}: <name>}}")
    return out


def _depth(feature: Any) -> tuple[int, Any]:
    """(list nesting depth, leaf feature)."""
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        d, leaf = _depth(feature.feature)
        return d + 1, leaf
    if isinstance(feature, (datasets.Array2D, datasets.Array3D, datasets.Array4D, datasets.Array5D)):
        return len(feature.shape), datasets.Value(feature.dtype)
    return 0, feature


def _is_number(feature: Any) -> bool:
    return isinstance(feature, (datasets.Value, datasets.ClassLabel)) and (
        isinstance(feature, datasets.ClassLabel)
        or feature.dtype == "bool" or feature.dtype.startswith(("int", "uint", "float"))
    )


def _check_kind(spec_file: Path, col: str, kind: str, feature: Any) -> None:
    """Raise when a column's type cannot hold samples of ``kind`` (see the module docstring)."""
    key = f"modalities.{col}"
    if kind == "text":
        ok = isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
        expected = "a string column"
    elif kind == "image" and isinstance(feature, datasets.Image):
        return
    elif kind == "tabular":
        if isinstance(feature, dict):
            ok = "numeric" in feature and set(feature) <= {"numeric", "numeric_observed", "categorical"}
        else:
            depth, leaf = _depth(feature)
            ok = depth == 1 and _is_number(leaf)
        expected = "a struct {numeric, numeric_observed?, categorical?} or a list of numbers"
    elif kind == "irregular_timeseries":
        ok = isinstance(feature, dict) and {"values", "times"} <= set(feature) <= {"values", "times", "observed"}
        expected = "a struct {values: [t][c], times: [t], observed?: [t][c]}"
    else:
        depth, leaf = _depth(feature)
        ok = depth in _DEPTHS[kind] and _is_number(leaf)
        expected = f"nested lists of numbers of depth {' or '.join(map(str, _DEPTHS[kind]))}"
    if not ok:
        raise SpecError(spec_file, key, f"kind {kind!r} needs {expected}; column {col!r} has type {feature}")


def _check_target(spec_file: Path, split: str, ds: datasets.Dataset, target: str, task_type: str,
                  num_classes: int) -> None:
    col = ds.with_format("arrow")[target]
    if col.null_count:
        raise SpecError(spec_file, "target", f"split {split!r}: column {target!r} has {col.null_count} missing value(s)")
    if task_type == "classification":
        if not (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
            raise SpecError(spec_file, "target", f"split {split!r}: classification needs integer labels; "
                                                 f"column {target!r} has type {col.type}")
        if len(col):
            mm = pc.min_max(col.cast(pa.int64()))
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            if lo < 0 or hi >= num_classes:
                raise SpecError(spec_file, "num_classes", f"split {split!r}: column {target!r} holds labels {lo}..{hi}, "
                                                          f"outside [0, {num_classes})")
        return
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != num_classes).any():
            bad = sorted(set(lengths.tolist()) - {num_classes})[:3]
            raise SpecError(spec_file, "num_classes", f"split {split!r}: {target!r} rows have length(s) {bad}, "
                                                      f"expected num_classes = {num_classes}")
        if task_type == "multilabel" and len(col):
            flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float64)
            if not np.isin(flat, (0.0, 1.0)).all():
                raise SpecError(spec_file, "target", f"split {split!r}: multilabel targets must be 0/1")
        return
    if task_type == "multilabel" or num_classes != 1:
        raise SpecError(spec_file, "target", f"split {split!r}: {task_type} with num_classes={num_classes} needs a "
                                             f"list column of length {num_classes}; {target!r} has type {col.type}")
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise SpecError(spec_file, "target", f"split {split!r}: regression needs numbers; {target!r} has type {col.type}")


def _carve_validation(splits: dict[str, datasets.Dataset], spec: TaskSpec) -> dict[str, datasets.Dataset]:
    train = splits["train"]
    if spec.task_type == "classification":
        labels = train.with_format("arrow")[spec.target].to_numpy()
    else:
        labels = np.zeros(len(train), dtype=np.int64)
    kept, held = stratified_holdout(labels, VALIDATION_FRACTION, seed=0)
    return {**splits, "train": train.select(kept), "validation": train.select(held)}
