"""What parameter sharing does inside a trained run (docs/sharing-analysis.md).

    python analyze.py involvement  --run runs/x [--batches 8] [--eps 0.2]      # which neurons each task uses
    python analyze.py conflict     --run runs/x [--batches 16]                 # per-task gradient cosines
    python analyze.py interference --run runs/x [--tasks A,B,C] [--train-only encoders] [--seeds 0,1]

Any train.py run folder works (suite tasks and spec-file tasks alike); its tasks are loaded as
``evaluate.py`` loads them. Each analysis writes ``<name>.json``, ``<name>.md`` and ``<name>.png``
into ``--out`` (default ``RUN/analysis``) and states its cost in seconds. Involvement and conflict
use the run's selected weights and ``--batches`` sampled training batches per task; interference
trains new runs (the run's preset and overrides, a shorter schedule) under ``OUT/runs``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from analysis import conflict, interference, involvement, report
from analysis.common import label_smoothing, open_run, sample_batches

ANALYSES = {"involvement": involvement, "conflict": conflict, "interference": interference}
DEFAULT_BATCHES = {"involvement": 8, "conflict": 16}
COLORS = {"involvement": ("viridis", 0.0, 1.0), "conflict": ("RdBu_r", -1.0, 1.0)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("analysis", choices=list(ANALYSES))
    p.add_argument("--run", required=True, help="a train.py run folder")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the run's tasks (default: all)")
    p.add_argument("--out", default=None, help="output folder (default RUN/analysis)")
    p.add_argument("--batches", type=int, default=None, help="sampled training batches per task (default: involvement 8, conflict 16)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per sampled batch (default: the run's batch size)")
    p.add_argument("--eps", type=float, default=involvement.EPS, help="involvement threshold, a fraction of the layer's largest score")
    p.add_argument("--seed", type=int, default=0, help="which batches are sampled")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: kind to a shared CPU)")
    g = p.add_argument_group("interference")
    g.add_argument("--shuffle", default=None, help="tasks whose labels are shuffled, one run each (default: every --tasks)")
    g.add_argument("--epochs", type=int, default=None, help="epochs of each run (default min(2, the run's))")
    g.add_argument("--steps-per-epoch", type=int, default=None, help="default: the run's")
    g.add_argument("--train-only", default="", choices=["", "embedders", "encoders", "fusion"], help="only this part (and the heads) trains")
    g.add_argument("--seeds", default=None, help="comma-separated seeds (default: the run's seed)")
    g.add_argument("--from-run", action="store_true", help="start every run from the analysed run's weights (default: from scratch)")
    g.add_argument("--eval-limit", type=int, default=1000, help="test rows scored per task (0 = all)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    tasks = args.tasks.split(",") if args.tasks else None
    out = Path(args.out or Path(args.run) / "analysis")
    module = ANALYSES[args.analysis]
    if args.analysis == "interference":
        result = interference.run_interference(
            args.run, out, tasks=tasks, shuffle=args.shuffle.split(",") if args.shuffle else None, epochs=args.epochs,
            steps=args.steps_per_epoch, train_only=args.train_only, seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None,
            from_run=args.from_run, eval_limit=args.eval_limit, data_root=args.data_root, cache_dir=args.cache_dir, quiet=args.quiet)
        name = "interference" + (f"_{args.train_only}" if args.train_only else "")
        setup = 0.0
    else:
        run = open_run(args.run, tasks, data_root=args.data_root, cache_dir=args.cache_dir, quiet=args.quiet)
        batch_size = args.batch_size or int(run.config["train"]["batch_size"])
        rows = sample_batches(run.loaded, args.batches or DEFAULT_BATCHES[args.analysis], batch_size, args.seed)
        smoothing = label_smoothing(run.config)
        if args.analysis == "involvement":
            result = involvement.involvement(run.model, run.loaded, rows, eps=args.eps, label_smoothing=smoothing)
        else:
            result = conflict.conflict(run.model, run.loaded, rows, label_smoothing=smoothing)
        result.update(batches=len(next(iter(rows.values()))), batch_size=batch_size, seed=args.seed)
        name, setup = args.analysis, run.seconds
    seconds = time.perf_counter() - started
    result.update(run=str(args.run), seconds=seconds, setup_seconds=setup, hardware=report.hardware())
    loading = f" ({setup:.1f} s loading the run and its data)" if args.analysis != "interference" else " (training and scoring every run)"
    cost = f"Cost: {seconds:.1f} s wall{loading}, on {result['hardware']}."
    title = f"{args.analysis} of {args.run}"
    lines = [f"## {title}", "", *module.markdown(result), cost, ""]
    paths = report.write(out, name, result, "\n".join(lines))
    cmap, vmin, vmax = COLORS.get(args.analysis, ("RdBu_r", None, None))
    mats = module.panels(result)
    if vmin is None:  # interference: symmetric around 0 at the largest change
        import numpy as np

        top = max(0.05, float(np.nanmax(np.abs(np.concatenate([m.ravel() for m in mats.values()])))))
        vmin, vmax = -top, top
    row_names = result["shuffled"] if args.analysis == "interference" else None
    report.heatmaps(mats, result["tasks"], out / f"{name}.png", title=title, vmin=vmin, vmax=vmax, cmap=cmap, row_names=row_names)
    if not args.quiet:
        print("\n".join(lines))
        print(f"wrote {paths['json']}, {paths['markdown']}, {paths['heatmap']}")
    return result


if __name__ == "__main__":
    from highmmt.cli import run_cli

    run_cli(main)
