"""Task interference: shuffle one task's training labels during multitask training and measure the
change of every other task's test metric against a normal run (HighMMT Table 7).

Two training options, applied by a training hook (``transference.hooks``) that ``train.py`` registers by
importing this module:

- ``train.shuffle_labels=TASK``: TASK's training labels are permuted (seeded by the run's seed);
  its inputs, and its validation and test splits, are unchanged. The labels then carry nothing
  the inputs could predict, so whatever TASK's gradients do to shared parameters is interference.
- ``train.train_only=PART`` (``embedders`` | ``encoders`` | ``fusion``): only that part and the heads
  train; the other parts stay at their start (random, or the ``--init-from`` checkpoint). With the
  encoder alone trainable, interference can only travel through the encoder, and so on.

:func:`run_interference` orchestrates the runs: for each seed, one normal run and one run per
shuffled task, all with the analysed run's preset and overrides and a shorter schedule. Each run is
scored at its *final* weights (not the epoch selected on validation, which the shuffled task's own
validation score would sway) on the test split. The change of task b when task a is shuffled is
``metric_b(a shuffled) - metric_b(normal)``, signed so that negative is worse (for error metrics
such as mse the sign is flipped); over seeds: mean and sample SD.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from analysis.report import fmt_mean_sd, mean_sd, short
from highmmt.config import HighMMTConfig, parse_override_value
from highmmt.sharing import pair_key, task_pairs
from transference.finetune import part_of
from transference.config import PER_TASK_SETTINGS
from transference.hooks import TrainContext, TrainHook, register_hook_factory
from tasks.cache import LoadedTask, run_data_paths


def shuffle_train_labels(lt: LoadedTask, seed: int) -> LoadedTask:
    """The task with its training split's target column permuted (seeded by ``seed`` and the task's
    name); inputs and the other splits are unchanged."""
    train = lt.splits["train"]
    target = lt.spec.target
    perm = np.random.default_rng([seed, 7, *lt.spec.name.encode()]).permutation(len(train))
    labels = train[target]
    shuffled = train.remove_columns([target]).add_column(target, [labels[i] for i in perm], feature=train.features[target])
    return dataclasses.replace(lt, splits=datasets.DatasetDict({**lt.splits, "train": shuffled}))


class InterferenceHook(TrainHook):
    """Applies ``train.shuffle_labels`` and ``train.train_only`` before the optimizer is built."""

    name = "interference"

    def __init__(self, shuffle: str, train_only: str) -> None:
        self.shuffle = shuffle
        self.train_only = train_only

    def setup(self, ctx: TrainContext, state: dict[str, Any] | None) -> None:
        if self.shuffle:
            if self.shuffle not in ctx.loaded:
                raise ValueError(f"train.shuffle_labels names task {self.shuffle!r}, which is not being trained ({sorted(ctx.loaded)})")
            ctx.loaded[self.shuffle] = shuffle_train_labels(ctx.loaded[self.shuffle], ctx.seed)
            ctx.log(f"task {self.shuffle}: training labels shuffled (seed {ctx.seed})")
        if self.train_only:
            kept = {self.train_only, "heads"}
            frozen = 0
            for name, p in ctx.model.named_parameters():
                if part_of(name) not in kept and p.requires_grad:
                    p.requires_grad_(False)
                    frozen += p.numel()
            ctx.log(f"train.train_only={self.train_only}: {frozen:,} parameters of the other parts frozen")


@register_hook_factory
def _factory(run: Any) -> InterferenceHook | None:
    tc = getattr(run, "train", None)
    if tc is None or not (tc.shuffle_labels or tc.train_only):
        return None
    return InterferenceHook(tc.shuffle_labels, tc.train_only)


# ---- orchestration --------------------------------------------------------------------------------
def final_scores(run_dir: Path, loaded: Mapping[str, LoadedTask], limit: int) -> dict[str, float]:
    """Test primary metric per task of a run's last weights (``trainer_state``)."""
    from highmmt import HighMMT
    from highmmt.checkpoint import load_weights
    from tasks.loader import predict, score

    last = sorted((run_dir / "trainer_state").glob("model-*.safetensors"))
    if not last:
        raise FileNotFoundError(f"{run_dir}/trainer_state holds no weights; did the run finish?")
    model = HighMMT.from_pretrained(run_dir)
    model.load_state_dict(load_weights(last[-1]))
    model.eval()
    return {t: score(lt.spec, *predict(model, lt.splits["test"], lt.spec, limit=limit))[lt.spec.metric] for t, lt in loaded.items()}


PER_TASK_KEYS = tuple(f"train.{k}" for k in PER_TASK_SETTINGS)
#: overrides whose dict names modalities (or modality pairs)
MODALITY_KEYS = ("train.modality_options", "model.sharing.encoder", "model.sharing.fusion")


def restrict_override(override: str, cfg: Mapping[str, Any], names: Sequence[str]) -> str:
    """One of the run's ``--set`` overrides, restricted to the tasks ``names`` (a subset of the run's):
    per-task dicts keep those tasks, modality options those tasks' modalities; explicit sharing groups
    keep those tasks' modalities / pairs and drop groups left empty. Other overrides are returned unchanged."""
    key, raw = override.split("=", 1)
    key = key.strip()
    if key not in (*PER_TASK_KEYS, *MODALITY_KEYS):
        return override
    value = parse_override_value(raw)
    if not isinstance(value, Mapping):
        return override
    if key in PER_TASK_KEYS:
        kept: dict[str, Any] = {t: v for t, v in value.items() if t in names}
    elif key == "train.modality_options":
        kept = {m: v for m, v in value.items() if any(m in cfg["tasks"][n]["modalities"] for n in names)}
    else:
        mods = [list(cfg["tasks"][n]["modalities"]) for n in names]
        items = {m for ms in mods for m in ms} if key.endswith("encoder") else set(task_pairs(mods))
        canon = (lambda m: m) if key.endswith("encoder") else (lambda m: pair_key(*m.split("|", 1)))
        kept = {g: [m for m in members if canon(m) in items] for g, members in value.items()}
        kept = {g: members for g, members in kept.items() if members}
    return f"{key}={json.dumps(kept)}"


def model_overrides(saved: Mapping[str, Any], known: Mapping[str, Any] | None = None, prefix: str = "model.") -> list[str]:
    """``--set`` overrides that rebuild a run's model sizes (``config.json``'s ``model``, without its
    modalities, tasks and sharing, which come from the task specs and the run's overrides); keys this
    version of the code does not know are left out."""
    known = dataclasses.asdict(HighMMTConfig()) if known is None else known
    out = []
    for key, value in saved.items():
        if key in ("modalities", "tasks", "sharing") or key not in known:
            continue
        if isinstance(value, Mapping) and isinstance(known[key], Mapping):
            out += model_overrides(value, known[key], f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def train_command(cfg: Mapping[str, Any], run_dir: Path, names: Sequence[str], *, epochs: int, steps: int, train_only: str,
                  from_run: bool, data_root: str | None, cache_dir: str | None) -> list[str]:
    """``train.py`` arguments that repeat the analysed run on ``names`` with a shorter schedule: its preset
    and overrides, then its model sizes and embedder options pinned (:func:`model_overrides`)."""
    task_args = cfg.get("task_args", {})
    argv = ["--preset", str(cfg.get("preset") or "default"), "--tasks", ",".join(task_args.get(n, n) for n in names), "--quiet"]
    for o in cfg.get("overrides", []):
        if not o.startswith(("train.shuffle_labels=", "train.train_only=")):
            argv += ["--set", restrict_override(o, cfg, names)]
    argv += ["--set", f"train.epochs={epochs}", "--set", f"train.steps_per_epoch={steps}"]
    # The model as the run built it (sizes and embedder options), whatever the preset and the code's defaults are today.
    argv += [a for o in model_overrides(cfg["model"]) for a in ("--set", o)]
    modalities = {m: mc["options"] for m, mc in cfg["model"]["modalities"].items() if any(m in cfg["tasks"][n]["modalities"] for n in names)}
    argv += ["--set", f"train.modality_options={json.dumps(modalities)}"]
    if train_only:
        argv += ["--set", f"train.train_only={train_only}"]
    if from_run:
        argv += ["--init-from", str(run_dir)]
    data_root, cache_dir = run_data_paths(cfg, data_root, cache_dir)  # where the run read its tasks, as scoring does
    if data_root:
        argv += ["--data-root", data_root]
    if cache_dir:
        argv += ["--cache-dir", cache_dir]
    return argv


def run_interference(run_dir: str | Path, out: Path, *, tasks: Sequence[str] | None = None, shuffle: Sequence[str] | None = None,
                     epochs: int | None = None, steps: int | None = None, train_only: str = "", seeds: Sequence[int] | None = None,
                     from_run: bool = False, eval_limit: int = 1000, data_root: str | None = None, cache_dir: str | None = None,
                     quiet: bool = True) -> dict[str, Any]:
    """Train the normal and shuffled runs under ``out/runs`` and return the change matrix (see module docstring).

    Defaults: the run's tasks, each of them shuffled in turn, the run's seed, ``epochs`` = min(2, the
    run's), ``steps`` = the run's steps per epoch."""
    import train
    from evaluate import load_run_task, read_run_config
    from highmmt.metrics import HIGHER_IS_BETTER

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    names = list(tasks) if tasks else list(cfg["tasks"])
    shuffled = list(shuffle) if shuffle else names
    for n in {*names, *shuffled}:
        if n not in cfg["tasks"]:
            raise ValueError(f"task {n!r} is not in run {run_dir}; it has {sorted(cfg['tasks'])}")
    if not set(shuffled) <= set(names):
        raise ValueError(f"--shuffle {sorted(set(shuffled) - set(names))} must be among the trained --tasks {names}")
    tc = cfg["train"]
    epochs = epochs or min(2, int(tc["epochs"]))
    steps = steps or int(tc["steps_per_epoch"])
    seeds = list(seeds) if seeds else [int(cfg.get("seed", 0))]
    loaded = {n: load_run_task(cfg, n, data_root=data_root, cache_dir=cache_dir, quiet=quiet) for n in names}
    argv = train_command(cfg, run_dir, names, epochs=epochs, steps=steps, train_only=train_only, from_run=from_run,
                         data_root=data_root, cache_dir=cache_dir)
    scores: dict[str, dict[int, dict[str, float]]] = {v: {} for v in ["normal", *shuffled]}
    seconds: dict[str, list[float]] = {v: [] for v in scores}
    for seed in seeds:
        for variant in scores:
            folder = out / "runs" / f"seed{seed}" / ("normal" if variant == "normal" else f"shuffled_{variant}")
            extra = [] if variant == "normal" else ["--set", f"train.shuffle_labels={variant}"]
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
                train.main([*argv, "--seed", str(seed), "--output-dir", str(folder), "--overwrite", *extra])
            scores[variant][seed] = final_scores(folder, loaded, eval_limit)
            seconds[variant].append(time.perf_counter() - started)
    metric = {n: lt.spec.metric for n, lt in loaded.items()}
    sign = {n: 1.0 if HIGHER_IS_BETTER[m] else -1.0 for n, m in metric.items()}
    change: dict[str, dict[str, dict[str, float]]] = {}
    for a in shuffled:
        change[a] = {}
        for b in names:
            diffs = [sign[b] * (scores[a][s][b] - scores["normal"][s][b]) for s in seeds]
            m, sd = mean_sd(diffs)
            change[a][b] = {"mean": m, "sd": sd, "per_seed": diffs}
    normal = {b: dict(zip(("mean", "sd"), mean_sd([scores["normal"][s][b] for s in seeds]))) for b in names}
    return {
        "tasks": names, "shuffled": shuffled, "metric": metric, "seeds": seeds, "epochs": epochs, "steps_per_epoch": steps,
        "train_only": train_only or "all", "from_run": from_run, "eval_limit": eval_limit, "train_args": argv,
        "normal": normal, "change": change,
        "scores": {v: {str(s): sc for s, sc in per.items()} for v, per in scores.items()},
        "train_seconds": {v: float(np.sum(s)) for v, s in seconds.items()},
    }


def markdown(result: Mapping[str, Any]) -> list[str]:
    names, shuffled = result["tasks"], result["shuffled"]
    seeds = ", ".join(map(str, result["seeds"]))
    lines = [f"### Change of each task's test metric when one task's training labels are shuffled (seeds {seeds}; "
             f"{result['epochs']} x {result['steps_per_epoch']} steps; trainable: {result['train_only']}"
             f"{'; from the run' if result['from_run'] else '; from scratch'})", "",
             "Rows: the shuffled task; columns: the task measured (test split, final weights, at most "
             f"{result['eval_limit']} rows). Negative: worse than in the normal run. The diagonal is the shuffled task itself.", "",
             "| shuffled \\ measured | " + " | ".join(short(n, 18) for n in names) + " |", "|---" * (len(names) + 1) + "|",
             "| (normal run) | " + " | ".join(fmt_mean_sd(result["normal"][b]["mean"], result["normal"][b]["sd"]) for b in names) + " |"]
    for a in shuffled:
        cells = [fmt_mean_sd(result["change"][a][b]["mean"], result["change"][a][b]["sd"], 3, True) for b in names]
        lines.append(f"| {short(a, 18)} | " + " | ".join(cells) + " |")
    return lines + [""]


def panels(result: Mapping[str, Any]) -> dict[str, np.ndarray]:
    m = np.array([[result["change"][a][b]["mean"] for b in result["tasks"]] for a in result["shuffled"]], dtype=float)
    return {f"change of the test metric (trainable: {result['train_only']})": m}
