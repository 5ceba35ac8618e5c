"""Modality and interaction heterogeneity (HighMMT §2.1, App. A) and parameter groups from it.

Definitions (the paper's eq. 3-5; this module computes them from measured losses):

- A *node* is a modality with the task it is measured on (unimodal heterogeneity), or an unordered
  modality pair ``"a|b"`` with the task that reads both (interaction heterogeneity).
- ``L*_2`` is the best validation loss of a model trained on node 2's task **from scratch**
  (``experiments/heterogeneity.py`` averages it over several random starts, which also gives the
  noise floor of T).
- ``L*_{1->2}`` is the best validation loss on node 2's task of a model whose *transferable part*
  was initialised from a model trained on node 1, then **fully fine-tuned** (every parameter
  trainable; the original code's "finetune" retrained only the heads, defect D2). The transferable
  part is the part that parameter sharing groups: the unimodal encoder for modalities; the encoder
  and the cross-modal fusion for modality pairs. Embedders and heads are always new.
- Transfer difficulty ``T(1->2) = L*_{1->2} - L*_2`` (negative: node 1's weights helped node 2).
- Heterogeneity distance ``d(1;2) = max(T(1->2), 0) + max(T(2->1), 0)``; symmetric, ``d(i;i) = 0``.
- Groups: agglomerative (hierarchical) clustering of the distance matrix into ``k`` clusters
  (:func:`cluster`); the groups become a :class:`highmmt.config.SharingConfig` (``encoder`` groups
  over modalities, ``fusion`` groups over pairs ``"a|b"``) with :func:`sharing_config`.
- Controls: :func:`random_groups_unlike` draws groups of the same sizes that are another partition
  (the random grouping of the paper's comparison); ``experiments/heterogeneity_staged.py`` runs the
  paper's share-all -> copy into groups -> multitask fine-tuning protocol on both.
- When only some transfers are measured, :func:`complete_low_rank` fills the T matrix from the
  measured entries with a rank-r factorisation (paper A.2: rank 3 explains >= 97% of the variance).

Matrices are numpy arrays indexed ``[source, target]`` in the order of the ``names`` list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from highmmt.sharing import pair_key

LINKAGES = ("average", "complete", "single", "weighted")


# ---- T and d ---------------------------------------------------------------------------------------
def transfer_difficulty(transfer_loss: float, scratch_loss: float) -> float:
    """``T(1->2) = L*_{1->2} - L*_2``: the target's loss after transfer minus its loss from scratch."""
    for what, v in (("transfer_loss", transfer_loss), ("scratch_loss", scratch_loss)):
        if not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
            raise ValueError(f"transfer_difficulty: {what} must be a finite number, got {v!r}")
    return float(transfer_loss) - float(scratch_loss)


def heterogeneity_distance(t_forward: float, t_backward: float) -> float:
    """``d(1;2) = max(T(1->2), 0) + max(T(2->1), 0)``."""
    return max(float(t_forward), 0.0) + max(float(t_backward), 0.0)


def transfer_matrix(
    names: Sequence[str],
    scratch: Mapping[str, float],
    transfer: Mapping[tuple[str, str], float],
) -> np.ndarray:
    """Matrix ``T[i, j] = T(names[i] -> names[j])``; 0 on the diagonal, NaN where not measured.

    Args:
        names: the nodes, in matrix order.
        scratch: node -> ``L*`` from scratch (every node needed).
        transfer: (source, target) -> ``L*_{source->target}`` (any subset of the off-diagonal pairs).
    """
    names = _check_names(names)
    missing = [n for n in names if n not in scratch]
    if missing:
        raise ValueError(f"transfer_matrix: no scratch loss for {missing}; every node needs one")
    index = {n: i for i, n in enumerate(names)}
    out = np.full((len(names), len(names)), np.nan)
    np.fill_diagonal(out, 0.0)
    for (src, tgt), loss in transfer.items():
        for n in (src, tgt):
            if n not in index:
                raise ValueError(f"transfer_matrix: transfer ({src!r} -> {tgt!r}) names {n!r}, not one of {list(names)}")
        if src == tgt:
            raise ValueError(f"transfer_matrix: transfer from {src!r} to itself; the diagonal is 0 by definition")
        out[index[src], index[tgt]] = transfer_difficulty(loss, scratch[tgt])
    return out


def distance_matrix(t: np.ndarray) -> np.ndarray:
    """``D[i, j] = max(T[i, j], 0) + max(T[j, i], 0)`` from a square, complete T matrix."""
    t = _check_square(t, "transfer matrix T")
    bad = np.argwhere(~np.isfinite(t))
    if len(bad):
        i, j = bad[0]
        raise ValueError(
            f"transfer matrix T has {len(bad)} missing or non-finite entries (first: [{i}, {j}] = {t[i, j]}); "
            "measure them or fill them with complete_low_rank"
        )
    pos = np.clip(t, 0.0, None)
    d = pos + pos.T
    np.fill_diagonal(d, 0.0)
    return d


# ---- clustering -> sharing groups -----------------------------------------------------------------
def cluster(
    distance: np.ndarray,
    names: Sequence[str],
    k: int,
    *,
    linkage: str = "average",
    prefix: str = "g",
) -> dict[str, list[str]]:
    """Agglomerative clustering of a symmetric distance matrix into exactly ``k`` groups.

    Args:
        distance: [n, n] symmetric, non-negative, zero diagonal (from :func:`distance_matrix`).
        names: the n nodes (modality names or pairs ``"a|b"``).
        k: number of groups, 1 <= k <= n.
        linkage: scipy linkage method (``average`` = UPGMA, ``complete``, ``single``, ``weighted``).
        prefix: group names are ``prefix1 .. prefixk``, numbered by the first member's position in ``names``.

    Returns:
        ``{group: [names in matrix order]}``, every name in exactly one group.
    """
    from scipy.cluster.hierarchy import cut_tree, linkage as scipy_linkage
    from scipy.spatial.distance import squareform

    names = _check_names(names)
    d = check_distance(distance)
    n = len(names)
    if d.shape[0] != n:
        raise ValueError(f"cluster: the distance matrix is {d.shape[0]}x{d.shape[0]} but {n} names were given")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"cluster: k must be an integer between 1 and the number of nodes ({n}: {list(names)}), got {k!r}")
    if linkage not in LINKAGES:
        raise ValueError(f"cluster: linkage must be one of {LINKAGES}, got {linkage!r}")
    if n == 1:
        labels = np.zeros(1, dtype=int)
    else:
        tree = scipy_linkage(squareform(d, checks=False), method=linkage)
        labels = cut_tree(tree, n_clusters=k).reshape(-1)
    order: list[int] = []
    for lab in labels:
        if lab not in order:
            order.append(int(lab))
    return {f"{prefix}{i + 1}": [names[j] for j in range(n) if labels[j] == lab] for i, lab in enumerate(order)}


def sharing_config(
    encoder: str | Mapping[str, Sequence[str]] = "all",
    fusion: str | Mapping[str, Sequence[str]] = "all",
) -> dict[str, Any]:
    """A ``SharingConfig`` as a plain dict (``{"encoder": ..., "fusion": ...}``), pairs written ``"a|b"`` sorted."""
    out: dict[str, Any] = {}
    for what, spec in (("encoder", encoder), ("fusion", fusion)):
        if isinstance(spec, str):
            if spec not in ("all", "none"):
                raise ValueError(f"sharing_config: {what} must be 'all', 'none' or a dict of groups, got {spec!r}")
            out[what] = spec
            continue
        groups: dict[str, list[str]] = {}
        for g, members in spec.items():
            if what == "fusion":
                members = [pair_key(*_split_pair(m)) for m in members]
            groups[str(g)] = list(members)
        out[what] = groups
    return out


def restrict_groups(groups: Mapping[str, Sequence[str]], items: Iterable[str]) -> dict[str, list[str]]:
    """Keep only ``items`` in the groups (drop emptied groups); every item must be in some group.

    Use it to apply groups measured on a larger suite to a model with fewer modalities / pairs.
    """
    items = list(items)
    keep = {g: [m for m in members if m in items] for g, members in groups.items()}
    keep = {g: ms for g, ms in keep.items() if ms}
    covered = {m for ms in keep.values() for m in ms}
    missing = [m for m in items if m not in covered]
    if missing:
        raise ValueError(f"restrict_groups: {missing} are in no group; the groups cover {sorted(covered)}")
    return keep


def random_groups_like(groups: Mapping[str, Sequence[str]], *, seed: int | Sequence[int], prefix: str = "r") -> dict[str, list[str]]:
    """Random groups with the same sizes as ``groups`` (a control for heterogeneity-based grouping).

    The draw may happen to be ``groups`` again; :func:`random_groups_unlike` never is.
    """
    members = [m for ms in groups.values() for m in ms]
    perm = np.random.default_rng(seed).permutation(len(members))
    shuffled = [members[i] for i in perm]
    out, start = {}, 0
    for i, ms in enumerate(groups.values()):
        out[f"{prefix}{i + 1}"] = sorted(shuffled[start : start + len(ms)], key=members.index)
        start += len(ms)
    return out


def partition(groups: Mapping[str, Sequence[str]]) -> frozenset[frozenset[str]]:
    """The groups as a set partition: who is grouped with whom, group names and orders ignored."""
    return frozenset(frozenset(ms) for ms in groups.values())


def can_regroup(groups: Mapping[str, Sequence[str]]) -> bool:
    """Whether another partition with the same group sizes exists (two groups or more, one of them
    with two members or more); e.g. ``{g1: [a], g2: [b]}`` or ``{g1: [a, b]}`` cannot be regrouped."""
    return len(groups) >= 2 and any(len(ms) >= 2 for ms in groups.values())


def random_groups_unlike(
    groups: Mapping[str, Sequence[str]], *, seed: int, prefix: str = "r", max_tries: int = 1000
) -> dict[str, list[str]]:
    """Random groups with the same sizes as ``groups`` that are a different partition of the members
    (the random-grouping control of HighMMT's heterogeneity-aware sharing, §3.1).

    Draws :func:`random_groups_like` with seeds ``[seed, 0]``, ``[seed, 1]``, ... until the partition
    differs. Raises ValueError when no other partition of those sizes exists (:func:`can_regroup`).
    """
    if not can_regroup(groups):
        sizes = [len(ms) for ms in groups.values()]
        raise ValueError(f"random_groups_unlike: groups of sizes {sizes} ({dict(groups)}) admit no other partition "
                         "with the same sizes; a random control needs two groups or more, one of them with two members or more")
    target = partition(groups)
    for attempt in range(max_tries):
        drawn = random_groups_like(groups, seed=[seed, attempt], prefix=prefix)
        if partition(drawn) != target:
            return drawn
    raise RuntimeError(f"random_groups_unlike: {max_tries} draws all equalled the given groups")  # pragma: no cover


# ---- matrix diagnostics and completion ------------------------------------------------------------
def triangle_fraction(distance: np.ndarray, c: float = 1.0) -> float:
    """Fraction of ordered triples of distinct nodes with ``d(i,k) <= c * (d(i,j) + d(j,k))`` (paper A.1).

    Triples whose three distances are all 0 count as satisfied. NaN when there are fewer than 3 nodes.
    """
    d = check_distance(distance)
    n = d.shape[0]
    if n < 3:
        return float("nan")
    i, j, k = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    distinct = (i != j) & (j != k) & (i != k)
    ok = d[i, k] <= c * (d[i, j] + d[j, k]) + 1e-12
    return float(ok[distinct].mean())


def complete_low_rank(
    matrix: np.ndarray,
    observed: np.ndarray | None = None,
    *,
    rank: int = 3,
    iters: int = 500,
    tol: float = 1e-9,
) -> np.ndarray:
    """Fill the unobserved entries of ``matrix`` from a rank-``rank`` fit (paper A.2).

    Hard-impute (iterative truncated SVD): start from the observed column means, then repeatedly
    replace the unobserved entries by those of the best rank-r approximation. Observed entries are
    returned unchanged. Recovery needs enough observed entries per row and column (more than
    ``rank`` each, spread out); with fewer the fill is unreliable.

    Args:
        matrix: [n, m]; unobserved entries may hold anything (NaN included).
        observed: [n, m] boolean mask (default: the finite entries of ``matrix``). Every row and
            column needs at least one observed entry.
        rank: r of the fit. iters: at most this many SVD sweeps. tol: stop when the fill moves less.
    """
    a = np.asarray(matrix, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"complete_low_rank: expected a 2-d matrix, got shape {a.shape}")
    mask = np.isfinite(a) if observed is None else np.asarray(observed, dtype=bool)
    if mask.shape != a.shape:
        raise ValueError(f"complete_low_rank: mask shape {mask.shape} differs from the matrix's {a.shape}")
    if not np.isfinite(a[mask]).all():
        raise ValueError("complete_low_rank: an entry marked observed is NaN or infinite")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(a.shape):
        raise ValueError(f"complete_low_rank: rank must be an integer in [1, {min(a.shape)}], got {rank!r}")
    for axis, what in ((1, "row"), (0, "column")):
        empty = np.flatnonzero(mask.sum(axis=axis) == 0)
        if len(empty):
            raise ValueError(f"complete_low_rank: {what}(s) {empty.tolist()} have no observed entry")
    known = np.where(mask, a, 0.0)
    col_mean = known.sum(axis=0) / mask.sum(axis=0)
    z = np.where(mask, a, col_mean[None, :])
    for _ in range(iters):
        u, s, vt = np.linalg.svd(z, full_matrices=False)
        low = (u[:, :rank] * s[:rank]) @ vt[:rank]
        new = np.where(mask, a, low)
        moved = float(np.abs(new - z).max())
        z = new
        if moved < tol:
            break
    return z


def explained_variance(matrix: np.ndarray, rank: int) -> float:
    """Share of the squared Frobenius norm carried by the top ``rank`` singular values."""
    s = np.linalg.svd(_check_finite(np.asarray(matrix, dtype=float), "matrix"), compute_uv=False)
    total = float((s**2).sum())
    return float((s[:rank] ** 2).sum() / total) if total > 0 else 1.0


# ---- weight transfer ----------------------------------------------------------------------------------
def transfer_weights(model: nn.Module, source: Mapping[str, torch.Tensor], prefixes: Sequence[str]) -> list[str]:
    """Copy into ``model`` every tensor of ``source`` whose name starts with one of ``prefixes`` and
    whose name and shape match the model's; return the copied names.

    Raises ValueError when nothing matches (the transfer would silently be training from scratch).
    """
    own = model.state_dict()
    chosen = {k: v for k, v in source.items() if k.startswith(tuple(prefixes))}
    matched = {k: v for k, v in chosen.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(
            f"transfer_weights: no tensor under {list(prefixes)} matches the model by name and shape "
            f"({len(chosen)} source tensors under those prefixes)"
        )
    model.load_state_dict(matched, strict=False)
    return sorted(matched)


# ---- checks ---------------------------------------------------------------------------------------------
def check_distance(distance: np.ndarray) -> np.ndarray:
    """A valid heterogeneity distance matrix: square, finite, non-negative, symmetric, zero diagonal."""
    d = _check_finite(_check_square(distance, "distance matrix"), "distance matrix")
    if (d < 0).any():
        i, j = np.argwhere(d < 0)[0]
        raise ValueError(f"distance matrix has a negative entry [{i}, {j}] = {d[i, j]}; distances are >= 0")
    if not np.allclose(d, d.T, atol=1e-9):
        i, j = np.argwhere(~np.isclose(d, d.T, atol=1e-9))[0]
        raise ValueError(f"distance matrix is not symmetric: [{i}, {j}] = {d[i, j]} but [{j}, {i}] = {d[j, i]}")
    if np.abs(np.diag(d)).max(initial=0.0) > 1e-9:
        raise ValueError(f"distance matrix has a non-zero diagonal: {np.diag(d).tolist()}")
    return d


def _check_square(a: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be a numeric 2-d array: {e}") from e
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{what} must be square [n, n], got shape {arr.shape}")
    return arr


def _check_finite(a: np.ndarray, what: str) -> np.ndarray:
    bad = np.argwhere(~np.isfinite(a))
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"{what} has {len(bad)} NaN or infinite entries (first: [{i}, {j}] = {a[i, j]})")
    return a


def _check_names(names: Sequence[str]) -> list[str]:
    names = list(names)
    if not names:
        raise ValueError("no nodes given: need at least one modality or pair name")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"node names must be unique, got duplicates {dup}")
    return names


def _split_pair(name: str) -> tuple[str, str]:
    parts = name.split("|")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"a fusion group member must be a modality pair written 'a|b', got {name!r}")
    return parts[0], parts[1]


__all__ = [
    "LINKAGES",
    "can_regroup",
    "check_distance",
    "cluster",
    "complete_low_rank",
    "distance_matrix",
    "explained_variance",
    "heterogeneity_distance",
    "partition",
    "random_groups_like",
    "random_groups_unlike",
    "restrict_groups",
    "sharing_config",
    "transfer_difficulty",
    "transfer_matrix",
    "transfer_weights",
    "triangle_fraction",
]
