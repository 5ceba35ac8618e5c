"""Bring-your-own accuracy: does a spec-file task with the default preset reach 0.95x the simple baseline?

    python -m experiments.byo_bench --data-root ../shared/data           # export, baselines, 3 seeds, table
    python -m experiments.byo_bench --tasks byo_sentiment --seeds 0      # one task, one seed (timing)

Issue 15 asks that any classification task brought by a spec file (text, fixed- or variable-length
series, tabular columns), trained with the default preset, reach at least 0.95x the project's own best
simple baseline (``baseline.py``) on the same split, with no ``modality_options`` for what the data
says. This study measures it on tasks exported from the real data as a user would bring them:

1. **Export** (:data:`EXPORTS`): each task is read with its own loader in ``tasks/`` (honest splits
   kept: train / validation / test as the loader makes them) and written as ``train.parquet``,
   ``validation.parquet``, ``test.parquet`` plus a ``spec.yaml`` that names columns, kinds, target,
   class count and names, and nothing else: no ``modality_options``. Files go into ``--work-dir``
   (default ``$HIGHMMT_CACHE/byo_bench``, else ``~/.cache/highmmt/byo_bench``), never into the repo or
   the data root. The options the loader inferred are recorded in ``results.json``.
2. **Baselines**: ``baseline.py`` on every spec (``OUT/baselines``), skipped for specs it has done.
3. **Model**: single-task ``train.py --preset default --seed S`` per spec and seed
   (``experiments.common.train_unless_done``: a finished run is skipped, a killed one resumed), then
   ``evaluate.py --no-robustness --baselines OUT/baselines`` (read back once scored), one torch thread.
4. **Table** (``OUT/results.md`` / ``results.json``): model mean ± sample sd over seeds, best baseline,
   ratio model / baseline, whether the mean reaches 0.95x, train wall seconds; the git commit the
   numbers were measured at; training vs validation curves of every run (``experiments.curves``).

Run folders: ``OUT/runs/<task>/seed<S>``; default ``OUT`` is ``results/byo_bench`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from benchmarks.common import (
    format_mean_sd, format_seeds, machine_info, markdown_table, mean_sd, num_threads, pick_device, run_cli, stats_note, write_json,
)
from experiments.common import train_unless_done
from experiments.curves import summarize_run

ROOT = Path(__file__).resolve().parents[1]

GOAL_RATIO = 0.95
SPLITS = ("train", "validation", "test")
FLOAT_SERIES = pa.list_(pa.list_(pa.float32()))
TABULAR = pa.struct({"numeric": pa.list_(pa.float32()), "categorical": pa.list_(pa.int64())})


@dataclass(frozen=True)
class Export:
    """One spec-file task made from a suite task: which loader, which columns, what the spec says.

    ``columns(splits_of_the_loader, split) -> {column: pyarrow array}`` (the target included);
    ``modalities`` maps those columns to kinds; nothing else about a column goes into the spec.
    """

    source: str  # a registered task
    what: str  # one line for the table
    modalities: dict[str, str]
    target: str
    num_classes: int
    class_names: tuple[str, ...]
    columns: Callable[[Any, str], dict[str, pa.Array]]
    metric: str = "accuracy"
    options: tuple[tuple[str, Any], ...] = ()  # the loader's options (not the spec's)


def _series(ds: Any, column: str) -> pa.Array:
    """A [t][c] float column as plain nested lists (whatever fixed-size or extension type the loader used)."""
    values = ds.with_format("numpy")[column]
    return pa.array([np.asarray(v, dtype=np.float32).tolist() for v in values], type=FLOAT_SERIES)


def _labels(ds: Any, column: str) -> pa.Array:
    return pa.array(np.asarray(ds.with_format("numpy")[column], dtype=np.int64))


def _text_columns(ds: Any, split: str) -> dict[str, pa.Array]:
    return {"review": pa.array(ds["text"], type=pa.string()), "label": _labels(ds, "label")}


def _inertial_columns(ds: Any, split: str) -> dict[str, pa.Array]:
    return {"imu": _series(ds, "inertial"), "action": _labels(ds, "label")}


def _strokes_columns(ds: Any, split: str) -> dict[str, pa.Array]:
    return {"strokes": _series(ds, "strokes"), "alphabet": _labels(ds, "alphabet")}


def _strokes_pixel_grid_columns(ds: Any, split: str) -> dict[str, pa.Array]:
    """The strokes with x and y snapped to the glyph's 105-pixel grid (``experiments.strokes_lattice``).

    The publisher's coordinates lie on a lattice whose step differs by alphabet (the drawing canvas was
    scaled per alphabet), so the step alone names most alphabets; on the pixel grid every alphabet has
    the same step, and what is left to learn is the handwriting."""
    from tasks.omniglot import NATIVE_SIZE

    values = ds.with_format("numpy")["strokes"]
    rows = []
    for v in values:
        v = np.array(v, dtype=np.float64).reshape(-1, 4)  # (x, y, t, pen); a drawing without points stays empty
        v[:, :2] = 2.0 * np.round((v[:, :2] + 1.0) * NATIVE_SIZE / 2.0) / NATIVE_SIZE - 1.0
        rows.append(v.astype(np.float32).tolist())
    return {"strokes": pa.array(rows, type=FLOAT_SERIES), "alphabet": _labels(ds, "alphabet")}


def _static_columns(ds: Any, split: str) -> dict[str, pa.Array]:
    """PhysioNet's descriptors as a user's table: Age, Gender, Height, Weight (NaN = missing) + ICU type code."""
    rows = ds.with_format("numpy")["static"]
    cells = []
    for r in rows:
        numeric = np.where(np.asarray(r["numeric_observed"], bool), np.asarray(r["numeric"], np.float32), np.nan)
        cells.append({"numeric": numeric.tolist(), "categorical": np.asarray(r["categorical"], np.int64).tolist()})
    return {"descriptors": pa.array(cells, type=TABULAR), "died": _labels(ds, "label")}


def _text_numeric_columns(ds: Any, split: str) -> dict[str, pa.Array]:
    """Subjectivity text plus three numbers a user might keep beside it (word count, mean word length,
    share of punctuation tokens): a text column and a tabular column in one task."""
    texts = list(ds["text"])
    numbers = []
    for t in texts:
        words = t.split()
        n = max(len(words), 1)
        numbers.append([float(len(words)), float(sum(len(w) for w in words) / n), float(sum(not w.isalnum() for w in words) / n)])
    return {"sentence": pa.array(texts, type=pa.string()), "stats": pa.array(numbers, type=pa.list_(pa.float32())),
            "label": _labels(ds, "label")}


def _exports() -> dict[str, Export]:
    from tasks.omniglot import ALPHABETS
    from tasks.utd_mhad import ACTIONS

    return {
        "byo_sentiment": Export("sentiment", "text: sentence polarity", {"review": "text"}, "label", 2,
                                ("negative", "positive"), _text_columns),
        "byo_utd_inertial": Export("utd_mhad", "fixed-length series: UTD-MHAD wrist/thigh IMU, 64 x 6",
                                   {"imu": "timeseries"}, "action", len(ACTIONS), tuple(ACTIONS), _inertial_columns),
        "byo_omniglot_strokes": Export("omniglot", "variable-length series: omniglot pen strokes (x, y, t, pen), "
                                       "alphabet", {"strokes": "timeseries"}, "alphabet", len(ALPHABETS),
                                       tuple(ALPHABETS), _strokes_columns),
        "byo_omniglot_strokes_px": Export("omniglot", "variable-length series: omniglot pen strokes, x and y on the "
                                          "glyph's 105-pixel grid, alphabet", {"strokes": "timeseries"}, "alphabet",
                                          len(ALPHABETS), tuple(ALPHABETS), _strokes_pixel_grid_columns),
        "byo_physionet_static": Export("physionet_mortality", "tabular: PhysioNet descriptors (4 numeric, NaN "
                                       "missing; ICU type categorical)", {"descriptors": "tabular"}, "died", 2,
                                       ("survived", "died"), _static_columns, metric="auroc"),
        "byo_subjectivity_stats": Export("subjectivity", "text + numeric: subjectivity sentence + 3 counts",
                                         {"sentence": "text", "stats": "tabular"}, "label", 2,
                                         ("objective", "subjective"), _text_numeric_columns),
    }


EXPORTS: dict[str, Export] = {}  # filled on first use (the task modules import datasets)


def exports() -> dict[str, Export]:
    if not EXPORTS:
        EXPORTS.update(_exports())
    return EXPORTS


def spec_dict(name: str, export: Export) -> dict[str, Any]:
    """What a user writes: columns, kinds, target, classes, metric; no modality_options."""
    return {"name": name, "path": "data", "format": "parquet", "modalities": dict(export.modalities),
            "target": export.target, "task_type": "classification", "num_classes": export.num_classes,
            "class_names": list(export.class_names), "metric": export.metric,
            "description": f"{export.what} (exported from the suite task {export.source!r}, its own splits)"}


def write_task(folder: Path, name: str, export: Export, splits: Any) -> Path:
    """Write ``folder/data/<split>.parquet`` and ``folder/spec.yaml``; returns the spec file."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        if split in splits:
            pq.write_table(pa.table(export.columns(splits[split], split)), data / f"{split}.parquet")
    spec_file = folder / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec_dict(name, export), sort_keys=False))
    return spec_file


def export_task(name: str, work_dir: Path, *, data_root: str | None, cache_dir: str | None, quiet: bool = True) -> Path:
    """Export one task unless its spec file is already there; returns the spec file."""
    folder = work_dir / name
    spec_file = folder / "spec.yaml"
    if spec_file.is_file():
        return spec_file
    from tasks.cache import load_task

    export = exports()[name]
    lt = load_task(export.source, data_root=data_root, cache_dir=cache_dir, options=dict(export.options) or None, quiet=quiet)
    return write_task(folder, name, export, lt.splits)


def inferred_options(spec_file: Path) -> dict[str, Any]:
    """The modality options the spec loader fills in from the data (the spec states none)."""
    from tasks.byo import load_byo_spec

    spec, splits = load_byo_spec(spec_file)
    return {"modality_options": {k: dict(v) for k, v in spec.modality_options.items()},
            "rows": {s: len(d) for s, d in splits.items()}}


def git_commit() -> dict[str, Any]:
    """HEAD and the tracked files the study runs that differ from it (a shared working tree may hold others' edits)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "highmmt", "modalities", "tasks",
                                "configs", "train.py", "evaluate.py", "baseline.py"], cwd=ROOT, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"head": "unknown", "dirty": []}
    return {"head": head, "dirty": [line[3:] for line in dirty.splitlines() if line.strip()]}


def train_seconds(run_dir: Path) -> float | None:
    """Seconds of the finished training (``DONE``: 'finished 20 epochs, 4000 steps in 46s')."""
    done = run_dir / "DONE"
    m = re.search(r"in ([0-9.]+)s", done.read_text()) if done.is_file() else None
    return float(m.group(1)) if m else None


def run_baselines(specs: dict[str, Path], out: Path, *, quiet: bool) -> dict[str, Any]:
    """``baseline.py`` on the specs it has not done yet; returns baselines.json's tasks."""
    path = out / "baselines.json"
    done = json.loads(path.read_text())["tasks"] if path.is_file() else {}
    todo = [str(f) for n, f in specs.items() if n not in done]
    if todo:
        import baseline

        baseline.main(["--tasks", ",".join(todo), "--output-dir", str(out), *(["--quiet"] if quiet else [])])
    return json.loads(path.read_text())["tasks"]


def score_run(folder: Path, spec_file: Path, seed: int, baseline_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train one single-task run unless finished, evaluate it unless scored since; its metrics.json."""
    import evaluate

    argv = ["--preset", args.preset, "--tasks", str(spec_file), "--seed", str(seed), "--quiet", "--cpu",
            *(["--cache-dir", args.cache_dir] if args.cache_dir else []), *[a for o in args.overrides for a in ("--set", o)]]
    scored = folder / "eval" / "metrics.json"
    with num_threads(args.threads):
        train_unless_done(folder, argv, log=folder.parent / f"{folder.name}.log")
        if not (scored.exists() and scored.stat().st_mtime >= (folder / "DONE").stat().st_mtime):
            evaluate.main(["--checkpoint", str(folder), "--no-robustness", "--quiet", "--cpu", "--baselines", str(baseline_dir)])
    return json.loads(scored.read_text())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="", help=f"comma-separated subset of the exports (default: all: {', '.join(_NAMES)}; "
                   f"by name only: {', '.join(_EXTRA_NAMES)})")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--preset", default="short", help="the preset of every run (default: short, the default preset when the study was run)")
    p.add_argument("--output-dir", default="results/byo_bench")
    p.add_argument("--work-dir", default=None, help="where the exported spec files and parquet data go "
                   "(default $HIGHMMT_CACHE/byo_bench, else ~/.cache/highmmt/byo_bench); not inside the repo")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run (with OMP_NUM_THREADS=1 on a shared machine)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="train.py override for every run (an arm beside the default; give it its own --output-dir)")
    p.add_argument("--baselines", default=None, help="an earlier baseline.py folder for these specs (default OUT/baselines)")
    p.add_argument("--export-only", action="store_true", help="write the spec files and stop")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    names = [t for t in args.tasks.split(",") if t] or list(_NAMES)
    unknown = sorted(set(names) - set(_NAMES) - set(_EXTRA_NAMES))
    if unknown:
        raise ValueError(f"--tasks: unknown export(s) {unknown}; known: {list(_NAMES) + list(_EXTRA_NAMES)}")
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    from tasks.cache import resolve_cache_dir

    work = Path(args.work_dir).expanduser() if args.work_dir else resolve_cache_dir(args.cache_dir) / "byo_bench"
    if work.resolve().is_relative_to(ROOT):
        raise ValueError(f"--work-dir {str(work)!r} is inside the repository; exported data must live outside it")
    out = Path(args.output_dir)
    started = time.time()
    results: dict[str, Any] = {"commit_now": git_commit(), "preset": args.preset, "seeds": seeds, "work_dir": str(work),
                               "machine": machine_info(pick_device(cpu=True)), "threads": args.threads, "overrides": args.overrides, "tasks": {}}
    specs = {n: export_task(n, work, data_root=args.data_root, cache_dir=args.cache_dir, quiet=args.quiet) for n in names}
    for n, f in specs.items():
        results["tasks"][n] = {"spec": str(f), "what": exports()[n].what, "metric": exports()[n].metric, **inferred_options(f)}
        print(f"{n}: {f} inferred {results['tasks'][n]['modality_options']}", flush=True)
    if args.export_only:
        return results

    baseline_dir = Path(args.baselines) if args.baselines else out / "baselines"
    with num_threads(args.threads):
        baselines = run_baselines(specs, baseline_dir, quiet=args.quiet)
    for n in names:
        b = baselines[n]
        results["tasks"][n]["baseline"] = {"name": b["best"]["name"], "value": b["best"]["value"], "protocol": b.get("protocol")}
    for seed in seeds:  # every task once before the next seed, so a cut-short study still covers them all
        for n in names:
            folder = out / "runs" / n / f"seed{seed}"
            commit_file = folder.parent / f"{folder.name}.commit.json"
            trained_now = not (folder / "DONE").exists()
            commit = git_commit() if trained_now else json.loads(commit_file.read_text()) if commit_file.is_file() else None
            metrics = score_run(folder, specs[n], seed, baseline_dir, args)
            entry = results["tasks"][n].setdefault("seeds", {})
            if trained_now:
                write_json(commit_file, commit)
            entry[str(seed)] = {"value": metrics[n][exports()[n].metric], "train_s": train_seconds(folder), "commit": commit,
                                "curves": summarize_run(folder)}
            print(f"[{time.time() - started:.0f}s] {n} seed {seed}: {entry[str(seed)]['value']:.4f}", flush=True)
            results["wall_s"] = time.time() - started
            _write(out, results)
    _write(out, results)
    print((out / "results.md").read_text())
    return results


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for n, t in results["tasks"].items():
        vals = [s["value"] for s in t.get("seeds", {}).values()]
        base = t.get("baseline")
        m = mean_sd(vals)
        ratio = m.mean / base["value"] if (base and vals) else None
        secs = [s["train_s"] for s in t.get("seeds", {}).values() if s["train_s"] is not None]
        rows.append({"task": n, "what": t["what"], "metric": t["metric"], "values": vals, "baseline": base, "ratio": ratio,
                     "meets": None if ratio is None else ratio >= GOAL_RATIO, "train_s": secs,
                     "options": t["modality_options"]})
    return rows


def markdown(results: dict[str, Any]) -> str:
    rows = summary_rows(results)
    seeds = results["seeds"]
    table = markdown_table(
        ["task", "data", "metric", f"model ({results['preset']} preset)", "best baseline", "model / baseline", f"meets {GOAL_RATIO}x",
         "train s / seed", "inferred options"],
        [[r["task"], r["what"], r["metric"], format_mean_sd(r["values"], per_seed=True),
          "-" if not r["baseline"] else f"{r['baseline']['value']:.3f} {r['baseline']['name']}",
          "-" if r["ratio"] is None else f"{r['ratio']:.3f}",
          "-" if r["meets"] is None else ("yes" if r["meets"] else f"no ({r['ratio'] - GOAL_RATIO:+.3f})"),
          "-" if not r["train_s"] else f"{np.mean(r['train_s']):.0f}",
          json.dumps(r["options"]).replace("|", "/")] for r in rows])
    curve_rows = [[n, seed, c["train_loss_first"], c["train_loss_last"], c["val_best"], f"{c['val_best_epoch']} of {c['epochs']}",
                   c["val_last"], c["test"]]
                  for n, t in results["tasks"].items() for seed, s in t.get("seeds", {}).items() for c in s["curves"]]
    curves = markdown_table(["task", "seed", "train loss first", "train loss last", "val best", "best epoch", "val last",
                             "test"], curve_rows)
    m = results["machine"]
    commits = {json.dumps(s.get("commit"), sort_keys=True) for t in results["tasks"].values() for s in t.get("seeds", {}).values()}
    described = []
    for c in (json.loads(x) for x in sorted(commits)):
        described.append("unknown" if c is None else f"`{c['head']}`" + (f" with uncommitted edits to {', '.join(c['dirty'])}"
                                                                         if c["dirty"] else ""))
    head = (f"Trained at commit {'; '.join(described) or '-'} (per run: `results.json`); preset `{results['preset']}`; single-task runs; test split; "
            f"{format_seeds(seeds)}; {results['threads']} torch thread(s) per run"
            + (f"; overrides {results['overrides']}" if results.get("overrides") else "") + f". {stats_note(seeds)}\n\n"
            f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['device']}, torch {m['torch_version']}; "
            f"load average at the start {m['load_average']}; wall time of this call {results.get('wall_s', 0) / 60:.1f} min.")
    return head + "\n\n" + table + "\n\nTraining vs validation (`experiments/curves.py`):\n\n" + curves + "\n"


def _write(out: Path, results: dict[str, Any]) -> None:
    write_json(out / "results.json", results)
    (out / "results.md").write_text(markdown(results))


_NAMES = ("byo_sentiment", "byo_utd_inertial", "byo_omniglot_strokes", "byo_physionet_static", "byo_subjectivity_stats")
_EXTRA_NAMES = ("byo_omniglot_strokes_px",)  # a diagnostic variant, run by name only

if __name__ == "__main__":
    run_cli(main)
