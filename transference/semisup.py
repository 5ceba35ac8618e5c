"""Learning from unlabeled data: self-training, co-training and co-regularization as a training hook.

Switched on by ``train.semi`` (:class:`~transference.config.SemiConfig`; ``train.py --labeled-fraction F``):

- **labeled subset**: a stratified, seeded fraction ``F`` of each training split keeps its labels
  (at least one row per class); the other rows join the *unlabeled pool* with their labels removed
  (a bring-your-own task's ``unlabeled`` split joins it too). The split is drawn by *source sample*
  (:func:`tasks.cache.source_groups`): rows that share an identical input in any modality (an
  AV-MNIST clip paired with many images) fall on one side, so no pool row repeats a labeled input. ``method=none`` trains on the labeled
  rows alone: the supervised-only baseline on exactly the rows the other methods see.
- ``self_training`` (gradual pseudo-labeling; Wei et al. 2021's input consistency): after
  ``warmup_epochs`` and every ``epochs_per_round`` epochs the model labels the most confident pool
  rows (confidence >= ``threshold``, at most ``round_fraction`` of the initial pool per round, per
  predicted class when ``class_balance``), which join the training split for good; rounds stop when
  the pool is empty or no row reaches the threshold. Each step adds a consistency loss: the model's
  prediction on ``noise``-perturbed unlabeled inputs is pulled to its (detached) prediction on the
  clean ones.
- ``co_training`` (Blum & Mitchell 1998): two *views* of a task (modality groups, ``views="a+b|c"``),
  each with its own head (an extra model task ``"<task>@<modalities>"`` reading only its view's
  modalities). Each round every view labels its most confident pool rows *for the other view*: view
  A trains on the labeled rows plus the rows view B labeled, and vice versa. The task's own head
  trains on the labeled rows. Predictions average the views' class probabilities
  (``predict_with``); :func:`view_statistics` reports how independent the views' errors are.
  ``view_encoders=separate`` (default) gives each view's modalities their own encoder groups and
  fusion blocks (:func:`separate_views`), so the two views share no parameter, as Blum & Mitchell's
  two classifiers; ``shared`` keeps ``model.sharing`` (by default both views go through one encoder,
  and through one fusion block when both have two or more modalities). Embedders, modality-type
  embeddings and heads are per modality / task in either setting. :func:`shared_view_parameters`
  measures what the views share.
- ``co_regularization`` (Sindhwani et al. 2005): the view heads train on the labeled rows, and an
  agreement loss (symmetric KL, weight ``agreement_weight``) pulls their predictions on unlabeled
  rows together. Predictions as for co-training.

Letters: b batch, c classes, n rows.

True labels of the pool are never read: the pool is built from the training split's *modality
columns only*, with a label column that holds -1 until a method writes a pseudo-label there; only
the labeled rows' labels are copied from the split (``tests/test_semisup.py`` checks that corrupting
the pool's labels changes nothing). The state (labeled rows, pseudo-labels, stream positions) is
saved with the trainer state, so ``--resume`` continues with the same pseudo-labels; after each
round ``semisup.json`` in the run folder lists them (for studies such as ``experiments/semisup.py``).

Like ``train.py``, this module works on loaded tasks, so it imports the data layer (``tasks/``);
nothing in the model library imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from highmmt.checkpoint import atomic_write_json
from highmmt.config import HighMMTConfig, TaskConfig, from_dict
from highmmt.sharing import encoder_groups, fusion_groups, task_pairs
from tasks.base import TaskSpec
from tasks.cache import source_groups
from tasks.loader import TaskStream, collate_rows, move_to, predict, score
from tasks.splits import stratified_holdout
from transference.config import SemiConfig
from transference.hooks import TrainContext, TrainHook, register_hook_factory

HOOK_NAME = "semisup"
VIEW_METHODS = ("co_training", "co_regularization")
UNLABELED = -1  # the label column's value for rows without a (pseudo-)label
NOT_PSEUDO = -1  # ``by`` of labeled and pool rows; else 0 (self-training / view 0) or 1 (view 1)
STATE_FILE = "semisup.json"


# ---- labeled subset, views, scope ----------------------------------------------------------------
def labeled_split(labels: Sequence[int] | np.ndarray, fraction: float, seed: int, *, num_classes: int | None = None,
                  what: str = "training split", groups: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (labeled, unlabeled) positions: a stratified, seeded ``fraction`` keeps its labels.

    Every class present gets at least one labeled row (so the labeled share can exceed ``fraction``
    when there are more classes than ``fraction * n``); ``fraction=1`` labels every row.

    ``groups`` [n] (:func:`tasks.cache.source_groups`): rows of one group share a source sample (an
    AV-MNIST clip heard by many images), and the split is drawn by group, so that no unlabeled row
    repeats an input of a labeled one. Each group counts for the majority label of its rows; per
    class, whole groups are drawn in seeded order until they hold ``ceil(fraction * rows of the
    class)`` rows (at least one group). With all groups singletons this is the row-level split.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(y) == 0:
        raise ValueError(f"{what}: no rows to split into labeled and unlabeled")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"{what}: labeled fraction must be in (0, 1], got {fraction}")
    if num_classes is not None and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{what}: labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64).reshape(-1)
        if len(groups) != len(y):
            raise ValueError(f"{what}: {len(groups)} source groups for {len(y)} rows")
        if len(np.unique(groups)) == len(y):
            groups = None
    if fraction >= 1.0:
        return np.arange(len(y)), np.zeros(0, dtype=np.int64)
    if groups is not None:
        return _grouped_labeled_split(y, groups, fraction, seed)
    unlabeled, labeled = stratified_holdout(y, fraction, seed=seed, every_class=True, what=what)
    return labeled, unlabeled


def _grouped_labeled_split(y: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`labeled_split` by whole source groups (see there)."""
    ids, inverse = np.unique(groups, return_inverse=True)
    classes = int(y.max()) + 1
    counts = np.zeros((len(ids), classes), dtype=np.int64)
    np.add.at(counts, (inverse, y), 1)
    group_label, group_size = counts.argmax(axis=1), counts.sum(axis=1)
    rng = np.random.default_rng([seed, 11])
    chosen_groups = np.zeros(len(ids), dtype=bool)
    for c in np.unique(group_label):
        members = rng.permutation(np.flatnonzero(group_label == c))
        need = int(math.ceil(fraction * group_size[members].sum()))
        take = int(np.searchsorted(np.cumsum(group_size[members]), need)) + 1
        chosen_groups[members[:take]] = True
    chosen = chosen_groups[inverse]
    return np.flatnonzero(chosen), np.flatnonzero(~chosen)


def parse_views(text: str, spec: TaskSpec) -> list[list[str]]:
    """``"a+b|c"`` -> ``[["a", "b"], ["c"]]`` over ``spec``'s modalities (in the task's order).

    A name is a modality of the task or a kind that exactly one of its modalities has; ``""`` is the
    task's first modality against the rest.
    """
    mods = list(spec.modalities)
    where = f"task {spec.name!r} (modalities {mods})"
    if len(mods) < 2:
        raise ValueError(f"{where}: co-training and co-regularization need two views, and this task reads one modality; "
                         "restrict train.semi.tasks to tasks with two or more modalities")
    if not text.strip():
        return [mods[:1], mods[1:]]
    parts = [p.strip() for p in text.split("|")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{where}: views must be two modality groups written 'a+b|c', got {text!r}")
    kinds: dict[str, list[str]] = {}
    for m, k in spec.modalities.items():
        kinds.setdefault(k, []).append(m)
    views: list[list[str]] = []
    for part in parts:
        chosen = []
        for name in (n.strip() for n in part.split("+")):
            if name in spec.modalities:
                m = name
            elif len(kinds.get(name, [])) == 1:
                m = kinds[name][0]
            else:
                detail = f"kind {name!r} names {kinds[name]}" if name in kinds else f"{name!r} is neither a modality nor a kind of it"
                raise ValueError(f"{where}: view {part!r} of views {text!r}: {detail}")
            chosen.append(m)
        views.append([m for m in mods if m in chosen])
    if set(views[0]) & set(views[1]):
        raise ValueError(f"{where}: views {text!r} share modalities {sorted(set(views[0]) & set(views[1]))}; they must be disjoint")
    return views


def view_task_name(task: str, modalities: Sequence[str]) -> str:
    """The extra model task of one view: ``"<task>@<m1>+<m2>"``."""
    return f"{task}@{'+'.join(modalities)}"


def task_views(semi: SemiConfig, spec: TaskSpec) -> list[tuple[str, list[str]]]:
    """``[(view task name, modalities)] * 2`` of one task under ``semi.views``."""
    text = semi.views.get(spec.name, "") if isinstance(semi.views, Mapping) else semi.views
    return [(view_task_name(spec.name, v), v) for v in parse_views(text, spec)]


def scope(semi: SemiConfig, specs: Sequence[TaskSpec]) -> list[TaskSpec]:
    """The tasks ``semi`` applies to: ``semi.tasks`` (checked), else every classification task."""
    by_name = {s.name: s for s in specs}
    if isinstance(semi.views, Mapping):
        for t in semi.views:
            if t not in by_name:
                raise ValueError(f"train.semi.views names task {t!r}, which is not being trained ({sorted(by_name)})")
    if not semi.tasks:
        return [s for s in specs if s.task_type == "classification"]
    out = []
    for t in semi.tasks:
        if t not in by_name:
            raise ValueError(f"train.semi.tasks names task {t!r}, which is not being trained ({sorted(by_name)})")
        if by_name[t].task_type != "classification":
            raise ValueError(f"train.semi.tasks: task {t!r} is {by_name[t].task_type}; pseudo-labels need a classification task")
        out.append(by_name[t])
    return out


def add_view_heads(cfg: HighMMTConfig, semi: SemiConfig, specs: Sequence[TaskSpec]) -> HighMMTConfig:
    """The model config plus one head per view of every task in scope (co-training / co-regularization),
    and with ``semi.view_encoders=separate`` the views' own encoder groups and fusion (:func:`separate_views`)."""
    if semi.method not in VIEW_METHODS:
        return cfg
    tasks = dict(cfg.tasks)
    views: list[tuple[str, list[str]]] = []
    for spec in scope(semi, specs):
        for name, mods in task_views(semi, spec):
            if name in tasks:
                raise ValueError(f"view head {name!r} clashes with a task of that name")
            tasks[name] = TaskConfig(list(mods), "classification", spec.num_classes)
            views.append((name, mods))
    cfg = dataclasses.replace(cfg, tasks=tasks)
    return separate_views(cfg, views) if semi.view_encoders == "separate" else cfg


def separate_views(cfg: HighMMTConfig, views: Sequence[tuple[str, Sequence[str]]]) -> HighMMTConfig:
    """``cfg`` with its sharing split so that no two views share an encoder or a fusion block.

    ``views``: (view task name, modalities) of every view (their heads already in ``cfg.tasks``).
    Embedders, modality-type embeddings and heads are per modality / task already; encoders are
    shared by groups of modalities and pairwise fusion blocks by groups of modality pairs
    (``model.sharing``). A group stays as it is when its members belong to the same views; else it
    is split by membership: the members of view task ``t`` go to group ``"<group>@<t>"`` (of two
    views of two tasks, ``"<group>@<t1>@<t2>"``), members of no view keep the group. Pairs across
    two views (read only by the task's own head) belong to no view. Bottleneck fusion is per task
    group: shared by every task under ``sharing.fusion=all``, which is an error here.
    """
    member: dict[str, list[str]] = {}  # modality -> the view tasks that read it
    for name, mods in views:
        for m in mods:
            member.setdefault(m, []).append(name)
    sharing = cfg.sharing
    encoder = _split_groups(encoder_groups(sharing.encoder, list(cfg.modalities)), lambda m: sorted(member.get(m, [])))
    fusion = sharing.fusion
    if cfg.fusion.kind == "pairwise":
        pairs = task_pairs(t.modalities for t in cfg.tasks.values())
        in_views = lambda p: sorted(set(member.get(p.split("|")[0], [])) & set(member.get(p.split("|")[1], [])))  # noqa: E731
        fusion = _split_groups(fusion_groups(sharing.fusion, pairs), in_views) or sharing.fusion
    elif cfg.fusion.kind == "bottleneck" and sharing.fusion == "all":
        raise ValueError("train.semi.view_encoders=separate: the views would share the bottleneck fusion "
                         "(fusion.kind=bottleneck with model.sharing.fusion=all is one block for every task); pass "
                         "--set model.sharing.fusion=none (one block per task) or --set train.semi.view_encoders=shared")
    return dataclasses.replace(cfg, sharing=dataclasses.replace(sharing, encoder=encoder or sharing.encoder, fusion=fusion))


def _split_groups(groups: Mapping[str, str], views_of: Any) -> dict[str, list[str]] | None:
    """Member -> group (``groups``) refined so that members of different views (``views_of(member)``:
    the sorted view task names that read it) are in different groups, as ``{group: [members]}``; None
    when no group needed a split (the caller keeps its sharing setting as written)."""
    by_group: dict[str, list[str]] = {}
    for item, g in groups.items():
        by_group.setdefault(g, []).append(item)
    out: dict[str, list[str]] = {}
    source: dict[str, str] = {}  # new group -> the group it came from
    split = False
    for g, items in by_group.items():
        keys = {tuple(views_of(i)) for i in items}
        split = split or len(keys) > 1
        for i in items:
            name = "@".join((g, *views_of(i))) if len(keys) > 1 else g
            if source.setdefault(name, g) != g:
                raise ValueError(f"model.sharing: group {name!r} exists already; rename it to separate the views' groups")
            out.setdefault(name, []).append(i)
    return out if split else None


# ---- pseudo-label selection, losses, view statistics ------------------------------------------
def select_confident(probs: np.ndarray, *, threshold: float, k: int, class_balance: bool = True) -> np.ndarray:
    """Positions of at most ``k`` rows of ``probs`` [n, c] to pseudo-label, most confident first.

    Only rows whose top probability is >= ``threshold`` qualify. With ``class_balance`` each
    predicted class gets at most ``ceil(k / c)`` rows (its most confident), so one easy class cannot
    fill the round.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"select_confident needs probabilities [n, c], got shape {probs.shape}")
    if k <= 0 or len(probs) == 0:
        return np.zeros(0, dtype=np.int64)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    order = np.argsort(-conf, kind="stable")
    order = order[conf[order] >= threshold]
    if class_balance:
        quota = int(math.ceil(k / probs.shape[1]))
        taken = np.zeros(probs.shape[1], dtype=np.int64)
        keep = []
        for i in order:
            if taken[pred[i]] < quota:
                taken[pred[i]] += 1
                keep.append(i)
        order = np.asarray(keep, dtype=np.int64)
    return order[:k].astype(np.int64)


def agreement_loss(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Symmetric KL between two views' class distributions (mean over the batch): 0 when they agree.

    logits_a, logits_b: [b, c].
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"agreement_loss needs two [b, c] logits of one shape, got {tuple(logits_a.shape)} and {tuple(logits_b.shape)}")
    la, lb = F.log_softmax(logits_a.float(), dim=-1), F.log_softmax(logits_b.float(), dim=-1)
    kl_ab = F.kl_div(lb, la, log_target=True, reduction="batchmean")  # KL(a || b)
    kl_ba = F.kl_div(la, lb, log_target=True, reduction="batchmean")
    return 0.5 * (kl_ab + kl_ba)


def consistency_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(teacher || student) with the teacher detached (mean over the batch); [b, c] each."""
    teacher = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    return F.kl_div(F.log_softmax(student_logits.float(), dim=-1), teacher, log_target=True, reduction="batchmean")


def perturb(inputs: Mapping[str, Any], strength: float, generator: torch.Generator | None = None) -> dict[str, Any]:
    """A copy of a batch's inputs with Gaussian noise of ``strength`` x each float input's std.

    Only real entries move (those a batch marks ``observed`` / ``numeric_observed`` / ``mask``);
    integer inputs (token ids, uint8 video) are left alone.
    """
    out: dict[str, Any] = {}
    for m, batch in inputs.items():
        if not isinstance(batch, Mapping):
            out[m] = batch
            continue
        batch = dict(batch)
        key = next((k for k in ("x", "numeric", "values") if isinstance(batch.get(k), Tensor)), None)
        x = batch.get(key) if key else None
        if strength > 0 and x is not None and torch.is_floating_point(x):
            real = torch.ones_like(x, dtype=torch.bool)
            for mk in ("observed", "numeric_observed", "mask"):
                mask = batch.get(mk)
                if isinstance(mask, Tensor) and mask.shape == x.shape[: mask.ndim]:
                    real = mask.bool().reshape(*mask.shape, *([1] * (x.ndim - mask.ndim))).expand_as(x)
                    break
            if int(real.sum()) > 1:
                std = x[real].float().std()
                device = generator.device if generator is not None else x.device
                noise = torch.randn(x.shape, generator=generator, device=device).to(x.device, x.dtype)
                batch[key] = torch.where(real, x + strength * std.to(x.dtype) * noise, x)
        out[m] = batch
    return out


def view_statistics(outputs_a: np.ndarray, outputs_b: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """How far two views' errors are independent (co-training's assumption), on labeled rows.

    Returns each view's accuracy (``accuracy_a`` / ``accuracy_b``), the ensemble's (mean of the
    class probabilities), ``disagreement`` (share of rows the two predict differently), ``both_wrong``
    and what it would be if errors were independent (``both_wrong_if_independent`` = product of
    error rates), the phi correlation of the error indicators (``error_correlation``) and Cohen's
    kappa of the error indicators (``error_kappa``: 0 independent, 1 always wrong together; NaN
    when a view makes no error or only errors).
    """
    from scipy.special import softmax
    from sklearn.metrics import cohen_kappa_score

    pa, pb = softmax(np.asarray(outputs_a, np.float64), axis=1), softmax(np.asarray(outputs_b, np.float64), axis=1)
    y = np.asarray(targets).reshape(-1)
    if pa.shape != pb.shape or len(pa) != len(y):
        raise ValueError(f"view_statistics needs [n, c] outputs of both views and n targets, got {pa.shape}, {pb.shape}, {y.shape}")
    wa, wb = pa.argmax(1) != y, pb.argmax(1) != y
    stats = {
        "accuracy_a": float(1 - wa.mean()),
        "accuracy_b": float(1 - wb.mean()),
        "accuracy_ensemble": float(((pa + pb).argmax(1) == y).mean()),
        "disagreement": float((pa.argmax(1) != pb.argmax(1)).mean()),
        "both_wrong": float((wa & wb).mean()),
        "both_wrong_if_independent": float(wa.mean() * wb.mean()),
    }
    constant = wa.all() or not wa.any() or wb.all() or not wb.any()
    stats["error_correlation"] = float("nan") if constant else float(np.corrcoef(wa, wb)[0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats["error_kappa"] = float("nan") if constant else float(cohen_kappa_score(wa, wb))
    return stats


def view_parameters(model: nn.Module, inputs: Mapping[str, Any], views: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, int]]:
    """Per view: {parameter name: size} of every parameter its prediction depends on (gets a gradient
    from it, frozen parameters included), measured by backpropagating its outputs on ``inputs``.

    ``inputs``: a collated batch's inputs holding every view's modalities; ``views``: (view task
    name, modalities). The model runs in eval mode (no dropout); its mode and ``requires_grad``
    flags are restored.
    """
    named = list(model.named_parameters())
    flags, mode = [p.requires_grad for _, p in named], model.training
    out = []
    try:
        model.eval()
        for _, p in named:
            p.requires_grad_(True)
        with torch.enable_grad():
            for name, mods in views:
                logits = model({m: inputs[m] for m in mods}, name)
                grads = torch.autograd.grad(logits.float().sum(), [p for _, p in named], allow_unused=True)
                out.append({n: p.numel() for (n, p), g in zip(named, grads) if g is not None})
    finally:
        for (_, p), flag in zip(named, flags):
            p.requires_grad_(flag)
        model.train(mode)
    return out


def shared_view_parameters(model: nn.Module, inputs: Mapping[str, Any], views: Sequence[tuple[str, Sequence[str]]]) -> dict[str, int]:
    """{parameter name: size} of the parameters both views' predictions depend on (:func:`view_parameters`)."""
    a, b = view_parameters(model, inputs, views)
    return {n: a[n] for n in a if n in b}


# ---- prediction: the views' ensemble --------------------------------------------------------------
class ViewEnsemble(nn.Module):
    """Predicts co-trained tasks with the mean of their view heads' class probabilities.

    Args:
        model: the HighMMT model (with the view heads).
        views: task -> its view task names and modalities (see :func:`task_views`).
        include_fused: also average in the task's own head.

    ``forward(inputs, task)`` returns log mean probabilities [b, c] for a co-trained task (a view
    with none of its modalities among ``inputs`` is left out) and the model's outputs otherwise.
    """

    def __init__(self, model: nn.Module, views: Mapping[str, Sequence[tuple[str, Sequence[str]]]], *, include_fused: bool = False) -> None:
        super().__init__()
        self.model = model
        self.views = {t: [(n, list(m)) for n, m in v] for t, v in views.items()}
        self.include_fused = include_fused

    def forward(self, inputs: Mapping[str, Any], task: str) -> Tensor:
        if task not in self.views:
            return self.model(inputs, task)
        probs = []
        for name, mods in self.views[task]:
            part = {m: inputs[m] for m in mods if m in inputs}
            if part:
                probs.append(F.softmax(self.model(part, name).float(), dim=-1))
        if self.include_fused or not probs:
            probs.append(F.softmax(self.model(inputs, task).float(), dim=-1))
        return torch.stack(probs).mean(dim=0).clamp_min(1e-12).log()

    def parameter_counts(self) -> dict[str, Any]:
        return self.model.parameter_counts()


def prediction_model(model: nn.Module, run_config: Mapping[str, Any]) -> nn.Module:
    """What a finished run predicts with: the views' ensemble for co-training / co-regularization
    runs (unless ``predict_with=fused``), else ``model``. ``run_config``: the run's ``config.json``."""
    semi = semi_config(run_config)
    if semi.method not in VIEW_METHODS or semi.predict_with == "fused":
        return model
    specs = [TaskSpec.from_dict(d) for d in run_config["tasks"].values()]
    views = {s.name: task_views(semi, s) for s in scope(semi, specs)}
    return ViewEnsemble(model, views, include_fused=semi.predict_with == "views+fused")


def semi_config(run_config: Mapping[str, Any]) -> SemiConfig:
    """The ``train.semi`` section of a run's ``config.json`` (defaults when absent)."""
    return from_dict(SemiConfig, run_config.get("train", {}).get("semi", {}), prefix="train.semi.")


def view_metrics(model: nn.Module, run_config: Mapping[str, Any], dataset: Any, spec: TaskSpec, *, batch_size: int = 128,
                 limit: int = 0, device: torch.device | str = "cpu") -> dict[str, float]:
    """Test-time figures of a co-trained task: each view's and the task head's primary metric
    (``<metric>@<view>``, ``<metric>@fused``), :func:`view_statistics` (``views_<name>``) and the
    number of parameters both views depend on (``views_shared_parameters``, :func:`shared_view_parameters`
    on the first two rows; 0 under ``view_encoders=separate``); empty for other runs and tasks."""
    semi = semi_config(run_config)
    specs = [TaskSpec.from_dict(d) for d in run_config["tasks"].values()]
    if semi.method not in VIEW_METHODS or spec.name not in {s.name for s in scope(semi, specs)}:
        return {}
    outs = []
    out: dict[str, float] = {}
    for name, mods in task_views(semi, spec):
        o, y = predict(model, dataset, spec, task=name, modalities=mods, batch_size=batch_size, limit=limit, device=device)
        out[f"{spec.metric}@{'+'.join(mods)}"] = score(spec, o, y)[spec.metric]
        outs.append(o)
    o, y = predict(model, dataset, spec, batch_size=batch_size, limit=limit, device=device)
    out[f"{spec.metric}@fused"] = score(spec, o, y)[spec.metric]
    stats = view_statistics(outs[0], outs[1], y)  # the views' own accuracies are the "<metric>@<view>" entries
    out.update({f"views_{k}": v for k, v in stats.items() if k not in ("accuracy_a", "accuracy_b")})
    rows = move_to(collate_rows(dataset, list(range(min(2, len(dataset)))), spec), device)
    out["views_shared_parameters"] = float(sum(shared_view_parameters(model, rows["inputs"], task_views(semi, spec)).values()))
    return out


# ---- the hook ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class _TaskState:
    """One task's data under the hook. Positions index ``base`` (the training split's rows, then the
    task's ``unlabeled`` split's)."""

    spec: TaskSpec
    base: datasets.Dataset  # modality columns only: no labels, no other columns
    n_train: int
    labeled: np.ndarray  # positions with a true label
    unlabeled: np.ndarray  # positions that started unlabeled (the initial pool)
    labels: np.ndarray  # [len(base)] int64: true label (labeled), pseudo-label, or UNLABELED
    by: np.ndarray  # [len(base)] int8: NOT_PSEUDO, or who pseudo-labeled the row (0, or view 0 / 1)
    confidence: np.ndarray  # [len(base)] float32, of the pseudo-label
    round_of: np.ndarray  # [len(base)] int16, the round that labeled it (-1: none)
    views: list[tuple[str, list[str]]]
    rounds: int = 0
    stopped: str = ""
    streams: dict[str, TaskStream] = dataclasses.field(default_factory=dict)
    datasets: dict[str, datasets.Dataset] = dataclasses.field(default_factory=dict)

    @property
    def pool(self) -> np.ndarray:
        return self.unlabeled[self.by[self.unlabeled] == NOT_PSEUDO]

    def with_labels(self) -> datasets.Dataset:
        """``base`` plus the label column as it stands (UNLABELED for pool rows)."""
        return self.base.add_column(self.spec.target, self.labels, feature=datasets.Value("int64"))


class SemiSupervisedHook(TrainHook):
    """The ``train.semi`` methods (see the module docstring). Created by the registered factory."""

    name = HOOK_NAME

    def __init__(self, run: Any) -> None:
        self.semi: SemiConfig = run.train.semi
        self.tc = run.train
        self.tasks: dict[str, _TaskState] = {}
        self._ensemble: ViewEnsemble | None = None

    def model_config(self, cfg: HighMMTConfig, specs: Sequence[TaskSpec]) -> HighMMTConfig:
        return add_view_heads(cfg, self.semi, specs)  # co-training: one head per view

    def predictor(self, model: nn.Module, run_dir: Path, run_config: Mapping[str, Any], device: torch.device) -> nn.Module | None:
        return prediction_model(model, run_config)  # co-training runs predict with their views' ensemble

    def task_metrics(self, model: nn.Module, spec: TaskSpec, dataset: Any, *, run_dir: Path, run_config: Mapping[str, Any],
                     device: torch.device, batch_size: int, limit: int) -> dict[str, float]:
        return view_metrics(model, run_config, dataset, spec, batch_size=batch_size, limit=limit, device=device)

    # -- setup: labeled subset and pool (fresh, or as saved) --
    def setup(self, ctx: TrainContext, state: dict[str, Any] | None) -> None:
        semi = self.semi
        in_scope = scope(semi, [lt.spec for lt in ctx.loaded.values()])
        if not in_scope:
            raise ValueError(f"train.semi: no classification task among {sorted(ctx.loaded)} to learn from unlabeled data")
        saved = (state or {}).get("tasks", {})
        for spec in in_scope:
            st = self._task_state(ctx, spec, saved.get(spec.name))
            self.tasks[spec.name] = st
            if semi.method != "none" and len(st.unlabeled) == 0:
                raise ValueError(f"train.semi.method={semi.method} needs unlabeled rows, and task {spec.name!r} has none: pass "
                                 "--labeled-fraction below 1 or give the task an 'unlabeled' split")
            ctx.log(f"semisup: task {spec.name}: {len(st.labeled)} labeled rows, {len(st.unlabeled)} unlabeled"
                    + (f", {len(st.unlabeled) - len(st.pool)} pseudo-labeled after {st.rounds} round(s)" if st.rounds else ""))
            self._refresh(ctx, spec.name)
            if st.views:
                groups = getattr(ctx.model, "encoder_group", {})
                ctx.log(f"semisup: task {spec.name}: view_encoders={semi.view_encoders}: "
                        + "; ".join(f"view {'+'.join(m)} -> encoder group(s) {sorted({groups.get(x, '?') for x in m})}" for _, m in st.views))
        if semi.method in VIEW_METHODS and semi.predict_with != "fused":
            self._ensemble = ViewEnsemble(ctx.model, {t: st.views for t, st in self.tasks.items()},
                                          include_fused=semi.predict_with == "views+fused")

    def _task_state(self, ctx: TrainContext, spec: TaskSpec, saved: Mapping[str, Any] | None) -> _TaskState:
        lt = ctx.loaded[spec.name]
        train = lt.splits["train"]
        mods = list(spec.modalities)
        parts = [train.select_columns(mods)]
        if "unlabeled" in lt.splits:
            extra = lt.splits["unlabeled"].select_columns(mods)
            if extra.features != parts[0].features:
                try:
                    extra = extra.cast(parts[0].features)
                except (ValueError, TypeError) as e:
                    raise ValueError(f"task {spec.name!r}: the unlabeled split's columns {dict(extra.features)} do not "
                                     f"match the training split's {dict(parts[0].features)} ({e})") from e
            parts.append(extra)
        # add_column needs a table without an index mapping (train_fraction selects rows); copy once.
        parts = [p.flatten_indices(keep_in_memory=True) if getattr(p, "_indices", None) is not None else p for p in parts]
        base = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        n_train, n = len(train), len(base)
        views = task_views(self.semi, spec) if self.semi.method in VIEW_METHODS else []
        labels = np.full(n, UNLABELED, dtype=np.int64)
        by = np.full(n, NOT_PSEUDO, dtype=np.int8)
        confidence = np.zeros(n, dtype=np.float32)
        round_of = np.full(n, -1, dtype=np.int16)
        if saved is None:
            # The labeling oracle: the split is drawn from all training labels (stratified), then only
            # the labeled rows' labels are kept.
            true = np.asarray(train.with_format("arrow")[spec.target], dtype=np.int64)
            # Split by source sample: rows sharing an input (any modality) are labeled together or not
            # at all, and rows of an 'unlabeled' split that repeat a labeled input leave the pool.
            groups = source_groups(base, mods) if self.semi.labeled_fraction < 1.0 or n > n_train else None
            labeled, unlabeled_train = labeled_split(true, self.semi.labeled_fraction, seed=ctx.seed,
                                                     num_classes=spec.num_classes, what=f"training split of task {spec.name!r}",
                                                     groups=None if groups is None else groups[:n_train])
            labels[labeled] = true[labeled]
            del true
            extra = np.arange(n_train, n)
            if len(extra):
                repeats = np.isin(groups[extra], groups[labeled])
                if repeats.any():
                    ctx.log(f"semisup: task {spec.name}: {int(repeats.sum())} row(s) of the unlabeled split repeat an input "
                            "of a labeled row and are left out of the pool")
                extra = extra[~repeats]
            unlabeled = np.concatenate([unlabeled_train, extra])
            return _TaskState(spec, base, n_train, labeled, unlabeled, labels, by, confidence, round_of, views)
        if saved["n"] != n or saved["n_train"] != n_train:
            raise ValueError(f"--resume: task {spec.name!r} had {saved['n_train']} training + {saved['n'] - saved['n_train']} "
                             f"unlabeled rows when the run started, now {n_train} + {n - n_train}: the data changed")
        labeled, unlabeled = np.asarray(saved["labeled"], np.int64), np.asarray(saved["unlabeled"], np.int64)
        labels[labeled] = np.asarray(saved["labeled_labels"], np.int64)
        rows = np.asarray(saved["pseudo_rows"], np.int64)
        labels[rows] = saved["pseudo_labels"]
        by[rows] = saved["pseudo_by"]
        confidence[rows] = saved["pseudo_confidence"]
        round_of[rows] = saved["pseudo_round"]
        st = _TaskState(spec, base, n_train, labeled, unlabeled, labels, by, confidence, round_of, views,
                        rounds=int(saved["rounds"]), stopped=str(saved["stopped"]))
        st.streams = {k: self._stream(ctx, spec.name, k, size) for k, size in saved["stream_sizes"].items()}
        for k, (passes, position) in saved["stream_positions"].items():
            st.streams[k].state.passes, st.streams[k].state.position = passes, position
        return st

    def _stream(self, ctx: TrainContext, task: str, key: str, size: int) -> TaskStream:
        rank, world = _rank_world()
        bs = self.semi.unlabeled_batch_size or self.tc.batch_sizes.get(task, self.tc.batch_size)
        seed = int(np.random.default_rng([ctx.seed, zlib.crc32(f"{task}/{key}".encode())]).integers(2**31))
        return TaskStream(size, bs, seed=seed, rank=rank, world_size=world)

    def rows_for(self, task: str, key: str) -> np.ndarray:
        """Positions (in the task's base rows) of one training set: ``train`` (the task's training
        split), ``view0`` / ``view1`` (co-training: a view's rows) or ``unlabeled`` (the initial pool)."""
        st = self.tasks[task]
        by = st.by[st.unlabeled]
        if key == "train":
            return np.union1d(st.labeled, st.unlabeled[by != NOT_PSEUDO]) if self.semi.method == "self_training" else st.labeled
        if key in ("view0", "view1"):  # view v learns from the labeled rows and the rows the *other* view labeled
            return np.union1d(st.labeled, st.unlabeled[by == 1 - int(key[-1])])
        if key == "unlabeled":
            return st.unlabeled
        raise ValueError(f"unknown training set {key!r}; expected train, view0, view1 or unlabeled")

    def _refresh(self, ctx: TrainContext, task: str) -> None:
        """Rebuild the training split, the view training sets and their streams from the labels."""
        st = self.tasks[task]
        full = st.with_labels()
        lt = ctx.loaded[task]
        splits = datasets.DatasetDict({**lt.splits, "train": full.select(self.rows_for(task, "train"))})
        ctx.loaded[task] = dataclasses.replace(lt, splits=splits)
        keys = {"self_training": ["unlabeled"], "co_training": ["view0", "view1"], "co_regularization": ["unlabeled"]}
        rows = {k: self.rows_for(task, k) for k in keys.get(self.semi.method, [])}
        st.datasets = {k: full.select(r) for k, r in rows.items() if len(r)}
        for key, ds in st.datasets.items():
            old = st.streams.get(key)
            if old is None or old.size != len(ds):
                fresh = self._stream(ctx, task, key, len(ds))
                if old is not None:  # keep the pass count so a grown set is reshuffled, not replayed
                    fresh.state.passes = old.state.passes + 1
                st.streams[key] = fresh

    # -- per step --
    def extra_loss(self, ctx: TrainContext, task: str, batch: dict[str, Any], outputs: Tensor) -> Tensor | None:
        st = self.tasks.get(task)
        method = self.semi.method
        if st is None or method == "none":
            return None
        autocast = ctx.autocast or contextlib.nullcontext
        model = ctx.model
        if method == "self_training":
            if self.semi.consistency_weight == 0 or "unlabeled" not in st.datasets:
                return None
            u = self._next_batch(ctx, st, "unlabeled")
            with torch.no_grad(), autocast():
                teacher = model(u["inputs"], task)
            with autocast():
                student = model(perturb(u["inputs"], self.semi.noise), task)
            return self.semi.consistency_weight * consistency_loss(student, teacher)
        if method == "co_training":
            loss = outputs.new_zeros(())
            for v, (name, mods) in enumerate(st.views):
                b = self._next_batch(ctx, st, f"view{v}", mods)
                with autocast():
                    logits = model(b["inputs"], name)
                loss = loss + F.cross_entropy(logits.float(), b["target"].long())
            return loss
        # co_regularization: each view learns from the labeled batch; the views agree on unlabeled rows.
        loss = outputs.new_zeros(())
        for name, mods in st.views:
            with autocast():
                logits = model({m: batch["inputs"][m] for m in mods}, name)
            loss = loss + F.cross_entropy(logits.float(), batch["target"].long())
        if self.semi.agreement_weight > 0 and "unlabeled" in st.datasets:
            u = self._next_batch(ctx, st, "unlabeled")
            with autocast():
                la, lb = (model({m: u["inputs"][m] for m in mods}, name) for name, mods in st.views)
            loss = loss + self.semi.agreement_weight * agreement_loss(la, lb)
        return loss

    def _next_batch(self, ctx: TrainContext, st: _TaskState, key: str, modalities: Sequence[str] | None = None) -> dict[str, Any]:
        idx = st.streams[key].next_indices()
        return move_to(collate_rows(st.datasets[key], idx, st.spec, modalities), ctx.device)

    # -- per epoch: pseudo-labeling rounds, view statistics --
    def end_epoch(self, ctx: TrainContext, epoch: int) -> list[dict[str, Any]]:
        semi, done = self.semi, epoch + 1
        step = done * self.tc.steps_per_epoch
        rows: list[dict[str, Any]] = []
        due = (semi.method in ("self_training", "co_training") and done >= semi.warmup_epochs
               and (done - semi.warmup_epochs) % semi.epochs_per_round == 0 and done < self.tc.epochs)
        for task, st in self.tasks.items():
            if due and not st.stopped:
                self._round(ctx, task, st)
                self._refresh(ctx, task)
            pseudo = st.unlabeled[st.by[st.unlabeled] != NOT_PSEUDO]
            row = {"step": step, "epoch": done, "task": task, "split": "semisup"}
            rows += [{**row, "metric": "labeled", "value": float(len(st.labeled))},
                     {**row, "metric": "pseudo_labeled", "value": float(len(pseudo))},
                     {**row, "metric": "pool", "value": float(len(st.pool))}]
            if len(pseudo):
                rows.append({**row, "metric": "pseudo_mean_confidence", "value": float(st.confidence[pseudo].mean())})
            if semi.method in VIEW_METHODS:
                rows += self._view_rows(ctx, task, st, step, done)
        if semi.method in ("self_training", "co_training") and _rank_world()[0] == 0:
            atomic_write_json(ctx.out / STATE_FILE, self._summary())
        return rows

    def _round(self, ctx: TrainContext, task: str, st: _TaskState) -> None:
        """One pseudo-labeling round of one task."""
        semi = self.semi
        pool = st.pool
        if len(pool) == 0:
            st.stopped = "the unlabeled pool is empty"
            ctx.log(f"semisup: task {task}: self-labeling stopped: {st.stopped}")
            return
        if semi.score_limit and len(pool) > semi.score_limit:
            rng = np.random.default_rng([ctx.seed, st.rounds, 11])
            pool = np.sort(rng.choice(pool, size=semi.score_limit, replace=False))
        k = int(math.ceil(semi.round_fraction * len(st.unlabeled)))
        scored = st.with_labels().select(pool)
        predictors = [(0, task, None)] if semi.method == "self_training" else [(v, n, m) for v, (n, m) in enumerate(st.views)]
        picks: dict[int, tuple[int, int, float]] = {}  # pool position -> (label, by, confidence)
        for who, head, mods in predictors:
            o, _ = predict(ctx.model, scored, st.spec, task=head, modalities=mods, batch_size=self.tc.eval_batch_size,
                           device=ctx.device, autocast=ctx.autocast)
            probs = torch.softmax(torch.from_numpy(o).double(), dim=1).numpy()
            for i in select_confident(probs, threshold=semi.threshold, k=k, class_balance=semi.class_balance):
                label, conf = int(probs[i].argmax()), float(probs[i].max())
                if int(i) not in picks or conf > picks[int(i)][2]:  # a row both views want goes to the surer one
                    picks[int(i)] = (label, who, conf)
        st.rounds += 1
        if not picks:
            st.stopped = f"no unlabeled row reached confidence {semi.threshold}"
            ctx.log(f"semisup: task {task}: round {st.rounds}: self-labeling stopped: {st.stopped}")
            return
        for i, (label, who, conf) in picks.items():
            r = pool[i]
            st.labels[r], st.by[r], st.confidence[r], st.round_of[r] = label, who, conf, st.rounds
        counts = np.bincount([w for _, w, _ in picks.values()], minlength=2)
        detail = f"{counts[0]} by view 0, {counts[1]} by view 1" if semi.method == "co_training" else f"{len(picks)}"
        ctx.log(f"semisup: task {task}: round {st.rounds}: pseudo-labeled {detail}; {len(st.pool)} left in the pool")

    def _view_rows(self, ctx: TrainContext, task: str, st: _TaskState, step: int, epoch: int) -> list[dict[str, Any]]:
        """Each view's validation metric (as task ``<task>@<view>``) and how independent their errors are."""
        lt = ctx.loaded[task]
        outs, rows = [], []
        for name, mods in st.views:
            o, y = predict(ctx.model, lt.splits["validation"], st.spec, task=name, modalities=mods,
                           batch_size=self.tc.eval_batch_size, limit=self.tc.max_eval_samples, device=ctx.device,
                           autocast=ctx.autocast)
            outs.append(o)
            rows.append({"step": step, "epoch": epoch, "task": name, "split": "validation", "metric": st.spec.metric,
                         "value": score(st.spec, o, y)[st.spec.metric]})
        stats = view_statistics(outs[0], outs[1], y)
        rows += [{"step": step, "epoch": epoch, "task": task, "split": "semisup", "metric": f"validation_views_{k}", "value": v}
                 for k, v in stats.items() if k in ("disagreement", "error_kappa", "error_correlation")]
        return rows

    def eval_model(self, ctx: TrainContext) -> nn.Module:
        return self._ensemble if self._ensemble is not None else ctx.model

    # -- checkpoints --
    def state_dict(self) -> dict[str, Any]:
        tasks = {}
        for task, st in self.tasks.items():
            rows = st.unlabeled[st.by[st.unlabeled] != NOT_PSEUDO]
            tasks[task] = {
                "n": len(st.base), "n_train": st.n_train,
                "labeled": st.labeled.tolist(), "labeled_labels": st.labels[st.labeled].tolist(),
                "unlabeled": st.unlabeled.tolist(),
                "pseudo_rows": rows.tolist(), "pseudo_labels": st.labels[rows].tolist(), "pseudo_by": st.by[rows].tolist(),
                "pseudo_confidence": st.confidence[rows].tolist(), "pseudo_round": st.round_of[rows].tolist(),
                "rounds": st.rounds, "stopped": st.stopped,
                "stream_sizes": {k: s.size for k, s in st.streams.items()},
                "stream_positions": {k: (s.state.passes, s.state.position) for k, s in st.streams.items()},
            }
        return {"method": self.semi.method, "tasks": tasks}

    def _summary(self) -> dict[str, Any]:
        """``semisup.json``: per task, the labeled rows and every pseudo-label, column-wise. ``row`` is a
        position in the training split, or ``n_train`` + a position in a bring-your-own ``unlabeled`` split."""
        out: dict[str, Any] = {"method": self.semi.method, "tasks": {}}
        for task, st in self.tasks.items():
            rows = st.unlabeled[st.by[st.unlabeled] != NOT_PSEUDO]
            out["tasks"][task] = {
                "labeled_train_rows": st.labeled.tolist(), "n_train": st.n_train, "unlabeled": len(st.unlabeled),
                "rounds": st.rounds,
                "stopped": st.stopped,
                "views": [m for _, m in st.views],
                "pseudo": {"row": rows.tolist(), "label": st.labels[rows].tolist(), "by": st.by[rows].tolist(),
                           "confidence": [round(float(c), 4) for c in st.confidence[rows]],
                           "round": st.round_of[rows].tolist()},
            }
        return out


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@register_hook_factory
def _semisup_factory(run: Any) -> SemiSupervisedHook | None:
    semi = getattr(getattr(run, "train", None), "semi", None)
    if not isinstance(semi, SemiConfig) or (semi.method == "none" and semi.labeled_fraction >= 1.0):
        return None
    return SemiSupervisedHook(run)


def load_summary(run_dir: Any) -> dict[str, Any]:
    """A run folder's ``semisup.json`` (empty when the run pseudo-labeled nothing)."""
    from pathlib import Path

    path = Path(run_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
