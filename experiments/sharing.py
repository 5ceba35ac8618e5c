"""Parameter-sharing benchmark: no sharing, full sharing and heterogeneity-grouped sharing on the suite.

    python -m experiments.heterogeneity                 # first: the groups (sharing_k<k>.json)
    python -m experiments.sharing                       # small CPU setting
    python -m experiments.sharing --preset default --epochs 20 --steps-per-epoch 200 --seeds 3 --jobs 4   # GPU

Each configuration is one multitask ``train.py`` run on the tasks (same preset, steps and seed),
evaluated on the test split (``--limit`` rows per task):

    none          one encoder per modality, one fusion block per modality pair
    all           one encoder, one fusion block (HighMMT's homogeneous model)
    hetero_k<k>   encoder groups from the modality heterogeneity matrix, fusion groups from the
                  interaction matrix, k groups each (``experiments/heterogeneity.py``'s sharing_k<k>.json)
    random_k<k>   random groups of the same sizes as hetero_k<k> (a control; ``--no-random-control`` skips it)

Writes ``sharing.json``, ``sharing.md`` (parameters and per-task test metrics) and
``params_vs_performance.png`` into ``--output-dir`` (default ``experiments/results/sharing``); the run
folders stay under ``<output-dir>/runs/`` and a finished run with the same command is not retrained.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

import modalities  # noqa: F401  (registers the embedders)
import tasks as task_registry  # noqa: F401  (registers the built-in tasks)
import train
from benchmarks.common import compare, format_seeds, hardware_line, machine_info, markdown_table, mean_sd, num_threads, run_cli, stats_note, write_json
from experiments.common import data_flags, task_modalities, train_unless_done
from highmmt import HighMMT
from highmmt.metrics import HIGHER_IS_BETTER
from highmmt.plotting import pyplot, save_figure
from highmmt.sharing import task_pairs
from tasks.cache import load_task
from tasks.loader import predict, score
from transference.heterogeneity import random_groups_like, restrict_groups, sharing_config

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_OUT = ROOT / "experiments" / "results" / "sharing"
DEFAULT_GROUPS = ROOT / "experiments" / "results" / "heterogeneity"


def configurations(task_mods: Mapping[str, Sequence[str]], ks: Sequence[int], groups_dir: Path, random_control: bool, seed: int) -> dict[str, dict[str, Any]]:
    """Name -> sharing dict for every configuration of the benchmark."""
    mods = sorted({m for ms in task_mods.values() for m in ms})
    pairs = task_pairs(task_mods.values())
    configs: dict[str, dict[str, Any]] = {"none": sharing_config("none", "none"), "all": sharing_config("all", "all")}
    for k in ks:
        path = groups_dir / f"sharing_k{k}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `python -m experiments.heterogeneity --k {','.join(map(str, ks))} "
                                    f"--output-dir {groups_dir}` first (it writes sharing_k<k>.json)")
        raw = json.loads(path.read_text())
        enc = restrict_groups(raw["encoder"], mods) if isinstance(raw["encoder"], dict) else raw["encoder"]
        fus = restrict_groups(raw["fusion"], pairs) if isinstance(raw["fusion"], dict) and pairs else "all"
        configs[f"hetero_k{k}"] = sharing_config(enc, fus)
        if random_control:
            renc = random_groups_like(enc, seed=seed + k) if isinstance(enc, dict) else enc
            rfus = random_groups_like(fus, seed=seed + 100 + k, prefix="q") if isinstance(fus, dict) else fus
            configs[f"random_k{k}"] = sharing_config(renc, rfus)
    return configs


def run_one(name: str, sharing: Mapping[str, Any], seed: int, args: argparse.Namespace, tasks: Sequence[str], out: Path) -> dict[str, Any]:
    """Train (unless this exact command already finished) and evaluate one configuration."""
    folder = out / "runs" / f"{name}_s{seed}"
    common = ["--quiet"] + data_flags(args)
    argv = ["--preset", args.preset, "--tasks", ",".join(tasks), "--seed", str(seed), *common,
            "--set", f"train.epochs={args.epochs}", "--set", f"train.steps_per_epoch={args.steps_per_epoch}",
            "--set", f"train.threads={args.threads}",
            "--set", "model.sharing.encoder=" + json.dumps(sharing["encoder"], separators=(",", ":")),
            "--set", "model.sharing.fusion=" + json.dumps(sharing["fusion"], separators=(",", ":")),
            *[a for o in args.overrides for a in ("--set", o)]]
    if isinstance(sharing["fusion"], dict):
        argv += ["--set", "model.fusion.kind=pairwise"]
    stamp = folder / "benchmark_cmd.json"
    same = stamp.is_file() and json.loads(stamp.read_text()) == argv
    if not same and folder.exists():  # another command trained here: start over
        shutil.rmtree(folder)
    # in this process with one job (no interpreter start-up per run), else a subprocess of one thread
    train_s = train_unless_done(folder, argv, log=None if args.jobs == 1 else folder.parent / f"{folder.name}.log",
                                threads=None if args.jobs == 1 else 1)
    stamp.write_text(json.dumps(argv))
    same = same and train_s == 0.0
    metrics = evaluate_run(folder, args)
    cfg = json.loads((folder / "config.json").read_text())
    primary = {t: spec["metric"] for t, spec in cfg["tasks"].items()}
    return {
        "config": name, "seed": seed, "sharing": sharing,
        "encoder_groups": 1 if sharing["encoder"] == "all" else (len(cfg["model"]["modalities"]) if sharing["encoder"] == "none" else len(sharing["encoder"])),
        "fusion_groups": 1 if sharing["fusion"] == "all" else (len(task_pairs(t["modalities"] for t in cfg["model"]["tasks"].values())) if sharing["fusion"] == "none" else len(sharing["fusion"])),
        "parameters_total": metrics["_model"]["total"], "parameters_shared": metrics["_model"]["shared"],
        "parameters_detail": metrics["_model"], "metrics": {t: metrics[t][m] for t, m in primary.items()}, "metric_names": primary,
        "train_log": (folder / "DONE").read_text().strip(), "train_s_this_call": train_s, "retrained": not same,
    }


def evaluate_run(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Test-split metrics of a run's best checkpoint (at most ``--limit`` rows per task) and its parameter counts."""
    model = HighMMT.from_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    out: dict[str, Any] = {"_model": model.parameter_counts()}
    with num_threads(args.threads):
        for name, arg in cfg["task_args"].items():
            lt = load_task(arg, data_root=args.data_root, cache_dir=args.cache_dir, options=cfg["train"]["task_options"].get(name), quiet=True)
            outputs, targets = predict(model, lt.splits["test"], lt.spec, limit=args.limit)
            out[name] = score(lt.spec, outputs, targets)
    write_json(folder / "test_metrics.json", out)
    return out


def family(task: str) -> str:
    """The five robot-failure problems count as one family in the family mean."""
    return "robot_failures" if task.startswith("robot_failures_") else task


def _signed_means(run: Mapping[str, Any]) -> tuple[float, float]:
    """One run's mean and family mean over tasks, lower-is-better metrics sign-flipped."""
    signed = {t: v if HIGHER_IS_BETTER[run["metric_names"][t]] else -v for t, v in run["metrics"].items()}
    families: dict[str, list[float]] = {}
    for t, v in signed.items():
        families.setdefault(family(t), []).append(v)
    return float(np.mean(list(signed.values()))), float(np.mean([np.mean(v) for v in families.values()]))


def aggregate(rows: Sequence[Mapping[str, Any]], baseline: str = "all") -> list[dict[str, Any]]:
    """One row per configuration: mean and sample sd (ddof = 1) over seeds of every metric, of the
    mean over tasks and of the family mean (sign-flipped for lower-is-better), and the comparison of
    the per-seed means with ``baseline`` (HighMMT's single shared encoder; ``benchmarks.common.compare``)."""
    out = []
    per_seed = {name: [_signed_means(r) for r in rows if r["config"] == name] for name in dict.fromkeys(r["config"] for r in rows)}
    for name in per_seed:
        runs = [r for r in rows if r["config"] == name]
        tasks = list(runs[0]["metrics"])
        stats = {t: mean_sd(r["metrics"][t] for r in runs) for t in tasks}
        mean, family_mean = (mean_sd(m[i] for m in per_seed[name]) for i in (0, 1))
        row = {"config": name, "encoder_groups": runs[0]["encoder_groups"], "fusion_groups": runs[0]["fusion_groups"],
               "parameters_total": runs[0]["parameters_total"], "parameters_shared": runs[0]["parameters_shared"],
               "metrics": {t: s.mean for t, s in stats.items()}, "metrics_sd": {t: s.sd for t, s in stats.items()},
               "mean": mean.mean, "family_mean": family_mean.mean, "seeds": len(runs), "seed_list": [r["seed"] for r in runs],
               "mean_sd_over_seeds": mean.sd, "family_mean_sd_over_seeds": family_mean.sd}
        if baseline in per_seed and name != baseline:
            versus = compare([m[0] for m in per_seed[name]], [m[0] for m in per_seed[baseline]])
            row[f"mean_vs_{baseline}"] = versus._asdict()
        out.append(row)
    return out


def markdown(summary: Mapping[str, Any]) -> str:
    rows = summary["table"]
    tasks = list(rows[0]["metrics"])
    short = {t: t.replace("robot_failures_", "robot_").replace("physionet_mortality", "physionet") for t in tasks}
    headers = ["config", "enc groups", "fusion groups", "params total", "params shared", *[short[t] for t in tasks], "mean", "sd over seeds",
               "mean - all", "family mean"]
    versus = lambda r: "-" if "mean_vs_all" not in r else f"{r['mean_vs_all']['difference']:+.3f} ({r['mean_vs_all']['verdict']})"  # noqa: E731
    body = [[r["config"], r["encoder_groups"], r["fusion_groups"], f"{r['parameters_total']:,.0f}", f"{r['parameters_shared']:,.0f}",
             *[r["metrics"][t] for t in tasks], r["mean"], "-" if r["mean_sd_over_seeds"] is None else r["mean_sd_over_seeds"],
             versus(r), r["family_mean"]] for r in rows]
    seeds = rows[0].get("seed_list", list(range(summary["seeds"])))
    metric_names = summary["metric_names"]
    lines = [f"Sharing benchmark; {summary['hardware_line']}; wall time {summary['wall_s']:.0f} s.", "",
             f"Preset `{summary['preset']}`, {summary['epochs']} x {summary['steps_per_epoch']} steps, {format_seeds(seeds)}, "
             f"test split (at most {summary['limit']} rows per task); metrics: "
             + ", ".join(f"{short[t]} {metric_names[t]}" for t in tasks) + ". 'params shared' = encoders + fusion; 'family mean' averages the five robot problems "
             "first (7 families). " + stats_note(seeds) + " 'mean - all': against the single shared encoder and fusion.", "",
             markdown_table(headers, body)]
    return "\n".join(lines) + "\n"


def plot(summary: Mapping[str, Any], path: Path) -> None:
    """Shared parameters (encoders + fusion, log scale) against the mean and the family-mean test metric."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for ax, key, label in ((axes[0], "mean", "mean test metric over tasks"), (axes[1], "family_mean", "family mean (robot problems as one)")):
        for r in summary["table"]:
            colour = "tab:green" if r["config"].startswith("hetero") else "tab:orange" if r["config"].startswith("random") else "tab:blue"
            err = r[f"{key}_sd_over_seeds"] if key == "family_mean" else r["mean_sd_over_seeds"]
            ax.errorbar(r["parameters_shared"], r[key], yerr=err, fmt="o", color=colour, capsize=3)
            ax.annotate(f"{r['config']} ({r['encoder_groups']},{r['fusion_groups']})", (r["parameters_shared"], r[key]),
                        textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("shared parameters (encoders + fusion)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Parameter sharing on {len(summary['tasks'])} tasks: preset {summary['preset']}, "
                 f"{summary['epochs']}x{summary['steps_per_epoch']} steps, {summary['seeds']} seed(s); (encoder groups, fusion groups)", fontsize=9)
    save_figure(fig, path, dpi=110)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="suite", help="comma-separated tasks/aliases (default: the suite)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--k", default="2,3", help="heterogeneity group counts to compare (sharing_k<k>.json from --groups-dir)")
    p.add_argument("--groups-dir", default=str(DEFAULT_GROUPS), help="experiments/heterogeneity.py's output folder")
    p.add_argument("--no-random-control", dest="random_control", action="store_false", help="skip the random groups of the same sizes")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--limit", type=int, default=1000, help="test rows per task (0 = all)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra override for every run")
    p.add_argument("--output-dir", default=str(DEFAULT_OUT))
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    if min(args.epochs, args.steps_per_epoch, args.seeds, args.jobs, args.threads) < 1:
        p.error("--epochs, --steps-per-epoch, --seeds, --jobs and --threads must be >= 1")
    try:
        ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    except ValueError as e:
        raise ValueError(f"--k must be comma-separated integers, got {args.k!r}") from e
    wall = time.time()
    tasks = train.expand_tasks(args.tasks.split(","))
    out = Path(args.output_dir)
    configs = configurations(task_modalities(tasks, args.data_root, args.cache_dir), ks, Path(args.groups_dir), args.random_control, seed=0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = machine_info(device)
    machine["torch_threads"] = args.threads
    jobs = [(name, sharing, seed) for seed in range(args.seeds) for name, sharing in configs.items()]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, name, sharing, seed, args, tasks, out) for name, sharing, seed in jobs]
        rows = []
        for (name, _, seed), f in zip(jobs, futures):
            rows.append(f.result())
            print(f"[{time.time() - wall:.0f}s] {name} seed {seed}: mean {np.mean(list(rows[-1]['metrics'].values())):.3f}", flush=True)
    machine["load_average_end"] = machine_info(device)["load_average"]
    summary = {"preset": args.preset, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "seeds": args.seeds,
               "limit": args.limit, "tasks": tasks, "k": ks, "overrides": args.overrides, "groups_dir": str(args.groups_dir),
               "runs": rows, "table": aggregate(rows), "metric_names": rows[0]["metric_names"],
               "machine": machine, "hardware_line": hardware_line(machine), "wall_s": time.time() - wall}
    write_json(out / "sharing.json", summary)
    md = markdown(summary)
    (out / "sharing.md").write_text(md)
    plot(summary, out / "params_vs_performance.png")
    print(md)
    return summary


if __name__ == "__main__":
    run_cli(main)
