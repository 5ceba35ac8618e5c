"""Zero-shot classification of classes never labeled for a modality (Socher et al. 2013; CLIP-style).

Switched on by ``train.zeroshot`` (:class:`ZeroShotConfig`), on one task that reads a primary
modality A and a secondary modality B:

- some classes are *unseen* (``unseen_classes``): at setup their rows leave the task's training and
  validation splits, so the supervised loss (A alone: B is withheld from the supervised forward) and
  checkpoint selection never read an unseen-class label;
- A and B are aligned in a shared space by CLIP's symmetric InfoNCE between their pooled latents,
  each through its own linear projection, on paired A-B rows drawn by the hook from a label-free copy
  of the training split (``align_rows=all``: every training row, unseen-class pairs included, their
  labels dropped: transductive; ``align_rows=seen``: the seen-class rows only: inductive);
- any A row is classified by the nearest B prototype: the mean projected embedding of labeled B
  examples of each class, unseen classes included (``prototypes_per_class`` training rows per
  class, reread after every epoch, without gradient). B's labels name the classes, as Socher et al.'s
  word vectors do; an A row is never read together with a label of an unseen class.

This differs from cross-modal label transfer (``transference/colearn.py``, ``contrastive`` with
``supervise_secondary=false``), where every class is seen in training through the other modality's
labels. The losses and the prototype classifier are colearn's (:func:`info_nce`,
:func:`class_prototypes`, :func:`nearest_prototype`).

Evaluation (``evaluate.py``): the run predicts with :class:`ZeroShotClassifier` (cosine similarity
of A's embedding to every prototype: generalized zero-shot, all classes compete), and
:meth:`ZeroShotHook.task_metrics` adds per-class mean accuracy on the seen and on the unseen
classes' rows, their harmonic mean (Xian et al. 2018's GZSL figures), the conventional zero-shot
accuracy (unseen rows among the unseen classes only) and the chance levels of both.

Letters: b batch, l latents, d width, p projection width, c classes, n examples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from highmmt.config import HighMMTConfig
from highmmt.model import HighMMT
from tasks.loader import TaskStream, collate_rows, move_to
from transference.colearn import class_prototypes, info_nce, nearest_prototype
from transference.config import ZeroShotConfig
from transference.hooks import TrainContext, TrainHook, load_hook_modules, register_hook_factory, saved_section

HOOK_NAME = "zeroshot"
NO_LABEL = -1  # the target column of the alignment rows: their labels are not kept


# ---- configuration checks ----------------------------------------------------------------------------
def target_task(cfg: ZeroShotConfig, model_cfg: HighMMTConfig) -> str:
    """The task zero-shot learning applies to; a modality or task that does not fit is a clear error."""
    known = sorted(model_cfg.modalities)
    for role, m in (("primary", cfg.primary), ("secondary", cfg.secondary)):
        if m not in model_cfg.modalities:
            raise ValueError(f"train.zeroshot.{role}={m!r} is not a modality of the trained tasks; known: {known}")
    reads = {t: tc.modalities for t, tc in model_cfg.tasks.items()}
    if cfg.task:
        if cfg.task not in model_cfg.tasks:
            raise ValueError(f"train.zeroshot.task={cfg.task!r} is not being trained ({sorted(model_cfg.tasks)})")
        for role, m in (("primary", cfg.primary), ("secondary", cfg.secondary)):
            if m not in reads[cfg.task]:
                raise ValueError(f"train.zeroshot: task {cfg.task!r} does not read the {role} modality {m!r}; it reads {reads[cfg.task]}")
        return cfg.task
    found = [t for t, mods in reads.items() if cfg.primary in mods and cfg.secondary in mods]
    if not found:
        raise ValueError(f"train.zeroshot: no trained task reads both {cfg.primary!r} and {cfg.secondary!r}; tasks and their modalities: {reads}")
    if len(found) > 1:
        raise ValueError(f"train.zeroshot: tasks {found} all read {cfg.primary!r} and {cfg.secondary!r}; name one with train.zeroshot.task")
    return found[0]


def check_classes(cfg: ZeroShotConfig, task: str, model_cfg: HighMMTConfig) -> list[int]:
    """The seen classes of ``task``; unseen classes out of range, or no seen class left, are errors."""
    tc = model_cfg.tasks[task]
    if tc.task_type != "classification":
        raise ValueError(f"train.zeroshot: task {task!r} is {tc.task_type}; zero-shot learning needs a classification task")
    c = tc.num_outputs
    bad = [k for k in cfg.unseen_classes if not 0 <= k < c]
    if bad:
        raise ValueError(f"train.zeroshot.unseen_classes {bad} are out of range: task {task!r} has classes 0..{c - 1}")
    seen = [k for k in range(c) if k not in cfg.unseen_classes]
    if not seen:
        raise ValueError(f"train.zeroshot.unseen_classes holds all {c} classes of task {task!r}; at least one class must "
                         "stay seen (labeled for the primary modality)")
    return seen


def build_modules(cfg: ZeroShotConfig, model_cfg: HighMMTConfig, num_classes: int) -> nn.ModuleDict:
    """The projections into the shared space and the prototypes buffer [c, p] (saved with them)."""
    d = model_cfg.dim
    p = cfg.proj_dim or d
    mods = nn.ModuleDict({"project": nn.ModuleDict({"primary": nn.Linear(d, p), "secondary": nn.Linear(d, p)})})
    prototypes = nn.Module()
    prototypes.register_buffer("value", torch.zeros(num_classes, p))
    mods["prototypes"] = prototypes
    return mods


def spec_reading(spec: Any, modalities: Sequence[str]) -> Any:
    """``spec`` restricted to ``modalities`` (and their options)."""
    return dataclasses.replace(spec, modalities={m: spec.modalities[m] for m in modalities},
                               modality_options={m: o for m, o in spec.modality_options.items() if m in modalities})


def without_labels(dataset: datasets.Dataset, target: str) -> datasets.Dataset:
    """``dataset`` (no target column) with a ``target`` column of :data:`NO_LABEL`: batches collate, labels are gone.

    Select rows afterwards: a split that already has an index mapping (``train_fraction`` < 1) is copied
    first (``add_column`` needs a plain table)."""
    if getattr(dataset, "_indices", None) is not None:
        bars = datasets.utils.are_progress_bars_disabled()
        datasets.utils.disable_progress_bars()
        try:
            dataset = dataset.flatten_indices(keep_in_memory=True)
        finally:
            if not bars:
                datasets.utils.enable_progress_bars()
    return dataset.add_column(target, np.full(len(dataset), NO_LABEL, np.int64), feature=datasets.Value("int64"))


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _labels(dataset: datasets.Dataset, target: str) -> np.ndarray:
    return np.asarray(dataset.with_format("arrow")[target], dtype=np.int64)


def prototype_rows(labels: np.ndarray, num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """At most ``per_class`` seeded positions of each class (sorted); a class without a row is an error."""
    rng = np.random.default_rng([seed, 7])
    rows = []
    for k in range(num_classes):
        idx = np.flatnonzero(labels == k)
        if len(idx) == 0:
            raise ValueError(f"train.zeroshot: the training split has no labeled example of class {k} to build its prototype from")
        rows.append(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
    return np.sort(np.concatenate(rows))


# ---- the classifier --------------------------------------------------------------------------------------
class ZeroShotClassifier(nn.Module):
    """A rows -> cosine similarity to each class's B prototype, as a drop-in model: ``forward(inputs, task)``.

    For the zero-shot task the output [b, c] is the cosine similarity of the projected, pooled
    primary latents to the prototypes (its argmax is :func:`nearest_prototype`); the secondary is
    ignored. Without the primary (a robustness sweep dropping it) every score is 0: no evidence.
    Other tasks go through the model unchanged.

    Args:
        model: the trained HighMMT. modules: :func:`build_modules`' output (trained, prototypes filled).
        cfg: the zero-shot config. task: the zero-shot task.
    """

    def __init__(self, model: HighMMT, modules: nn.ModuleDict, cfg: ZeroShotConfig, task: str) -> None:
        super().__init__()
        self.model = model
        self.zeroshot = modules
        self.cfg = cfg
        self.task = task

    @property
    def prototypes(self) -> Tensor:
        return self.zeroshot["prototypes"].value

    def embed(self, modality: str, value: Any) -> Tensor:
        """One modality's input -> its projected pooled latents [b, p] (role: primary or secondary)."""
        role = "primary" if modality == self.cfg.primary else "secondary"
        return self.zeroshot["project"][role](self.model.encode_modality(modality, value).mean(dim=1))

    def forward(self, inputs: Mapping[str, Any], task: str) -> Tensor:
        """inputs {modality: batch} -> scores [b, c]."""
        if task != self.task:
            return self.model(inputs, task)
        primary = self.cfg.primary
        if primary not in inputs:
            return self.prototypes.new_zeros(_batch_size(inputs), self.prototypes.shape[0])
        e = self.embed(primary, inputs[primary])
        return F.normalize(e.float(), dim=-1) @ F.normalize(self.prototypes.float(), dim=-1).T


def _batch_size(inputs: Mapping[str, Any]) -> int:
    """Rows of a batch: the first dimension of its first tensor (inputs {modality: tensor | batch dict})."""
    for value in inputs.values():
        for t in (value.values() if isinstance(value, Mapping) else [value]):
            if isinstance(t, Tensor):
                return t.shape[0]
    raise ValueError(f"no tensor in the batch to count rows from (modalities {sorted(inputs)})")


class PrimaryOnly(nn.Module):
    """The model with the secondary withheld on the zero-shot task: what the supervised head learns to
    read; validation (on seen-class rows) goes through it."""

    def __init__(self, model: HighMMT, task: str, secondary: str) -> None:
        super().__init__()
        self.model, self.task, self.secondary = model, task, secondary

    def forward(self, inputs: Mapping[str, Any], task: str) -> Tensor:
        if task == self.task:
            inputs = {m: v for m, v in inputs.items() if m != self.secondary}
        return self.model(inputs, task)


@torch.no_grad()
def embed_rows(classifier: ZeroShotClassifier, modality: str, dataset: Any, spec: Any, rows: np.ndarray,
               device: torch.device, batch_size: int = 256) -> tuple[Tensor, np.ndarray]:
    """Projected embeddings of one modality for ``rows`` of a split: ([n, p], labels [n])."""
    embs, labels = [], []
    for start in range(0, len(rows), batch_size):
        batch = collate_rows(dataset, rows[start : start + batch_size], spec, modalities=[modality])
        embs.append(classifier.embed(modality, move_to(batch["inputs"][modality], device)).float())
        labels.append(batch["target"].numpy())
    return torch.cat(embs), np.concatenate(labels)


def per_class_accuracy(pred: np.ndarray, target: np.ndarray, classes: Sequence[int]) -> float:
    """Mean over ``classes`` (those with rows) of the fraction of their rows predicted right; NaN if none has rows."""
    accs = [float((pred[target == k] == k).mean()) for k in classes if (target == k).any()]
    return float(np.mean(accs)) if accs else float("nan")


def zeroshot_scores(pred_all: np.ndarray, pred_unseen: np.ndarray, target: np.ndarray, unseen: Sequence[int],
                    num_classes: int) -> dict[str, float]:
    """The zero-shot figures of one split.

    Args:
        pred_all: [n] nearest prototype among all classes (generalized zero-shot).
        pred_unseen: [n] nearest prototype among the unseen classes only (conventional zero-shot).
        target: [n] classes. unseen: the unseen classes. num_classes: c.
    Returns:
        ``zeroshot_seen_accuracy`` / ``zeroshot_unseen_accuracy`` (per-class mean accuracy of the
        seen / unseen classes' rows, all classes competing), ``zeroshot_harmonic`` (their harmonic
        mean), ``zeroshot_chance`` (1/c, a uniform guess, for both), ``zeroshot_zsl_accuracy`` (unseen
        rows among the unseen classes only) and ``zeroshot_zsl_chance`` (1/|unseen|).
    """
    seen = [k for k in range(num_classes) if k not in unseen]
    s = per_class_accuracy(pred_all, target, seen)
    u = per_class_accuracy(pred_all, target, unseen)
    h = 2 * s * u / (s + u) if s + u > 0 else 0.0
    on_unseen = np.isin(target, unseen)
    zsl = per_class_accuracy(pred_unseen[on_unseen], target[on_unseen], unseen)
    return {"zeroshot_seen_accuracy": s, "zeroshot_unseen_accuracy": u, "zeroshot_harmonic": float(h),
            "zeroshot_chance": 1.0 / num_classes, "zeroshot_zsl_accuracy": zsl, "zeroshot_zsl_chance": 1.0 / len(unseen)}


def evaluate_split(classifier: ZeroShotClassifier, dataset: Any, spec: Any, *, device: torch.device, batch_size: int = 256,
                   limit: int = 0) -> dict[str, float]:
    """:func:`zeroshot_scores` of ``dataset``'s primary rows (the first ``limit``, 0: all) through the prototypes."""
    was_training = classifier.training
    classifier.eval()
    rows = np.arange(min(len(dataset), limit) if limit else len(dataset))
    emb, y = embed_rows(classifier, classifier.cfg.primary, dataset, spec, rows, device, batch_size)
    classifier.train(was_training)
    protos = classifier.prototypes.to(emb.device)
    unseen = sorted(classifier.cfg.unseen_classes)
    pred_all = nearest_prototype(emb, protos).cpu().numpy()
    pred_unseen = np.asarray(unseen)[nearest_prototype(emb, protos[unseen]).cpu().numpy()]
    return zeroshot_scores(pred_all, pred_unseen, y, unseen, protos.shape[0])


# ---- the training hook -------------------------------------------------------------------------------
class ZeroShotHook(TrainHook):
    """Holds out the unseen classes, adds the alignment loss, keeps the prototypes (see the module docstring).

    Args:
        cfg: the run's ``train.zeroshot``.
        run: the run config (batch sizes, steps per epoch).
    """

    name = HOOK_NAME

    def __init__(self, cfg: ZeroShotConfig, run: Any) -> None:
        self.cfg = cfg
        self.tc = run.train
        self.task = ""
        self.seen: list[int] = []
        self._modules = nn.ModuleDict()
        self._align: datasets.Dataset | None = None  # the label-free alignment rows (primary, secondary, NO_LABEL)
        self._align_spec: Any = None
        self._stream: TaskStream | None = None
        self._prototype_set: tuple[datasets.Dataset, Any] | None = None  # labeled secondary rows (all classes), spec
        self._counts: dict[str, int] = {}
        self._losses: list[float] = []
        self._classifier: ZeroShotClassifier | None = None  # evaluate.py

    # -- protocol: training --
    def setup(self, ctx: TrainContext, state: dict[str, Any] | None) -> None:
        model: HighMMT = ctx.model
        cfg = self.cfg
        self.task = target_task(cfg, model.config)
        self.seen = check_classes(cfg, self.task, model.config)
        if state is not None and state.get("config") != self._config_record():
            raise ValueError(f"--resume: the run was trained with train.zeroshot={state.get('config')}, now it is "
                             f"{self._config_record()}; resume with the same zero-shot settings")
        lt = ctx.loaded[self.task]
        spec, train = lt.spec, lt.splits["train"]
        # The one place the unseen-class labels are read: to take those rows out (the data-set split of
        # zero-shot learning). Nothing trained, nor checkpoint selection, reads them afterwards.
        y = _labels(train, spec.target)
        seen_rows = np.flatnonzero(np.isin(y, self.seen))
        val = lt.splits["validation"]
        val_rows = np.flatnonzero(np.isin(_labels(val, spec.target), self.seen))
        if len(seen_rows) == 0 or len(val_rows) == 0:
            raise ValueError(f"train.zeroshot: task {self.task!r} has no training or validation row of the seen classes {self.seen}")
        align_rows = np.arange(len(train)) if cfg.align_rows == "all" else seen_rows
        pair = [cfg.primary, cfg.secondary]
        self._align_spec = spec_reading(spec, pair)
        self._align = without_labels(train.select_columns(pair), spec.target).select(align_rows)
        # The labeled secondary examples behind the prototypes: every class (B's labels name the classes).
        proto = prototype_rows(y, spec.num_classes, cfg.prototypes_per_class, ctx.seed)
        self._prototype_set = (train.select(proto).select_columns([cfg.secondary, spec.target]), spec_reading(spec, [cfg.secondary]))
        del y
        ctx.loaded[self.task] = dataclasses.replace(lt, splits=datasets.DatasetDict(
            {**lt.splits, "train": train.select(seen_rows), "validation": val.select(val_rows)}))
        rank, world = _rank_world()
        bs = cfg.align_batch_size or self.tc.batch_sizes.get(self.task, self.tc.batch_size)
        seed = int(np.random.default_rng([ctx.seed, zlib.crc32(f"{self.task}/zeroshot".encode())]).integers(2**31))
        self._stream = TaskStream(len(self._align), bs, seed=seed, rank=rank, world_size=world)
        if state is not None:
            self._stream.state.passes, self._stream.state.position = state["stream"]
        self._modules = build_modules(cfg, model.config, spec.num_classes)
        self._counts = {"train_rows_seen": len(seen_rows), "train_rows_dropped": len(train) - len(seen_rows),
                        "alignment_rows": len(align_rows), "prototype_rows": len(proto)}
        ctx.log(f"zero-shot: task {self.task}, {cfg.primary} classified through {cfg.secondary} prototypes; unseen classes "
                f"{sorted(cfg.unseen_classes)}: {len(train) - len(seen_rows)} of {len(train)} training rows leave the supervised "
                f"loss, alignment on {len(align_rows)} rows ({cfg.align_rows}, no labels)")

    def modules(self) -> dict[str, nn.Module]:
        return dict(self._modules.items())

    def training_inputs(self, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """The supervised forward of the zero-shot task reads the primary alone."""
        if task != self.task or self.cfg.secondary not in inputs:
            return inputs
        return {m: v for m, v in inputs.items() if m != self.cfg.secondary} or inputs

    def extra_loss(self, ctx: TrainContext, task: str, batch: dict[str, Any], outputs: Tensor) -> Tensor | None:
        """InfoNCE between the projected pooled latents of a batch of label-free alignment rows."""
        if task != self.task or self.cfg.weight == 0:
            return None
        cfg, model = self.cfg, ctx.model
        pairs = self.alignment_batch(ctx.device)
        autocast = ctx.autocast() if ctx.autocast is not None else contextlib.nullcontext()
        with autocast:
            z = {m: model.encode_modality(m, pairs["inputs"][m]).mean(dim=1) for m in (cfg.primary, cfg.secondary)}
            proj = self._modules["project"]
            loss = cfg.weight * info_nce(proj["primary"](z[cfg.primary]), proj["secondary"](z[cfg.secondary]), cfg.temperature)
        self._losses.append(float(loss.detach()))
        return loss.float()

    def alignment_batch(self, device: torch.device) -> dict[str, Any]:
        """The next batch of paired rows for the alignment: {"inputs": {m: batch}, "target": all NO_LABEL}."""
        return move_to(collate_rows(self._align, self._stream.next_indices(), self._align_spec), device)

    def end_epoch(self, ctx: TrainContext, epoch: int) -> list[dict[str, Any]]:
        """Refresh the prototypes (before validation and the best-weights save); the epoch's mean alignment loss."""
        self.refresh_prototypes(ctx.model, ctx.device)
        step = (epoch + 1) * self.tc.steps_per_epoch
        rows = [{"step": step, "epoch": epoch + 1, "task": self.task, "split": "train", "metric": "zeroshot_contrastive",
                 "value": sum(self._losses) / len(self._losses)}] if self._losses else []
        self._losses = []
        return rows

    @torch.no_grad()
    def refresh_prototypes(self, model: HighMMT, device: torch.device) -> None:
        """Prototypes [c, p] of the labeled secondary examples, in the current shared space."""
        dataset, spec = self._prototype_set
        classifier = ZeroShotClassifier(model, self._modules, self.cfg, self.task)
        was_training = model.training
        model.eval()
        emb, y = embed_rows(classifier, self.cfg.secondary, dataset, spec, np.arange(len(dataset)), device)
        model.train(was_training)
        self._modules["prototypes"].value.copy_(class_prototypes(emb, torch.from_numpy(y).to(emb.device), spec.num_classes))

    def eval_model(self, ctx: TrainContext) -> nn.Module:
        return PrimaryOnly(ctx.model, self.task, self.cfg.secondary)

    def state_dict(self) -> dict[str, Any]:
        stream = (self._stream.state.passes, self._stream.state.position) if self._stream is not None else (0, 0)
        return {"config": self._config_record(), "task": self.task, "stream": stream, **self._counts}

    # -- protocol: a finished run (evaluate.py) --
    def predictor(self, model: nn.Module, run_dir: Path, run_config: Mapping[str, Any], device: torch.device) -> nn.Module | None:
        return self._load(model, run_dir, device)

    def task_metrics(self, model: nn.Module, spec: Any, dataset: Any, *, run_dir: Path, run_config: Mapping[str, Any],
                     device: torch.device, batch_size: int, limit: int) -> dict[str, float]:
        """The zero-shot figures (:func:`zeroshot_scores`) of the zero-shot task's split."""
        classifier = self._load(model, run_dir, device)
        if spec.name != classifier.task:
            return {}
        return evaluate_split(classifier, dataset, spec, device=device, batch_size=batch_size, limit=limit)

    # -- internals --
    def _config_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)

    def _load(self, model: nn.Module, run_dir: Path, device: torch.device) -> ZeroShotClassifier:
        if self._classifier is None or self._classifier.model is not model:
            self._classifier = load_classifier(run_dir, map_location=device, model=model)
        return self._classifier


@register_hook_factory
def _factory(run: Any) -> ZeroShotHook | None:
    cfg = getattr(getattr(run, "train", None), "zeroshot", None)
    if cfg is None or cfg.method == "none":
        return None
    return ZeroShotHook(cfg, run)


# ---- after training ------------------------------------------------------------------------------------
def load_classifier(run_dir: str | Path, map_location: str | torch.device = "cpu", *, model: HighMMT | None = None) -> ZeroShotClassifier:
    """A finished zero-shot run folder -> its classifier (best weights, their projections and prototypes).
    ``model``: the run's model when the caller has already loaded it."""
    cfg = saved_section(run_dir, ZeroShotConfig, "zeroshot")
    if cfg.method == "none":
        raise ValueError(f"{run_dir} was trained without zero-shot learning (train.zeroshot.method is none)")
    if model is None:
        model = HighMMT.from_pretrained(run_dir, map_location=map_location)
    task = target_task(cfg, model.config)
    modules = build_modules(cfg, model.config, model.config.tasks[task].num_outputs)
    load_hook_modules(run_dir, modules, HOOK_NAME, "the zero-shot projections and prototypes")
    return ZeroShotClassifier(model, modules.to(map_location), cfg, task).eval()


__all__ = [
    "PrimaryOnly",
    "ZeroShotClassifier",
    "ZeroShotHook",
    "build_modules",
    "check_classes",
    "evaluate_split",
    "load_classifier",
    "per_class_accuracy",
    "prototype_rows",
    "target_task",
    "zeroshot_scores",
]
