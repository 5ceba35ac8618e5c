"""What each part of a late-fusion output is worth (``model.modality_heads``; docs/experiments.md, session 12).

For every task of a run whose outputs have several parts (``HighMMT.output_parts``: the fused
head ``deep``, the wide read-outs ``wide``, one ``modality:<m>`` per modality head), scores on the
validation and test splits, with the weights each task is scored with (``evaluate.py``'s choice):

- ``all``: the sum of the parts (the model's output);
- each part alone;
- ``all - <part>``: the sum without that part;
- ``stacked``: the parts weighted by weights fitted on the validation split
  (``highmmt.heads.fit_part_weights``, as ``train.part_weights=validation`` does, but from the run's weights
  as they are; its ridge chosen by cross-validation on those rows since session 14, reported as
  ``part_ridge``), scored on both splits (on validation it is fitted there, so only its test value is a
  measurement). Session 12's first use grouped the fused head and the wide read-outs into one part
  ("head") and scored only tasks with modality heads; its text-task check split them (a ``--split-wide``
  flag then, the only behaviour now).

    python -m experiments.late_parts --checkpoint results/s12/mhmt/seed0/multitask --output results/s12/late_parts_seed0.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import evaluate
from benchmarks.common import markdown_table
from highmmt import HighMMT
from highmmt.checkpoint import task_weight_epochs
from highmmt.heads import choose_part_ridge, fit_part_weights
from tasks.loader import collate_rows, eval_batches, score


@torch.no_grad()
def parts_of(model: HighMMT, dataset: Any, spec: Any, batch_size: int = 256) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A split -> ({part: outputs [n, c]}, targets [n])."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    targets = []
    rows = np.arange(len(dataset))
    for idx in eval_batches(len(rows), batch_size):
        batch = collate_rows(dataset, rows[idx], spec)
        _, out = model(batch["inputs"], spec.name, return_parts=True)
        for name, part in out.items():
            parts.setdefault(name, []).append(part.float().numpy())
        targets.append(batch["target"].numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}, np.concatenate(targets)


def combinations(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    total = sum(parts.values())
    out = {"all": total}
    out.update({f"{name} alone": p for name, p in parts.items()})
    out.update({f"all - {name}": total - p for name, p in parts.items()})
    return out


def task_parts(ckpt: Path, tasks: Sequence[str] | None, data_root: str | None,
               cache_dir: str | None) -> Iterator[tuple[str, Any, str, dict[str, tuple[dict[str, np.ndarray], np.ndarray]]]]:
    """For each task of a run (``tasks``: a subset, default all) whose outputs have two or more parts, with the
    weights ``evaluate.py`` scores it with: (task, spec, which weights, {"validation" | "test": parts_of(...)})."""
    run_cfg = evaluate.read_run_config(ckpt)
    model = HighMMT.from_pretrained(ckpt).eval()
    args = argparse.Namespace(data_root=data_root, cache_dir=cache_dir)
    per_task = task_weight_epochs(ckpt, "auto", rows_of=lambda t: evaluate.validation_rows(run_cfg, t, args))
    mean_state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in tasks or list(run_cfg["tasks"]):
        if name not in run_cfg["tasks"] or len(model.part_names(name)) < 2:
            continue
        lt = evaluate.load_run_task(run_cfg, name, data_root=data_root, cache_dir=cache_dir, quiet=True)
        weights = evaluate.use_task_weights(model, ckpt, name, per_task, mean_state)
        yield name, lt.spec, weights, {split: parts_of(model, lt.splits[split], lt.spec) for split in ("validation", "test")}


def run(ckpt: Path, tasks: Sequence[str] | None, data_root: str | None, cache_dir: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, spec, weights, outputs in task_parts(ckpt, tasks, data_root, cache_dir):
        entry: dict[str, Any] = {"metric": spec.metric, "weights": weights}
        val_parts, val_y = outputs["validation"]
        val_parts_t, val_y_t = {k: torch.from_numpy(v) for k, v in val_parts.items()}, torch.from_numpy(val_y)
        ridge, _ = choose_part_ridge(val_parts_t, val_y_t, spec.task_type)
        fitted = fit_part_weights(val_parts_t, val_y_t, spec.task_type, ridge=ridge)
        entry["part_ridge"], entry["part_weights"] = (ridge if math.isfinite(ridge) else "inf"), fitted
        for split, (parts, y) in outputs.items():
            entry[split] = {k: float(score(spec, v, y)[spec.metric]) for k, v in combinations(parts).items()}
            stacked = sum(fitted[k] * v for k, v in parts.items())
            entry[split]["stacked"] = float(score(spec, stacked, y)[spec.metric])
        results[name] = entry
    return {"checkpoint": str(ckpt), "tasks": results}


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for name, r in results["tasks"].items():
        for combo in r["test"]:
            rows.append([name, r["metric"], combo, f"{r['validation'][combo]:.3f}", f"{r['test'][combo]:.3f}"])
    weights = "; ".join(f"{name} (ridge {r.get('part_ridge', 'n/a')}): " + ", ".join(f"{k} {w:.2f}" for k, w in r["part_weights"].items())
                        for name, r in results["tasks"].items())
    return (f"Run `{results['checkpoint']}`. Stacking weights (fitted on validation): {weights}.\n\n"
            + markdown_table(["task", "metric", "outputs", "validation", "test"], rows) + "\n")


def parse_args(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The options of the scripts that score a run's output parts (this one, ``part_selection``), then parse and set
    torch's threads."""
    p.add_argument("--tasks", default=None, help="comma-separated subset of the run's tasks")
    p.add_argument("--output", required=True, help="JSON out")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a train.py run folder")
    args = parse_args(p, argv)
    results = run(Path(args.checkpoint), args.tasks.split(",") if args.tasks else None, args.data_root, args.cache_dir)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
