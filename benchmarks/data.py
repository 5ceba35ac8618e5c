"""Data-loading benchmark: is data loading ever the bottleneck?

For each task: the first load (parse the source files into a fresh, empty cache folder), the second
load (memory-map the cache just written), then random training batches timed twice each, turn by
turn: the loader (``tasks.loader.collate_rows``: one Arrow gather + the kinds' collate) and one
training step of the preset's model on that batch (forward, backward, AdamW). The ratio loader
samples/s over training samples/s should be at least 5.

    python -m benchmarks.data                                 # the suite tasks whose files exist
    python -m benchmarks.data --tasks utd_mhad,robot_failures_lp1 --batches 30
    python -m benchmarks.data --tasks synthetic_pair --preset tiny --quick

Writes ``benchmarks/results/data.json`` (``--output``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import modalities  # noqa: F401  (registers the embedders)
import tasks as _tasks  # noqa: F401  (registers the built-in tasks)
import train
from benchmarks.common import (
    autocast,
    contention_warning,
    hardware_line,
    load_average,
    machine_info,
    markdown_table,
    num_threads,
    peak_rss_mb,
    pick_device,
    resolve_precision,
    summarize,
    synchronizer,
    write_json,
)
from highmmt import HighMMT
from highmmt.registry import TASKS
from tasks.cache import load_task, resolve_data_root
from tasks.loader import collate_rows, move_to
from transference import autotune

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "data.json"
TARGET_RATIO = 5.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: the suite tasks whose files exist)")
    p.add_argument("--data-root", default=None, help="data folder (else $HIGHMMT_DATA, else ./data)")
    p.add_argument("--cache-dir", default=None,
                   help="folder in which a fresh, empty cache folder is made for the first load (default: the system temp folder)")
    p.add_argument("--keep-cache", action="store_true", help="keep the fresh cache folder instead of deleting it")
    p.add_argument("--preset", default="default", help="model sizes and batch sizes (train.py's presets; default: default)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per batch (default: the preset's batch size for the task)")
    p.add_argument("--batches", type=int, default=20, help="timed batches per task (after 2 warm-up batches)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="training step precision (auto: train.py's rule)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    p.add_argument("--quick", action="store_true", help="2 timed batches per task (smoke test)")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help=f"JSON output (default {DEFAULT_OUTPUT})")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def default_tasks(data_root: Path) -> list[str]:
    """The suite tasks that are registered and whose source files all exist under ``data_root``."""
    names = []
    for name in train.SUITE:
        if name in TASKS and not TASKS.get(name).missing_files(data_root):
            names.append(name)
    return names


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def bench_task(name: str, args: argparse.Namespace, cache_root: Path, device: torch.device, precision: str) -> dict[str, Any]:
    """First and second load, then loader vs training samples/s on the same random training batches."""
    result: dict[str, Any] = {"task": name, "load_average_start": load_average()}
    start = time.perf_counter()
    first = load_task(name, data_root=args.data_root, cache_dir=cache_root, quiet=True)
    result["first_load_s"] = time.perf_counter() - start
    result["first_load_source"] = first.source
    start = time.perf_counter()
    loaded = load_task(name, data_root=args.data_root, cache_dir=cache_root, quiet=True)
    result["second_load_s"] = time.perf_counter() - start
    result["second_load_source"] = loaded.source
    if loaded.path is not None and loaded.source != "spec":
        result["cache_mb"] = folder_mb(loaded.path)
    split = loaded.splits["train"]
    spec = loaded.spec
    result["train_rows"] = len(split)

    run, _ = train.load_preset(args.preset)
    batch_size = min(args.batch_size or run.train.batch_sizes.get(spec.name, run.train.batch_size), len(split))
    result["batch_size"] = batch_size
    sync = synchronizer(device)
    try:
        torch.manual_seed(args.seed)
        model = HighMMT(train.model_config(run.model, [spec])).to(device)
    except (ValueError, TypeError) as e:  # the loader is still measured
        model = None
        result["train_error"] = f"{type(e).__name__}: {e}"
    if model is not None:
        model.train()
        optimizer = autotune.adamw(model.parameters(), lr=run.train.lr, weight_decay=run.train.weight_decay)

        tc = dataclasses.replace(run.train, augment_noise=0.0, augment_time=0.0, task_augment_time={}, label_smoothing=0.0,
                                 loss_weights={}, mixup=0.0, task_mixup={})
        step_loss = train.TaskLoss(model, tc, autocast=lambda: autocast(device, precision))

    def train_step(batch: dict[str, Any]) -> None:
        train.train_step(step_loss, [(spec.name, move_to(batch, device))], optimizer, None, None, tc)

    rng = np.random.default_rng(args.seed)
    warmup, timed = 2, (2 if args.quick else args.batches)
    load_times, step_times = [], []
    for i in range(warmup + timed):
        idx = np.sort(rng.choice(len(split), size=batch_size, replace=False))
        t0 = time.perf_counter()
        batch = collate_rows(split, idx, spec)
        t1 = time.perf_counter()
        if model is not None:
            train_step(batch)
            sync()
        t2 = time.perf_counter()
        if i >= warmup:
            load_times.append(t1 - t0)
            step_times.append(t2 - t1)
    loader = summarize(load_times)
    result["loader_batch_ms"] = loader
    result["loader_samples_per_s"] = 1e3 * batch_size / loader["median_ms"]
    if model is not None:
        step = summarize(step_times)
        result["train_step_ms"] = step
        result["train_samples_per_s"] = 1e3 * batch_size / step["median_ms"]
        result["ratio"] = result["loader_samples_per_s"] / result["train_samples_per_s"]
        result["meets_target"] = result["ratio"] >= TARGET_RATIO
    result["load_average_end"] = load_average()
    return result


def table(report: dict[str, Any]) -> str:
    rows = []
    for name, r in report["tasks"].items():
        if "error" in r:
            rows.append([name, "error: " + r["error"].splitlines()[0][:100], "", "", "", "", "", ""])
            continue
        trained = "ratio" in r
        rows.append([
            name, r["first_load_s"], r["second_load_s"], r["batch_size"], r["loader_samples_per_s"],
            r["train_samples_per_s"] if trained else "model error: " + r["train_error"][:80],
            r["ratio"] if trained else "", ("yes" if r["meets_target"] else "NO") if trained else "",
        ])
    headers = ["task", "first load s (parse)", "second load s (cached)", "batch", "loader samples/s",
               f"training samples/s ({report['preset']})", "loader / training", f">= {TARGET_RATIO:g}x"]
    warning = f" Warning: {report['contention_warning']}." if report.get("contention_warning") else ""
    return (f"Data loading ({hardware_line(report['machine'])}; precision {report['precision']}).{warning}\n\n"
            + markdown_table(headers, rows))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = pick_device(args.cpu)
    precision = resolve_precision(args.precision, device)
    data_root = resolve_data_root(args.data_root)
    names = train.expand_tasks(args.tasks.split(",")) if args.tasks else default_tasks(data_root)
    parent = Path(args.cache_dir) if args.cache_dir else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    cache_root = Path(tempfile.mkdtemp(prefix="highmmt-bench-cache-", dir=parent))
    report: dict[str, Any] = {
        "benchmark": "data",
        "preset": args.preset,
        "precision": precision,
        "data_root": str(data_root),
        "target_ratio": TARGET_RATIO,
        "tasks": {},
    }
    with num_threads(args.threads):
        report["machine"] = machine_info(device)
        report["contention_warning"] = contention_warning(report["machine"], device)
        if report["contention_warning"]:
            print(f"[data] warning: {report['contention_warning']}", file=sys.stderr, flush=True)
        try:
            for name in names:
                print(f"[data] {name} ...", file=sys.stderr, flush=True)
                try:
                    report["tasks"][name] = bench_task(name, args, cache_root, device, precision)
                except Exception as e:  # noqa: BLE001 - one broken task must not stop the others
                    report["tasks"][name] = {"task": name, "error": f"{type(e).__name__}: {e}",
                                             "traceback": traceback.format_exc(limit=5)}
        finally:
            if not args.keep_cache:
                shutil.rmtree(cache_root, ignore_errors=True)
        report["machine"]["load_average_end"] = load_average()
    report["cache_dir"] = str(cache_root) if args.keep_cache else None
    ok = [r for r in report["tasks"].values() if "ratio" in r]
    report["summary"] = {
        "tasks_measured": len(ok),
        "tasks_failed": sorted(n for n, r in report["tasks"].items() if "error" in r),
        "tasks_without_training": sorted(n for n, r in report["tasks"].items() if "train_error" in r),
        "min_ratio": min((r["ratio"] for r in ok), default=float("nan")),
        "all_meet_target": bool(ok) and all(r["meets_target"] for r in ok),
        # every task loaded (memory-mapped) and trained in this one process, one after another
        "peak_rss_mb": peak_rss_mb(),
    }
    path = write_json(args.output, report)
    print(table(report))
    print(f"\nwrote {path}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
