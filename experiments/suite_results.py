"""The suite results table: multitask HighMMT vs single-task vs late fusion, on each task's test split.

    python -m experiments.suite_results --preset default --output-dir results/suite

Runs (each a normal ``train.py`` run folder, skipped when already finished, so the study resumes):
    multitask/            one model on all tasks (the preset's strategy, HighMMT's by default)
    single/<task>/        the same architecture trained on that task alone, same epochs x steps
    late_fusion/<task>/   late-fusion baseline: one encoder per modality (no sharing), no cross-modal
                          fusion, pooled latents concatenated into the head
A ``--set`` that is a dict over tasks (``train.loss_weights``, ...) or over modalities
(``train.modality_options``, explicit sharing groups) reaches each single-task and late-fusion run kept
to that task's own tasks / modalities (the tasks' specs are loaded once for the modalities).
Then ``evaluate.py`` on each (test split, no robustness sweep) and writes ``results.json`` and
``results.md`` (the table in the README comes from here). Reference figures are the simple
baselines measured in ``../shared/data/*/README.md``; goals are the issue's, raised to the
reference where the reference is higher.

One call is one seed (``--seed``), so its table judges no difference. Over several seeds, run one
call per seed into its own folder, then combine them (trains nothing):

    python -m experiments.suite_results --combine results/suite,results/suite_seed1 --output-dir results/suite

or let one command do both (a call per seed into ``seed<S>/``, a finished seed kept, then the combine):

    python -m experiments.suite_results --preset default --seeds 0,1,2 --runs multitask,single \
        --set train.threads=2 --output-dir results/table --doc docs/results.md

writes ``seeds.json`` and ``seeds.md``: per task mean ± sample sd (ddof = 1) with each seed's value,
and multitask - single-task with the verdict of ``benchmarks.common.compare`` (a difference not
larger than the larger of the two sds is "no difference").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import train
from analysis.interference import MODALITY_KEYS, PER_TASK_KEYS, restrict_override
from benchmarks.common import compare, format_mean_sd, format_seeds, markdown_table, mean_sd, run_cli, stats_note
from experiments.common import data_flags, doc_markers, task_modalities, train_unless_done, write_doc_section
from highmmt.checkpoint import TASK_WEIGHTS_DIR, atomic_write_bytes, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]

# Best simple-model reference per task from the data READMEs (test split; robot: CV mean of RF).
REFERENCES: dict[str, tuple[str, float, str]] = {
    "avmnist": ("accuracy", 0.8247, "late fusion LR (image 0.578, audio 0.625)"),
    "utd_mhad": ("accuracy", 0.953, "RF, best pair (all three: LR 0.921, RF 0.944)"),
    "physionet_mortality": ("auroc", 0.848, "gradient boosting (LR 0.840)"),
    "omniglot": ("accuracy", 0.259, "LR on pixels, character"),
    "sentiment": ("accuracy", 0.760, "TF-IDF + LR"),
    "subjectivity": ("accuracy", 0.920, "TF-IDF + LR"),
    "robot_failures_lp1": ("accuracy", 0.943, "RF, 5-fold CV"),
    "robot_failures_lp2": ("accuracy", 0.707, "RF, 5-fold CV"),
    "robot_failures_lp3": ("accuracy", 0.746, "RF, 3-fold CV"),
    "robot_failures_lp4": ("accuracy", 0.966, "RF, 5-fold CV"),
    "robot_failures_lp5": ("accuracy", 0.750, "RF, 5-fold CV"),
}
# The accuracy issue's goals (issue 15); the higher of goal and reference stands.
ISSUE_GOALS = {"avmnist": 0.90, "utd_mhad": 0.96, "physionet_mortality": 0.86, "omniglot": 0.60, "sentiment": 0.79,
               "subjectivity": 0.93}


def goal(task: str) -> float | None:
    ref = REFERENCES.get(task)
    values = [v for v in (ISSUE_GOALS.get(task), ref[1] if ref else None) if v is not None]
    return max(values) if values else None


def run(kind: str, out: Path, tasks: Sequence[str], preset: str, common: list[str], extra: list[str], threads: int,
        eval_args: Sequence[str] = ()) -> dict[str, Any]:
    """Train (unless finished) and evaluate one run folder in subprocesses; return metrics and timing.

    ``common`` goes to both train.py and evaluate.py, ``extra`` to train.py only, ``eval_args`` to
    evaluate.py only (e.g. ``--no-baselines``)."""
    started = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else dict(os.environ)
    py = [sys.executable]
    out.parent.mkdir(parents=True, exist_ok=True)
    call = {"preset": preset, "tasks": list(tasks), "train_args": list(extra)}  # what decides the trained weights
    record = out / "suite_call.json"
    if (out / "DONE").exists() and record.is_file() and json.loads(record.read_text()) != call:
        raise ValueError(f"{out} holds a finished run of another call ({json.loads(record.read_text())}, not {call}): "
                         "give another --output-dir, or remove it")
    train_unless_done(out, ["--preset", preset, "--tasks", ",".join(tasks), *common, *extra], log=out.parent / f"{out.name}.log",
                      threads=threads)
    atomic_write_json(record, call)
    trained = time.time() - started
    def evaluate(eval_dir: Path, *flags: str) -> dict[str, Any]:
        subprocess.run([*py, str(ROOT / "evaluate.py"), "--checkpoint", str(out), "--no-robustness", "--quiet", "--output-dir",
                        str(eval_dir), *flags, *[a for a in common if a != "--quiet"], *eval_args],
                       check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        return json.loads((eval_dir / "metrics.json").read_text())

    metrics = evaluate(out / "eval")
    cfg = json.loads((out / "config.json").read_text())
    done = (out / "DONE").read_text().strip()
    result = {"kind": kind, "tasks": list(tasks), "metrics": metrics, "wall_s_this_call": trained, "train_log": done,
              "parameters": metrics["_model"]["parameters_total"], "world_size": cfg.get("world_size", 1)}
    if kind == "multitask" and (out / TASK_WEIGHTS_DIR / "best.json").is_file():  # also one checkpoint for every task
        result["metrics_one_checkpoint"] = evaluate(out / "eval_one_checkpoint", "--weights", "mean")
    return result


def for_tasks(argv: Sequence[str], names: Sequence[str], task_mods: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """``argv`` with each ``--set`` of a per-task dict (``train.loss_weights``, ``train.task_augment_time``, ...)
    kept to the tasks ``names``, and, given ``task_mods`` (task -> its modalities), each modality dict
    (``train.modality_options``, explicit sharing groups) kept to those tasks' modalities, so that one call's
    overrides also fit its single-task runs."""
    cfg = {"tasks": {t: {"modalities": list(m)} for t, m in (task_mods or {}).items()}}
    keys = PER_TASK_KEYS + (MODALITY_KEYS if task_mods is not None else ())
    out = list(argv)
    for i in range(1, len(out)):
        if out[i - 1] == "--set" and out[i].split("=", 1)[0].strip() in keys:
            out[i] = restrict_override(out[i], cfg, names)
    return out


def names_modalities(overrides: Sequence[str]) -> bool:
    """Whether an override is a dict over modalities (see :data:`MODALITY_KEYS`)."""
    return any(o.split("=", 1)[0].strip() in MODALITY_KEYS and o.split("=", 1)[1].lstrip().startswith("{") for o in overrides if "=" in o)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default")
    p.add_argument("--tasks", default="suite", help="comma-separated tasks/aliases (default: the suite)")
    p.add_argument("--output-dir", default="results/suite")
    p.add_argument("--runs", default="multitask,single,late_fusion", help="which run kinds to do")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra override for every run")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (each gets cores/jobs threads)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--seed", type=int, default=None, help="train.py's --seed for every run (default 0)")
    p.add_argument("--doc", default="", help="with --combine or --seeds: also write the table as this markdown page (e.g. docs/results.md)")
    p.add_argument("--combine", default="", metavar="DIR,DIR,...",
                   help="train nothing: read the results.json of earlier calls (one seed each) and write seeds.json and "
                        "seeds.md (mean ± sd over the seeds, multitask vs single-task verdicts) into --output-dir; "
                        "DIR+DIR merges two calls of one seed (e.g. a --runs multitask and a --runs single call); "
                        "DIR[task|task] takes only those tasks' single-task and late-fusion runs from a call")
    p.add_argument("--inert-override", dest="inert", action="append", default=[], metavar="KEY",
                   help="with DIR+DIR: an override of KEY (e.g. train.deep_loss) may be in some of a seed's calls and not in "
                        "others, because it does not act on the runs of the calls without it (say why in the doc)")
    p.add_argument("--seeds", default="", metavar="S,S,...",
                   help="one call per seed into OUTPUT_DIR/seed<S> (a finished run is skipped), then --combine them into "
                        "OUTPUT_DIR (and --doc): the whole table in one command")
    args = p.parse_args(argv)
    if args.combine and args.seeds:
        p.error("--combine reads earlier calls; --seeds makes them: use one of the two")
    if args.combine:
        combined = combine([Path(d) for d in args.combine.split(",") if d], Path(args.output_dir), inert=args.inert)
        if args.doc:
            inert = "".join(f" --inert-override {k}" for k in args.inert)
            write_doc(Path(args.doc), f"--combine {args.combine}{inert} --output-dir {args.output_dir} --doc {args.doc}",
                      ("`suite_results.py --seed N` calls (`+` joins the calls of one seed)" if "+" in args.combine
                       else "one `suite_results.py --seed N` call per seed"), combined)
        return combined
    if not args.seeds:
        return run_seed(args, 0 if args.seed is None else args.seed, Path(args.output_dir))
    if args.seed is not None:
        p.error("--seed is one call's seed; with --seeds give every seed there")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not seeds:
        p.error(f"--seeds: no seed in {args.seeds!r}")
    if len(set(seeds)) < len(seeds):
        p.error(f"--seeds: a seed is repeated in {args.seeds!r}")
    out = Path(args.output_dir)
    for seed in seeds:
        done = out / f"seed{seed}" / "results.json"
        if done.is_file():
            previous = json.loads(done.read_text())
            differs = other_call(previous, args, seed)
            if differs:
                p.error(f"{done} holds another call's runs ({differs}): give another --output-dir, or remove seed{seed}")
            if same_runs(previous, args):
                print(f"seed {seed}: {done} is this call's, kept", flush=True)
                continue
        run_seed(args, seed, out / f"seed{seed}")
    combined = combine([out / f"seed{seed}" for seed in seeds], out)
    if args.doc:
        given = list(argv if argv is not None else sys.argv[1:])
        write_doc(Path(args.doc), shlex.join(given), "its one call per seed (folders seed<S> of its output folder)", combined)
    return combined


def other_call(results: dict[str, Any], args: argparse.Namespace, seed: int) -> str:
    """How a seed folder's ``results.json`` differs from this call's preset, overrides, seed and tasks ('' if not)."""
    want = {"preset": args.preset, "overrides": args.overrides, "seed": seed, "tasks": train.expand_tasks(args.tasks.split(","))}
    return "; ".join(f"{k} {results.get(k)!r}, not {v!r}" for k, v in want.items() if results.get(k) != v)


def same_runs(results: dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether a seed folder's ``results.json`` holds exactly this call's run kinds (``--runs``)."""
    kinds = args.runs.split(",")
    tasks = train.expand_tasks(args.tasks.split(","))
    wanted = {"multitask"} if "multitask" in kinds else set()
    wanted |= {f"{k}/{t}" for k in ("single", "late_fusion") if k in kinds for t in tasks}
    return set(results.get("runs", {})) == wanted


DOC_BEGIN, DOC_END = doc_markers("suite-results")


def write_doc(doc: Path, command: str, source: str, combined: dict[str, Any]) -> None:
    """The results page: the command that regenerated it, then the seeds' table, between markers; what other
    studies wrote into the page between their own markers (``experiments.ensemble --doc``) stays. On a page without
    this table's markers (new, or written before them), the text up to the first other block is replaced."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    old = doc.read_text() if doc.is_file() else ""
    if DOC_BEGIN not in old:
        others = old[old.index("<!--"):] if "<!--" in old else ""
        doc.write_text(f"# Results on the real suite\n\n{DOC_BEGIN}\n{DOC_END}\n" + (f"\n{others}" if others else ""))
    write_doc_section(doc, DOC_BEGIN, DOC_END, f"Regenerated by `python -m experiments.suite_results {command}` from "
                      f"{source}.\n\n" + markdown_seeds(combined))


def run_seed(args: argparse.Namespace, seed: int, out: Path) -> dict[str, Any]:
    """One seed's runs (``args.runs``) into ``out``; writes its ``results.json`` and ``results.md``."""
    tasks = train.expand_tasks(args.tasks.split(","))
    common = ["--quiet"] + data_flags(args)
    extra = ["--seed", str(seed)] + [a for o in args.overrides for a in ("--set", o)]
    kinds = args.runs.split(",")
    results: dict[str, Any] = {"preset": args.preset, "overrides": args.overrides, "seed": seed, "tasks": tasks, "runs": {}}
    jobs: list[tuple[str, str, Path, list[str], list[str]]] = []
    if "multitask" in kinds:
        jobs.append(("multitask", "multitask", out / "multitask", tasks, extra))
    lf = extra + ["--set", "model.sharing.encoder=none", "--set", "model.fusion.kind=none"]
    task_mods = (task_modalities(tasks, args.data_root, args.cache_dir)
                 if ("single" in kinds or "late_fusion" in kinds) and names_modalities(args.overrides) else None)
    for t in tasks:
        if "single" in kinds:
            jobs.append((f"single/{t}", "single", out / "single" / t, [t], for_tasks(extra, [t], task_mods)))
        if "late_fusion" in kinds:
            jobs.append((f"late_fusion/{t}", "late_fusion", out / "late_fusion" / t, [t], for_tasks(lf, [t], task_mods)))
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else 0
    started = time.time()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {key: pool.submit(run, kind, folder, ts, args.preset, common, ex, threads) for key, kind, folder, ts, ex in jobs}
        for key, fut in futures.items():
            results["runs"][key] = fut.result()
            print(f"[{time.time() - started:.0f}s] {key} done", flush=True)
    results["wall_s"] = time.time() - started
    results["hardware"] = {"machine": platform.processor() or platform.machine(), "python": platform.python_version()}
    try:
        import torch

        results["hardware"].update({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"})
    except Exception:  # noqa: BLE001 - hardware info is best effort
        pass
    atomic_write_json(out / "results.json", results)
    table = markdown(results)
    atomic_write_bytes(out / "results.md", table.encode())
    print(table)
    return results


def _metric(results: dict[str, Any], key: str, task: str, metric: str, which: str = "metrics") -> float | None:
    r = results["runs"].get(key)
    return None if r is None or which not in r else r[which].get(task, {}).get(metric)


def project_baseline(loaded: Sequence[dict[str, Any]], task: str) -> dict[str, Any] | None:
    """The best of ``baseline.py``'s simple models on the task's test split, as ``evaluate.py`` scored it
    next to the first run that has it (the same for every seed: it depends on the data only)."""
    for r in loaded:
        for run in r["runs"].values():
            m = run["metrics"].get(task, {})
            if m.get("baseline_best") is not None:
                return {"value": m["baseline_best"], "name": m.get("baseline_name", "")}
    return None


def markdown(results: dict[str, Any]) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"Preset `{results['preset']}`; test split; one seed ({results.get('seed', 0)}).",
        "",
        "| task | metric | multitask | single-task | late fusion | reference (simple model) | goal | multitask meets goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    mt_scores, st_scores = [], []
    for t in results["tasks"]:
        metric = REFERENCES.get(t, ("accuracy", None, ""))[0]
        m = _metric(results, "multitask", t, metric)
        s = _metric(results, f"single/{t}", t, metric)
        lf = _metric(results, f"late_fusion/{t}", t, metric)
        ref = REFERENCES.get(t)
        g = goal(t)
        met = "-" if (m is None or g is None) else ("yes" if m >= g else f"no ({m - g:+.3f})")
        lines.append(f"| {t} | {metric} | {fmt(m)} | {fmt(s)} | {fmt(lf)} | {fmt(ref[1] if ref else None)} {ref[2] if ref else ''} | {fmt(g)} | {met} |")
        if m is not None and s is not None:
            mt_scores.append(m)
            st_scores.append(s)
    runs = results["runs"]
    mt_params = runs.get("multitask", {}).get("parameters")
    st_params = sum(r["parameters"] for k, r in runs.items() if k.startswith("single/"))
    lf_params = sum(r["parameters"] for k, r in runs.items() if k.startswith("late_fusion/"))
    lines.append("")
    if mt_scores:
        mt_mean, st_mean = sum(mt_scores) / len(mt_scores), sum(st_scores) / len(st_scores)
        c = compare([mt_mean], [st_mean])
        lines.append(f"Mean primary metric over {len(mt_scores)} tasks: multitask {mt_mean:.3f}, single-task {st_mean:.3f}, "
                     f"difference {c.difference:+.3f} ({c.verdict}: no spread to judge it by; --combine puts seeds together).")
    if mt_params:
        lines.append(f"Parameters: one multitask model {mt_params:,.0f}; {sum(k.startswith('single/') for k in runs)} single-task "
                     f"models {st_params:,.0f} in total (ratio {mt_params / max(st_params, 1):.2f}); late-fusion models {lf_params:,.0f}.")
    for k, r in runs.items():
        if k == "multitask":
            lines.append(f"Multitask training: {r['train_log']}.")
    return "\n".join(lines) + "\n"


def read_call(folder: Path | str) -> dict[str, Any]:
    """One call's ``results.json``; ``DIR[task|task]`` keeps only the single-task and late-fusion runs of those tasks
    (a call's multitask run serves all its tasks, so it cannot be taken apart), and counts only their wall time."""
    text = str(folder)
    if not text.endswith("]") or "[" not in text:
        return json.loads((Path(text) / "results.json").read_text())
    path, _, wanted = text[:-1].rpartition("[")
    keep = [t.strip() for t in wanted.split("|") if t.strip()]
    call = json.loads((Path(path) / "results.json").read_text())
    missing = [t for t in keep if t not in call["tasks"]]
    if not keep or missing:
        raise ValueError(f"--combine: {text}: {path} has the tasks {call['tasks']}; "
                         f"{'name some between [ and ]' if not keep else f'not {missing}'}")
    runs = {k: v for k, v in call["runs"].items() if k != "multitask" and k.split("/", 1)[-1] in keep}
    without = [t for t in keep if not any(k.split("/", 1)[-1] == t for k in runs)]
    if without:
        raise ValueError(f"--combine: {text}: no single-task or late-fusion run of {without} in {path} (a multitask run "
                         "cannot be split by task)")
    seconds = [v.get("wall_s_this_call") for v in runs.values()]
    return {**call, "tasks": [t for t in call["tasks"] if t in keep], "runs": runs,
            "wall_s": sum(seconds) if None not in seconds else None}


def merge_calls(folders: Sequence[Path | str], inert: Sequence[str] = ()) -> dict[str, Any]:
    """One seed's ``results.json`` from several calls (``--combine A+B``: e.g. a ``--runs multitask`` call
    and a ``--runs single`` call of the same seed, preset and overrides): the union of their runs.
    ``DIR[task|task]`` takes only those tasks' single-task and late-fusion runs from a call (:func:`read_call`).
    Overrides of the ``inert`` keys may differ between the calls; the merged call has the union of them."""
    calls = [read_call(f) for f in folders]
    merged = {**calls[0], "runs": dict(calls[0]["runs"]), "tasks": list(calls[0]["tasks"])}
    acting = lambda r: [o for o in r.get("overrides", []) if o.split("=", 1)[0] not in inert]  # noqa: E731
    for f, r in zip(folders[1:], calls[1:]):
        if acting(r) != acting(merged):
            raise ValueError(f"--combine: {f} has overrides {r.get('overrides')!r}, {folders[0]} has {merged.get('overrides')!r}; "
                             "only calls of the same seed, preset and overrides can be merged with + "
                             "(--inert-override KEY for a key that does not act on the other call's runs)")
        merged["overrides"] = merged.get("overrides", []) + [o for o in r.get("overrides", []) if o not in merged.get("overrides", [])]
        for key in ("preset", "seed"):
            if r.get(key) != merged.get(key):
                raise ValueError(f"--combine: {f} has {key} {r.get(key)!r}, {folders[0]} has {merged.get(key)!r}; "
                                 "only calls of the same seed, preset and overrides can be merged with +")
        if set(r["runs"]) & set(merged["runs"]):
            raise ValueError(f"--combine: {f} repeats the runs {sorted(set(r['runs']) & set(merged['runs']))} of {folders[0]}")
        merged["runs"].update(r["runs"])
        merged["tasks"] += [t for t in r["tasks"] if t not in merged["tasks"]]
        merged["wall_s"] = (merged.get("wall_s") or 0) + (r.get("wall_s") or 0)
    return merged


def combine(folders: Sequence[Path], out: Path, inert: Sequence[str] = ()) -> dict[str, Any]:
    """Per-seed figures of several calls' ``results.json`` (one seed each, same preset, overrides and
    tasks) side by side; writes ``seeds.json`` and ``seeds.md`` into ``out``. ``inert``: see :func:`merge_calls`."""
    loaded = [merge_calls(str(f).split("+"), inert) for f in folders]
    if not loaded:
        raise ValueError("--combine needs at least one folder holding a results.json")
    first = loaded[0]
    for f, r in zip(folders, loaded):
        for key in ("preset", "overrides", "tasks"):
            if r.get(key) != first.get(key):
                raise ValueError(f"--combine: {f} has {key} {r.get(key)!r}, {folders[0]} has {first.get(key)!r}; "
                                 "only calls that differ in --seed can be combined")
    seeds = [r.get("seed", 0) for r in loaded]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"--combine: the folders {[str(f) for f in folders]} repeat a seed ({seeds}); each must be another seed")
    per_task: dict[str, dict[str, Any]] = {}
    for t in first["tasks"]:
        metric = REFERENCES.get(t, ("accuracy", None, ""))[0]
        values = {kind: [_metric(r, key, t, metric) for r in loaded]
                  for kind, key in (("multitask", "multitask"), ("single", f"single/{t}"), ("late_fusion", f"late_fusion/{t}"))}
        values["one_checkpoint"] = [_metric(r, "multitask", t, metric, "metrics_one_checkpoint") for r in loaded]
        per_task[t] = {"metric": metric, **values, "baseline": project_baseline(loaded, t)}
        if None not in values["multitask"] and None not in values["single"]:
            per_task[t]["multitask_vs_single"] = compare(values["multitask"], values["single"])._asdict()
        if None not in values["multitask"] and None not in values["one_checkpoint"]:
            per_task[t]["task_weights_vs_one_checkpoint"] = compare(values["multitask"], values["one_checkpoint"])._asdict()
    both = [t for t, v in per_task.items() if "multitask_vs_single" in v]
    means = {kind: [sum(per_task[t][kind][i] for t in both) / len(both) for i in range(len(loaded))] if both else []
             for kind in ("multitask", "single")}
    if both and all("task_weights_vs_one_checkpoint" in per_task[t] for t in both):
        means["one_checkpoint"] = [sum(per_task[t]["one_checkpoint"][i] for t in both) / len(both) for i in range(len(loaded))]
    combined = {"preset": first["preset"], "overrides": first.get("overrides", []), "inert_overrides": list(inert),
                "seeds": seeds, "folders": [str(f) for f in folders],
                "wall_s": [r.get("wall_s") for r in loaded], "hardware": first.get("hardware", {}),
                "multitask_train": [r["runs"].get("multitask", {}).get("train_log") for r in loaded],
                "tasks": first["tasks"], "per_task": per_task, "mean_tasks": both, "mean": means,
                "mean_multitask_vs_single": compare(means["multitask"], means["single"])._asdict() if both else None}
    atomic_write_json(out / "seeds.json", combined)
    table = markdown_seeds(combined)
    atomic_write_bytes(out / "seeds.md", table.encode())
    print(table)
    return combined


def markdown_seeds(combined: dict[str, Any]) -> str:
    """The table over seeds: mean ± sd (each seed's value), multitask - single-task with its verdict,
    late fusion over the seeds that ran it, the simple reference and the goal."""
    def fmt(vs: list[float | None]) -> str:
        got = [v for v in vs if v is not None]
        if not got:
            return "-"
        text = format_mean_sd(got, per_seed=True)
        return text if len(got) == len(vs) else f"{text} [{len(got)} of {len(vs)} seeds]"

    verdict = lambda c: "-" if c is None else f"{c['difference']:+.3f} ({c['verdict']})"  # noqa: E731
    # Runs that keep each task's own weights (train.select=task) are also scored with one checkpoint for every task.
    one = any(x is not None for v in combined["per_task"].values() for x in v.get("one_checkpoint", []))
    rows = []
    for t, v in combined["per_task"].items():
        ref, g = REFERENCES.get(t), goal(t)
        mt = [x for x in v["multitask"] if x is not None]
        met = "-" if (not mt or g is None) else ("yes" if mean_sd(mt).mean >= g else f"no ({mean_sd(mt).mean - g:+.3f})")
        base = v.get("baseline")
        extra = [fmt(v["one_checkpoint"]), verdict(v.get("task_weights_vs_one_checkpoint"))] if one else []
        rows.append([t, v["metric"], fmt(v["multitask"]), *extra, fmt(v["single"]), verdict(v.get("multitask_vs_single")), fmt(v["late_fusion"]),
                     "-" if base is None else f"{base['value']:.3f} {base['name']}",
                     "-" if ref is None else f"{ref[1]:.3f} {ref[2]}", "-" if g is None else f"{g:.3f}", met])
    if combined["mean_tasks"]:
        means = combined["mean"]
        extra = ([fmt(means["one_checkpoint"]), verdict(compare(means["multitask"], means["one_checkpoint"])._asdict())]
                 if one and "one_checkpoint" in means else ["", ""] if one else [])
        rows.append([f"**mean ({len(combined['mean_tasks'])})**", "", fmt(means["multitask"]), *extra, fmt(means["single"]),
                     verdict(combined["mean_multitask_vs_single"]), "", "", "", "", ""])
    head = (f"Preset `{combined['preset']}`; test split; {format_seeds(combined['seeds'])} (folders {', '.join(combined['folders'])}). "
            f"{stats_note(combined['seeds'])}")
    hw = combined.get("hardware") or {}
    if hw:
        head += (f"\n\nMachine: {hw.get('machine', '?')}, {hw.get('device', 'cpu')}, torch {hw.get('torch', '?')}, python {hw.get('python', '?')}. "
                 "Wall time per seed (all runs of that call): "
                 + ", ".join("-" if w is None else f"{w / 60:.1f} min" for w in combined.get("wall_s", []))
                 + "; multitask model: " + "; ".join(str(m) for m in combined.get("multitask_train", [])) + ".")
    columns = ["task", "metric", "multitask", *(["multitask, one checkpoint", "multitask - one checkpoint"] if one else []),
               "single-task", "multitask - single-task", "late fusion", "baseline.py (best, this split)", "data README reference",
               "goal", "multitask mean meets goal"]
    if one:
        head += ("\n\n\"multitask\" scores each task with the weights of its own best validation epoch (`train.select=task`); "
                 "\"one checkpoint\" scores every task with the one epoch that was best on the mean of the tasks' validation metrics "
                 "(`evaluate.py --weights mean`), both from the same training runs.")
    return head + "\n\n" + markdown_table(columns, rows) + "\n"


if __name__ == "__main__":
    run_cli(main)
