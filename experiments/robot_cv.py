"""The model on the robot failure tasks under the baselines' repeated stratified K-fold.

    OMP_NUM_THREADS=1 python -m experiments.robot_cv --data-root /work/shared/data --output-dir results/robot_cv
    python -m experiments.robot_cv ... --repeats 1          # repeat 0 only (5 runs)

The robot tasks' test splits hold 10-33 rows, so ``baseline.py`` scores them by repeated stratified
K-fold over all rows of each task (``tasks.baselines``: 5-fold, LP3 3-fold, 3 repeats). This study
puts the model under the very same folds:

* Folds: ``tasks.baselines.plans`` on each task's pooled rows (train + validation + test, in that
  order), the function that makes the baselines' folds, so fold k of repeat r holds the same rows
  for both. Per fold: test = fold k; validation = the baselines' stratified 20% carve of the other
  folds (where they choose C); train = the rest of the other folds. The baselines refit on train +
  validation; the model trains on train and picks its checkpoint on validation.
* Data: each task's fold is written as a bring-your-own task (``datasets.save_to_disk`` + a JSON
  spec, docs/interfaces.md) under ``folds/r<r>_f<k>/``, with the built-in task's name, modality
  name and options (``force_torque``, 6 channels; values already ``signed_log``-transformed by the
  built-in task). ``folds.json`` records each fold's pooled row positions.
* Runs: one multitask model over the five tasks per (repeat, fold), ``train.py --preset <preset>``
  through ``experiments.common.train_unless_done`` (a finished run is skipped, an interrupted one
  resumed), then ``evaluate.py --no-robustness --no-baselines`` (read back when its ``metrics.json``
  is newer than the run's ``DONE``). LP3 has 3 folds, so the runs of folds
  3 and 4 train on the other four tasks only (15 runs; LP3 is scored on 9 of them, as its baselines).
* References: the best baseline of each task under the same folds (by mean test value, as
  ``baseline.py`` ranks them), read from ``--baselines`` (``baseline.py``'s ``baselines.json``,
  checked to be the same data, settings and folds) or computed with ``tasks.baselines.cached_run``.
  Model vs reference: :func:`benchmarks.common.compare` over the folds x repeats (a difference not
  larger than the larger sample SD is "no difference").

Writes ``results.json`` and ``results.md`` into ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

import tasks as _tasks  # noqa: F401  (registers the built-in tasks)
from benchmarks.common import (compare, format_mean_sd, machine_info, markdown_table, mean_sd, num_threads, pick_device, run_cli,
                               write_json)
from experiments.common import train_unless_done
from highmmt.metrics import HIGHER_IS_BETTER
from tasks.baselines import BaselineSettings, Plan, TaskFeatures, cached_run, fingerprint, load_results, plans, protocol
from tasks.cache import LoadedTask, load_task, progress_bars, resolve_cache_dir
from tasks.robot_failures import ROBOT_TASKS
from tasks.splits import SPLITS

ROOT = Path(__file__).resolve().parents[1]

SPEC_KEYS = ("name", "modalities", "target", "task_type", "num_classes", "metric", "class_names", "description", "modality_options")


def pooled(lt: LoadedTask) -> tuple[datasets.Dataset, np.ndarray, dict[str, np.ndarray]]:
    """A task's rows pooled in split order (train, validation, test), as ``tasks.baselines`` pools
    them: (rows, labels [N], split -> positions of its rows in the pool)."""
    parts, offset, splits = [], 0, {}
    for s in SPLITS:
        ds = lt.splits[s]
        splits[s] = np.arange(offset, offset + len(ds))
        offset += len(ds)
        parts.append(ds)
    pool = datasets.concatenate_datasets(parts)
    y = np.asarray(pool.with_format("numpy")[lt.spec.target]).astype(np.int64)
    return pool, y, splits


def fold_plans(lt: LoadedTask, settings: BaselineSettings) -> tuple[list[Plan], dict[str, Any]]:
    """The baselines' K-fold plans of a task (one per repeat x fold, repeat-major) and its protocol.

    Raises:
        ValueError: the task's test split is large enough that the baselines use its fixed split.
    """
    _, y, splits = pooled(lt)
    proto = protocol(len(lt.splits["test"]), settings)
    if proto["kind"] != "cv":
        raise ValueError(f"task {lt.spec.name!r}: {len(lt.splits['test'])} test rows; the baselines score it on its "
                         f"fixed split (cv={settings.cv!r}, threshold {settings.cv_threshold}), not by K-fold")
    feats = TaskFeatures(spec=lt.spec, blocks={}, block_types={}, targets=y, splits=splits)
    return plans(feats, proto, settings), proto


def spec_dict(lt: LoadedTask, path: str) -> dict[str, Any]:
    """The built-in task's spec as a spec file (same name, modality names and options)."""
    d = {k: v for k, v in lt.spec.to_dict().items() if k in SPEC_KEYS and v not in (None, "", [], {})}
    d["modality_options"] = {m: dict(o) for m, o in lt.spec.modality_options.items()}
    return {**d, "path": path, "format": "huggingface_datasets_save_to_disk",
            "splits": {"train": "train", "validation": "validation", "test": "test"}}


def write_folds(loaded: dict[str, LoadedTask], settings: BaselineSettings, out: Path) -> dict[tuple[int, int], dict[str, Path]]:
    """Write every task's fold datasets and specs under ``out/folds``; (repeat, fold) -> task -> spec file.

    A spec file is written last, so one that exists marks a complete fold (kept on a second call).
    """
    runs: dict[tuple[int, int], dict[str, Path]] = {}
    record: dict[str, Any] = {}
    for task, lt in loaded.items():
        pool, y, _ = pooled(lt)
        todo, proto = fold_plans(lt, settings)
        k = proto["folds"]
        record[task] = {"folds": k, "repeats": proto["repeats"], "rows": int(len(y)), "plans": []}
        for i, plan in enumerate(todo):
            r, f = divmod(i, k)
            parts = {"train": plan.inner if plan.inner is not None else plan.fit, "validation": plan.val, "test": plan.test}
            record[task]["plans"].append({"repeat": r, "fold": f, **{s: rows.tolist() for s, rows in parts.items()}})
            folder = out / "folds" / f"r{r}_f{f}"
            spec_file = folder / f"{task}.json"
            if not spec_file.is_file():
                with progress_bars(False):
                    datasets.DatasetDict({s: pool.select(rows) for s, rows in parts.items()}).save_to_disk(str(folder / task))
                write_json(spec_file, spec_dict(lt, task))
            runs.setdefault((r, f), {})[task] = spec_file
    write_json(out / "folds.json", record)
    return dict(sorted(runs.items()))


def references(loaded: dict[str, LoadedTask], settings: BaselineSettings, baselines: str | None, cache_dir: str | None,
               quiet: bool) -> dict[str, dict[str, Any]]:
    """Each task's baseline entry under ``settings`` (the K-fold scores of every baseline)."""
    given = load_results(baselines) if baselines else {}
    ignored = ("jobs", "per_modality")  # neither changes a one-modality task's numbers
    want = {k: v for k, v in settings.to_dict().items() if k not in ignored}
    out = {}
    for task, lt in loaded.items():
        e = given.get(task)
        if e is not None:
            got = {"cv_refit": True} | {k: v for k, v in e.get("settings", {}).items() if k not in ignored}  # files before cv_refit
            if got != want or e.get("fingerprint") != fingerprint(lt):
                raise ValueError(f"--baselines {baselines!r}, task {task!r}: computed with settings {got} on data "
                                 f"{e.get('fingerprint')}; this study needs {want} on {fingerprint(lt)}")
        else:
            e = cached_run(lt, settings, resolve_cache_dir(cache_dir), quiet=quiet)
        out[task] = e
    return out


def summarise(results: dict[str, Any], refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per task: the model's fold scores beside the best baseline's on the same folds, and the verdict."""
    table = {}
    for task in results["tasks"]:
        e = refs[task]
        best = e["best"]["name"]
        b = e["baselines"][best]
        k = e["protocol"]["folds"]
        runs = [(key, r) for key, r in results["runs"].items() if task in r["tasks"]]
        scores = [float(r["metrics"][task][e["metric"]]) for _, r in runs]
        # the reference's score on each run's (repeat, fold): the whole list when every run is done
        same = [float(b["scores"][r["repeat"] * k + r["fold"]]) for _, r in runs]
        c = compare(scores, same, higher_is_better=HIGHER_IS_BETTER[e["metric"]])
        table[task] = {"metric": e["metric"], "folds": k, "runs": [key for key, _ in runs], "model_scores": scores,
                       "model": mean_sd(scores)._asdict(), "reference_name": best, "reference_scores": same,
                       "reference_all_folds": mean_sd(b["scores"])._asdict(), "compare": c._asdict(),
                       "paired_difference": mean_sd(np.subtract(scores, same).tolist())._asdict()}
    return table


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for task, t in results["per_task"].items():
        c = t["compare"]
        planned = t["folds"] * results["settings"]["cv_repeats"]
        proto = f"{t['folds']}-fold x {results['settings']['cv_repeats']}" + ("" if len(t["runs"]) == planned else f" ({len(t['runs'])} of {planned} run)")
        rows.append([task, proto, format_mean_sd(t["model_scores"]),
                     f"{format_mean_sd(t['reference_scores'])} ({t['reference_name']})",
                     f"{c['difference']:+.3f} ({c['verdict']})", format_mean_sd([t["paired_difference"]["mean"]])
                     + ("" if t["paired_difference"]["sd"] is None else f" ± {t['paired_difference']['sd']:.3f}")])
    head = (f"Preset `{results['preset']}`, train.py seed {results['seed']}; folds of `tasks.baselines` (seed "
            f"{results['settings']['seed']}, {results['settings']['cv_repeats']} repeats requested, {len(results['runs'])} runs). "
            "Test accuracy, mean ± sample SD (ddof = 1) over folds x repeats; the reference is the best simple "
            "baseline of `baseline.py` on the same folds. A difference not larger than the larger of the two SDs is "
            "'no difference'; the paired column is the mean ± SD of (model - reference) fold by fold.")
    table = markdown_table(["task", "protocol", "model", "reference (same folds)", "model - reference", "paired difference"], rows)
    times = [r["train_seconds"] for r in results["runs"].values() if r.get("train_seconds") is not None]
    tail = f"Training per run: {format_mean_sd(times, 0)} s ({len(times)} runs timed)." if times else ""
    return head + "\n\n" + table + "\n\n" + tail + "\n"


def run_fold(folder: Path, spec_files: Sequence[Path], args: argparse.Namespace) -> dict[str, Any]:
    """Train one (repeat, fold) run unless finished, evaluate it unless evaluated since; its metrics and timing."""
    import evaluate

    argv = ["--preset", args.preset, "--tasks", ",".join(map(str, spec_files)), "--seed", str(args.seed), "--quiet",
            *(["--cache-dir", args.cache_dir] if args.cache_dir else []), *[a for o in args.overrides for a in ("--set", o)]]
    with num_threads(args.threads):
        train_unless_done(folder, argv, log=folder.parent / f"{folder.name}.log")
        scored = folder / "eval" / "metrics.json"
        if not (scored.exists() and scored.stat().st_mtime >= (folder / "DONE").stat().st_mtime):
            evaluate.main(["--checkpoint", str(folder), "--no-robustness", "--no-baselines", "--quiet"])
    done = (folder / "DONE").read_text().strip()  # "finished E epochs, S steps in Ns"
    return {"metrics": json.loads(scored.read_text()), "train_log": done,
            "train_seconds": float(done.rsplit(" in ", 1)[1].rstrip("s")) if " in " in done else None}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(ROBOT_TASKS), help="comma-separated robot tasks (default: LP1-LP5)")
    p.add_argument("--preset", default="short", help="the preset of every run (default: short, the default preset when the study was run)")
    p.add_argument("--output-dir", default="results/robot_cv")
    p.add_argument("--repeats", type=int, default=None, help="run only the first N repeats (default: all of --cv-repeats)")
    p.add_argument("--folds", default="", help="run only these folds, comma-separated (e.g. 0 for a first check)")
    p.add_argument("--cv-repeats", type=int, default=BaselineSettings.cv_repeats, help="the baselines' repeats")
    p.add_argument("--cv-seed", type=int, default=0, help="the baselines' --seed (folds, carve, forests)")
    p.add_argument("--seed", type=int, default=0, help="train.py's --seed for every run")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra train.py override for every run")
    p.add_argument("--baselines", default=None, help="baseline.py's baselines.json (or its folder) computed with the same "
                                                     "settings; default: compute (cached under the cache dir)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run (with OMP_NUM_THREADS=1 on a shared machine)")
    p.add_argument("--no-train", action="store_true", help="write the fold data only")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    settings = BaselineSettings(cv_repeats=args.cv_repeats, seed=args.cv_seed)
    out = Path(args.output_dir)
    names = [t for t in args.tasks.split(",") if t]
    loaded = {t: load_task(t, data_root=args.data_root, cache_dir=args.cache_dir, quiet=True) for t in names}
    all_runs = write_folds(loaded, settings, out)
    folds = {int(f) for f in args.folds.split(",") if f}
    todo = {rf: specs for rf, specs in all_runs.items()
            if (args.repeats is None or rf[0] < args.repeats) and (not folds or rf[1] in folds)}
    results: dict[str, Any] = {"preset": args.preset, "seed": args.seed, "overrides": args.overrides, "tasks": names,
                               "settings": settings.to_dict(), "metric": {t: lt.spec.metric for t, lt in loaded.items()},
                               "builtin_options": {t: dict(lt.options) for t, lt in loaded.items()},
                               "runs": {}}
    if args.no_train:
        return results
    refs = references(loaded, settings, args.baselines, args.cache_dir, args.quiet)
    started = time.time()
    for (r, f), specs in todo.items():
        key = f"r{r}_f{f}"
        res = run_fold(out / "runs" / key, list(specs.values()), args)
        res.update(tasks=list(specs), repeat=r, fold=f)
        results["runs"][key] = res
        print(f"[{time.time() - started:.0f}s] {key} done: {res['train_log']}", flush=True)
    results["wall_s_this_call"] = time.time() - started
    results["machine"] = machine_info(pick_device(cpu=True)) | {"python": platform.python_version()}
    results["per_task"] = summarise(results, refs)
    write_json(out / "results.json", results)
    table = markdown(results)
    (out / "results.md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    run_cli(main)
