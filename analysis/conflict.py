"""Gradient conflict: cosine similarity of per-task gradients on shared parameters (as in PCGrad,
Yu et al. 2020).

For sample s (one sampled training batch of every task, at the run's trained weights) and a pair of
tasks a, b, the two gradients of their mean losses are restricted to the parameters of one part
that *both* reach (embedders of a modality both read, an encoder group both use, fusion blocks
both use; heads never) and flattened; the cosine of the two vectors is that sample's value. Over
samples: mean and sample SD (ddof = 1). A pair sharing no parameter of a part has no value there
("-"). ``all`` is the same over the parameters of the three parts together. Positive: one task's
step also lowers the other's loss (to first order); negative: the tasks pull the shared parameters
apart, the case PCGrad projects away.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from analysis.common import PARTS, task_gradients
from analysis.report import fmt, fmt_mean_sd, matrix_table, mean_sd
from highmmt import HighMMT
from transference.finetune import part_of
from tasks.cache import LoadedTask

GROUPS = (*PARTS, "all")


def cosine(ga: Mapping[str, Tensor], gb: Mapping[str, Tensor], names: Sequence[str]) -> float:
    """Cosine of two gradients over ``names`` (NaN when either is zero there)."""
    a = torch.cat([ga[n].reshape(-1).double() for n in names])
    b = torch.cat([gb[n].reshape(-1).double() for n in names])
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else float("nan")


def conflict(model: HighMMT, loaded: Mapping[str, LoadedTask], rows: Mapping[str, Sequence[np.ndarray]], *,
             label_smoothing: float = 0.0) -> dict[str, Any]:
    """Per pair and group (each part, and ``all``): the cosine per sample, its mean and sample SD."""
    tasks = list(loaded)
    samples = min(len(r) for r in rows.values())
    values: dict[str, dict[str, dict[str, list[float]]]] = {g: {a: {b: [] for b in tasks} for a in tasks} for g in GROUPS}
    shared: dict[str, dict[str, dict[str, int]]] = {g: {a: {} for a in tasks} for g in GROUPS}
    for s in range(samples):
        grads = {t: task_gradients(model, loaded[t], rows[t][s], label_smoothing=label_smoothing) for t in tasks}
        for a, b in itertools.combinations(tasks, 2):
            common = [n for n in grads[a] if n in grads[b]]
            for g in GROUPS:
                names = [n for n in common if g == "all" or part_of(n) == g]
                if not names:
                    continue
                c = cosine(grads[a], grads[b], names)
                values[g][a][b].append(c)
                values[g][b][a].append(c)
                shared[g][a][b] = shared[g][b][a] = sum(grads[a][n].numel() for n in names)
    result: dict[str, Any] = {"tasks": tasks, "samples": samples, "groups": {}}
    for g in GROUPS:
        mean = {a: {} for a in tasks}
        sd = {a: {} for a in tasks}
        for a, b in itertools.permutations(tasks, 2):
            finite = [v for v in values[g][a][b] if not np.isnan(v)]
            mean[a][b], sd[a][b] = mean_sd(finite)
        pairs = [mean[a][b] for a, b in itertools.combinations(tasks, 2) if not np.isnan(mean[a][b])]
        result["groups"][g] = {
            "mean": mean, "sd": sd, "shared_parameters": shared[g],
            "pairs_sharing": len(pairs),
            "mean_over_pairs": float(np.mean(pairs)) if pairs else float("nan"),
            "negative_pairs": int(sum(v < 0 for v in pairs)),
        }
    return result


def markdown(result: Mapping[str, Any]) -> list[str]:
    tasks = result["tasks"]
    lines = [f"### Summary over pairs of tasks ({result['samples']} sampled batches per task)", "",
             "| part | pairs sharing parameters | mean cosine over pairs | pairs with a negative mean |", "|---|---|---|---|"]
    for g, r in result["groups"].items():
        lines.append(f"| {g} | {r['pairs_sharing']} | {fmt(r['mean_over_pairs'], 3, True)} | {r['negative_pairs']} |")
    lines.append("")
    for g, r in result["groups"].items():
        if r["pairs_sharing"]:
            lines += matrix_table(f"{g}: gradient cosine, mean ± sample SD over sampled batches", tasks,
                                  lambda a, b: "-" if a == b else fmt_mean_sd(r["mean"][a][b], r["sd"][a][b], 2, True), corner="task")
    return lines


def panels(result: Mapping[str, Any]) -> dict[str, np.ndarray]:
    tasks = result["tasks"]
    out = {}
    for g, r in result["groups"].items():
        if r["pairs_sharing"]:
            out[f"{g}: mean cosine"] = np.array([[np.nan if a == b else r["mean"][a][b] for b in tasks] for a in tasks], dtype=float)
    return out
