"""Task heads and their losses.

A head maps the fused vector [b, f] to outputs [b, c]: class logits (classification), per-label
logits (multilabel) or values (regression).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from highmmt.layers import RunningStandardize


class TaskHead(nn.Module):
    """LayerNorm + linear (HighMMT's head), or an MLP when ``hidden > 0``; plus, for modalities whose
    embedder has a wide input, a linear read-out of that sparse bag added to the outputs (the wide
    part of Wide & Deep, Cheng et al. 2016; a :class:`WideReadout`, zero at initialisation unless its
    prior is set).

    Args:
        in_dim: fused width f. out_dim: outputs c. hidden: MLP width (0 = linear). dropout: before the output layer.
        wide: {modality key: wide_size} of the task's modalities that have a wide input.
        wide_dropout: the wide read-outs' input dropout (:class:`WideReadout`).
    """

    def __init__(self, *, in_dim: int, out_dim: int, hidden: int = 0, dropout: float = 0.0,
                 wide: Mapping[str, int] | None = None, wide_dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
        if hidden > 0:
            layers += [nn.Linear(in_dim, hidden), nn.GELU()]
            in_dim = hidden
        layers += [nn.Dropout(dropout), nn.Linear(in_dim, out_dim)]
        self.to_logits = nn.Sequential(*layers)
        self.wide = nn.ModuleDict({m: WideReadout(size, out_dim, dropout=wide_dropout) for m, size in (wide or {}).items()})

    def forward(self, fused: Tensor, wide: Mapping[str, tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """fused [b, f] (+ ``wide`` {modality key: (ids [b, k], weights [b, k])} of the modalities present) -> [b, c]."""
        deep, wide_outputs = self.deep_and_wide(fused, wide)
        return deep if wide_outputs is None else deep + wide_outputs.to(deep.dtype)

    def deep_and_wide(self, fused: Tensor, wide: Mapping[str, tuple[Tensor, Tensor]] | None = None) -> tuple[Tensor, Tensor | None]:
        """The two parts of the head's outputs: the layers on the fused vector [b, c] and the wide read-outs' sum
        [b, c] (None when there are none)."""
        return self.to_logits(fused), self.wide_logits(wide)

    def wide_logits(self, wide: Mapping[str, tuple[Tensor, Tensor]] | None) -> Tensor | None:
        """The wide read-outs' sum [b, c] over the modalities in ``wide`` (None when there are none)."""
        parts = [self.wide[m](ids, weights) for m, (ids, weights) in (wide or {}).items()]
        return sum(parts[1:], parts[0]) if parts else None


class WideReadout(nn.Module):
    """A linear read-out of a sparse bag of ids: logits [b, c] = sum_j weights[b, j] (W + P)[ids[b, j]].

    W (``weight``, zero at initialisation) is trained; P (``prior``, a buffer, zero unless set) is a fixed
    starting point that W adds to, so weight decay pulls the read-out toward P instead of toward zero.
    ``naive_bayes_prior`` computes one from the training rows. Id 0 is padding and reads nothing.
    ``dropout`` > 0: in training, each entry of a bag is dropped with that probability and the kept ones are
    scaled by 1 / (1 - dropout), so that the expected logits are those of evaluation.
    """

    def __init__(self, size: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"wide read-out dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout
        self.weight = nn.Parameter(torch.zeros(size, out_dim))
        self.register_buffer("prior", torch.zeros(size, out_dim))

    def forward(self, ids: Tensor, weights: Tensor) -> Tensor:
        """ids [b, k] int64 in 0..size-1 (0 = padding), weights [b, k] -> [b, c]."""
        table = self.weight + self.prior
        if self.training and self.dropout > 0.0:
            weights = F.dropout(weights, self.dropout)
        return F.embedding_bag(ids, table, per_sample_weights=weights.to(table.dtype), mode="sum", padding_idx=0)


def mix_rows(x: Tensor, perm: Tensor, lam: float) -> Tensor:
    """``lam * x + (1 - lam) * x[perm]`` over the batch (first) axis: mixup's convex combination of rows."""
    return lam * x + (1.0 - lam) * x[perm]


class SummaryHead(nn.Module):
    """A task's read-out of one modality's summary statistics (``model.summary_heads``): the statistics the
    embedder's summary token is made from, standardised by the training rows (``RunningStandardize``),
    through a one-hidden-layer MLP to the task's outputs. Beside the shared encoder, where those
    statistics are one token among many, it reads them directly, as an MLP on a tree's features would.
    """

    def __init__(self, features: int, out_dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = RunningStandardize(features)
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, stats: Tensor, mix: tuple[Tensor, float] | None = None) -> Tensor:
        """stats [b, features] -> [b, out_dim]. ``mix`` = (perm, lam): mixup's rows, mixed after the
        standardisation (the same as before it, which is affine, but the running statistics see the real rows)."""
        x = self.norm(stats.float())
        if mix is not None:
            x = mix_rows(x, *mix)
        return self.mlp(x.to(self.mlp[0].weight.dtype))


def naive_bayes_prior(bags: Iterable[tuple[Tensor, Tensor, Tensor]], size: int, num_classes: int,
                      alpha: float = 1.0) -> Tensor:
    """Multinomial naive Bayes log-probabilities of binarised features, as a wide read-out's prior [size, c].

    ``bags`` yields (ids [b, k], weights [b, k], labels [b]) of the training rows; an id counts once per
    row where its weight is > 0. Row f of the result is log((n_fc + alpha) / (N_c + alpha V)) centred over
    the classes (n_fc: rows of class c holding f; N_c = sum_f n_fc; V = size - 1 ids), the log-count ratios
    of NBSVM (Wang & Manning 2012); ids never seen in training get 0 (they say nothing), as does id 0.
    """
    if alpha <= 0:
        raise ValueError(f"naive Bayes smoothing alpha must be > 0, got {alpha}")
    counts = torch.zeros(num_classes, size, dtype=torch.float64)
    for ids, weights, labels in bags:
        present = (weights > 0) & (ids > 0)
        labels = labels.long()
        if bool(((labels < 0) | (labels >= num_classes)).any()):
            raise ValueError(f"naive Bayes prior: labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
        rows = (labels.unsqueeze(1) * size + ids)[present]
        counts.view(-1).index_add_(0, rows, torch.ones(rows.shape[0], dtype=torch.float64))
    counts[:, 0] = 0
    log_p = torch.log((counts + alpha) / (counts.sum(1, keepdim=True) + alpha * (size - 1)))
    prior = (log_p - log_p.mean(0, keepdim=True)).T.contiguous()
    prior[counts.sum(0) == 0] = 0
    return prior.float()


def task_loss(outputs: Tensor, target: Tensor, task_type: str, *, label_smoothing: float = 0.0) -> Tensor:
    """Mean loss of one batch: cross-entropy, binary cross-entropy or MSE by ``task_type``.

    ``label_smoothing`` (classification only): the target puts ``1 - s`` on the label and ``s``
    spread uniformly over all classes (Szegedy et al. 2016), which keeps logits from growing without
    bound on training rows the model already fits.
    """
    if task_type == "classification":
        return F.cross_entropy(outputs.float(), target.long(), label_smoothing=label_smoothing)
    if task_type == "multilabel":
        return F.binary_cross_entropy_with_logits(outputs.float(), target.float())
    if task_type == "regression":
        return F.mse_loss(outputs.float(), target.float().reshape(outputs.shape))
    raise ValueError(f"unknown task_type {task_type!r}")


class PartWeights(nn.Module):
    """The weights of a task's output parts (in ``HighMMT.part_names`` order): a buffer, 1 until fitted."""

    def __init__(self, parts: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(parts))


#: the ridges :func:`choose_part_ridge` tries; ``inf`` is one weight shared by every part (a temperature).
PART_RIDGES = (0.001, 0.01, 0.1, 1.0, math.inf)


def _fit_log_weights(stacked: Tensor, target: Tensor, task_type: str, ridge: float, steps: int) -> Tensor:
    """Weights exp(u) of the parts ``stacked`` [p, n, c] minimising the task's loss of their weighted sum
    plus ``ridge * sum (u - mean u)^2``: a ridge on how far the weights are from equal, none on their common
    scale. ``ridge`` inf fits the common scale alone. Weights stay within [e^-20, e^8]: on rows the parts
    separate, the loss keeps falling as the scale grows."""
    shared = math.isinf(ridge)
    u = torch.zeros(1 if shared else stacked.shape[0], device=stacked.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([u], max_iter=steps, line_search_fn="strong_wolfe")

    def weights() -> Tensor:
        return u.clamp(-20.0, 8.0).exp().expand(stacked.shape[0])

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = task_loss(torch.einsum("p,pnc->nc", weights(), stacked), target, task_type)
        if not shared:
            loss = loss + ridge * ((u - u.mean()) ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weights().detach().clone()


def _stack_finite(parts: Mapping[str, Tensor]) -> Tensor:
    """The parts as one float tensor [p, n, c]; a part with a NaN or infinite output is an error that names it."""
    for name, part in parts.items():
        if not bool(torch.isfinite(part).all()):
            raise ValueError(f"part weights: the outputs of part {name!r} hold NaN or infinite values")
    return torch.stack([part.detach().float() for part in parts.values()])


def _folds(target: Tensor, folds: int, seed: int) -> Tensor:
    """Fold of each row, 0..folds-1: rows shuffled (``seed``), then dealt out in the order of a 1-D target
    (by class, so that each fold holds every class in proportion; a regression target by value); a
    multilabel target is shuffled only. On ``target``'s device."""
    device, target = target.device, target.cpu()
    n = target.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if target.dim() == 1:
        order = order[torch.sort(target[order], stable=True).indices]
    fold = torch.empty(n, dtype=torch.long)
    fold[order] = torch.arange(n) % folds
    return fold.to(device)


def choose_part_ridge(parts: Mapping[str, Tensor], target: Tensor, task_type: str, *,
                      ridges: Iterable[float] = PART_RIDGES, folds: int = 5, steps: int = 200,
                      seed: int = 0) -> tuple[float, dict[float, float]]:
    """The ridge of :func:`fit_part_weights` chosen by ``folds``-fold cross-validation on the rows themselves:
    for each ridge, weights fitted on the other folds are scored by the task's loss on each held-out fold.
    Returns (the ridge of least mean held-out loss, {ridge: that loss}); a tie goes to the stronger ridge.
    Fewer than two rows per fold: fewer folds of two rows (at least two folds); fewer than four rows:
    ``inf`` (equal weights), with no losses."""
    return _choose_ridge(_stack_finite(parts), target, task_type, ridges, folds, steps, seed)


def _choose_ridge(stacked: Tensor, target: Tensor, task_type: str, ridges: Iterable[float], folds: int, steps: int,
                  seed: int) -> tuple[float, dict[float, float]]:
    """:func:`choose_part_ridge` on the parts already stacked [p, n, c]."""
    n = stacked.shape[1]
    folds = min(folds, n // 2)
    if folds < 2:
        return math.inf, {}
    fold = _folds(target, folds, seed)
    losses: dict[float, float] = {}
    for ridge in sorted(ridges, reverse=True):
        total = 0.0
        for k in range(folds):
            held = fold == k
            w = _fit_log_weights(stacked[:, ~held], target[~held], task_type, ridge, steps)
            with torch.no_grad():
                out = torch.einsum("p,pnc->nc", w, stacked[:, held])
                total += float(task_loss(out, target[held], task_type)) * int(held.sum())
        losses[ridge] = total / n if math.isfinite(total) else math.inf  # a fold's loss can overflow
    best = min(losses, key=lambda r: (losses[r], -r))
    return best, losses


def fit_part_weights(parts: Mapping[str, Tensor], target: Tensor, task_type: str, *, steps: int = 200,
                     ridge: float | None = None, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Positive weights of an output's parts that minimise the task's loss of their weighted sum on
    held-out rows (stacking, Wolpert 1992; the late-fusion weights of ``model.modality_heads`` and
    ``model.summary_heads``).

    ``parts``: name -> outputs [n, c] of the same rows (e.g. the validation split), ``target`` their
    targets. Weights are exp(u) and pay ``ridge * sum (u - mean u)^2``, which pulls them toward equal
    weights and leaves their common scale (a temperature) free; ``ridge`` inf gives every part the same
    weight. ``ridge`` None (the default) chooses it among :data:`PART_RIDGES` by ``folds``-fold
    cross-validation on these rows (:func:`choose_part_ridge`), so that a few hundred rows do not give
    a handful of weights the freedom to fit them (UTD-MHAD's 108 validation rows: docs/experiments.md,
    session 14). L-BFGS, ``steps`` iterations at most.
    """
    stacked = _stack_finite(parts)  # [p, n, c]
    if ridge is None:
        ridge, _ = _choose_ridge(stacked, target, task_type, PART_RIDGES, folds, steps, seed)
    w = _fit_log_weights(stacked, target, task_type, ridge, steps)
    return {n: float(x) for n, x in zip(parts, w)}
