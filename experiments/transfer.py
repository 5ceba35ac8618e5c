"""Transfer to new tasks: a learning curve of fine-tuning a multitask checkpoint vs training from scratch.

    HIGHMMT_DATA=../shared/data python -m experiments.transfer                       # ~15 CPU-minutes, 1 thread
    python -m experiments.transfer --fractions 0.01,0.05,0.1,0.5,1.0 --seeds 0,1,2 \\
        --pretrain-set train.epochs=20 --finetune-set train.epochs=10                # bigger (GPU)

1. Pre-train once on ``--pretrain-tasks`` (default: the suite without the targets), a normal
   ``train.py`` run in ``OUT/pretrain``.
2. For every target task, training fraction and seed: train from scratch (``scratch``), and
   fine-tune the checkpoint with each of ``--policies`` (``train.py --init-from OUT/pretrain
   --finetune POLICY --train-fraction F``), and with full fine-tuning under layer-wise lr decay
   (``full_ld``, ``--layer-decay``; 1 leaves it out). Every run has the same preset, lr, epochs
   and steps. ``prefix`` (prefix tuning, docs/transfer.md) needs ``--prefix-host``: checkpoint
   modalities, of which each target's host (the modality its prefix tokens go in front of) is the
   first besides which the target reads another modality (the prefix's); it trains ``--prefix-tokens`` tokens and a new head
   (the targets' classes are not the checkpoint's), everything of the checkpoint frozen:

       python -m experiments.transfer --policies full,embedders_head,lora,prefix --prefix-host text,force_torque
3. Score each run's best-on-validation ``model.safetensors`` (loaded with ``HighMMT.from_pretrained``,
   so LoRA runs are checked to load merged) on the target's test split.

Writes ``OUT/transfer.json`` (every run: test metric, training rows, trainable parameters, wall
time; the machine), ``OUT/transfer.md`` (one table per target: fraction x method, the gain of the
best transfer over scratch, and each method's trainable parameters) and ``OUT/transfer.png`` (the
learning curves). Finished runs are kept,
so a killed study resumes. Runs go through ``train.main`` in this process (one import of torch for
all of them); ``--threads`` sets ``train.threads``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import train
from benchmarks.common import compare, format_mean_sd, hardware_line, load_average, machine_info, markdown_table, mean_sd, run_cli, stats_note, write_json
from experiments.common import data_flags, doc_markers, loop_seconds, train_unless_done, write_doc_section
from highmmt import HighMMT
from highmmt.checkpoint import atomic_write_bytes
from highmmt.metrics import HIGHER_IS_BETTER
from highmmt.plotting import pyplot, save_figure
from tasks.cache import is_spec_path, load_task
from tasks.loader import predict, score

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_TARGETS = "subjectivity,robot_failures_lp1"
DEFAULT_FRACTIONS = "0.01,0.05,0.2,1.0"
DEFAULT_POLICIES = "full,head,lora"
DEFAULT_SEEDS = "0,1"
# Small defaults: the whole study fits ~15 minutes of one CPU thread (see the README for measurements).
PRETRAIN_SET = ["train.epochs=6", "train.steps_per_epoch=100", "train.warmup_steps=50", "train.max_eval_samples=300"]
FINETUNE_SET = ["train.epochs=5", "train.steps_per_epoch=40", "train.warmup_steps=20", "train.max_eval_samples=500"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-tasks", default=DEFAULT_TARGETS, help=f"tasks left out of pre-training and fine-tuned (default {DEFAULT_TARGETS})")
    p.add_argument("--pretrain-tasks", default=None, help="tasks to pre-train on (default: the suite without the targets)")
    p.add_argument("--fractions", default=DEFAULT_FRACTIONS, help=f"training fractions of each target (default {DEFAULT_FRACTIONS})")
    p.add_argument("--policies", default=DEFAULT_POLICIES, help=f"fine-tuning policies to compare with scratch (default {DEFAULT_POLICIES})")
    p.add_argument("--prefix-host", default=None, help="with --policies ...,prefix: comma-separated checkpoint modalities; a target's "
                   "host (whose tokens the prefix is prepended to) is the first besides which it reads another modality")
    p.add_argument("--prefix-head", default="new", choices=["new", "reuse"], help="with --policies ...,prefix: a new head per target "
                   "(default; the targets' classes are not the checkpoint's) or the checkpoint's head, frozen (Frozen; same classes)")
    p.add_argument("--prefix-tokens", type=int, default=2, help="with --policies ...,prefix: prefix tokens k (default 2, as in Frozen)")
    p.add_argument("--layer-decay", type=float, default=0.5, help="also fine-tune fully with this train.layer_decay (method full_ld; 1 = leave it out)")
    p.add_argument("--lrs", default=None, help="comma-separated learning rates: each --lr-methods run is repeated at each, and per "
                   "target, fraction and method the lr with the best mean validation score over seeds is reported (default: the preset's)")
    p.add_argument("--lr-methods", default=None, help="methods that get the --lrs grid (default: all; the others keep the preset's lr)")
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help=f"seeds of the fine-tuning runs, comma-separated (default {DEFAULT_SEEDS})")
    p.add_argument("--preset", default="short", help="model size and training preset of every run (default: short, the default preset when the study was run)")
    p.add_argument("--init-from", default=None, help="fine-tune this checkpoint instead of pre-training one (its tasks must not include the targets)")
    p.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE", help="override for the pre-training run (after the small defaults)")
    p.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE", help="override for every fine-tuning and scratch run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1; 0 = torch's default)")
    p.add_argument("--output-dir", default="experiments/results/transfer")
    p.add_argument("--doc", default="", help="also put the tables between the --doc-section markers of this markdown file ('' = none)")
    p.add_argument("--doc-section", default="transfer", help="the markers' name: <!-- NAME:begin --> ... <!-- NAME:end --> (default transfer)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    return p.parse_args(argv)


def floats(text: str, what: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ValueError(f"--{what}: expected comma-separated numbers, got {text!r}") from e
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise ValueError(f"--{what}: every fraction must be in (0, 1], got {text!r}")
    return sorted(set(values))


def prefix_host(hosts: Sequence[str], task: str, reads: Sequence[str]) -> str:
    """The first of ``hosts`` besides which target ``task`` reads another modality (the prefix modality)."""
    usable = [h for h in hosts if any(m != h for m in reads)]
    if not usable:
        raise ValueError(f"--prefix-host {','.join(hosts)}: target {task!r} reads only {list(reads)}, nothing besides the host "
                         "to make the prefix from; add a checkpoint modality it does not read")
    return usable[0]


def test_score(out: Path, task: str, args: argparse.Namespace) -> dict[str, float]:
    """Test-split metrics of a run's saved best model."""
    lt = load_task(task, data_root=args.data_root, cache_dir=args.cache_dir, quiet=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model = HighMMT.from_pretrained(out, map_location=device).eval()
    outputs, targets = predict(model, lt.splits["test"], lt.spec, batch_size=256, device=device)
    return score(lt.spec, outputs, targets)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    targets = train.expand_tasks(args.target_tasks.split(","))
    pretrain = train.expand_tasks(args.pretrain_tasks.split(",")) if args.pretrain_tasks else [t for t in train.SUITE if t not in targets]
    # A target may be a spec file: its runs and rows are named by the spec's task name.
    names = {t: load_task(t, data_root=args.data_root, cache_dir=args.cache_dir, quiet=True).spec.name if is_spec_path(t) else t for t in targets}
    overlap = sorted(set(names.values()) & set(pretrain))
    if overlap:
        raise ValueError(f"--target-tasks and --pretrain-tasks overlap: {overlap}; targets must be new to the checkpoint")
    fractions = floats(args.fractions, "fractions")
    policies = [p for p in args.policies.split(",") if p]
    from transference.config import FINETUNE_POLICIES

    unknown = [p for p in policies if p not in FINETUNE_POLICIES]
    if unknown or not policies:
        raise ValueError(f"--policies: unknown {unknown or policies}; known: {list(FINETUNE_POLICIES)}")
    if not 0.0 < args.layer_decay <= 1.0:
        raise ValueError(f"--layer-decay must be in (0, 1] (1 = no full_ld runs), got {args.layer_decay}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    # Method -> extra train.py arguments (scratch: none; transfer: --init-from and a policy).
    methods: dict[str, list[str]] = {"scratch": []}
    hosts = [h for h in (args.prefix_host or "").split(",") if h]
    if "prefix" in policies and not hosts:
        raise ValueError("--policies prefix needs --prefix-host: the checkpoint's modalities the prefix tokens may be prepended to")
    for policy in policies:
        methods[policy] = ["--finetune", policy]
    if "prefix" in policies:  # by default a new head: the targets' classes are not those of a checkpoint task
        methods["prefix"] += ["--set", f"train.prefix.tokens={args.prefix_tokens}", "--set", f"train.prefix.new_head={str(args.prefix_head == 'new').lower()}"]
    prefix_hosts: dict[str, str] = {}
    if args.layer_decay < 1.0:
        methods["full_ld"] = ["--finetune", "full", "--set", f"train.layer_decay={args.layer_decay}"]
    lrs = [float(x) for x in args.lrs.split(",") if x.strip()] if args.lrs else [None]
    lr_methods = [m for m in args.lr_methods.split(",") if m] if args.lr_methods else list(methods)
    if set(lr_methods) - set(methods):
        raise ValueError(f"--lr-methods: unknown {sorted(set(lr_methods) - set(methods))}; this study runs {list(methods)}")
    out = Path(args.output_dir)
    common = ["--preset", args.preset, "--quiet", "--set", f"train.threads={args.threads}"]
    common += data_flags(args)
    common += ["--cpu"] if args.cpu else []
    every = [a for o in args.overrides for a in ("--set", o)]
    machine = machine_info(torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu"))
    machine["torch_threads"] = args.threads or torch.get_num_threads()
    started = time.time()

    if args.init_from:
        pre_dir, pre_wall = Path(args.init_from), 0.0
        pretrain = sorted(json.loads((pre_dir / "config.json").read_text())["model"]["tasks"])
        if set(pretrain) & set(names.values()):
            raise ValueError(f"--init-from {pre_dir} was trained on target task(s) {sorted(set(pretrain) & set(names.values()))}")
    else:
        pre_dir = out / "pretrain"
        pre_argv = [*common, "--tasks", ",".join(pretrain), *[a for o in PRETRAIN_SET + args.pretrain_set for a in ("--set", o)], *every]
        pre_wall = train_unless_done(pre_dir, pre_argv, log=pre_dir.parent / "pretrain.log")
    print(f"[{time.time() - started:.0f}s] pre-trained on {len(pretrain)} tasks -> {pre_dir}", flush=True)

    ft_sets = [a for o in FINETUNE_SET + args.finetune_set for a in ("--set", o)]
    runs: list[dict[str, Any]] = []
    for target in targets:
        task = names[target]
        lt = load_task(target, data_root=args.data_root, cache_dir=args.cache_dir, quiet=True)
        metric = lt.spec.metric
        if "prefix" in policies:
            prefix_hosts[task] = prefix_host(hosts, task, list(lt.spec.modalities))
        for fraction in fractions:
            for seed in seeds:
                for method, method_args, lr in [(m, a, lr) for m, a in methods.items() for lr in (lrs if m in lr_methods else [None])]:
                    tag = f"{method}" if lr is None else f"{method}-lr{lr:g}"
                    name = f"{task}/f{fraction:g}-s{seed}-{tag}"
                    run_dir = out / "runs" / task / f"f{fraction:g}-s{seed}-{tag}"
                    argv_ = [*common, "--tasks", target, "--seed", str(seed), "--train-fraction", str(fraction), *ft_sets, *every]
                    argv_ += [] if lr is None else ["--set", f"train.lr={lr:g}"]
                    if method != "scratch":
                        argv_ += ["--init-from", str(pre_dir), *method_args]
                    if method == "prefix":
                        argv_ += ["--set", f"train.prefix.host={prefix_hosts[task]}"]
                    wall = train_unless_done(run_dir, argv_, log=run_dir.parent / f"{run_dir.name}.log")
                    cfg = json.loads((run_dir / "config.json").read_text())
                    scores = test_score(run_dir, target, args)
                    runs.append({
                        "task": task, "fraction": fraction, "seed": seed, "method": method, "metric": metric,
                        "lr": cfg["train"]["lr"], "val": json.loads((run_dir / "best.json").read_text()).get("selection"),
                        "test": scores[metric], "test_metrics": scores,
                        "train_rows": len(train.subsample_train(lt, fraction, seed).splits["train"]),
                        "trainable_parameters": cfg.get("trainable_parameters", {}).get("trainable"),
                        "total_parameters": cfg.get("trainable_parameters", {}).get("total"),
                        "wall_s": wall, "train_loop_s": loop_seconds(run_dir), "run": str(run_dir),
                    })
                    print(f"[{time.time() - started:.0f}s] {name}: test {metric} {scores[metric]:.3f}", flush=True)

    machine["load_average_end"] = load_average()
    results = {
        "benchmark": "transfer", "machine": machine, "preset": args.preset, "targets": targets, "pretrain_tasks": pretrain,
        "fractions": fractions, "policies": policies, "layer_decay": args.layer_decay, "lrs": lrs, "lr_methods": lr_methods, "methods": list(methods), "seeds": seeds,
        "prefix": {"hosts": prefix_hosts, "tokens": args.prefix_tokens, "head": args.prefix_head} if "prefix" in policies else None,
        "pretrain_overrides": PRETRAIN_SET + args.pretrain_set, "finetune_overrides": FINETUNE_SET + args.finetune_set,
        "overrides": args.overrides, "pretrain_wall_s": pre_wall, "pretrain_loop_s": loop_seconds(pre_dir),
        "wall_s": time.time() - started, "runs": runs,
    }
    write_json(out / "transfer.json", results)
    text = markdown(results)
    atomic_write_bytes(out / "transfer.md", text.encode())
    plot(results, out / "transfer.png")
    if args.doc:
        write_doc_section(Path(args.doc), *doc_markers(args.doc_section), text)
    print(text)
    return results


def selected_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target, fraction and method, the runs of the learning rate whose mean validation score
    over seeds is best (ties: the first lr run); the test split plays no part. Runs without an lr
    grid pass through."""
    by: dict[tuple[Any, ...], dict[Any, list[dict[str, Any]]]] = {}
    for r in runs:
        by.setdefault((r["task"], r["fraction"], r["method"]), {}).setdefault(r.get("lr"), []).append(r)
    chosen: list[dict[str, Any]] = []
    for per_lr in by.values():
        if len(per_lr) == 1:
            chosen += next(iter(per_lr.values()))
            continue
        # "selection" is higher-is-better for every metric (train.py negates losses).
        best = max(per_lr, key=lambda lr: sum(r["val"] for r in per_lr[lr]) / len(per_lr[lr]))
        chosen += [dict(r, lr_selected=True) for r in per_lr[best]]
    return chosen


def summarize(results: dict[str, Any]) -> dict[str, dict[float, dict[str, dict[str, Any]]]]:
    """task -> fraction -> method -> {values (per seed, in run order), mean, sd (sample, ddof = 1;
    None for one seed), n, lr}, over the runs of the lr chosen on validation (``selected_runs``)."""
    out: dict[str, dict[float, dict[str, dict[str, Any]]]] = {}
    for r in selected_runs(results["runs"]):
        cell = out.setdefault(r["task"], {}).setdefault(r["fraction"], {}).setdefault(r["method"], {"values": []})
        cell["values"].append(r["test"])
        cell["lr"] = r.get("lr")
    for per_task in out.values():
        for per_fraction in per_task.values():
            for cell in per_fraction.values():
                cell.update(mean_sd(cell["values"])._asdict())
    return out


def markdown(results: dict[str, Any]) -> str:
    methods = results["methods"]
    summary = summarize(results)
    rows_by = {(r["task"], r["fraction"]): r for r in results["runs"] if r["method"] == "scratch"}
    lines = [
        f"Transfer from a multitask checkpoint pre-trained on {len(results['pretrain_tasks'])} tasks "
        f"({', '.join(results['pretrain_tasks'])}) vs training from scratch; preset `{results['preset']}`, "
        f"fine-tuning {' '.join(results['finetune_overrides'])}; test split. {stats_note(results['seeds'])} The last column "
        "compares the transfer method with the best mean to scratch."
        + (f" Learning rates: {', '.join(f'{lr:g}' for lr in results['lrs'])} for {', '.join(results['lr_methods'])}; each cell is "
           "the lr (in brackets) with the best mean validation score over seeds, its test scores shown." if len(results.get("lrs") or [None]) > 1 else "")
        + (f" `full_ld`: full fine-tuning with layer-wise lr decay {results['layer_decay']:g}." if "full_ld" in results["methods"] else "")
        + (f" `prefix`: prefix tuning, {results['prefix']['tokens']} prefix tokens in front of the host modality ("
           + ", ".join(f"{t}: `{h}`" for t, h in results["prefix"]["hosts"].items())
           + "), " + ("the checkpoint's head reused, frozen" if results["prefix"].get("head") == "reuse" else "a new head")
           + ", the checkpoint frozen." if results.get("prefix") else ""),
        f"Hardware: {hardware_line(results['machine'])}. This call: {results['wall_s'] / 60:.1f} min wall "
        f"(runs finished by an earlier call are reused). Training loops, as each run's DONE file says: pre-training "
        f"{results['pretrain_loop_s'] / 60:.1f} min, {len(results['runs'])} fine-tuning / scratch runs "
        f"{sum(r['train_loop_s'] for r in results['runs']) / 60:.1f} min in total.",
        "",
    ]
    for task, per_task in summary.items():
        metric = next(r["metric"] for r in results["runs"] if r["task"] == task)
        higher = HIGHER_IS_BETTER.get(metric, True)
        sign = 1.0 if higher else -1.0
        headers = ["fraction", "train rows", *[f"{m}" for m in methods], "best transfer - scratch"]
        table = []
        for fraction, cells in sorted(per_task.items()):
            transfer = [m for m in methods[1:] if m in cells]
            best = max(transfer, key=lambda m: sign * cells[m]["mean"]) if transfer else None
            versus = "-"
            if best is not None and "scratch" in cells:
                versus = f"{best} " + compare(cells[best]["values"], cells["scratch"]["values"], higher_is_better=higher).format()
            grid = len(results.get("lrs") or [None]) > 1
            fmt = lambda c: "-" if c is None else format_mean_sd(c["values"]) + (f" (lr {c['lr']:g})" if grid and c.get("lr") else "")  # noqa: E731
            rows = rows_by.get((task, fraction), {}).get("train_rows")
            table.append([f"{fraction:g}", "-" if rows is None else rows, *[fmt(cells.get(m)) for m in methods], versus])
        table.append(["trainable parameters", "", *[trainable_cell(results["runs"], task, m) for m in methods], ""])
        lines += [f"**{task}** (test {metric})", "", markdown_table(headers, table), ""]
    return "\n".join(lines) + "\n"


def trainable_cell(runs: list[dict[str, Any]], task: str, method: str) -> str:
    """``trainable (share of the model)`` of a method's first run on ``task``; ``-`` when unknown."""
    run = next((r for r in runs if r["task"] == task and r["method"] == method), None)
    if run is None or run.get("trainable_parameters") is None or not run.get("total_parameters"):
        return "-"
    return f"{run['trainable_parameters']:,} ({run['trainable_parameters'] / run['total_parameters']:.1%})"


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    summary = summarize(results)
    fig, axes = plt.subplots(1, len(summary), figsize=(5 * len(summary), 3.8), squeeze=False)
    for ax, (task, per_task) in zip(axes[0], summary.items()):
        fractions = sorted(per_task)
        for method in results["methods"]:
            ys = [per_task[f].get(method, {}).get("mean", float("nan")) for f in fractions]
            ax.plot(fractions, ys, marker="o", label=method if method == "scratch" else f"transfer ({method})",
                    linestyle="--" if method == "scratch" else "-")
        metric = next(r["metric"] for r in results["runs"] if r["task"] == task)
        ax.set_xscale("log")
        ax.set_xlabel("fraction of the training split")
        ax.set_ylabel(f"test {metric}")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    run_cli(main)
