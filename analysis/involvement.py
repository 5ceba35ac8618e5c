"""Parameter involvement: which neurons each task uses (HighMMT §3.3, Table 6).

A *neuron* is an output unit of a layer: row i of an ``nn.Linear`` weight [out, in] (or of a
convolution's [out, in, k...]), i.e. the weights that make output i; for an ``nn.Embedding`` table
[rows, d] it is column j, the weights that make output coordinate j. Biases, norms, latents and
modality-type embeddings are not neurons. Letters: t tasks, u units of a layer.

A neuron's *score* for task t is the mean, over t's sampled training batches, of the mean |gradient|
of t's loss over the neuron's weights. The neuron is *involved* in t when its score exceeds
``eps`` (0.2 in the paper) x the largest score in its layer for t. A layer t does not reach (another
modality's embedder, another group's encoder) involves none of its neurons in t. Per part
(embedders, encoders, fusion; heads excluded) the report counts the neurons involved in 1, 2, ... N
tasks, as shares of the neurons involved in at least one, and, per pair of tasks, the overlap
(Jaccard: involved in both / involved in either, over the layers both reach) beside what it would be by chance (each task's
involved neurons placed at random within each layer, same counts).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from analysis.common import PARTS, task_gradients
from analysis.report import fmt, matrix_table
from highmmt import HighMMT
from transference.finetune import part_of
from tasks.cache import LoadedTask

EPS = 0.2
PAPER = {  # HighMMT Table 6: % of involved neurons in 1 / 2 / 3 / 4 tasks (large setting, 4 tasks)
    "encoders": {"label": "unimodal layers", "shares": [2.8, 5.1, 61.1, 31.1]},
    "fusion": {"label": "crossmodal layers", "shares": [48.8, 39.7, 9.9, 1.6]},
}


def neuron_layers(model: nn.Module) -> dict[str, tuple[str, int]]:
    """Weight name -> (part, unit axis): the layers whose neurons are counted (see module docstring)."""
    out = {}
    for name, m in model.named_modules():
        part = part_of(name)
        if part not in PARTS:
            continue
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            out[f"{name}.weight"] = (part, 0)
        elif isinstance(m, nn.Embedding):
            out[f"{name}.weight"] = (part, 1)
    return out


def unit_scores(grad: Tensor, axis: int) -> Tensor:
    """Mean |gradient| per output unit: over each row (axis 0) or each column (axis 1)."""
    g = grad.detach().abs().float()
    return g.flatten(1).mean(1) if axis == 0 else g.mean(0)


def neuron_scores(model: HighMMT, loaded: Mapping[str, LoadedTask], rows: Mapping[str, Sequence[np.ndarray]], *,
                  label_smoothing: float = 0.0) -> dict[str, dict[str, Tensor]]:
    """Task -> layer -> score per unit [u], averaged over the task's batches ``rows[task]``."""
    layers = neuron_layers(model)
    scores: dict[str, dict[str, Tensor]] = {}
    for t, lt in loaded.items():
        acc: dict[str, Tensor] = {}
        for r in rows[t]:
            grads = task_gradients(model, lt, r, label_smoothing=label_smoothing)
            for name, (_, axis) in layers.items():
                if name in grads:
                    s = unit_scores(grads[name], axis)
                    acc[name] = acc[name] + s if name in acc else s
        scores[t] = {name: s / len(rows[t]) for name, s in acc.items()}
    return scores


def involved_masks(scores: Mapping[str, Mapping[str, Tensor]], eps: float) -> dict[str, dict[str, np.ndarray]]:
    """Task -> layer -> bool per unit: score > eps x the layer's largest score for that task."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for t, layers in scores.items():
        out[t] = {}
        for name, s in layers.items():
            top = float(s.max())
            out[t][name] = (s > eps * top).numpy() if top > 0 else np.zeros(s.numel(), dtype=bool)
    return out


def summarize(model: HighMMT, masks: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Per part: neurons, how many tasks each is involved in, shares, pairwise overlap and chance overlap."""
    layers = neuron_layers(model)
    params = dict(model.named_parameters())
    tasks = list(masks)
    n_tasks = len(tasks)
    parts: dict[str, Any] = {}
    for part in PARTS:
        names = [n for n, (p, _) in layers.items() if p == part]
        units = {n: params[n].shape[layers[n][1]] for n in names}
        empty = {n: np.zeros(units[n], dtype=bool) for n in names}
        m = {t: {n: masks[t].get(n, empty[n]) for n in names} for t in tasks}
        total = int(sum(units.values()))
        if total == 0:
            continue
        k = np.concatenate([sum(m[t][n].astype(int) for t in tasks) for n in names])
        reach = np.concatenate([np.full(units[n], sum(n in masks[t] for t in tasks)) for n in names])
        counts = [int((k == j).sum()) for j in range(n_tasks + 1)]
        involved = total - counts[0]
        overlap: dict[str, dict[str, float]] = {a: {} for a in tasks}
        chance: dict[str, dict[str, float]] = {a: {} for a in tasks}
        for a, b in itertools.combinations(tasks, 2):
            common = [n for n in names if n in masks[a] and n in masks[b]]  # layers both tasks reach
            both = sum(int((m[a][n] & m[b][n]).sum()) for n in common)
            either = sum(int((m[a][n] | m[b][n]).sum()) for n in common)
            expected = sum(float(m[a][n].sum()) * float(m[b][n].sum()) / units[n] for n in common)
            size = sum(float(m[a][n].sum()) + float(m[b][n].sum()) for n in common)
            overlap[a][b] = overlap[b][a] = both / either if either else float("nan")
            chance[a][b] = chance[b][a] = expected / (size - expected) if size - expected > 0 else float("nan")
        parts[part] = {
            "layers": len(names),
            "neurons": total,
            "involved_in_any": involved,
            "tasks_reaching_mean": float(reach.mean()),
            "count_by_tasks": counts,  # index j: neurons involved in exactly j tasks
            "share_by_tasks": [100.0 * c / involved if involved else float("nan") for c in counts[1:]],  # % of involved, j = 1..N
            "per_task_involved": {t: int(sum(m[t][n].sum() for n in names)) for t in tasks},
            "per_task_reached": {t: int(sum(units[n] for n in names if n in masks[t])) for t in tasks},
            "overlap": overlap,
            "overlap_chance": chance,
        }
    return parts


def involvement(model: HighMMT, loaded: Mapping[str, LoadedTask], rows: Mapping[str, Sequence[np.ndarray]], *,
                eps: float = EPS, label_smoothing: float = 0.0) -> dict[str, Any]:
    """The whole analysis on sampled batches ``rows`` (task -> list of row-index arrays)."""
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"--eps must be in [0, 1), got {eps}")
    scores = neuron_scores(model, loaded, rows, label_smoothing=label_smoothing)
    masks = involved_masks(scores, eps)
    return {"eps": eps, "tasks": list(loaded), "parts": summarize(model, masks)}


def markdown(result: Mapping[str, Any]) -> list[str]:
    """Tables: shares by number of tasks per part (beside the paper's), then pairwise overlaps."""
    tasks = result["tasks"]
    n = len(tasks)
    lines = [f"### Share of involved neurons by the number of tasks they are involved in (eps = {result['eps']})", "",
             "| part | neurons | involved in >= 1 task | tasks reaching a neuron (mean) | "
             + " | ".join(f"{j} task{'s' if j > 1 else ''}" for j in range(1, n + 1)) + " |",
             "|---" * (n + 4) + "|"]
    for part, r in result["parts"].items():
        shares = " | ".join(fmt(s, 1) for s in r["share_by_tasks"])
        lines.append(f"| {part} | {r['neurons']:,} | {r['involved_in_any']:,} ({100 * r['involved_in_any'] / r['neurons']:.1f}%) | "
                     f"{r['tasks_reaching_mean']:.1f} | {shares} |")
    lines += ["", "HighMMT (Table 6, 4 tasks, eps = 0.2): "
              + "; ".join(f"{ref['label']} (our {part}) {' / '.join(map(str, ref['shares']))}% in 1 / 2 / 3 / 4 tasks"
                          for part, ref in PAPER.items()) + ".", ""]
    for part, r in result["parts"].items():
        ov, ch = r["overlap"], r["overlap_chance"]
        lines += matrix_table(f"{part}: overlap of involved neurons (Jaccard; by chance in brackets)", tasks,
                              lambda a, b: "-" if a == b else f"{fmt(ov[a][b], 2)} ({fmt(ch[a][b], 2)})", corner="task")
    return lines


def panels(result: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Part -> task x task overlap matrix (diagonal 1) for the heatmap."""
    tasks = result["tasks"]
    out = {}
    for part, r in result["parts"].items():
        m = np.array([[1.0 if a == b else (np.nan if r["overlap"][a][b] is None else r["overlap"][a][b]) for b in tasks]
                      for a in tasks], dtype=float)
        out[f"{part}: overlap (Jaccard)"] = m
    return out
