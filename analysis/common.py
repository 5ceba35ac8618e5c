"""A run folder opened for analysis, and per-task gradients on sampled training batches.

Parts: every parameter belongs to one part of the model (``transference.finetune.part_of``): the
embedders (with the modality-type embeddings), the encoders, the fusion (with representation
tuning) or the heads. The analyses look at the first three; heads are task-specific by design.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import modalities  # noqa: F401  (registers the embedders)
import tasks as task_registry  # noqa: F401  (registers the built-in tasks)
from evaluate import load_run_task, read_run_config
from highmmt import HighMMT
from transference.finetune import part_of
from highmmt.heads import task_loss
from tasks.cache import LoadedTask
from tasks.loader import collate_rows

PARTS = ("embedders", "encoders", "fusion")  # heads excluded: one per task, nothing to share


@dataclass
class OpenRun:
    """A trained run: its folder, ``config.json``, model (selected weights) and tasks."""

    path: Path
    config: dict[str, Any]
    model: HighMMT
    loaded: dict[str, LoadedTask]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def open_run(run_dir: str | Path, tasks: Sequence[str] | None = None, *, data_root: str | None = None,
             cache_dir: str | None = None, quiet: bool = True) -> OpenRun:
    """The run in ``run_dir`` with the tasks it was trained on (or ``tasks``, a subset), loaded as
    ``evaluate.py`` loads them. The model is in eval mode (no dropout) on the CPU, in fp32."""
    started = time.perf_counter()
    path = Path(run_dir)
    cfg = read_run_config(path)
    names = list(tasks) if tasks else list(cfg["tasks"])
    unknown = [n for n in names if n not in cfg["tasks"]]
    if unknown:
        raise ValueError(f"task(s) {unknown} are not in run {path}; it has {sorted(cfg['tasks'])}")
    if len(names) < 2:
        raise ValueError(f"run {path}: comparing tasks needs at least two, got {names}")
    model = HighMMT.from_pretrained(path).float().eval()
    loaded = {n: load_run_task(cfg, n, data_root=data_root, cache_dir=cache_dir, quiet=quiet) for n in names}
    return OpenRun(path, cfg, model, loaded, seconds=time.perf_counter() - started)


def sample_batches(loaded: Mapping[str, LoadedTask], batches: int, batch_size: int, seed: int) -> dict[str, list[np.ndarray]]:
    """``batches`` random training batches per task (rows drawn without replacement within a batch),
    a seeded function of the task's name, so every analysis of a run sees the same rows."""
    if batches < 1 or batch_size < 1:
        raise ValueError(f"--batches and --batch-size must be >= 1, got {batches} and {batch_size}")
    out = {}
    for t, lt in loaded.items():
        n = len(lt.splits["train"])
        rng = np.random.default_rng([seed, *t.encode()])
        out[t] = [np.sort(rng.choice(n, size=min(batch_size, n), replace=False)) for _ in range(batches)]
    return out


def task_gradients(model: HighMMT, lt: LoadedTask, rows: np.ndarray, *, label_smoothing: float = 0.0) -> dict[str, Tensor]:
    """Gradient of one task's mean training loss on ``rows``, per parameter of :data:`PARTS` that the
    task reaches (parameters it does not reach, e.g. another modality's embedder, are absent)."""
    model.zero_grad(set_to_none=True)
    batch = collate_rows(lt.splits["train"], rows, lt.spec)
    with torch.enable_grad():
        outputs = model(batch["inputs"], lt.spec.name)
        task_loss(outputs, batch["target"], lt.spec.task_type, label_smoothing=label_smoothing).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None and part_of(n) in PARTS}
    model.zero_grad(set_to_none=True)
    return grads


def label_smoothing(cfg: Mapping[str, Any]) -> float:
    """The run's training loss (its label smoothing), so gradients are those training followed."""
    return float(cfg.get("train", {}).get("label_smoothing", 0.0))
