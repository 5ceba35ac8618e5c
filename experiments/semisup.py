"""Learning from unlabeled data: supervised-only vs self-training, co-training and co-regularization.

    python -m experiments.semisup                    # the CPU study in the README (~20 CPU-minutes, 2 workers)
    python -m experiments.semisup --seeds 0,1,2,3,4 --preset default --scale 10 --jobs 4     # larger, e.g. on a GPU
    python -m experiments.semisup --seeds 0,1,2 --view-encoders separate,shared          # + the views' encoders: own vs one shared

For every task, labeled fraction, method and seed: one ``train.py`` run with ``--labeled-fraction``
and ``train.semi.method`` (all methods see the same labeled rows for a given seed), then
``evaluate.py`` on the test split (co-training and co-regularization predict with their views'
ensemble and also report each view, the task's own head and how independent the views' errors
are). ``--view-encoders separate,shared`` runs every view method twice: with each view's own
encoders and fusion (``train.semi.view_encoders=separate``, no parameter shared between the views)
and with the model's one shared encoder (``shared``); a third table compares the two, paired by seed,
with the views' error independence under each. Runs execute in ``--jobs`` worker processes with one torch thread each and are skipped when
already finished, so the study resumes. Pseudo-label accuracy is measured here, afterwards, from each
run's ``semisup.json`` against the true training labels (the methods never see them).

Writes into ``--output-dir`` (default ``experiments/results/semisup``): ``results.json`` (every run and
the aggregates, hardware, wall and CPU time), ``results.md`` (the tables in the README) and
``semisup.png`` (test accuracy against labeled fraction per task and method).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import compare, hardware_line, machine_info, markdown_table, mean_sd, run_cli, stats_note, write_json
from experiments.common import doc_markers, train_unless_done, write_doc_section
from highmmt.plotting import pyplot, save_figure

ROOT = Path(__file__).resolve().parents[1]

METHODS = ("none", "self_training", "co_training", "co_regularization", "views_only")
LABELS = {"none": "supervised only", "self_training": "self-training", "co_training": "co-training",
          "co_regularization": "co-regularization", "views_only": "two view heads, no unlabeled data"}
VIEW_METHODS = ("co_training", "co_regularization", "views_only")
VIEW_ENCODERS = ("separate", "shared")  # train.semi.view_encoders
# The ablation: co-training's heads and ensemble without any unlabeled data (co-regularization at weight 0).
ABLATIONS = {"views_only": ("co_regularization", {"train.semi.agreement_weight": 0.0})}
# Per task: labeled fractions, the two views, and its training/semi settings (small CPU defaults).
# UTD-MHAD has 27 classes over 323 training rows: 1% would be 4 rows, so every class gets one (27
# rows, as at 5%); its fractions therefore start at 5%. Thresholds: on validation, the supervised
# model's predictions above them were >= 90% right (pilot run, seed 0); rounds start halfway.
TASKS: dict[str, dict[str, Any]] = {
    "avmnist": {
        "fractions": (0.01, 0.05, 0.1),
        "views": "mnist_image|fsdd_audio",
        "epochs": 8, "steps": 25, "batch_size": 32, "eval_limit": 2000,
        "semi": {"warmup_epochs": 4, "threshold": 0.6, "round_fraction": 0.02, "score_limit": 3000},
    },
    "utd_mhad": {
        "fractions": (0.05, 0.1, 0.25),
        "views": "skeleton|inertial",
        "epochs": 8, "steps": 40, "batch_size": 16, "eval_limit": 0,
        "semi": {"warmup_epochs": 4, "threshold": 0.3, "round_fraction": 0.1, "score_limit": 0},
        "train": {"lr": 0.003},
    },
}


def run_argv(task: str, fraction: float, method: str, seed: int, args: argparse.Namespace, view_encoders: str = "") -> list[str]:
    """The train.py command line of one run (``view_encoders``: the view methods' setting)."""
    cfg = TASKS[task]
    method, ablation = ABLATIONS.get(method, (method, {}))
    if view_encoders:
        ablation = {**ablation, "train.semi.view_encoders": view_encoders}
    sets = {
        "train.threads": 1, "train.epochs": cfg["epochs"], "train.steps_per_epoch": int(round(cfg["steps"] * args.scale)),
        "train.batch_size": cfg["batch_size"], "train.max_eval_samples": args.val_limit, "train.semi.method": method,
        "train.semi.views": cfg["views"], **{f"train.{k}": v for k, v in cfg.get("train", {}).items()},
        **{f"train.semi.{k}": v for k, v in cfg["semi"].items()}, **ablation,
    }
    argv = ["--preset", args.preset, "--tasks", task, "--seed", str(seed), "--quiet",
            "--labeled-fraction", str(fraction), *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    argv += [a for o in args.overrides for a in ("--set", o)]
    if args.data_root:
        argv += ["--data-root", args.data_root]
    if args.cache_dir:
        argv += ["--cache-dir", args.cache_dir]
    return argv


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one_run(job: dict[str, Any]) -> dict[str, Any]:
    """Train (unless finished) and evaluate one run in this worker; return its figures."""
    import evaluate
    from transference.semisup import load_summary

    out = Path(job["out"])
    started, cpu0 = time.time(), _cpu_s()
    reused = (out / "DONE").exists()
    train_unless_done(out, job["argv"], log=out.parent / f"{out.name}.log")
    trained = time.time() - started
    ev = ["--checkpoint", str(out), "--no-robustness", "--quiet"] + (["--limit", str(job["eval_limit"])] if job["eval_limit"] else [])
    ev += [a for flag in ("--data-root", "--cache-dir") if job.get(flag) for a in (flag, job[flag])]
    done_eval = out / "eval" / "metrics.json"
    if done_eval.exists() and done_eval.stat().st_mtime >= (out / "DONE").stat().st_mtime:  # a finished study re-reads
        metrics = json.loads(done_eval.read_text())[job["task"]]
    else:
        metrics = evaluate.main(ev)[job["task"]]
        reused = False
    timing_file = out / "timing.json"
    timing = {"train_wall_s": trained, "wall_s": time.time() - started, "cpu_s": _cpu_s() - cpu0}
    if reused:  # keep what the run cost when it was trained and evaluated
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else (job.get("previous_timing") or timing)
    timing_file.write_text(json.dumps(timing))
    summary = load_summary(out).get("tasks", {}).get(job["task"], {})
    return {**{k: job[k] for k in ("task", "fraction", "method", "seed", "view_encoders")}, "out": str(out), "metrics": metrics,
            "labeled": _labeled_from_metrics(out, job["task"]),
            "pseudo": summary.get("pseudo", {}), "views": summary.get("views", []), "rounds": summary.get("rounds", 0), "stopped": summary.get("stopped", ""),
            **timing, "reused": reused, "done": (out / "DONE").read_text().strip()}


def _labeled_from_metrics(out: Path, task: str) -> int:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    counts = [r["value"] for r in rows if r["task"] == task and r["metric"] == "labeled"]
    return int(counts[-1]) if counts else 0


def pseudo_label_quality(runs: list[dict[str, Any]], data_root: str | None, cache_dir: str | None) -> None:
    """Add each run's pseudo-label count and accuracy (against the true training labels), in place."""
    from tasks.cache import load_task

    truth: dict[str, np.ndarray] = {}
    for r in runs:
        rows = np.asarray(r["pseudo"].get("row", []), dtype=np.int64)
        r["pseudo_labeled"] = int(len(rows))
        r["pseudo_accuracy"] = float("nan")
        r["pseudo_by_view"] = {}
        if not len(rows):
            continue
        if r["task"] not in truth:
            lt = load_task(r["task"], data_root=data_root, cache_dir=cache_dir, quiet=True)
            truth[r["task"]] = np.asarray(lt.splits["train"].with_format("arrow")[lt.spec.target], dtype=np.int64)
        right = truth[r["task"]][rows] == np.asarray(r["pseudo"]["label"])
        r["pseudo_accuracy"] = float(right.mean())
        by = np.asarray(r["pseudo"]["by"])
        for v, mods in enumerate(r.get("views") or []):  # co-training: who labeled what, how well
            r["pseudo_by_view"]["+".join(mods)] = {"count": int((by == v).sum()), "accuracy": float(right[by == v].mean()) if (by == v).any() else float("nan")}


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, fraction, method, view encoders): mean and sample sd over seeds, the paired difference
    from supervised-only (mean, seeds better) and its verdict (``benchmarks.common.compare``)."""
    base = {(r["task"], r["fraction"], r["seed"]): r["metrics"]["accuracy"] for r in runs if r["method"] == "none"}
    groups: dict[tuple[str, float, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["fraction"], r["method"], r.get("view_encoders") or ""), []).append(r)
    out = []
    order = lambda kv: (kv[0][0], kv[0][1], METHODS.index(kv[0][2]), kv[0][3])  # noqa: E731
    for (task, fraction, method, view_encoders), rs in sorted(groups.items(), key=order):
        acc = mean_sd(r["metrics"]["accuracy"] for r in rs)
        paired = [r for r in rs if (task, fraction, r["seed"]) in base]
        gains = np.array([r["metrics"]["accuracy"] - base[(task, fraction, r["seed"])] for r in paired])
        versus = compare([r["metrics"]["accuracy"] for r in paired], [base[(task, fraction, r["seed"])] for r in paired])
        agg = {"task": task, "fraction": fraction, "method": method, "view_encoders": view_encoders,
               "seeds": len(rs), "seed_list": [r["seed"] for r in rs],
               "labeled": float(np.mean([r["labeled"] for r in rs])),
               "accuracy_mean": acc.mean, "accuracy_sd": float("nan") if acc.sd is None else acc.sd,
               "gain_mean": float(gains.mean()) if len(gains) else float("nan"),
               "gain_wins": int((gains > 0).sum()), "gain_n": int(len(gains)),
               "gain_spread": float("nan") if versus.spread is None else versus.spread,
               "verdict": "" if method == "none" or not len(gains) else versus.verdict,
               "pseudo_labeled": float(np.mean([r["pseudo_labeled"] for r in rs])),
               "pseudo_accuracy": _nanmean([r["pseudo_accuracy"] for r in rs]),
               "wall_s": float(np.mean([r["wall_s"] for r in rs]))}
        for view in sorted({v for r in rs for v in r.get("pseudo_by_view", {})}):
            stats = [r["pseudo_by_view"].get(view, {"count": 0, "accuracy": float("nan")}) for r in rs]
            agg[f"pseudo_by:{view}"] = float(np.mean([x["count"] for x in stats]))
            agg[f"pseudo_accuracy_by:{view}"] = _nanmean([x["accuracy"] for x in stats])
        if method in VIEW_METHODS:
            for key in sorted({k for r in rs for k in r["metrics"] if "@" in k or k.startswith("views_")}):
                agg[key] = _nanmean([r["metrics"].get(key, float("nan")) for r in rs])
        out.append(agg)
    return out


def encoder_comparison(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, fraction, view method) run under both view-encoder settings: test accuracy with
    separate minus shared encoders, paired by seed (mean, seeds better, verdict), and each setting's
    mean error correlation, both-wrong rate (and its value under independence) and shared parameters."""
    by = {(r["task"], r["fraction"], r["method"], r.get("view_encoders") or "", r["seed"]): r for r in runs}
    out = []
    for task, fraction, method in sorted({k[:3] for k in by if k[2] in VIEW_METHODS}, key=lambda k: (k[0], k[1], METHODS.index(k[2]))):
        seeds = sorted(k[4] for k in by if k[:4] == (task, fraction, method, "separate") and (task, fraction, method, "shared", k[4]) in by)
        if not seeds:
            continue
        sep = [by[(task, fraction, method, "separate", s)]["metrics"] for s in seeds]
        sha = [by[(task, fraction, method, "shared", s)]["metrics"] for s in seeds]
        diffs = np.array([a["accuracy"] - b["accuracy"] for a, b in zip(sep, sha)])
        row = {"task": task, "fraction": fraction, "method": method, "seeds": seeds,
               "accuracy_separate": float(np.mean([m["accuracy"] for m in sep])), "accuracy_shared": float(np.mean([m["accuracy"] for m in sha])),
               "difference": float(diffs.mean()), "wins": int((diffs > 0).sum()),
               "verdict": compare([m["accuracy"] for m in sep], [m["accuracy"] for m in sha]).verdict}
        for setting, ms in (("separate", sep), ("shared", sha)):
            for key in ("views_error_correlation", "views_both_wrong", "views_both_wrong_if_independent", "views_disagreement",
                        "views_shared_parameters"):
                row[f"{key}:{setting}"] = _nanmean([m.get(key, float("nan")) for m in ms])
        out.append(row)
    return out


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def markdown(results: dict[str, Any]) -> str:
    aggs = results["aggregates"]
    f3 = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
    rows = []
    for a in aggs:
        sd = "" if math.isnan(a["accuracy_sd"]) else f" ± {a['accuracy_sd']:.3f}"
        gain = "" if a["method"] == "none" else f"{a['gain_mean']:+.3f} ({a['gain_wins']}/{a['gain_n']})"
        verdict = a.get("verdict", "")
        pseudo = "-" if a["method"] not in ("self_training", "co_training") else f"{a['pseudo_labeled']:.0f} ({f3(a['pseudo_accuracy'])})"
        by_view = [f"{k.split(':', 1)[1]} {a[k]:.0f}" for k in a if k.startswith("pseudo_by:")]
        if by_view:
            pseudo += "; by " + ", ".join(by_view)
        rows.append([a["task"], f"{a['fraction']:g} ({a['labeled']:.0f})", _label(a), f"{a['accuracy_mean']:.3f}{sd}", gain, pseudo,
                     verdict])
    main = markdown_table(["task", "labeled fraction (rows)", "method", "test accuracy (mean ± sd)",
                           "difference from supervised (seeds better)", "pseudo-labeled rows (their accuracy)",
                           "verdict vs supervised"], rows)
    view_rows = []
    for a in aggs:
        if a["method"] not in VIEW_METHODS:
            continue
        per_view = [k for k in a if "@" in k and not k.endswith("@fused")]
        shared = a.get("views_shared_parameters")
        view_rows.append([a["task"], f"{a['fraction']:g}", _label(a),
                          ", ".join(f"{k.split('@', 1)[1]} {f3(a[k])}" for k in per_view), f3(a.get("accuracy@fused")),
                          f3(a["accuracy_mean"]), f3(a.get("views_disagreement")),
                          f"{f3(a.get('views_both_wrong'))} / {f3(a.get('views_both_wrong_if_independent'))}",
                          f3(a.get("views_error_correlation")), f3(a.get("views_error_kappa")),
                          "-" if shared is None or math.isnan(shared) else f"{shared:,.0f}"])
    views = markdown_table(["task", "fraction", "method", "accuracy of each view", "task head", "views' ensemble",
                            "disagreement", "both wrong / if independent", "error correlation", "error kappa",
                            "parameters both views use"], view_rows)
    cpu_min = results["cpu_s"] / 60
    head = (f"Test split ({results['eval_note']}); {len(results['seeds'])} seeds ({', '.join(map(str, results['seeds']))}); "
            f"preset `{results['preset']}` x step scale {results['scale']:g}. Hardware: {hardware_line(results['machine'])}. "
            f"{len(results['runs'])} runs, {results['wall_s'] / 60:.1f} min wall with {results['jobs']} worker(s), "
            f"{cpu_min:.1f} CPU-minutes in the workers. {stats_note(results['seeds'])} The difference from "
            "supervised-only is paired by seed (same labeled rows).")
    text = f"{head}\n\n{main}\n\nViews (test split, mean over seeds):\n\n{views}\n"
    comparison = results.get("encoder_comparison") or []
    if comparison:
        cmp_rows = [[c["task"], f"{c['fraction']:g}", LABELS[c["method"]], f"{c['accuracy_separate']:.3f} / {c['accuracy_shared']:.3f}",
                     f"{c['difference']:+.3f} ({c['wins']}/{len(c['seeds'])})", c["verdict"],
                     f"{f3(c['views_error_correlation:separate'])} / {f3(c['views_error_correlation:shared'])}",
                     f"{f3(c['views_both_wrong:separate'])} ({f3(c['views_both_wrong_if_independent:separate'])}) / "
                     f"{f3(c['views_both_wrong:shared'])} ({f3(c['views_both_wrong_if_independent:shared'])})",
                     f"{f3(c['views_disagreement:separate'])} / {f3(c['views_disagreement:shared'])}"] for c in comparison]
        text += ("\nSeparate against shared view encoders (test split; separate / shared; difference paired by seed):\n\n"
                 + markdown_table(["task", "fraction", "method", "accuracy", "separate - shared (seeds better)", "verdict",
                                   "error correlation", "both wrong (if independent)", "disagreement"], cmp_rows) + "\n")
    return text


def _label(a: dict[str, Any]) -> str:
    """A method's name in the tables, with its view-encoder setting when it has one."""
    ve = a.get("view_encoders") or ""
    return LABELS[a["method"]] + ({"separate": ", separate encoders", "shared": ", one shared encoder"}.get(ve, ""))


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    tasks = list(dict.fromkeys(a["task"] for a in results["aggregates"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in METHODS:
            for ve in ("", *VIEW_ENCODERS):
                pts = [a for a in results["aggregates"] if a["task"] == task and a["method"] == method and (a.get("view_encoders") or "") == ve]
                if not pts:
                    continue
                x = [100 * a["fraction"] for a in pts]
                ax.errorbar(x, [a["accuracy_mean"] for a in pts], yerr=[0 if math.isnan(a["accuracy_sd"]) else a["accuracy_sd"] for a in pts],
                            marker="o", capsize=3, label=_label(pts[0]))
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([100 * f for f in TASKS.get(task, {}).get("fractions", [])] or ax.get_xticks())
        ax.set_xticklabels([f"{100 * f:g}%" for f in TASKS.get(task, {}).get("fractions", [])])
        ax.set_title(task)
        ax.set_xlabel("labeled share of the training split")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, among {list(TASKS)}")
    p.add_argument("--fractions", default=None, help="labeled fractions for every task (default: per task, see TASKS)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--view-encoders", default="separate",
                   help=f"comma-separated among {list(VIEW_ENCODERS)}: the view methods run once per setting (train.semi.view_encoders)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every task's steps per epoch (longer training)")
    p.add_argument("--val-limit", type=int, default=500, help="validation rows scored per epoch (train.max_eval_samples)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra override for every run")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    p.add_argument("--output-dir", default=str(ROOT / "experiments" / "results" / "semisup"))
    p.add_argument("--doc", default="", help="also put the tables between the <!-- semisup:begin --> / <!-- semisup:end --> markers of this "
                   "markdown file ('' = none)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"--tasks: unknown task(s) {unknown}; this study knows {list(TASKS)} (views and settings are per task)")
    methods = [m for m in args.methods.split(",") if m]
    if set(methods) - set(METHODS) or "none" not in methods:
        raise ValueError(f"--methods must be among {list(METHODS)} and include 'none' (the baseline), got {methods}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    view_encoders = [v for v in args.view_encoders.split(",") if v]
    if not view_encoders or set(view_encoders) - set(VIEW_ENCODERS):
        raise ValueError(f"--view-encoders must be among {list(VIEW_ENCODERS)}, got {view_encoders}")
    out = Path(args.output_dir)
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    previous_timing = {r["out"]: {k: r[k] for k in ("train_wall_s", "wall_s", "cpu_s")} for r in previous.get("runs", [])}
    jobs = []
    for task in tasks:
        fractions = [float(f) for f in args.fractions.split(",")] if args.fractions else TASKS[task]["fractions"]
        for fraction in fractions:
            for method in methods:
                # View methods: one folder per encoder setting (runs before the setting existed shared the encoder
                # and lie in <method>/s<seed>; they are not reused).
                for ve in (view_encoders if method in VIEW_METHODS else [""]):
                    for seed in seeds:
                        folder = out / "runs" / task / f"f{fraction:g}" / method / ve / f"s{seed}"
                        jobs.append({"task": task, "fraction": fraction, "method": method, "seed": seed, "view_encoders": ve,
                                     "out": str(folder), "argv": run_argv(task, fraction, method, seed, args, ve),
                                     "eval_limit": TASKS[task]["eval_limit"], "--data-root": args.data_root,
                                     "--cache-dir": args.cache_dir, "previous_timing": previous_timing.get(str(folder))})
    machine = machine_info(__import__("torch").device("cpu"))
    machine["torch_threads"] = 1  # what each worker uses
    started = time.time()
    runs = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx, initializer=_init_worker) as pool:
        for r in pool.map(one_run, jobs):
            runs.append(r)
            print(f"[{time.time() - started:5.0f}s] {r['task']} {r['fraction']:g} {r['method']} {r['view_encoders']} seed {r['seed']}: "
                  f"accuracy {r['metrics']['accuracy']:.3f} ({r['wall_s']:.0f}s)", flush=True)
    pseudo_label_quality(runs, args.data_root, args.cache_dir)
    machine["load_average_end"] = machine_info(__import__("torch").device("cpu"))["load_average"]
    wall = time.time() - started
    if previous and all(r["reused"] for r in runs):  # only re-read: report the study as it ran
        machine, wall = previous["machine"], previous["wall_s"]
    results = {"tasks": tasks, "methods": methods, "view_encoders": view_encoders, "seeds": seeds, "preset": args.preset, "scale": args.scale,
               "overrides": args.overrides, "jobs": args.jobs, "settings": {t: TASKS[t] for t in tasks},
               "eval_note": ", ".join(f"{t}: {'a seeded subset of ' + str(TASKS[t]['eval_limit']) + ' rows' if TASKS[t]['eval_limit'] else 'all rows'}" for t in tasks),
               "machine": machine, "wall_s": wall, "cpu_s": float(sum(r["cpu_s"] for r in runs)),
               "runs": [{k: v for k, v in r.items() if k != "pseudo"} for r in runs], "aggregates": aggregate(runs),
               "encoder_comparison": encoder_comparison(runs)}
    write_json(out / "results.json", results)
    table = markdown(results)
    (out / "results.md").write_text(table)
    if args.doc:
        write_doc_section(Path(args.doc), *doc_markers("semisup"), table)
    plot(results, out / "semisup.png")
    print(table)
    return results


if __name__ == "__main__":
    run_cli(main)
