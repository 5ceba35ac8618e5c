"""Bring-your-own tasks: a YAML or JSON spec pointing at Arrow or Parquet data.

The spec (``docs/interfaces.md``)::

    name: my_task                 # required; becomes the head's name
    path: hf                      # required; relative to the spec file
    format: huggingface_datasets_save_to_disk   # or parquet; inferred when absent
    splits: {train: train, test: test}           # optional; validation optional
    modalities: {accelerometer: timeseries, gyroscope: timeseries}   # required; column -> kind
    target: label                 # required
    task_type: classification     # classification (default) | multilabel | regression
    num_classes: 4                # classification: required unless the target is a ClassLabel; multilabel: the list length
    metric: accuracy              # default: accuracy, auroc (multilabel), mse (regression)
    extra_metrics: [f1]           # optional
    class_names: [a, b, c, d]     # optional (default: the ClassLabel's names)
    description: free text        # optional
    modality_options: {review: {tokenizer: words}}     # optional; column -> embedder options

Data: ``huggingface_datasets_save_to_disk`` is a ``DatasetDict.save_to_disk`` folder; ``parquet`` is
a folder of ``<split>.parquet`` files (``train.parquet``, ``test.parquet``, optional
``validation.parquet``) or whatever file names ``splits`` maps to. ``splits`` maps
``train`` / ``validation`` / ``test`` to the data's split names (or parquet file names). Without
``splits``, ``validation`` may also be called ``val``, ``valid`` or ``dev``. Without a validation
split, a seeded (seed 0) 10% of train is held out, stratified by class for classification. An
optional ``unlabeled`` split (``splits: {unlabeled: ...}``, or a split of that name) holds rows
without labels for ``train.semi`` (transference/semisup.py): it needs the modality columns, not the target.

Column types accepted per kind (nested lists are Arrow lists, ``datasets.List``/``Sequence`` or
``Array2D``..``Array5D``; numbers may be any int/float/bool; each sample must be rectangular):

==========================  ==================================================================
image                       [h][w][c] or [h][w] numbers (uint8 stays uint8), or ``datasets.Image``
video                       [t][h][w][c] or [t][h][w] numbers
audio                       [s] floats in [-1, 1] (give ``sample_rate`` in modality_options), or
                            ``datasets.Audio`` (decoded when the spec is loaded, see below)
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

What the data says needs no ``modality_options`` (docs/interfaces.md). It is read from the training
split, recorded in the spec's ``modality_options`` (so it lands in a run's ``config.json``, and
evaluation and ``--resume`` rebuild the same embedders) and, where the spec states it too, checked: a
disagreement is an error naming the spec file, the key, what the spec says and what the data holds.

==========================  ==================================================================
image                       ``channels`` (1 for [h][w]; a ``datasets.Image``'s bands); ``image_size``
                            [h, w] when every training image has one size (not with a ``backbone``,
                            whose ``image_size`` is the user's resize choice)
video, timeseries, set,     ``channels``
irregular_timeseries
pose                        ``joints``, ``coords``
tabular                     ``num_numeric``; ``categorical_cardinalities`` = 1 + the largest code of
                            each categorical feature over every split (a stated cardinality may be
                            larger, never smaller)
audio (``datasets.Audio``)  ``sample_rate``: the feature's ``sampling_rate``, else the files' own rate
                            (mixed rates need one: the feature's or the spec's ``sample_rate``)
text                        nothing; defaults to a bag of hashed words (``tokenizer: words``,
                            ``bigrams: false``, ``positions: false``) that each head also reads
                            linearly (``wide: true``) in ids of its own (``wide_buckets``: 2^20
                            for up to 2 classes, fewer for more), not the embedder's ``bytes``
                            (see ``spec_text_defaults``)
target                      ``num_classes`` from a ``ClassLabel`` or from the length of a list target
==========================  ==================================================================

``datasets.Audio`` columns are decoded once, when the spec is loaded, with ``soundfile`` (several
channels are averaged to mono; files at another rate are resampled with torchaudio) into in-memory
float32 waveforms: mind the memory for hours of audio.

The data is read in place (no cache): ``save_to_disk`` folders are memory-mapped, parquet files
are read into memory.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.table import InMemoryTable

from modalities.text import wide_buckets_for
from tasks.base import KINDS, TASK_TYPES, TaskSpec
from tasks.splits import OPTIONAL_SPLITS, SPLITS, check_splits, stratified_holdout

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
# Defaults of a spec-file text column; the embedder's own default, bytes, stays for older configs. The
# shared encoder's latents cross-attend to tokens that never see each other, so byte tokens reach it as
# a weighted bag of characters, which says next to nothing about meaning: on 3,000 sentence-polarity
# reviews (default preset, 3 seeds) bytes stayed at ln 2 (test 0.51, also at lr 1e-3 and 1e-2), words
# reached 0.61 (TF-IDF + LR 0.73; character counts + LR 0.58). A bag of words (no positions, no
# bigrams) does better again on the suite's sentiment and subjectivity (single-task, default preset,
# 3 seeds; docs/experiments.md, pilot B): 0.718 vs 0.647 and 0.899 vs 0.882 for words + bigrams with
# positions, gains beyond the seed spread.
# Each head also reads the bag of words linearly (``wide``, Wide & Deep; docs/experiments.md, session 10):
# single-task sentiment 0.749 vs 0.695 and subjectivity 0.907 vs 0.891, 3 seeds, gains beyond the spread.
# The read-out hashes words and bigrams into ids of its own (``wide_buckets``; session 11): 2^20 for a few classes,
# fewer for many (``modalities.text.wide_buckets_for``), so that the read-out's table stays near 2^21 numbers.
SPEC_TEXT_DEFAULTS = {"tokenizer": "words", "bigrams": False, "positions": False, "wide": True}


def spec_text_defaults(num_classes: int) -> dict[str, Any]:
    """A spec-file text column's default options for a task of ``num_classes`` outputs."""
    return {**SPEC_TEXT_DEFAULTS, "wide_buckets": wide_buckets_for(num_classes)}


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
    stated = raw.get("modality_options") or {}
    if not isinstance(stated, Mapping) or not all(isinstance(v, Mapping) for v in stated.values()):
        raise SpecError(spec_file, "modality_options", f"expected a mapping column -> {{option: value}}, got {stated!r}")
    for col in stated:
        if col not in modalities:
            raise SpecError(spec_file, f"modality_options.{col}", f"names no modality; the modalities are {list(modalities)}")
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
            _check_kind(spec_file, col, data_kind(kind, stated.get(col, {})), ds.features[col])
        if target not in ds.column_names and split not in OPTIONAL_SPLITS:
            raise SpecError(spec_file, "target", f"split {split!r} has no column {target!r}; columns: {ds.column_names}")

    target_feature = train_features[target]
    num_classes = raw.get("num_classes")
    class_names = raw.get("class_names")
    if isinstance(target_feature, datasets.ClassLabel):
        if num_classes is not None and num_classes != target_feature.num_classes:
            raise SpecError(spec_file, "num_classes", f"the spec says {num_classes!r}, but target column {target!r} is a "
                                                      f"ClassLabel with {target_feature.num_classes} classes "
                                                      f"{list(target_feature.names)}; drop num_classes or fix it")
        num_classes = target_feature.num_classes
        class_names = list(target_feature.names) if class_names is None else class_names
    if num_classes is None and task_type != "classification":
        num_classes = _list_length(spec_file, splits["train"], target)
    if num_classes is None:
        if task_type != "regression":
            raise SpecError(spec_file, "num_classes", f"required for task_type {task_type!r}")
        num_classes = 1
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise SpecError(spec_file, "num_classes", f"expected a positive integer, got {num_classes!r}")
    for split, ds in splits.items():
        if split not in OPTIONAL_SPLITS:  # an unlabeled split's labels, if any, are never read
            _check_target(spec_file, split, ds, target, task_type, num_classes)

    options = {col: resolve_options(spec_file, col, kind, dict(stated.get(col, {})), splits, data_path, num_classes)
               for col, kind in modalities.items()}
    splits = decode_audio_columns(spec_file, splits, modalities, options, data_path)

    try:
        spec = TaskSpec(
            name=raw["name"],
            modalities=dict(modalities),
            task_type=task_type,
            num_classes=num_classes,
            metric=raw.get("metric", DEFAULT_METRIC[task_type]),
            modality_options={col: opts for col, opts in options.items() if opts},
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
            empty = sorted(p.parent.name for p in data_path.glob("*/state.json")
                           if not json.loads(p.read_text()).get("_data_files"))
            if empty:  # datasets cannot read back a split saved with no rows ("list index out of range")
                raise SpecError(spec_file, "path", f"split(s) {empty} of {str(data_path)!r} have no rows; every task needs "
                                "training and test rows") from e
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
    elif kind == "audio" and isinstance(feature, datasets.Audio):
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


# ----------------------------------------------------------------------------------------------
# what the data says: embedder options inferred from the training split, checked against the spec


def data_kind(kind: str, options: Mapping[str, Any]) -> str:
    """The kind whose raw format a column holds: a ``pretrained`` modality reads its ``input_kind``'s."""
    return str(options.get("input_kind", "image")) if kind == "pretrained" else kind


def resolve_options(spec_file: Path, col: str, kind: str, stated: dict[str, Any], splits: Mapping[str, datasets.Dataset],
                    data_path: Path, num_classes: int = 2) -> dict[str, Any]:
    """A column's embedder options: what its data says, then the spec's own options (checked against the data).

    Raises:
        SpecError: an option the spec states differs from the data (``modality_options.<col>.<option>``), or
            the rows disagree among themselves (``modalities.<col>``).
    """
    inferred = infer_options(spec_file, col, data_kind(kind, stated), splits, stated, data_path)
    for key, value in inferred.items():
        if key in stated and not _agrees(key, stated[key], value):
            raise SpecError(spec_file, f"modality_options.{col}.{key}",
                            f"the spec says {key}: {stated[key]!r}, but column {col!r} of split 'train' has "
                            f"{key} = {value!r}{_HINTS.get(key, '')}")
    defaults = spec_text_defaults(num_classes) if kind == "text" else {}
    return {**defaults, **inferred, **stated}


_HINTS = {
    "categorical_cardinalities": " (1 + the largest code of each feature over every split; a stated cardinality "
                                 "may be larger, not smaller)",
    "sample_rate": " (to resample, cast the column to datasets.Audio(sampling_rate=N))",
}


def _agrees(key: str, stated: Any, inferred: Any) -> bool:
    if key == "categorical_cardinalities":  # the data gives a lower bound: codes never seen are allowed
        return (isinstance(stated, (list, tuple)) and len(stated) == len(inferred)
                and all(isinstance(s, int) and s >= i for s, i in zip(stated, inferred)))
    if key == "image_size" and isinstance(stated, int) and not isinstance(stated, bool):
        stated = [stated, stated]
    if isinstance(stated, tuple):
        stated = list(stated)
    return stated == inferred


def infer_options(spec_file: Path, col: str, kind: str, splits: Mapping[str, datasets.Dataset],
                  stated: Mapping[str, Any], data_path: Path) -> dict[str, Any]:
    """The options column ``col`` of ``kind`` implies (module docstring), from the training split."""
    train = splits["train"]
    feature = train.features[col]
    column = train.data.table.column(col)
    key = f"modalities.{col}"

    def one(sizes: set[int], what: str) -> int | None:
        if len(sizes) > 1:
            raise SpecError(spec_file, key, f"split 'train': the rows of column {col!r} have {what} "
                                            f"{sorted(sizes)[:6]}; every row needs the same number")
        return next(iter(sizes), None) or None  # no rows (or only empty ones) tell nothing

    def found(**values: Any) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not None}

    if kind == "image":
        if isinstance(feature, datasets.Image):
            bands, heights, widths, sizes = _image_headers(spec_file, col, column, data_path)
        else:
            depth, _ = _depth(feature)
            levels = _level_sizes(column, depth)
            bands, heights, widths = ({1} if depth == 2 else levels[2]), levels[0], levels[1]
            sizes = len(heights) * len(widths)  # an upper bound: one when every image has one size
        # one size for every image, or none recorded (images keep their sizes); with a backbone the
        # pretrained kind's own ``image_size`` (a resize choice) is the user's to set
        fixed = sizes == 1 and 0 not in heights | widths and "backbone" not in stated
        return found(channels=one(bands, "channel counts"), image_size=[*heights, *widths] if fixed else None)
    if kind in ("video", "timeseries", "set"):
        depth, _ = _depth(feature)
        channel_axis = {"video": 3, "timeseries": 1, "set": 1}[kind]
        return found(channels=1 if depth == channel_axis else one(_level_sizes(column, depth)[channel_axis], "channel counts"))
    if kind == "pose":
        levels = _level_sizes(column, 3)
        return found(joints=one(levels[1], "joint counts"), coords=one(levels[2], "coordinate counts"))
    if kind == "irregular_timeseries":
        depth, _ = _depth(feature["values"])
        values = pc.struct_field(column, "values")
        return found(channels=1 if depth == 1 else one(_level_sizes(values, 2)[1], "channel counts"))
    if kind == "tabular":
        return _tabular_options(spec_file, col, feature, splits, one)
    if kind == "audio" and isinstance(feature, datasets.Audio):
        return {"sample_rate": _audio_rate(spec_file, col, feature, column, stated, data_path)}
    return {}


def _level_sizes(column: pa.ChunkedArray | pa.Array, depth: int) -> list[set[int]]:
    """Distinct list lengths at each of the first ``depth`` nesting levels (level 0: the rows' own
    lengths; level 1: their elements'...), read from the offsets only."""
    sizes: list[set[int]] = [set() for _ in range(depth)]
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        arr = chunk
        for level in range(depth):
            if isinstance(arr, pa.ExtensionArray):
                arr = arr.storage
            if pa.types.is_fixed_size_list(arr.type):
                if len(arr):
                    sizes[level].add(arr.type.list_size)
            elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
                sizes[level].update(np.unique(np.diff(arr.offsets.to_numpy())).tolist())
            else:
                break
            arr = arr.flatten()
    return sizes


def _image_headers(spec_file: Path, col: str, column: pa.ChunkedArray,
                   data_path: Path) -> tuple[set[int], set[int], set[int], int]:
    """Band counts, heights, widths and the number of distinct (h, w) sizes of a ``datasets.Image``
    column, from each file's header (no decoding)."""
    from PIL import Image

    bands: set[int] = set()
    shapes: set[tuple[int, int]] = set()
    for row, cell in enumerate(_cells(column)):
        try:
            with Image.open(_file_source(spec_file, col, row, cell, data_path)) as img:
                bands.add(len(img.getbands()))
                shapes.add((img.height, img.width))
        except (OSError, ValueError) as e:
            raise SpecError(spec_file, f"modalities.{col}", f"split 'train', row {row}: cannot read the image ({e})") from e
    return bands, {h for h, _ in shapes}, {w for _, w in shapes}, len(shapes)


def _cells(column: pa.ChunkedArray, rows: int = 1024) -> Any:
    """The column's cells as Python values, ``rows`` at a time (image and audio bytes are never all in memory)."""
    for start in range(0, len(column), rows):
        yield from column.slice(start, rows).to_pylist()


def _file_source(spec_file: Path, col: str, row: int, cell: Any, data_path: Path) -> Any:
    """A ``datasets.Image`` / ``datasets.Audio`` cell ({bytes, path}) -> something PIL / soundfile can open."""
    cell = cell or {}
    if cell.get("bytes"):
        return io.BytesIO(cell["bytes"])
    path = cell.get("path")
    if path:
        for candidate in (Path(path), data_path / path):
            if candidate.is_file():
                return candidate
    raise SpecError(spec_file, f"modalities.{col}", f"row {row}: the cell holds no bytes and its path {path!r} is not a file "
                                                    f"(looked as given and under {str(data_path)!r})")


def _tabular_options(spec_file: Path, col: str, feature: Any, splits: Mapping[str, datasets.Dataset], one: Any) -> dict[str, Any]:
    """``num_numeric`` from the training split; ``categorical_cardinalities`` from every split (a code first
    seen in the test split must still have a row in the embedding table)."""
    train = splits["train"].data.table.column(col)
    if not isinstance(feature, dict):
        return {"num_numeric": one(_level_sizes(train, 1)[0], "numeric feature counts") or 0}
    numeric = _level_sizes(pc.struct_field(train, "numeric"), 1)[0]
    options: dict[str, Any] = {"num_numeric": one(numeric, "numeric feature counts") or 0}
    if "categorical" not in feature:
        return options
    g = one(_level_sizes(pc.struct_field(train, "categorical"), 1)[0], "categorical feature counts")
    if not g:
        return options
    largest = np.full(g, -1, dtype=np.int64)
    for split, ds in splits.items():
        codes = pc.list_flatten(pc.struct_field(ds.data.table.column(col), "categorical")).to_numpy(zero_copy_only=False)
        if len(codes) % g:
            raise SpecError(spec_file, f"modalities.{col}", f"split {split!r}: rows of {col}.categorical do not all have "
                                                            f"{g} features (as in split 'train')")
        codes = codes.astype(np.int64).reshape(-1, g)
        if len(codes) and codes.min() < -1:
            raise SpecError(spec_file, f"modalities.{col}", f"split {split!r}: {col}.categorical holds code {int(codes.min())}; "
                                                            f"codes are 0, 1, ... and -1 for missing")
        if len(codes):
            largest = np.maximum(largest, codes.max(axis=0))
    options["categorical_cardinalities"] = [max(1, int(c) + 1) for c in largest]
    return options


def _audio_rate(spec_file: Path, col: str, feature: datasets.Audio, column: pa.ChunkedArray, stated: Mapping[str, Any],
                data_path: Path) -> int:
    """The sample rate a ``datasets.Audio`` column decodes to: the feature's ``sampling_rate`` (datasets
    resamples to it), else the training files' one rate, else (mixed rates) the spec's ``sample_rate``."""
    if feature.sampling_rate:
        return int(feature.sampling_rate)
    import soundfile

    rates = set()
    for row, cell in enumerate(_cells(column)):
        try:
            rates.add(int(soundfile.info(_file_source(spec_file, col, row, cell, data_path)).samplerate))
        except (RuntimeError, soundfile.SoundFileError, EOFError, ValueError) as e:
            raise SpecError(spec_file, f"modalities.{col}", f"split 'train', row {row}: cannot read the audio ({e})") from e
    if len(rates) > 1:
        picked = stated.get("sample_rate")
        if isinstance(picked, int) and not isinstance(picked, bool) and picked > 0:
            return picked  # the user picked the rate every file is resampled to
        raise SpecError(spec_file, f"modalities.{col}", f"split 'train': the audio files have sample rates {sorted(rates)}; "
                                                        f"pick one with modality_options: {{{col}: {{sample_rate: N}}}} or "
                                                        f"cast the column to datasets.Audio(sampling_rate=N)")
    return rates.pop() if rates else int(stated.get("sample_rate", 8000))


def decode_audio_columns(spec_file: Path, splits: dict[str, datasets.Dataset], modalities: Mapping[str, str],
                         options: Mapping[str, Mapping[str, Any]], data_path: Path) -> dict[str, datasets.Dataset]:
    """Every ``datasets.Audio`` column -> in-memory mono float32 waveforms [s] at its ``sample_rate``."""
    audio = [col for col, kind in modalities.items() if isinstance(splits["train"].features[col], datasets.Audio)]
    if not audio:
        return splits
    import soundfile
    import torch
    import torchaudio
    from datasets.fingerprint import generate_random_fingerprint

    from tasks._io import list_column

    out = {}
    for split, ds in splits.items():
        order = ds.column_names
        for col in audio:
            rate = int(options[col]["sample_rate"])
            waves = []
            for row, cell in enumerate(_cells(ds.data.table.column(col))):
                try:
                    with soundfile.SoundFile(_file_source(spec_file, col, row, cell, data_path)) as f:
                        wave, native = f.read(dtype="float32", always_2d=True).mean(axis=1), f.samplerate
                except (RuntimeError, soundfile.SoundFileError, EOFError, ValueError) as e:
                    raise SpecError(spec_file, f"modalities.{col}",
                                    f"split {split!r}, row {row}: cannot decode the audio ({e})") from e
                if native != rate:
                    wave = torchaudio.functional.resample(torch.from_numpy(wave), native, rate).numpy()
                waves.append(wave)
            ds = ds.remove_columns(col).add_column(col, list_column(waves, "float32"),
                                                   feature=datasets.List(datasets.Value("float32")),
                                                   new_fingerprint=generate_random_fingerprint())
        out[split] = ds.select_columns(order)
    return out


def _list_length(spec_file: Path, train: datasets.Dataset, target: str) -> int | None:
    """The length every row of a list target has (multilabel / multi-output regression); None for scalars."""
    col = train.data.table.column(target)
    storage = col.type.storage_type if isinstance(col.type, pa.ExtensionType) else col.type
    if not (pa.types.is_list(storage) or pa.types.is_large_list(storage) or pa.types.is_fixed_size_list(storage)):
        return None
    lengths = _level_sizes(col, 1)[0]
    if len(lengths) > 1:
        raise SpecError(spec_file, "num_classes", f"split 'train': target {target!r} rows have lengths {sorted(lengths)[:6]}; "
                                                  f"every row needs num_classes values")
    return next(iter(lengths), None)


def _carve_validation(splits: dict[str, datasets.Dataset], spec: TaskSpec) -> dict[str, datasets.Dataset]:
    train = splits["train"]
    if spec.task_type == "classification":
        labels = train.with_format("arrow")[spec.target].to_numpy()
    else:
        labels = np.zeros(len(train), dtype=np.int64)
    kept, held = stratified_holdout(labels, VALIDATION_FRACTION, seed=0)
    if spec.task_type == "classification":
        # a class whose every row went to validation would never be trained on: give one row back
        kept_set = set(kept.tolist())
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            if not kept_set & set(rows.tolist()):
                back = int(rows[0])
                if len(held) <= 1:  # the validation split would be empty: keep it, say what it costs
                    warnings.warn(f"task {spec.name!r}: class {c} has {len(rows)} training row(s), all in the carved "
                                  "validation split; it is never trained on (give the task a validation split)", stacklevel=2)
                    continue
                kept, held = np.sort(np.append(kept, back)), held[held != back]
                kept_set.add(back)
                warnings.warn(f"task {spec.name!r}: class {c} has {len(rows)} training row(s); the carved validation split "
                              "would have taken all of them, so one stays in training", stacklevel=2)
    return {**splits, "train": train.select(kept), "validation": train.select(held)}
