"""Training vs validation curves of a run, summarised per task: where does a task lose accuracy?

    python -m experiments.curves RUN_DIR [RUN_DIR ...] [--output FILE.md] [--task TASK]

Reads each run folder's ``metrics.jsonl`` (one line per evaluation: step, epoch, task, split,
metric, value) and, when present, ``eval/metrics.json`` (the test split), and prints one row per
task: the training loss at the first and last epoch and its minimum, the validation metric at its
best epoch and at the last one, and the test metric of the selected (best-validation) weights.
Reading it:

- training loss near 0 while validation stalls: over-fitting (regularise, augment, fewer steps);
- training loss high and validation low: under-fitting (capacity, lr, steps, or the embedder loses
  the information: compare with a linear probe or the simple baseline);
- validation far above test: the validation split is easier than, or leaks into, the training data.

``--task TASK`` also prints that task's validation metric at every epoch, one line per run (where a small
validation split saturates, the selected epoch is one of many equal ones).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table, run_cli

ROOT = Path(__file__).resolve().parents[1]


def read_curves(run: Path) -> dict[str, dict[str, Any]]:
    """task -> {"loss": [(epoch, value)], "metric": name, "val": [(epoch, value)]} from ``metrics.jsonl``."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (is {run} a train.py run folder?)")
    curves: dict[str, dict[str, Any]] = defaultdict(lambda: {"loss": [], "val": {}, "metric": None})
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not JSON ({e})") from e
        task = curves[row["task"]]
        if row["split"] == "train" and row["metric"] == "loss":
            task["loss"].append((row["epoch"], row["value"]))
        elif row["split"] == "validation":
            task["val"].setdefault(row["metric"], []).append((row["epoch"], row["value"]))
    return dict(curves)


def primary_metric(val: dict[str, list[tuple[int, float]]]) -> str | None:
    """The validation metric a run selects on: auroc where present, else accuracy, else the first."""
    for name in ("auroc", "accuracy"):
        if name in val:
            return name
    return next(iter(val), None)


def primary_curve(curve: dict[str, Any]) -> tuple[str | None, list[tuple[int, float]], tuple[int, float] | None]:
    """A task's selection metric, its (epoch, value) rows, and the best row (the first of equal ones; None if none)."""
    metric = primary_metric(curve["val"])
    val = curve["val"].get(metric, []) if metric else []
    return metric, val, max(val, key=lambda ev: ev[1]) if val else None


def summarize_run(run: Path) -> list[dict[str, Any]]:
    curves = read_curves(run)
    test_path = run / "eval" / "metrics.json"
    test = json.loads(test_path.read_text()) if test_path.is_file() else {}
    rows = []
    for task, c in curves.items():
        metric, val, best = primary_curve(c)
        loss = c["loss"]
        rows.append({
            "run": run.name, "task": task, "metric": metric,
            "train_loss_first": loss[0][1] if loss else None, "train_loss_last": loss[-1][1] if loss else None,
            "train_loss_min": min(v for _, v in loss) if loss else None,
            "val_best": best[1] if best else None, "val_best_epoch": best[0] if best else None,
            "val_last": val[-1][1] if val else None, "epochs": val[-1][0] if val else None,
            "test": test.get(task, {}).get(metric) if metric else None,
        })
    return rows


def epoch_series(run: Path, task: str) -> str:
    """One line: ``task``'s primary validation metric at every epoch of ``run``, after its best epoch."""
    curves = read_curves(run)
    if task not in curves:
        raise KeyError(f"{run / 'metrics.jsonl'}: no rows for task {task!r} (its tasks: {sorted(curves)})")
    metric, val, best = primary_curve(curves[task])
    if best is None:
        return f"{run}: {task}: no validation rows"
    return (f"{run}: {task} validation {metric}, best {best[1]:.3f} at epoch {best[0]}; by epoch: "
            + " ".join(f"{v:.3f}" for _, v in val))


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    return markdown_table(
        ["run", "task", "metric", "train loss first / last / min", "val best (epoch)", "val last", "test (selected)"],
        [[r["run"], r["task"], r["metric"] or "-",
          f"{f(r['train_loss_first'])} / {f(r['train_loss_last'])} / {f(r['train_loss_min'])}",
          f"{f(r['val_best'])} ({r['val_best_epoch']} of {r['epochs']})", f(r["val_last"]), f(r["test"])] for r in rows])


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="train.py run folders")
    p.add_argument("--output", default=None, help="also write the table to this markdown file")
    p.add_argument("--task", default=None, help="also print this task's validation metric at every epoch")
    args = p.parse_args(argv)
    rows = [r for run in args.runs for r in summarize_run(Path(run))]
    table = markdown(rows)
    print(table)
    if args.task:
        for run in args.runs:
            print(epoch_series(Path(run), args.task))
    if args.output:
        Path(args.output).write_text(table)
    return rows


if __name__ == "__main__":
    run_cli(main)
