"""Batches for training and evaluation: resumable per-task index streams, collation, prediction.

A batch is ``{"inputs": {modality: batch dict from the kind's collate}, "target": tensor}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from scipy.special import log_expit, log_softmax, logsumexp
from torch import Tensor, nn

from highmmt.metrics import compute_metric
from highmmt.registry import EMBEDDERS
from tasks.base import TaskSpec
from tasks.cache import rows_to_samples


def collate_rows(dataset: Any, indices: Sequence[int] | np.ndarray, spec: TaskSpec, modalities: Sequence[str] | None = None) -> dict[str, Any]:
    """Rows ``indices`` of one split -> {"inputs": {m: batch dict}, "target": tensor [b] or [b, c]}."""
    samples, labels = rows_to_samples(dataset, indices, spec)
    inputs = {}
    for m in modalities or spec.modalities:
        # The embedder's options let collate do CPU-side work early (frame/length caps).
        inputs[m] = EMBEDDERS.get(spec.modalities[m]).collate(samples[m], **spec.modality_options.get(m, {}))
    return {"inputs": inputs, "target": torch.from_numpy(np.asarray(labels))}


@dataclasses.dataclass
class StreamState:
    """Where a task's index stream stands: which pass over the data and how far into it."""

    passes: int = 0
    position: int = 0


class TaskStream:
    """An endless, seeded stream of index batches over one split, resumable from its state.

    Each pass over the data uses the permutation ``rng(seed, pass)``, so the stream is a pure
    function of (seed, state). With several processes every rank draws the same global batch of
    ``batch_size * world_size`` indices and keeps its own slice.

    Args:
        size: rows in the split. batch_size: rows per rank per batch. seed: stream seed.
        rank, world_size: this process and the number of processes.
    """

    def __init__(self, size: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if size < 1:
            raise ValueError("cannot stream batches from an empty split")
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.state = StreamState()
        self._perm: np.ndarray | None = None
        self._perm_pass = -1

    @property
    def global_batch(self) -> int:
        return min(self.batch_size * self.world_size, self.size)

    def batches_per_pass(self) -> int:
        return max(1, self.size // self.global_batch)

    def _permutation(self) -> np.ndarray:
        if self._perm_pass != self.state.passes:
            self._perm = np.random.default_rng([self.seed, self.state.passes]).permutation(self.size)
            self._perm_pass = self.state.passes
        assert self._perm is not None
        return self._perm

    def next_indices(self) -> np.ndarray:
        if self.state.position + self.global_batch > self.size:
            self.state = StreamState(self.state.passes + 1, 0)
        perm = self._permutation()
        chunk = perm[self.state.position : self.state.position + self.global_batch]
        self.state = StreamState(self.state.passes, self.state.position + self.global_batch)
        return chunk[self.rank :: self.world_size]


class Prefetcher:
    """Collate the next batches in a background thread while the model computes (Arrow releases the GIL)."""

    def __init__(self, workers: int = 1) -> None:
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers)) if workers > 0 else None

    def submit(self, fn: Any, *args: Any) -> Future | Any:
        if self.pool is None:
            f: Future = Future()
            f.set_result(fn(*args))
            return f
        return self.pool.submit(fn, *args)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def move_to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


def eval_batches(size: int, batch_size: int, limit: int = 0, seed: int = 0) -> Iterator[np.ndarray]:
    """Index batches over a split in order (or a fixed seeded subset of ``limit`` rows)."""
    idx = np.arange(size)
    if 0 < limit < size:
        idx = np.sort(np.random.default_rng(seed).choice(size, size=limit, replace=False))
    for start in range(0, len(idx), batch_size):
        yield idx[start : start + batch_size]


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Any,
    spec: TaskSpec,
    *,
    task: str | None = None,
    batch_size: int = 128,
    limit: int = 0,
    device: torch.device | str = "cpu",
    modalities: Sequence[str] | None = None,
    transform: Any = None,
    autocast: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over a split; return (outputs [N, c] float32, targets).

    Args:
        modalities: feed only these modalities (robustness: a modality dropped).
        transform: optional ``fn(inputs) -> inputs`` applied to each collated batch (noise).
    """
    was_training = model.training
    model.eval()
    outs, targets = [], []
    device = torch.device(device)
    for idx in eval_batches(len(dataset), batch_size, limit):
        batch = collate_rows(dataset, idx, spec, modalities)
        inputs = move_to(batch["inputs"], device)
        if transform is not None:
            inputs = transform(inputs)
        if autocast is not None:
            with autocast():
                out = model(inputs, task or spec.name)
        else:
            out = model(inputs, task or spec.name)
        outs.append(out.float().cpu().numpy())
        targets.append(batch["target"].numpy())
    model.train(was_training)
    return np.concatenate(outs), np.concatenate(targets)


def score(spec: TaskSpec, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """All of the task's metrics (primary first)."""
    return {m: compute_metric(m, outputs, targets, spec.task_type) for m in (spec.metric, *spec.extra_metrics)}


def predicted(spec: TaskSpec) -> tuple[str, int, list[str]]:
    """What a task's outputs are (kind, width, class names): runs whose outputs are averaged must agree on it."""
    return spec.task_type, spec.num_classes, list(spec.class_names or [])


def average_outputs(outputs: Sequence[np.ndarray], task_type: str) -> np.ndarray:
    """The members' outputs [n, c] (logits, as the model gives them) combined into one array of the same form:
    the log of the mean class probabilities (classification), the logit of the mean label probabilities
    (multilabel), or the mean (regression). ``score`` reads the result as it reads one model's outputs. Computed in
    log space (logsumexp), so confident rows keep their order instead of tying at a clipped probability."""
    if not outputs:
        raise ValueError("average_outputs: no members")
    shapes = {o.shape for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"average_outputs: members' outputs differ in shape {sorted(shapes)}")
    stack = np.stack([np.asarray(o, dtype=np.float64) for o in outputs])
    log_m = np.log(len(outputs))
    if task_type == "classification":
        return logsumexp(log_softmax(stack, axis=2), axis=0) - log_m
    if task_type == "multilabel":  # logit(mean p) = log(mean p) - log(mean (1 - p)); log p = log_expit(x), log (1 - p) = log_expit(-x)
        return logsumexp(log_expit(stack), axis=0) - logsumexp(log_expit(-stack), axis=0)
    if task_type == "regression":
        return stack.mean(axis=0)
    raise ValueError(f"average_outputs: unknown task type {task_type!r}")
