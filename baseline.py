"""Simple scikit-learn baselines for suite tasks and bring-your-own spec files, on the same splits.

    python baseline.py                                         # the whole suite
    python baseline.py --tasks avmnist,sentiment,my_spec.yaml --output-dir runs/baselines
    python baseline.py --tasks robot_failures --cv auto --cv-repeats 5   # K-fold where the test split is tiny

Writes into ``--output-dir`` (default ``runs/baselines-<date>-<time>``):
    baselines.json   {"tasks": {task: entry}}; an entry holds per baseline the metric, the test
                     value (K-fold: mean, ``std`` and every fold's score), the validation value and
                     the chosen C (split protocol), ``fit_seconds`` and the feature count, plus the
                     protocol, row counts, the data fingerprint and ``best`` (name, test value)
    baselines.md     the same as a table
Rerunning into the same folder replaces the entries of the tasks computed again and keeps the others.

Feature sets, models and the protocol are described in ``tasks/baselines.py``. ``evaluate.py
--baselines DIR`` reads this folder to report a model's margin over each task's best baseline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from tqdm.auto import tqdm

import tasks as task_registry  # noqa: F401  (registers the built-in tasks)
from highmmt.checkpoint import atomic_write_bytes, atomic_write_json
from tasks.baselines import MODELS, BaselineSettings, report_markdown, run_task
from tasks.cache import load_task
from train import SUITE, expand_tasks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(SUITE), help="comma-separated task names, aliases (suite, robot_failures) and/or spec files (default: the suite)")
    p.add_argument("--output-dir", default=None, help="default runs/baselines-<date>-<time>")
    p.add_argument("--data-root", default=None, help="data folder (else $HIGHMMT_DATA, else ./data)")
    p.add_argument("--cache-dir", default=None, help="parsed-data cache (else $HIGHMMT_CACHE, else ~/.cache/highmmt)")
    p.add_argument("--seed", type=int, default=0, help="folds, subsets, forests and boosting")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--feature-sets", default="each", choices=["each", "all"],
                   help="each: every feature block alone and together; all: only everything together")
    p.add_argument("--per-modality", action="store_true", help="multimodal tasks: also each modality's features alone")
    p.add_argument("--cv", default="auto", help="auto: K-fold when the test split has < --cv-threshold rows; none: the "
                   "task's splits; K: always K-fold (train+validation+test pooled)")
    p.add_argument("--cv-repeats", type=int, default=3, help="repetitions of K-fold, each shuffled with seed + r")
    p.add_argument("--cv-threshold", type=int, default=100, help="test rows below which --cv auto uses K-fold")
    p.add_argument("--rf-trees", type=int, default=500)
    p.add_argument("--max-tree-rows", type=int, default=20000, help="training rows a tree model sees at most (seeded subset)")
    p.add_argument("--max-gb-classes", type=int, default=10, help="skip gradient boosting above this many classes")
    p.add_argument("--jobs", type=int, default=1, help="processes for the random forests")
    p.add_argument("--no-cv-refit", dest="cv_refit", action="store_false",
                   help="K-fold: keep each model as fitted on the inner 80%% of the training folds (the rows a neural model "
                        "trains on beside its 20%% validation) instead of refitting it on all of them")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    settings = BaselineSettings(
        models=tuple(m for m in args.models.split(",") if m), feature_sets=args.feature_sets, per_modality=args.per_modality,
        cv=str(args.cv), cv_repeats=args.cv_repeats, cv_threshold=args.cv_threshold, seed=args.seed,
        rf_trees=args.rf_trees, max_tree_rows=args.max_tree_rows, max_gb_classes=args.max_gb_classes, jobs=args.jobs,
        cv_refit=args.cv_refit,
    )
    names = expand_tasks([t for t in args.tasks.split(",") if t])
    if not names:
        raise ValueError("--tasks is empty; give task names and/or spec files")
    out = Path(args.output_dir or f"runs/baselines-{dt.datetime.now():%Y%m%d-%H%M%S}")  # made at the first write
    results_path = out / "baselines.json"
    previous = json.loads(results_path.read_text()).get("tasks", {}) if results_path.is_file() else {}
    entries: dict[str, Any] = dict(previous)
    for name in tqdm(names, desc="tasks", disable=args.quiet):
        started = time.perf_counter()
        lt = load_task(name, data_root=args.data_root, cache_dir=args.cache_dir, quiet=args.quiet)
        entry = run_task(lt, settings, quiet=args.quiet)
        entry["source"] = str(name)
        entry["wall_seconds"] = round(time.perf_counter() - started, 3)
        entries[lt.spec.name] = entry
        # written after every task, so that a long suite run keeps what it has finished
        results = {"tasks": entries, "versions": {"scikit-learn": sklearn.__version__, "numpy": np.__version__},
                   "command": ["baseline.py", *(argv if argv is not None else sys.argv[1:])]}
        atomic_write_json(results_path, results)
        atomic_write_bytes(out / "baselines.md", report_markdown(entries).encode())
        if not args.quiet:
            best = entry["best"]
            tqdm.write(f"{lt.spec.name}: best {best['name']} {entry['metric']} {best['value']:.4f} "
                       f"({entry['wall_seconds']:.0f}s)" if best else f"{lt.spec.name}: no baseline ran")
    if not args.quiet:
        print((out / "baselines.md").read_text())
    return entries


if __name__ == "__main__":
    from highmmt.cli import run_cli

    run_cli(main)
