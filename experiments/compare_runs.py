"""Compare two sets of evaluated run folders task by task, over seeds (pilot experiments).

    python -m experiments.compare_runs --tasks sentiment,subjectivity --seeds 0,1,2 \\
        --a "results/pilot/R/{task}/seed{seed}" --b "results/suite/seed{seed}/single/{task}"
    python -m experiments.compare_runs --tasks suite --a "results/arm/seed{seed}/multitask" \\
        --b "results/table/seed{seed}/multitask"

``--a`` and ``--b`` are folder patterns with ``{task}`` and ``{seed}``; each folder holds
``eval/metrics.json`` (``evaluate.py``). Prints, per task, the primary metric of each set as mean ±
sample SD with each seed's value, and the difference a - b with its verdict by the project's one rule
(``benchmarks.common.compare``: no larger than the larger SD is "no difference").
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import compare, format_mean_sd, markdown_table, mean_sd, run_cli, stats_note
from train import expand_tasks

ROOT = Path(__file__).resolve().parents[1]

PRIMARY = ("auroc", "accuracy", "mse", "mae")


def primary(metrics: dict[str, Any], folder: Path) -> tuple[str, float]:
    for name in PRIMARY:
        if name in metrics:
            return name, float(metrics[name])
    raise ValueError(f"{folder}/eval/metrics.json: no primary metric among {PRIMARY}")


def read(pattern: str, task: str, seed: str) -> tuple[str, float]:
    folder = Path(pattern.format(task=task, seed=seed))
    path = folder / "eval" / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no evaluation (run evaluate.py --checkpoint {folder})")
    metrics = json.loads(path.read_text())
    if task not in metrics:
        raise ValueError(f"{path}: no task {task!r} (it has {sorted(k for k in metrics if not k.startswith('_'))})")
    return primary(metrics[task], folder)


def main(argv: Sequence[str] | None = None) -> list[list[Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", required=True, help="comma-separated tasks or aliases (suite, robot_failures)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--a", required=True, help="folder pattern of the runs tried, with {task} and {seed}")
    p.add_argument("--b", required=True, help="folder pattern of the runs compared against")
    args = p.parse_args(argv)
    seeds = [s for s in args.seeds.split(",") if s]
    rows, mean_a, mean_b = [], [], []
    for task in expand_tasks([t for t in args.tasks.split(",") if t]):
        a = [read(args.a, task, s) for s in seeds]
        b = [read(args.b, task, s) for s in seeds]
        va, vb = [v for _, v in a], [v for _, v in b]
        mean_a.append(mean_sd(va).mean)
        mean_b.append(mean_sd(vb).mean)
        rows.append([task, a[0][0], format_mean_sd(va, per_seed=True), format_mean_sd(vb, per_seed=True), compare(va, vb).format()])
    print(stats_note(seeds) + "\n")
    print(markdown_table(["task", "metric", "a", "b", "a - b"], rows))
    print(f"\nMean over {len(rows)} tasks: a {sum(mean_a) / len(mean_a):.3f}, b {sum(mean_b) / len(mean_b):.3f}.")
    return rows


if __name__ == "__main__":
    run_cli(main)
