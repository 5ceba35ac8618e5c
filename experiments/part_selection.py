"""Which output parts a task's late fusion should keep, chosen on its validation split (docs/experiments.md, session 16).

UTD-MHAD's depth head is near chance (validation and test 0.09-0.17 against 0.64-0.89 for the other
parts), and the sum without it scores higher on test on every seed. The stacking weights
(``highmmt.heads.fit_part_weights``) cannot remove it: their ridge, chosen by cross-validation on
UTD-MHAD's 108 validation rows (one subject), pulls the weights toward equal. This script compares
rules that choose the parts on the validation split alone, for every task of a run with two or more
parts, and scores each rule's stacked sum on validation and test:

- ``stacked``: every part, the weights as ``train.part_weights=validation`` fits them (the default);
- ``backward``: backward elimination on the cross-validated stacking loss (:func:`backward_elimination`):
  drop the part whose removal lowers the held-out loss most, while one does;
- ``backward_1se``: the same, but a part is dropped only when the held-out loss falls by more than one
  standard error of the paired per-row differences (a conservative form);
- ``weak_parts``: drop each part whose own validation metric is below half the best part's (a part
  far weaker than the best adds noise to a sum of log-probabilities); AUROC is measured above 0.5.

    python -m experiments.part_selection --checkpoints results/s15/five/sh/seed{0..4}/multitask --output results/part_selection.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import markdown_table
from experiments.late_parts import parse_args, task_parts
from highmmt.heads import PART_RIDGES, _choose_ridge, _fit_log_weights, _folds, fit_part_weights, task_loss
from tasks.loader import score

RULES = ("stacked", "backward", "backward_1se", "weak_parts")


def heldout_row_losses(stacked: torch.Tensor, target: torch.Tensor, task_type: str, folds: int = 5, seed: int = 0) -> torch.Tensor:
    """Per-row held-out loss [n] of the stacked sum of ``stacked`` [p, n, c], its ridge chosen by CV on the same folds
    (as ``choose_part_ridge`` does; their mean is the cross-validated loss it minimises)."""
    ridge, _ = _choose_ridge(stacked, target, task_type, PART_RIDGES, folds, 200, seed)
    fold = _folds(target, min(folds, stacked.shape[1] // 2), seed)
    rows = torch.empty(stacked.shape[1])
    for k in range(int(fold.max()) + 1):
        held = fold == k
        w = _fit_log_weights(stacked[:, ~held], target[~held], task_type, ridge, 200)
        with torch.no_grad():
            out = torch.einsum("p,pnc->nc", w, stacked[:, held])
            for i, j in enumerate(torch.nonzero(held).ravel()):
                rows[j] = task_loss(out[i:i + 1], target[j:j + 1], task_type)
    return rows


def backward_elimination(parts: dict[str, torch.Tensor], target: torch.Tensor, task_type: str, *, one_se: bool) -> list[str]:
    """From every part, drop the part whose removal lowers the cross-validated stacking loss most, while one does
    (``one_se``: by more than one standard error of the paired per-row differences)."""
    names = list(parts)
    stacked = torch.stack([parts[n].float() for n in names])
    keep = list(range(len(names)))
    base = heldout_row_losses(stacked, target, task_type)
    while len(keep) > 1:
        trials = {}
        for i in keep:
            rows = heldout_row_losses(stacked[[j for j in keep if j != i]], target, task_type)
            diff = rows - base
            margin = float(diff.std(unbiased=True)) / math.sqrt(len(diff)) if one_se else 0.0
            trials[i] = (float(diff.mean()), margin, rows)
        drop = min(trials, key=lambda i: trials[i][0])
        if not trials[drop][0] < -trials[drop][1]:
            break
        keep.remove(drop)
        base = trials[drop][2]
    return [names[i] for i in keep]


def weak_parts(parts: dict[str, np.ndarray], y: np.ndarray, spec: Any) -> list[str]:
    own = {k: float(score(spec, v, y)[spec.metric]) - (0.5 if spec.metric == "auroc" else 0.0) for k, v in parts.items()}
    best = max(own.values())
    return [k for k, v in own.items() if v >= 0.5 * best]


def run(ckpt: Path, tasks: Sequence[str] | None, data_root: str | None, cache_dir: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec, _, outputs in task_parts(ckpt, tasks, data_root, cache_dir):
        val_parts, val_y = outputs["validation"]
        vp = {k: torch.from_numpy(v) for k, v in val_parts.items()}
        vy = torch.from_numpy(val_y)
        chosen = {
            "stacked": list(vp),
            "backward": backward_elimination(vp, vy, spec.task_type, one_se=False),
            "backward_1se": backward_elimination(vp, vy, spec.task_type, one_se=True),
            "weak_parts": weak_parts(val_parts, val_y, spec),
        }
        entry: dict[str, Any] = {"metric": spec.metric, "kept": chosen}
        for rule, kept in chosen.items():
            w = fit_part_weights({k: vp[k] for k in kept}, vy, spec.task_type)
            entry[rule] = {split: float(score(spec, sum(w[k] * parts[k] for k in kept), y)[spec.metric])
                           for split, (parts, y) in outputs.items()}
        out[name] = entry
        print(f"{ckpt} {name}: " + ", ".join(f"{r} {entry[r]['validation']:.3f}/{entry[r]['test']:.3f}"
                                             + ("" if r == "stacked" else f" (drops {sorted(set(vp) - set(chosen[r]))})")
                                             for r in RULES), flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", required=True, help="train.py run folders")
    args = parse_args(p, argv)
    results = {c: run(Path(c), args.tasks.split(",") if args.tasks else None, args.data_root, args.cache_dir)
               for c in args.checkpoints}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    tasks = sorted({t for r in results.values() for t in r})
    rows = []
    for t in tasks:
        runs = [r[t] for r in results.values() if t in r]
        for rule in RULES:
            v = [e[rule]["validation"] for e in runs]
            s = [e[rule]["test"] for e in runs]
            rows.append([t, rule, len(runs), f"{np.mean(v):.3f}", f"{np.mean(s):.3f} ± {np.std(s, ddof=1) if len(s) > 1 else 0:.3f}",
                         ", ".join(f"{x:.3f}" for x in s)])
    print(markdown_table(["task", "rule", "runs", "validation (mean)", "test (mean ± SD)", "test per run"], rows))
    return results


if __name__ == "__main__":
    main()
