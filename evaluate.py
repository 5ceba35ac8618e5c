"""Evaluate a trained checkpoint on its tasks' test splits, with robustness and efficiency.

    python evaluate.py --checkpoint runs/x                  # every task of the checkpoint
    python evaluate.py --checkpoint runs/x --tasks utd_mhad --output-dir runs/x/eval

Writes into ``--output-dir`` (default ``CHECKPOINT/eval``):
    metrics.json      task -> metric -> value (test split; plus robustness and efficiency entries);
                      ``_weights``: task -> the weights that scored it, when the run keeps per-task weights
    robustness.json   per task: metric with each modality dropped, and per modality under noise levels
    results.md        the same as tables
    robustness.png    per-task noise curves
    baselines.json    the simple baselines each task's margin is measured against (baseline.py's format)

Margin over simple baselines (``tasks/baselines.py``): each task's entry in ``metrics.json`` also
holds ``baseline_best`` (the best baseline's value of the primary metric on the same split),
``baseline_name`` and ``margin`` (model minus baseline; for error metrics such as mse baseline
minus model, so positive always means the model is better). With ``--baselines DIR`` the values
come from ``baseline.py``'s output (DIR or DIR/baselines.json; a task it lacks, or whose data has
changed since, gets no margin). Otherwise a cheap default is computed on demand (logistic /
ridge regression and a 100-tree forest on all of the task's features, fitted on train, chosen on
validation, scored on the model's own test rows) and cached under ``CACHE_DIR/baselines/`` by
data fingerprint, so each task's data is fitted once whatever the run. ``--no-baselines`` skips it.
The baselines always use the whole split (``--limit`` scores the model on a subset) and the whole
training split (whatever fraction of it the model was trained on).

Weights (``--weights``): a run trained with ``train.select=task`` (the default preset) keeps each
task's own best-on-validation weights in ``task_weights/``; each task whose validation split has at
least ``train.select_min_rows`` rows is scored with its own (``auto``, the default), the others and
every task with ``--weights mean`` with ``model.safetensors``.

Robustness (as in MultiBench): each modality is dropped in turn, and each modality is corrupted
with increasing noise (``--noise-levels``, 5 by default). The summary number per task is the
*relative robustness*: the mean, over modalities and levels, of noisy metric / clean metric.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import modalities  # noqa: F401  (registers the embedders)
import tasks as task_registry  # noqa: F401  (registers the built-in tasks)
import transference  # noqa: F401  (registers the training methods)
from highmmt import HighMMT
from highmmt.checkpoint import atomic_write_bytes, atomic_write_json, task_weight_epochs
from highmmt.plotting import pyplot, save_figure
from tasks import baselines
from tasks.base import TaskSpec
from tasks.cache import LoadedTask, load_task, resolve_cache_dir, run_data_paths
from tasks.loader import collate_rows, move_to, predict, score
from transference.hooks import hooks_for_run, run_predictor

NOISE_LEVELS = (0.1, 0.25, 0.5, 1.0, 2.0)
BASELINE_KEYS = ("baseline_best", "baseline_name", "margin")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run folder (config.json + model.safetensors)")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the checkpoint's tasks")
    p.add_argument("--output-dir", default=None, help="default: CHECKPOINT/eval")
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--noise-levels", default=",".join(map(str, NOISE_LEVELS)), help="noise std multiples, comma-separated")
    p.add_argument("--no-robustness", action="store_true", help="skip the drop / noise sweeps")
    p.add_argument("--limit", type=int, default=0, help="evaluate on at most this many rows per task (0 = all)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-root", default=None, help="default: $HIGHMMT_DATA, else the data root the run was trained with")
    p.add_argument("--cache-dir", default=None, help="default: $HIGHMMT_CACHE, else the cache the run was trained with")
    p.add_argument("--baselines", default=None, help="baseline.py's output (folder or baselines.json) to measure the margin "
                   "against; default: a cheap baseline computed on demand and cached")
    p.add_argument("--no-baselines", action="store_true", help="no margin over simple baselines")
    p.add_argument("--weights", default="auto", choices=["auto", "mean", "task"],
                   help="mean: model.safetensors for every task; task: each task's own best weights "
                   "(train.select=task; error if the run has none); auto: task where the run has them")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def add_noise(inputs: Mapping[str, Any], modality: str, level: float, seed: int) -> dict[str, Any]:
    """Corrupt one modality: Gaussian noise of ``level`` x the batch's std on real float values,
    or, for token ids (text), replace each token by a random byte with probability min(1, level / 2)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = dict(inputs)
    batch = dict(inputs[modality])
    key = "numeric" if "numeric" in batch else ("values" if "values" in batch else "x")
    x = batch[key]
    if x.is_floating_point() or x.dtype == torch.uint8:
        xf = x.float() / 255.0 if x.dtype == torch.uint8 else x
        std = xf.std().clamp_min(1e-6)
        noisy = xf + level * std * torch.randn(xf.shape, generator=g).to(xf.device)
        batch[key] = (noisy.clamp(0, 1) * 255).round().to(torch.uint8) if x.dtype == torch.uint8 else noisy
    else:
        flip = torch.rand(x.shape, generator=g).to(x.device) < min(1.0, level / 2)
        batch[key] = torch.where(flip, torch.randint(0, 256, x.shape, generator=g).to(x.device), x)
    out[modality] = batch
    return out


def efficiency(model: HighMMT, dataset: Any, spec: TaskSpec, device: torch.device, batch_size: int) -> dict[str, float]:
    """Latency per sample (batch 1, median of 20), throughput (samples/s at ``batch_size``), peak memory."""
    model.eval()
    one = move_to(collate_rows(dataset, [0], spec)["inputs"], device)
    many = move_to(collate_rows(dataset, np.arange(min(batch_size, len(dataset))), spec)["inputs"], device)
    n_many = len(next(iter(many.values()))["x"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        for _ in range(3):
            model(one, spec.name)
        times = []
        for _ in range(20):
            sync()
            t0 = time.perf_counter()
            model(one, spec.name)
            sync()
            times.append(time.perf_counter() - t0)
        model(many, spec.name)
        sync()
        t0 = time.perf_counter()
        reps = 3
        for _ in range(reps):
            model(many, spec.name)
        sync()
        thr = reps * n_many / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"latency_ms_per_sample": 1000 * float(np.median(times)), "throughput_samples_per_s": thr, "peak_memory_mb": peak}


def read_run_config(ckpt: Path) -> dict[str, Any]:
    """A train.py run folder's ``config.json`` (model, training, task specs and how they were given)."""
    cfg_path = ckpt / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{ckpt} has no config.json; expected a run folder written by train.py")
    run_cfg = json.loads(cfg_path.read_text())
    if "tasks" not in run_cfg or "model" not in run_cfg:
        raise ValueError(f"{cfg_path} is not a training run's config (needs 'model' and 'tasks'); "
                         "a bare save_pretrained folder has no task data to evaluate on")
    return run_cfg


def load_run_task(run_cfg: Mapping[str, Any], name: str, *, data_root: str | None = None, cache_dir: str | None = None,
                  quiet: bool = False) -> LoadedTask:
    """One of a run's tasks, loaded as the run loaded it: a suite name or the spec file it was given,
    the run's task options, and the modality options it inferred or was given (so batches collate
    as in training, not as the spec says today). Where neither the argument nor ``$HIGHMMT_DATA`` /
    ``$HIGHMMT_CACHE`` names the data root / cache folder, the ones the run was trained with (its config.json,
    where they still exist: :func:`tasks.cache.run_data_paths`)."""
    data_root, cache_dir = run_data_paths(run_cfg, data_root, cache_dir)
    arg = run_cfg.get("task_args", {}).get(name, name)
    options = run_cfg.get("train", {}).get("task_options", {}).get(name)
    lt = load_task(arg, data_root=data_root, cache_dir=cache_dir, options=options, quiet=quiet)
    saved = run_cfg.get("tasks", {}).get(lt.spec.name, {}).get("modality_options")
    if saved is not None:
        lt = dataclasses.replace(lt, spec=dataclasses.replace(lt.spec, modality_options=saved))
    return lt


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    ckpt = Path(args.checkpoint)
    run_cfg = read_run_config(ckpt)
    args.data_root, args.cache_dir = run_data_paths(run_cfg, args.data_root, args.cache_dir)  # the baselines' cache too
    names = args.tasks.split(",") if args.tasks else list(run_cfg["tasks"])
    for n in names:
        if n not in run_cfg["tasks"]:
            raise ValueError(f"task {n!r} is not in checkpoint {ckpt}; it has {sorted(run_cfg['tasks'])}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model = HighMMT.from_pretrained(ckpt, map_location=device).eval()
    methods = hooks_for_run(run_cfg)  # the run's training methods: what it predicts with, extra metrics
    predictor = run_predictor(model, ckpt, run_cfg, device, methods)
    per_task = task_weight_epochs(ckpt, args.weights, rows_of=lambda t: validation_rows(run_cfg, t, args))
    mean_state = {k: v.clone() for k, v in model.state_dict().items()} if per_task else None
    levels = [float(v) for v in args.noise_levels.split(",") if v]
    out = Path(args.output_dir or ckpt / "eval")
    out.mkdir(parents=True, exist_ok=True)
    counts = model.parameter_counts()
    metrics: dict[str, Any] = {}
    robust: dict[str, Any] = {}
    reference = baselines.load_results(args.baselines) if args.baselines and not args.no_baselines else None
    used_baselines: dict[str, Any] = {}
    card_tasks: dict[str, tuple[Any, dict[str, int]]] = {}
    weights_used: dict[str, str] = {}
    for name in tqdm(names, desc="tasks", disable=args.quiet):
        lt = load_run_task(run_cfg, name, data_root=args.data_root, cache_dir=args.cache_dir, quiet=args.quiet)
        spec, ds = lt.spec, lt.splits[args.split]
        card_tasks[name] = (spec, {k: len(v) for k, v in lt.splits.items()})
        if mean_state is not None:
            weights_used[name] = use_task_weights(model, ckpt, name, per_task, mean_state)
        run = lambda **kw: score(spec, *predict(predictor, ds, spec, batch_size=args.batch_size, limit=args.limit, device=device, **kw))  # noqa: E731
        clean = run()
        metrics[name] = dict(clean)
        for h in methods:
            metrics[name].update(h.task_metrics(model, spec, ds, run_dir=ckpt, run_config=run_cfg, device=device,
                                                batch_size=args.batch_size, limit=args.limit))
        metrics[name]["num_samples"] = float(min(len(ds), args.limit) if args.limit else len(ds))
        if not args.no_robustness:
            primary = spec.metric
            mods = list(spec.modalities)
            dropped = {m: run(modalities=[o for o in mods if o != m])[primary] for m in mods} if len(mods) > 1 else {}
            noisy: dict[str, list[float]] = {}
            for m in mods:
                noisy[m] = [
                    run(transform=_noise_fn(m, lv))[primary] for lv in levels
                ]
            ratios = [v / clean[primary] for vs in noisy.values() for v in vs if clean[primary]]
            robust[name] = {"metric": primary, "clean": clean[primary], "drop": dropped, "noise_levels": levels, "noise": noisy}
            metrics[name]["relative_robustness"] = float(np.mean(ratios)) if ratios else float("nan")
        metrics[name].update(efficiency(predictor, ds, spec, device, args.batch_size))
        if not args.no_baselines:
            entry = baseline_entry(lt, reference, args)
            if entry is not None:
                used_baselines[name] = entry
                metrics[name].update(margin_over_baselines(entry, clean[spec.metric], args.split))
    metrics["_model"] = {"parameters_total": float(counts["total"]), "parameters_shared": float(counts["shared"])}
    if weights_used:
        metrics["_weights"] = weights_used
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "robustness.json", robust)
    if used_baselines:
        atomic_write_json(out / "baselines.json", {"tasks": used_baselines})
    atomic_write_bytes(out / "results.md", results_markdown(metrics, robust, counts, args.split).encode())
    if robust:
        plot_robustness(robust, out / "robustness.png")
    try:
        atomic_write_bytes(ckpt / "README.md", model_card(ckpt, run_cfg, card_tasks, metrics, counts, args.split).encode())
    except OSError as e:  # a read-only checkpoint folder still gets its evaluation
        warnings.warn(f"{ckpt / 'README.md'}: model card not written ({e})", stacklevel=1)
    if not args.quiet:
        print((out / "results.md").read_text())
    return metrics


def use_task_weights(model: HighMMT, ckpt: Path, name: str, per_task: Mapping[str, Any], mean_state: Mapping[str, Any]) -> str:
    """Load the weights that score task ``name``: the mean-selected ones, with the task's own best epoch
    over them where ``per_task`` (``task_weight_epochs``) says to use it. Returns which, for the report."""
    model.load_state_dict(mean_state)
    entry = per_task.get(name)
    if entry is not None and entry["use"] and model.load_task_weights(ckpt, name):
        return f"task epoch {entry['epoch']}"
    return "mean" if entry is None or entry["use"] else f"mean ({entry['validation_rows']} validation rows < {entry['min_rows']})"


def validation_rows(run_cfg: Mapping[str, Any], name: str, args: argparse.Namespace) -> int:
    """The validation rows a run scored ``name`` on (its ``train.max_eval_samples`` caps them)."""
    lt = load_run_task(run_cfg, name, data_root=args.data_root, cache_dir=args.cache_dir, quiet=True)
    cap = int(run_cfg.get("train", {}).get("max_eval_samples", 0))
    return min(len(lt.splits["validation"]), cap) if cap else len(lt.splits["validation"])


def baseline_entry(lt: LoadedTask, reference: Mapping[str, Any] | None, args: argparse.Namespace) -> dict[str, Any] | None:
    """The task's baseline results: from ``--baselines`` (``None`` if absent or computed on other
    data), else the cheap default, computed once per data fingerprint and cached."""
    name = lt.spec.name
    if reference is None:
        return baselines.cached_run(lt, baselines.EVALUATE_SETTINGS, resolve_cache_dir(args.cache_dir), quiet=args.quiet)
    entry = reference.get(name)
    if entry is None:
        warnings.warn(f"task {name!r}: no entry in --baselines {args.baselines}; no margin reported", stacklevel=2)
        return None
    if entry.get("fingerprint") != baselines.fingerprint(lt):
        warnings.warn(f"task {name!r}: the baselines in {args.baselines} were computed on other data "
                      f"({entry.get('fingerprint')} vs {baselines.fingerprint(lt)}); no margin reported", stacklevel=2)
        return None
    return entry


def margin_over_baselines(entry: Mapping[str, Any], value: float, split: str) -> dict[str, Any]:
    """``baseline_best``, ``baseline_name`` and ``margin`` (positive: the model is better), or {}."""
    best = baselines.best_baseline(entry, split)
    if best is None:
        return {}
    return {"baseline_best": best[1], "baseline_name": best[0], "margin": baselines.margin(value, best[1], entry["metric"])}


def model_card(ckpt: Path, run_cfg: Mapping[str, Any], card_tasks: Mapping[str, Any], metrics: Mapping[str, Any],
               counts: Mapping[str, Any], split: str) -> str:
    """The run folder's README.md: what the model reads and predicts, how it scores beside the simple
    baselines, and the command and versions that made it."""
    import datasets as hf_datasets

    lines = [f"# Model card: {ckpt.name}", "",
             f"A HighMMT model trained by `train.py` (preset `{run_cfg.get('preset')}`, seed {run_cfg.get('seed')}, "
             f"precision {run_cfg.get('precision', '?')}); {counts['total']:,} parameters, {counts['shared']:,} in the shared "
             "encoder and fusion. Training: "
             + ((ckpt / "DONE").read_text().strip() if (ckpt / "DONE").is_file() else "not finished") + ".", "", "## Tasks", "",
             "| task | type | classes | modalities (kind) | rows (train / validation / test) |", "|---|---|---|---|---|"]
    for name, (spec, sizes) in card_tasks.items():
        mods = ", ".join(f"{m} ({k})" for m, k in spec.modalities.items())
        rows = " / ".join(str(sizes.get(s, "-")) for s in ("train", "validation", "test"))
        lines.append(f"| {name} | {spec.task_type} | {spec.num_classes or '-'} | {mods} | {rows} |")
    used = metrics.get("_weights", {})
    lines += ["", f"## Metrics on the {split} split", "", "| task | metric | model | best simple baseline | margin | weights |",
              "|---|---|---|---|---|---|"]
    for name, (spec, _) in card_tasks.items():
        m = metrics.get(name, {})
        value = m.get(spec.metric)
        base = f"{m['baseline_best']:.4f} ({m['baseline_name']})" if "baseline_best" in m else "-"
        margin = f"{m['margin']:+.4f}" if "margin" in m else "-"
        lines.append(f"| {name} | {spec.metric} | {'-' if value is None else f'{value:.4f}'} | {base} | {margin} | {used.get(name, 'mean')} |")
    lines += ["", "Weights: `mean` is `model.safetensors` (the best mean of the tasks' validation metrics); `task epoch N` "
              "is the task's own best validation epoch (`task_weights/`, `train.select=task`)."]
    tasks_arg = ",".join(run_cfg.get("task_args", {}).values())
    sets = " ".join(f"--set {o}" for o in run_cfg.get("overrides", []))
    lines += ["", "## Reproduce", "", "```bash",
              f"python train.py --preset {run_cfg.get('preset')} --tasks {tasks_arg} --seed {run_cfg.get('seed')} {sets}".rstrip(),
              f"python evaluate.py --checkpoint {ckpt}", "```", "", "## Versions", "",
              f"python {sys.version.split()[0]}, torch {torch.__version__}, datasets {hf_datasets.__version__}, numpy {np.__version__}."]
    return "\n".join(lines) + "\n"


def _noise_fn(modality: str, level: float) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    state = {"i": 0}

    def fn(inputs: Mapping[str, Any]) -> dict[str, Any]:
        state["i"] += 1
        return add_noise(inputs, modality, level, seed=1000 * state["i"] + int(level * 100))

    return fn


def results_markdown(metrics: Mapping[str, Any], robust: Mapping[str, Any], counts: Mapping[str, Any], split: str) -> str:
    lines = [f"## Results on the {split} split", "", "| task | metric | value | relative robustness | latency ms/sample | samples/s |", "|---|---|---|---|---|---|"]
    for t, m in metrics.items():
        if t.startswith("_"):
            continue
        keys = [k for k in m if k not in ("num_samples", "relative_robustness", "latency_ms_per_sample", "throughput_samples_per_s", "peak_memory_mb", *BASELINE_KEYS)]
        for k in keys:
            lines.append(f"| {t} | {k} | {m[k]:.4f} | {m.get('relative_robustness', float('nan')):.3f} | {m['latency_ms_per_sample']:.2f} | {m['throughput_samples_per_s']:.0f} |")
    margins = {t: m for t, m in metrics.items() if not t.startswith("_") and "margin" in m}
    if margins:
        lines += ["", "## Margin over the best simple baseline (positive: the model is better)", "",
                  "| task | metric | model | best baseline | baseline value | margin |", "|---|---|---|---|---|---|"]
        for t, m in margins.items():
            metric = next(k for k in m if k not in BASELINE_KEYS)  # the primary metric comes first
            lines.append(f"| {t} | {metric} | {m[metric]:.4f} | {m['baseline_name']} | {m['baseline_best']:.4f} | {m['margin']:+.4f} |")
    if robust:
        lines += ["", "## Modality dropped (primary metric)", "", "| task | clean | " + "dropped |" , "|---|---|---|"]
        for t, r in robust.items():
            drops = ", ".join(f"without {m}: {v:.3f}" for m, v in r["drop"].items()) or "(one modality)"
            lines.append(f"| {t} | {r['clean']:.3f} | {drops} |")
    lines += ["", f"Parameters: total {counts['total']:,}, shared encoder+fusion {counts['shared']:,}; "
              f"embedders {sum(counts['embedders'].values()):,}; heads {sum(counts['heads'].values()):,}.", ""]
    return "\n".join(lines)


def plot_robustness(robust: Mapping[str, Any], path: Path) -> None:
    plt = pyplot()
    n = len(robust)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (t, r) in zip(axes.flat, robust.items()):
        for m, vals in r["noise"].items():
            ax.plot([0.0, *r["noise_levels"]], [r["clean"], *vals], marker="o", label=m)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("noise level (x std)")
        ax.set_ylabel(r["metric"])
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    save_figure(fig, path, dpi=90)


if __name__ == "__main__":
    from highmmt.cli import run_cli

    run_cli(main)
