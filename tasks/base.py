"""Task specs (data only) and the registry of built-in tasks.

A task is a data-only :class:`TaskSpec` plus a loader. A loaded task is a ``datasets.DatasetDict``
with splits ``train``, ``validation``, ``test``; one column per modality name holding that
modality's raw samples in its kind's canonical format, and the target column.

Canonical raw formats per kind (what ``modalities/<kind>.py``'s ``collate`` accepts, one sample):

==========================  ===============================================================
kind                        one sample
==========================  ===============================================================
image                       array [h, w, c] (uint8 0-255 or float)
video                       array [t, h, w, c] (uint8 or float), variable t
audio                       float32 waveform [s] in [-1, 1] at ``sample_rate`` (option)
timeseries                  float32 [t, c], variable t
irregular_timeseries        {"values": float32 [t, c] (0 where unobserved),
                             "observed": bool [t, c], "times": float32 [t] (hours)}
tabular                     {"numeric": float32 [f] (0 where missing), "numeric_observed": bool [f],
                             "categorical": int64 [g] (-1 = missing)}
text                        str
pose                        float32 [t, j, c] (joints x coords per frame), variable t
set                         float32 [n, c] (unordered elements), variable n
==========================  ===============================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from highmmt.registry import TASKS

TASK_TYPES = ("classification", "multilabel", "regression")
METRICS = ("accuracy", "auroc", "auprc", "f1", "mse", "mae")
KINDS = (
    "image",
    "video",
    "audio",
    "timeseries",
    "irregular_timeseries",
    "tabular",
    "text",
    "pose",
    "set",
    "pretrained",  # a timm / nn.Module backbone over another kind's input (modalities/pretrained.py)
)


@dataclass(frozen=True)
class TaskSpec:
    """What a task is, independent of where its data comes from.

    Args:
        name: task name; becomes the head's name.
        modalities: modality name -> kind, in a fixed order (e.g. ``{"mnist_image": "image"}``).
            Modality names are global: two tasks naming the same modality share its embedder.
        task_type: ``classification`` | ``multilabel`` | ``regression``.
        num_classes: classes (classification / multilabel) or outputs (regression).
        metric: the primary metric (``accuracy``, ``auroc``...); ``extra_metrics`` are also reported.
        modality_options: modality name -> embedder options (``channels``, ``sample_rate``...).
        target: the label column.
        class_names: optional names of the classes.
    """

    name: str
    modalities: Mapping[str, str]
    task_type: str
    num_classes: int
    metric: str
    modality_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    target: str = "label"
    extra_metrics: Sequence[str] = ()
    class_names: Sequence[str] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"task name must be a non-empty string, got {self.name!r}")
        if not self.modalities:
            raise ValueError(f"{where}: needs at least one modality")
        for mod, kind in self.modalities.items():
            if kind not in KINDS:
                raise ValueError(f"{where}: modality {mod!r} has unknown kind {kind!r}; known: {', '.join(KINDS)}")
        for mod in self.modality_options:
            if mod not in self.modalities:
                raise ValueError(f"{where}: modality_options names {mod!r}, which is not one of {list(self.modalities)}")
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"{where}: task_type must be one of {TASK_TYPES}, got {self.task_type!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"{where}: num_classes must be a positive integer, got {self.num_classes!r}")
        for m in (self.metric, *self.extra_metrics):
            if m not in METRICS:
                raise ValueError(f"{where}: unknown metric {m!r}; known: {', '.join(METRICS)}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{where}: {len(self.class_names)} class_names for num_classes={self.num_classes}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["modalities"] = dict(self.modalities)
        d["modality_options"] = {k: dict(v) for k, v in self.modality_options.items()}
        d["extra_metrics"] = list(self.extra_metrics)
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TaskSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"task spec has unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class BuiltinTask:
    """A registered task: its spec, the source files it reads and how to parse them.

    Args:
        spec: the task spec.
        source_files: paths relative to the data root; all must exist (the cache key hashes
            their names, sizes and modification times).
        build: ``build(data_root: Path, **options) -> datasets.DatasetDict`` with splits
            train / validation / test. Must be deterministic for given files and options.
        options: default preprocessing options (part of the cache key), overridable by the user.
        how_to_get: a sentence telling the user where to get the files if missing.
        downloads: source file (relative path) -> ``(url, sha256)`` of its official public copy, for
            the files that may be downloaded when missing (see ``tasks/download.py``); files not
            listed must be placed by hand.
    """

    spec: TaskSpec
    source_files: Sequence[str]
    build: Callable[..., Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    how_to_get: str = ""
    downloads: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for rel, (url, sha256) in self.downloads.items():
            where = f"task {self.spec.name!r}: downloads[{rel!r}]"
            if rel not in self.source_files:
                raise ValueError(f"{where} is not one of the source files {list(self.source_files)}")
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"{where}: expected an http(s) URL, got {url!r}")
            if len(sha256) != 64 or any(ch not in "0123456789abcdefABCDEF" for ch in sha256):
                raise ValueError(f"{where}: expected a 64-hex-digit sha256, got {sha256!r}")

    def missing_files(self, data_root: Path) -> list[Path]:
        return [data_root / f for f in self.source_files if not (data_root / f).exists()]


def register_task(task: BuiltinTask) -> BuiltinTask:
    """Register a built-in task under ``task.spec.name``."""
    TASKS.register(task.spec.name)(task)
    return task
