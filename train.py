"""Train one HighMMT model on many tasks (non-parallel multitask learning).

    python train.py                              # the whole suite, default preset (~20 min on 2 CPU cores)
    python train.py --preset tiny                # about a minute
    python train.py --tasks utd_mhad,my_task.yaml --set train.lr=5e-4 --output-dir runs/x
    python train.py --output-dir runs/x --resume # continue a killed run
    torchrun --nproc_per_node 2 train.py ...     # two processes (CPU: gloo)
    accelerate launch --multi_gpu --num_processes 8 train.py ...  # GPUs, one node or many (no code change)

Reads top to bottom: config -> accelerator -> data -> model -> optimizer -> loop (schedule, step,
evaluate, checkpoint) -> curves. The run folder layout is in the README.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import pickle
import random
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, gather_object, set_seed
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

import analysis.interference  # noqa: F401  (registers the sharing-analysis hook: train.shuffle_labels, train.train_only)
import modalities  # noqa: F401  (registers the embedders)
import tasks as task_registry  # noqa: F401  (registers the built-in tasks)
import transference  # noqa: F401  (registers the training methods)
from highmmt import HighMMT
from highmmt.model import collect_parts
from highmmt.checkpoint import TASK_WEIGHTS_DIR, atomic_save_safetensors, atomic_save_torch, atomic_write_bytes, atomic_write_json, load_weights
from highmmt.config import HighMMTConfig, ModalityConfig, TaskConfig, apply_overrides, from_dict
from highmmt.heads import fit_part_weights, task_loss
from highmmt.metrics import HIGHER_IS_BETTER
from highmmt.plotting import pyplot, save_figure
from modalities.pretrained import modality_config
from tasks.base import TaskSpec
from tasks.cache import LoadedTask, find_bad_rows, load_task, resolve_cache_dir, resolve_data_root, run_data_paths
from tasks.loader import Prefetcher, TaskStream, collate_rows, eval_batches, move_to, predict, score
from tasks.splits import stratified_holdout
from transference import autotune
from transference.config import FINETUNE_POLICIES, PER_TASK_SETTINGS, PRECISIONS, RunConfig, TrainConfig
from transference.hooks import TrainContext, TrainHook, build_hooks
from transference.schedules import make_schedule, warmup_cosine

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SUITE = [
    "avmnist",
    "utd_mhad",
    "physionet_mortality",
    "omniglot",
    "sentiment",
    "subjectivity",
    "robot_failures_lp1",
    "robot_failures_lp2",
    "robot_failures_lp3",
    "robot_failures_lp4",
    "robot_failures_lp5",
]
ALIASES = {"suite": SUITE, "robot_failures": [t for t in SUITE if t.startswith("robot_failures_")]}


# ---- command line and config -----------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="preset name in configs/ or a JSON file (default: default; --resume: the run's)")
    p.add_argument("--tasks", default=None, help="comma-separated task names and/or spec files (default: the preset's, else the suite)")
    p.add_argument("--output-dir", default=None, help="run folder (default runs/<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --output-dir")
    p.add_argument("--init-from", default=None, help="start from a trained checkpoint: matching weights are loaded")
    p.add_argument("--seed", type=int, default=None, help="all randomness (default 0; --resume: the run's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="typed config override, e.g. train.lr=5e-4")
    p.add_argument("--data-root", default=None, help="data folder (else $HIGHMMT_DATA, else ./data)")
    p.add_argument("--cache-dir", default=None, help="parsed-data cache (else $HIGHMMT_CACHE, else ~/.cache/highmmt)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--finetune", default=None, metavar="|".join(FINETUNE_POLICIES),
                   help="freezing policy with --init-from (= --set train.finetune=...); full trains everything; head the "
                        "heads; embedders_head the embedders and heads over a frozen encoder and fusion; lora low-rank "
                        "adapters; prefix (Frozen) only a new modality's k tokens prepended to train.prefix.host in a frozen model")
    p.add_argument("--train-fraction", type=float, default=None, help="keep a stratified, seeded fraction of each training split (= --set train.train_fraction=...)")
    p.add_argument("--labeled-fraction", type=float, default=None, help="keep labels for a stratified, seeded fraction of each training split; the rest is unlabeled data for train.semi.method (= --set train.semi.labeled_fraction=...)")
    args = p.parse_args(argv)
    # The shorthand flags are overrides like any other: typed and checked by the config.
    if args.finetune is not None:
        args.overrides.append(f"train.finetune={args.finetune}")
    if args.train_fraction is not None:
        args.overrides.append(f"train.train_fraction={args.train_fraction}")
    if args.labeled_fraction is not None:
        args.overrides.append(f"train.semi.labeled_fraction={args.labeled_fraction}")
    if not args.resume:
        args.preset = "default" if args.preset is None else args.preset
        args.seed = 0 if args.seed is None else args.seed
    return args


def resume_settings(args: argparse.Namespace, out: Path) -> None:
    """``--resume`` continues the run as it started: its preset, tasks, seed and overrides come from
    its ``config.json``. A flag given again must agree with them; one that contradicts them is an
    error, not a silent change of a half-trained run. Its data root and cache folder too, unless given or set in
    the environment (:func:`tasks.cache.run_data_paths`)."""
    saved = json.loads((out / "config.json").read_text())
    where = f"--resume: {out} was started with"
    for flag, given, kept in (("--preset", args.preset, saved.get("preset")), ("--seed", args.seed, saved.get("seed"))):
        if given is not None and kept is not None and given != kept:
            raise ValueError(f"{where} {flag} {kept}, not {given}; a resumed run keeps its settings: drop {flag}, or start "
                             "a new run in another --output-dir")
    args.preset = saved.get("preset") or "default" if args.preset is None else args.preset
    args.seed = int(saved.get("seed", 0)) if args.seed is None else args.seed
    kept_tasks = list(saved.get("task_args", {}).values())
    if args.tasks is None:
        args.tasks = ",".join(kept_tasks) or None
    elif kept_tasks:
        given = [str(Path(t).resolve()) if Path(t).suffix in (".yaml", ".yml", ".json") else t
                 for t in expand_tasks(args.tasks.split(","))]
        if sorted(given) != sorted(kept_tasks):
            raise ValueError(f"{where} --tasks {','.join(kept_tasks)}, not {args.tasks}; drop --tasks to continue it")
    if "overrides" in saved:  # given ones go on top; check_resumed_config refuses any that changes the run
        args.overrides = [*saved["overrides"], *(o for o in args.overrides if o not in saved["overrides"])]
    args.data_root, args.cache_dir = run_data_paths(saved, args.data_root, args.cache_dir)  # where it read its tasks


# How a run executes, not what it computes: these may change on --resume.
EXECUTION_KEYS = ("threads", "prefetch_workers", "eval_batch_size")


def check_resumed_config(saved: dict[str, Any], train_cfg: dict[str, Any], out: Path) -> None:
    """The rebuilt training config must be the saved one, but for :data:`EXECUTION_KEYS`. A setting the
    saved config lacks (added to the project after the run started) counts as its default then."""
    saved = with_defaults(saved, dataclasses.asdict(TrainConfig()))
    differ = sorted(k for k in set(saved) | set(train_cfg) if k not in EXECUTION_KEYS and saved.get(k) != train_cfg.get(k))
    if differ:
        shown = ", ".join(f"train.{k}: {saved.get(k)!r} -> {train_cfg.get(k)!r}" for k in differ[:5])
        raise ValueError(f"--resume: the command line changes the run in {out} ({shown}); a resumed run keeps its "
                         "settings: drop the changing flags, or start a new run")


def with_defaults(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with each key it lacks taken from ``defaults``, into nested settings sections too."""
    filled = {**defaults, **saved}
    for k, v in defaults.items():
        if isinstance(v, dict) and v and isinstance(saved.get(k), dict):
            filled[k] = with_defaults(saved[k], v)
    return filled


def load_preset(name: str) -> tuple[RunConfig, list[str] | None]:
    path = Path(name) if name.endswith(".json") else CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise ValueError(f"unknown preset {name!r}; known presets: {known} (or give a .json file)")
    raw = json.loads(path.read_text())
    preset_tasks = raw.pop("tasks", None)
    return from_dict(RunConfig, raw, prefix=""), preset_tasks


def expand_tasks(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        for t in ALIASES.get(n, [n]):
            if t not in out:
                out.append(t)
    return out


def model_config(sizes: HighMMTConfig, specs: Sequence[TaskSpec]) -> HighMMTConfig:
    """The preset's sizes plus one modality entry per modality name and one head per task."""
    mods: dict[str, ModalityConfig] = {}
    for spec in specs:
        for m, kind in spec.modalities.items():
            mc = modality_config(kind, spec.modality_options.get(m, {}))  # a ``backbone`` option: pretrained kind
            if m in mods and mods[m] != mc:
                raise ValueError(
                    f"modality {m!r} is declared differently by two tasks: {mods[m].kind} {mods[m].options} "
                    f"vs {mc.kind} {mc.options} (task {spec.name!r}); give them different modality names"
                )
            mods[m] = mc
    heads = {s.name: TaskConfig(list(s.modalities), s.task_type, s.num_classes) for s in specs}
    return dataclasses.replace(sizes, modalities=mods, tasks=heads)


def check_rows(loaded: dict[str, LoadedTask], policy: str, log: Any) -> dict[str, LoadedTask]:
    """Find, before any training, every row with a missing value or NaN/inf where the kind needs
    finite values (``tasks.cache.find_bad_rows``); ``train.bad_rows=error`` names them and stops,
    ``drop`` removes them and logs the count."""
    out = {}
    for t, lt in loaded.items():
        splits, changed = dict(lt.splits), False
        for split, ds in lt.splits.items():
            bad = find_bad_rows(ds, lt.spec)
            if not bad:
                continue
            rows = np.unique(np.concatenate(list(bad.values())))
            detail = "; ".join(f"column {m!r}: {len(v)} row(s), e.g. {v[:5].tolist()}" for m, v in bad.items())
            if policy == "error":
                raise ValueError(f"task {t!r}, split {split!r}: {len(rows)} row(s) hold a missing value, NaN or infinity "
                                 f"({detail}); fix the data, or pass --set train.bad_rows=drop to leave them out")
            splits[split], changed = ds.select(np.setdiff1d(np.arange(len(ds)), rows)), True
            log(f"task {t}: {len(rows)} bad row(s) of split {split!r} dropped ({detail})")
        out[t] = dataclasses.replace(lt, splits=datasets.DatasetDict(splits)) if changed else lt
    return out


def with_modality_options(loaded: dict[str, LoadedTask], overrides: dict[str, dict[str, Any]]) -> dict[str, LoadedTask]:
    """``train.modality_options`` (modality -> embedder options) merged over the task specs' options."""
    known = {m for lt in loaded.values() for m in lt.spec.modalities}
    if set(overrides) - known:
        raise ValueError(f"train.modality_options names modality(ies) {sorted(set(overrides) - known)}, which no task "
                         f"being trained reads; known: {sorted(known)}")
    out = {}
    for t, lt in loaded.items():
        opts = {m: {**lt.spec.modality_options.get(m, {}), **overrides.get(m, {})} for m in lt.spec.modalities}
        out[t] = dataclasses.replace(lt, spec=dataclasses.replace(lt.spec, modality_options=opts))
    return out


def subsample_train(loaded: LoadedTask, fraction: float, seed: int) -> LoadedTask:
    """Keep a stratified, seeded fraction of the training split (low-resource studies); every class keeps a row."""
    if fraction >= 1.0:
        return loaded
    train = loaded.splits["train"]
    labels = train[loaded.spec.target] if loaded.spec.task_type == "classification" else np.zeros(len(train))
    _, keep = stratified_holdout(labels, fraction, seed, every_class=True, what=f"training split of task {loaded.spec.name!r}")
    splits = dict(loaded.splits)
    splits["train"] = train.select([int(i) for i in keep])
    return dataclasses.replace(loaded, splits=splits)


def build_optimizer(model: HighMMT, tc: Any, extra: nn.Module, lr_scales: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """AdamW (fused where it can be) over the trainable parameters; no weight decay on biases,
    norms, latents and tokens. The heads' wide read-outs get ``train.wide_lr_scale`` times the lr.

    With ``train.layer_decay`` < 1 each depth gets its own lr (heads ``lr``, each earlier layer one
    more factor of the decay; see transference/finetune.py); hook modules get ``lr``.
    """
    named = [(n, p) for n, p in [*model.named_parameters(), *extra.named_parameters(prefix="extra")] if p.requires_grad]
    is_decayed = lambda n, p: p.ndim >= 2 and "latents" not in n and "tokens" not in n  # noqa: E731
    scales = dict(lr_scales or {})
    for n, _ in named:
        if n.startswith("heads.") and ".wide." in n:
            scales[n] = scales.get(n, 1.0) * tc.wide_lr_scale
    keys = sorted({(not is_decayed(n, p), -scales.get(n, 1.0)) for n, p in named})  # decayed first, then by lr
    groups = [
        {"params": [p for n, p in named if (not is_decayed(n, p), -scales.get(n, 1.0)) == key],
         "weight_decay": 0.0 if key[0] else tc.weight_decay, "lr": -key[1] * tc.lr}
        for key in keys
    ]
    return autotune.adamw(groups, lr=tc.lr)


def busy_cpu() -> bool:
    """Other work already keeps every core busy (1-minute load average >= cores)."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return False


# ---- checkpoints -------------------------------------------------------------------------------
def save_trainer_state(out: Path, model: HighMMT, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> None:
    """Write weights then state (which names the weights file); never leaves a half checkpoint."""
    d = out / "trainer_state"
    d.mkdir(parents=True, exist_ok=True)
    weights = f"model-{state['global_step']:08d}.safetensors"
    atomic_save_safetensors(d / weights, model.state_dict())
    name, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {  # plain types and tensors only: load_trainer_state reads it with weights_only=True
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    atomic_save_torch(
        d / "state.pt",
        {"weights": weights, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng, **state},
    )
    for old in d.glob("model-*.safetensors"):
        if old.name != weights:
            old.unlink()


def read_metrics(path: Path, log: Any = print) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` ([] when absent). A torn last line (the process was
    killed while appending) is dropped with a note; a bad line elsewhere is an error naming it."""
    if not path.is_file():
        return []
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for k, (number, line) in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "epoch" not in row:
                raise ValueError("not an object with an 'epoch'")
        except ValueError as e:
            if k == len(lines) - 1:
                log(f"{path}, line {number}: torn last line dropped (the run was stopped while writing it)")
                break
            raise ValueError(f"{path}, line {number}: not a metrics row ({e}); fix or delete the line") from e
        rows.append(row)
    return rows


# What a run writes into its folder; --overwrite removes exactly these before the new run starts.
RUN_FILES = ("config.json", "model.safetensors", "hooks.safetensors", "best.json", TASK_WEIGHTS_DIR, "DONE", "metrics.jsonl", "curves.png",
             "ranks.json", "semisup.json", "part_weights.json", "trainer_state", "tensorboard", "eval")
LOCK_FILE = ".lock"


def lock_run_folder(out: Path) -> Path:
    """Take the run folder for this process: ``out/.lock`` holds its pid. A second run on the same
    folder is refused while that process lives; a lock left by a dead process is taken over."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except PermissionError as e:
        raise PermissionError(f"{out}: cannot create the run folder ({e.strerror}); pick a writable --output-dir") from e
    lock = out / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = -1
            if pid > 0 and pid != os.getpid() and _alive(pid):  # this process's own: an earlier main() that failed
                raise RuntimeError(f"{out} is in use by another run (process {pid}, {lock}); wait for it to end or "
                                   "use another --output-dir") from None
            lock.unlink(missing_ok=True)  # left by a process that no longer runs
            continue
        except PermissionError as e:
            raise PermissionError(f"{out}: cannot write the run folder ({e.strerror}); pick a writable --output-dir") from e
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return lock
    raise RuntimeError(f"{out}: could not take {lock}; another run may have taken it at the same moment")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clear_run_files(out: Path) -> None:
    """--overwrite: remove the old run's files before anything new is written, so a crash cannot
    leave the new config beside the old weights."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def load_trainer_state(out: Path) -> dict[str, Any] | None:
    """The trainer state of a run folder, or None. Read with ``weights_only=True``: tensors and
    plain Python types only, so a crafted file cannot run code."""
    path = out / "trainer_state" / "state.pt"
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: not a trainer state this version can read safely (only tensors and plain types are "
                         f"loaded; {str(e).splitlines()[0]}); start the run again with --overwrite") from e
    except (RuntimeError, OSError, EOFError) as e:  # truncated or damaged (torch reports it in several ways)
        raise ValueError(f"{path}: damaged trainer state ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}); "
                         "resume is impossible, start the run again with --overwrite") from e


def resolve_precision(requested: str, use_cpu: bool, resume_dir: Path | None) -> tuple[str, str]:
    """``train.precision`` -> (``fp32`` | ``bf16`` | ``fp16``, how it was chosen).

    ``auto`` follows the device's capabilities (``transference.autotune.pick_precision``: bf16 on a GPU
    that supports it or a CPU with AMX tiles, else fp32), except that a resumed run keeps the choice
    it started with (its ``config.json``).
    """
    if requested != "auto":
        return requested, "set"
    if resume_dir is not None and (resume_dir / "config.json").is_file():
        chosen = json.loads((resume_dir / "config.json").read_text()).get("precision")
        if chosen in PRECISIONS and chosen != "auto":
            return chosen, "auto, as chosen when the run started"
    choice, why = autotune.pick_precision(torch.device("cpu" if use_cpu else "cuda"))
    return choice, f"auto: {why}"


def check_mixup_hooks(tc: Any, hooks: Sequence[Any], tasks: Sequence[str] | None = None) -> None:
    """``train.mixup`` / ``train.task_mixup`` mix the latents and the targets; refuse it beside training methods
    whose hooks change the inputs or add losses on the batch (they would read the unmixed one). With ``tasks``
    (the run's), only mixup that acts on one of them counts: a preset's ``task_mixup`` for a task the run does
    not train is no conflict."""
    reading = [h.name for h in hooks if type(h).extra_loss is not TrainHook.extra_loss
               or type(h).training_inputs is not TrainHook.training_inputs]
    if tasks is None:
        mixed = tc.mixup > 0 or any(v > 0 for v in tc.task_mixup.values())
    else:
        mixed = any(tc.task_mixup.get(t, tc.mixup) > 0 for t in tasks)
    if mixed and reading:
        raise ValueError(f"train.mixup mixes the latents and the targets; the training method(s) {reading} change the "
                         "inputs or add losses on the unmixed batch: use one or the other")


class TaskLoss(nn.Module):
    """The model and the training methods' extra modules as one module whose forward is one task's
    loss. This is what accelerate prepares: on several processes it becomes one DDP module, so every
    trainable parameter (hook modules included) starts equal on every rank and has its gradient
    averaged. Under mixed precision only the model's forward is autocast; the loss and the methods'
    extra losses run as before, outside it.

    Args:
        model: the HighMMT model (its config gives each task's type).
        tc: the training config (``label_smoothing``, ``mixup``, ``wide_loss``, ``wide_own_loss_only``, ``deep_loss``,
            ``modality_loss``).
        extra: the training hooks' modules (a ModuleDict; default none).
        hooks: the training hooks; ``extra_loss`` of each is added.
        ctx: what the hooks see (needed with hooks).
        autocast: the autocast context factory (the accelerator's; default none).
    """

    def __init__(self, model: HighMMT, tc: Any, *, extra: nn.ModuleDict | None = None, hooks: Sequence[Any] = (),
                 ctx: TrainContext | None = None, autocast: Any = contextlib.nullcontext) -> None:
        super().__init__()
        self.model, self.extra = model, extra if extra is not None else nn.ModuleDict()
        self.hooks, self.ctx, self.tc, self.autocast = list(hooks), ctx, tc, autocast
        check_mixup_hooks(tc, self.hooks, list(model.config.tasks))

    def forward(self, batch: dict[str, Any], task: str) -> torch.Tensor:
        """One task's batch -> its scalar loss (supervised + the hooks' extra losses)."""
        inputs = batch["inputs"]
        for h in self.hooks:
            inputs = h.training_inputs(task, inputs)
        alpha = self.tc.task_mixup.get(task, self.tc.mixup)
        mix = self.draw_mix(batch["target"], alpha) if alpha > 0 and self.model.training else None
        with self.autocast():
            outputs, latents, parts = self.model(inputs, task, return_latents=True, return_parts=True, mix=mix)
        with torch.autocast(outputs.device.type, enabled=False):  # accelerate may wrap this forward in autocast
            task_type = self.model.config.tasks[task].task_type

            def loss_of(out: torch.Tensor) -> torch.Tensor:  # mixup: the two targets' losses, mixed as the rows were
                one = task_loss(out.float(), batch["target"], task_type, label_smoothing=self.tc.label_smoothing)
                if mix is None:
                    return one
                perm, lam = mix
                return lam * one + (1 - lam) * task_loss(out.float(), batch["target"][perm], task_type,
                                                         label_smoothing=self.tc.label_smoothing)

            if self.tc.wide_own_loss_only and "wide" in parts:  # the sum's loss does not reach the wide read-outs
                wide = parts["wide"].to(outputs.dtype)
                outputs = outputs - self.model.part_weight(task, "wide") * (wide - wide.detach())
            loss = loss_of(outputs)
            if len(parts) > 1:  # each part also learns alone (train.wide_loss, train.deep_loss, train.modality_loss)
                for name, part in parts.items():
                    weight = self.part_weight(name)
                    if weight > 0:
                        loss = loss + weight * loss_of(part)
            if self.hooks:
                self.ctx.latents = latents
                for h in self.hooks:
                    aux = h.extra_loss(self.ctx, task, batch, outputs)
                    if aux is not None:
                        loss = loss + aux
                self.ctx.latents = None
        return loss

    def draw_mix(self, target: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
        """``train.mixup`` / ``train.task_mixup`` = ``alpha``: the rows each row is mixed with (a permutation of the
        batch) and the weight lam ~ Beta(alpha, alpha) of a batch, both drawn on the CPU from torch's global
        generator (seeded, saved on resume; the same draws on any device)."""
        a = torch.tensor(float(alpha))
        lam = float(torch.distributions.Beta(a, a).sample())
        return torch.randperm(target.shape[0]).to(target.device), lam

    def part_weight(self, name: str) -> float:
        """The weight of an output part's own loss (see ``HighMMT.output_parts``)."""
        if name == "deep":
            return self.tc.deep_loss
        if name == "wide":
            return self.tc.wide_loss
        return self.tc.modality_loss  # "modality:<m>" and "summary:<m>"


def weights_digest(module: nn.Module) -> str:
    """sha256 of every parameter's bytes, in name order: equal digests mean identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---- main --------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    run, task_names = resolve_run(args)
    tc = run.train
    use_cpu = args.cpu or not torch.cuda.is_available()
    if tc.threads > 0:  # 0 = torch's default; 1 is much faster on a CPU shared with other work
        torch.set_num_threads(tc.threads)
    out = Path(args.output_dir or f"runs/{dt.datetime.now():%Y%m%d-%H%M%S}")
    take_run_folder(args, out)
    precision, precision_note = resolve_precision(tc.precision, use_cpu, out if args.resume else None)
    # accelerate keeps one process-wide state that refuses a second precision; each run chooses its own
    # (the distributed part, PartialState, is kept)
    AcceleratorState._reset_state()
    # Several processes: DDP. A step's tasks use different embedders and heads, so parameters may go unused.
    accelerator = Accelerator(cpu=use_cpu, mixed_precision={"fp32": "no"}.get(precision, precision),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    rank, world, main_process = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    log = (lambda msg: tqdm.write(msg)) if main_process else (lambda msg: None)
    show = main_process and not args.quiet
    log(f"precision {precision} ({precision_note})")
    set_seed(args.seed)
    warn_if_busy(tc, use_cpu, log)

    # Training methods (transference/): chosen by the config; they may check the run before any data is parsed.
    hooks = build_hooks(run)
    check_mixup_hooks(run.train, hooks, task_names)  # before any data is parsed (TaskLoss checks again)
    for h in hooks:
        run = h.check_run(run, init_from=args.init_from, overrides=args.overrides, log=log)
    loaded, task_args = load_tasks(args, task_names, tc, accelerator, log)
    specs = [lt.spec for lt in loaded.values()]

    # Model (+ what the methods do to it: extra heads, loaded weights, frozen parts), optimizer, schedule.
    cfg = model_config(run.model, specs)
    for h in hooks:
        cfg = h.model_config(cfg, specs)
    model = HighMMT(cfg)
    for t, on in tc.task_select_stacked.items():
        if on and len(model.part_names(t)) < 2:
            raise ValueError(f"train.task_select_stacked names task {t!r}, whose outputs have one part "
                             f"({model.part_names(t) or ['deep']}): there is nothing to stack (a wide read-out, modality or summary heads)")
    ctx = TrainContext(model=model, loaded=loaded, run=run, device=accelerator.device, seed=args.seed, out=out,
                       log=log, autocast=accelerator.autocast, init_from=args.init_from)
    model_notes: dict[str, Any] = {}
    for h in hooks:
        model_notes.update(h.prepare_model(ctx))
    model.to(accelerator.device)
    if tc.compile:  # in place: parameter names, checkpoints and hooks see the plain module
        model.compile()
        log("torch.compile on: the first step of each task (and of evaluation) compiles its graph")
    st = load_trainer_state(out) if args.resume else None
    for h in hooks:  # they may reshape the training data first
        h.setup(ctx, (st or {}).get("hooks", {}).get(h.name))
    if st is None and tc.wide_prior == "naive_bayes":  # a resumed run has its priors in its weights
        fit_wide_priors(model, loaded, tc.wide_prior_alpha, log)
    extra = nn.ModuleDict({h.name: nn.ModuleDict(mods) for h in hooks if (mods := h.modules())}).to(accelerator.device)
    if tc.select == "task" and (len(extra) or eval_model_of(hooks, ctx) is not model):
        log(f"train.select=task keeps per-task weights of the model alone, and the training methods {[h.name for h in hooks]} "
            "add modules or predict with another model: one checkpoint, selected on the mean (train.select=mean)")
        tc = dataclasses.replace(tc, select="mean")
    optimizer = build_optimizer(model, tc, extra, {k: v for h in hooks for k, v in h.lr_scales(model).items()})
    scheduler = warmup_cosine(optimizer, tc.warmup_steps, tc.epochs * tc.steps_per_epoch)
    streams = {t: TaskStream(len(lt.splits["train"]), tc.batch_sizes.get(t, tc.batch_size), seed=args.seed * 1000 + i,
                             rank=rank, world_size=world) for i, (t, lt) in enumerate(loaded.items())}

    # State: fresh or resumed; the run folder's config.json and metrics.jsonl.
    start_epoch, global_step, best = restore_trainer_state(st, out, model, extra, optimizer, scheduler, accelerator, streams, log)
    ema = average_of(model, tc.ema_decay, (st or {}).get("ema"))
    task_bests: dict[str, dict[str, Any]] = dict((st or {}).get("task_bests", {}))  # train.select=task
    if main_process:
        run_config = {"model": cfg.to_dict(), "train": dataclasses.asdict(tc), "tasks": {s.name: s.to_dict() for s in specs},
                      "task_args": task_args, "seed": args.seed, "preset": args.preset, "overrides": list(args.overrides),
                      "world_size": world, "precision": precision,
                      # where the tasks were read from: evaluate.py reads them there when not told otherwise
                      "data_root": str(resolve_data_root(args.data_root).resolve()),
                      "cache_dir": str(resolve_cache_dir(args.cache_dir).resolve()), **model_notes}
        write_run_config(out, run_config, args.resume)
    log_rows = MetricsLog(out, args.resume, start_epoch, log) if main_process else None

    # accelerate: device placement, DDP on several processes (rank 0's weights broadcast), the fp16
    # gradient scaler. The scheduler is stepped in train_step, once per optimizer step that was not skipped.
    step_loss, optimizer = accelerator.prepare(
        TaskLoss(model, tc, extra=extra, hooks=hooks, ctx=ctx, autocast=accelerator.autocast), optimizer)
    prefetch = Prefetcher(tc.prefetch_workers)
    fetch = lambda t, idx: collate_rows(loaded[t].splits["train"], idx, loaded[t].spec)  # noqa: E731
    model.train()
    started = time.time()
    for epoch in range(start_epoch, tc.epochs):
        batches = {t: s.batches_per_pass() for t, s in streams.items()}
        schedule = make_schedule(tc.strategy, batches, tc.steps_per_epoch, seed=args.seed, epoch=epoch,
                                 temperature=tc.temperature,
                                 min_fraction={t: tc.task_min_fraction.get(t, tc.min_task_fraction) for t in batches})
        pending = [[prefetch.submit(fetch, t, streams[t].next_indices()) for t in schedule.steps[0]]]
        sums: dict[str, list[float]] = {t: [] for t in loaded}
        bar = tqdm(range(tc.steps_per_epoch), desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not show, leave=False)
        for i in bar:
            if i + 1 < len(schedule):  # collate the next step's batches while this one computes
                pending.append([prefetch.submit(fetch, t, streams[t].next_indices()) for t in schedule.steps[i + 1]])
            step_batches = list(zip(schedule.steps[i], [f.result() for f in pending.pop(0)]))
            for t, loss in train_step(step_loss, step_batches, optimizer, scheduler, accelerator, tc):
                sums[t].append(loss)
            if ema is not None:
                ema.update_parameters(model)
            global_step += 1
            if show:
                bar.set_postfix({t[:12]: f"{np.mean(v[-10:]):.3f}" for t, v in sums.items() if v})
        bar.close()
        hook_rows = [row for h in hooks for row in h.end_epoch(ctx, epoch)]
        for t, lt in loaded.items():  # a hook changed a training split: restart its stream
            if len(lt.splits["train"]) != streams[t].size:
                streams[t] = TaskStream(len(lt.splits["train"]), streams[t].batch_size, seed=streams[t].seed, rank=rank, world_size=world)

        # Evaluate on validation (main process), select on the weighted mean of primary metrics; checkpoint.
        if main_process:
            log_rows.add(hook_rows)
            with averaged_weights(model, ema):
                rows, selection = validate(eval_model_of(hooks, ctx), loaded, tc, accelerator, global_step, epoch, sums)
                if selection > best:
                    best = selection
                    save_best(out, model, extra, hooks, {"epoch": epoch + 1, "step": global_step, "selection": best})
                if tc.select == "task":
                    save_task_bests(out, model, hooks, loaded, tc, rows, task_bests, {"epoch": epoch + 1, "step": global_step})
            log_rows.add(rows)
            summary = " ".join(f"{r['task']}={r['value']:.3f}" for r in rows if r["split"] == "validation" and r["metric"] == loaded[r["task"]].spec.metric)
            log(f"epoch {epoch + 1}/{tc.epochs} step {global_step} ({time.time() - started:.0f}s) val: {summary}")
            save_trainer_state(
                out, model, optimizer, scheduler,
                {"epoch": epoch + 1, "global_step": global_step, "best": best, "task_bests": task_bests,
                 "streams": {t: (s.state.passes, s.state.position) for t, s in streams.items()},
                 "hooks": {h.name: h.state_dict() for h in hooks}, "extra": extra.state_dict(),
                 **({"ema": ema.state_dict()} if ema is not None else {}),
                 **({"scaler": accelerator.scaler.state_dict()} if accelerator.scaler is not None else {})},
            )
        accelerator.wait_for_everyone()
    prefetch.close()
    if world > 1:  # the ranks must have stayed in step: compare digests of their weights
        digests = gather_object([weights_digest(accelerator.unwrap_model(step_loss))])
        if main_process:
            atomic_write_json(out / "ranks.json", {"world_size": world, "weights_sha256": digests})
    if main_process:
        if tc.part_weights == "validation":
            fit_run_part_weights(out, loaded, tc, log, device=accelerator.device)
        (out / "DONE").write_text(f"finished {tc.epochs} epochs, {global_step} steps in {time.time() - started:.0f}s\n")
        _plot_curves(log_rows.history, out / "curves.png")
        log_rows.close()
        log(f"done: {out} (best validation selection score {best:.4f})")
    accelerator.end_training()
    if int(os.environ.get("RANK", "0")) == 0:
        (out / LOCK_FILE).unlink(missing_ok=True)
    return out


# ---- the steps of main ---------------------------------------------------------------------------
def resolve_run(args: argparse.Namespace) -> tuple[RunConfig, list[str]]:
    """The run config (preset + overrides; a resumed run's own settings) and the task names."""
    if args.resume and args.output_dir and (Path(args.output_dir) / "config.json").is_file():
        resume_settings(args, Path(args.output_dir))
    elif args.resume:
        args.preset = "default" if args.preset is None else args.preset
        args.seed = 0 if args.seed is None else args.seed
    run, preset_tasks = load_preset(args.preset)
    run = apply_overrides(run, args.overrides)
    return run, expand_tasks((args.tasks.split(",") if args.tasks else preset_tasks) or SUITE)


def take_run_folder(args: argparse.Namespace, out: Path) -> None:
    """Refuse a folder that holds a run unless --resume / --overwrite (before measuring or parsing
    anything); then rank 0 locks it, clears an overwritten run and a killed process's .tmp files."""
    if args.resume:
        if not (out / "trainer_state" / "state.pt").is_file():
            raise FileNotFoundError(f"--resume: {out} holds no trainer_state/state.pt to continue from")
    elif (out / "config.json").exists() and not args.overwrite:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if int(os.environ.get("RANK", "0")) != 0:  # one process owns the folder (rank 0 under torchrun)
        return
    lock = lock_run_folder(out)
    atexit.register(lock.unlink, missing_ok=True)
    if args.overwrite and not args.resume:
        clear_run_files(out)
    for leftover in [*out.glob(".*.tmp"), *out.glob("trainer_state/.*.tmp")]:  # a killed process's half-written files
        leftover.unlink(missing_ok=True)


def warn_if_busy(tc: Any, use_cpu: bool, log: Any) -> None:
    """A warning (nothing is measured or changed) when torch's threads share a CPU that is already busy."""
    if tc.threads <= 0 and use_cpu and busy_cpu():
        log(f"warning: the CPU is busy (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores) and torch uses "
            f"{torch.get_num_threads()} threads; threads that wait for each other can make training many times slower: "
            "consider --set train.threads=1")


def load_tasks(args: argparse.Namespace, task_names: Sequence[str], tc: Any, accelerator: Accelerator,
               log: Any) -> tuple[dict[str, LoadedTask], dict[str, str]]:
    """Every task parsed once into the Arrow cache (main process first, the others then read it),
    subsampled, with the config's modality options and bad rows checked; and how each was named."""
    loaded: dict[str, LoadedTask] = {}
    task_args: dict[str, str] = {}
    with accelerator.main_process_first():
        for name in task_names:
            lt = load_task(name, data_root=args.data_root, cache_dir=args.cache_dir, options=tc.task_options.get(name),
                           quiet=args.quiet or not accelerator.is_main_process)
            if lt.spec.name in loaded:
                raise ValueError(f"two tasks are named {lt.spec.name!r} ({task_args[lt.spec.name]} and {name})")
            loaded[lt.spec.name] = subsample_train(lt, tc.train_fraction, args.seed)
            task_args[lt.spec.name] = str(Path(name).resolve()) if lt.source == "spec" else name
    if tc.modality_options:
        loaded = with_modality_options(loaded, tc.modality_options)
    loaded = check_rows(loaded, tc.bad_rows, log)
    for key in PER_TASK_SETTINGS:
        for t in getattr(tc, key):
            if t not in loaded:
                raise ValueError(f"train.{key} names task {t!r}, which is not being trained ({sorted(loaded)})")
    return loaded, task_args


def train_step(step_loss: nn.Module, batches: Sequence[tuple[str, dict[str, Any]]], optimizer: Any, scheduler: Any,
               accelerator: Accelerator | None, tc: Any) -> list[tuple[str, float]]:
    """One optimizer step over one batch of each of the step's tasks: forward and backward per task
    (gradients averaged over processes once, in the step's last backward), clip, step. The one
    training step of the project; the studies that train outside ``main`` call it too.

    Args:
        step_loss: :class:`TaskLoss`, as prepared by ``accelerator.prepare``.
        batches: (task, collated batch) pairs of this step.
        optimizer, scheduler: as prepared; the scheduler (None: none) steps only when the optimizer
            did (fp16 skips steps with inf/nan gradients).
        accelerator: None for a plain single-process step on the batches' device (the speed benchmarks).
        tc: the training config (``augment_noise``, ``augment_time`` / ``task_augment_time``, ``modality_dropout``, ``loss_weights``,
            ``grad_clip``).
    Returns:
        (task, loss) per batch.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for k, (t, batch) in enumerate(batches):
        batch = move_to(batch, accelerator.device) if accelerator is not None else batch
        if tc.augment_noise > 0:
            augment_inputs(batch["inputs"], tc.augment_noise)
        warp = tc.task_augment_time.get(t, tc.augment_time)
        if warp > 0:
            modalities = getattr(step_loss, "module", step_loss).model.config.modalities  # DDP wraps TaskLoss
            augment_time(batch["inputs"], warp, {m: c.kind for m, c in modalities.items()})
        if tc.modality_dropout > 0:
            batch = {**batch, "inputs": drop_one_modality(batch["inputs"], tc.modality_dropout)}
        if accelerator is None:
            loss = step_loss(batch, t)
            (tc.loss_weights.get(t, 1.0) * loss).backward()
        else:
            with accelerator.no_sync(step_loss) if k + 1 < len(batches) else contextlib.nullcontext():
                loss = step_loss(batch, t)
                accelerator.backward(tc.loss_weights.get(t, 1.0) * loss)
        losses.append((t, loss.item()))
    if tc.grad_clip > 0:  # fp16: unscales first
        (accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_)(params, tc.grad_clip)
    optimizer.step()  # fp16: skipped when a gradient is inf/nan
    if scheduler is not None and not getattr(optimizer, "step_was_skipped", False):
        scheduler.step()
    return losses


def fit_wide_priors(model: HighMMT, loaded: dict[str, LoadedTask], alpha: float, log: Any, chunk: int = 1024) -> None:
    """``train.wide_prior=naive_bayes``: set the wide read-outs' priors of each classification task from the bags
    and labels of its training rows (``HighMMT.set_wide_priors``)."""
    for task, lt in loaded.items():
        if not model.has_wide(task):
            continue
        task_type = model.config.tasks[task].task_type
        if task_type != "classification":
            log(f"train.wide_prior: task {task!r} is {task_type}, not classification: its wide read-out starts at zero")
            continue
        split = lt.splits["train"]
        batches = ((b["inputs"], b["target"]) for b in
                   (collate_rows(split, np.arange(i, min(i + chunk, len(split))), lt.spec) for i in range(0, len(split), chunk)))
        seen = model.set_wide_priors(task, batches, alpha)
        log(f"train.wide_prior: {task}: naive Bayes prior from {len(split)} training rows ({seen} ids seen)")


def average_of(model: HighMMT, decay: float, state: dict[str, Any] | None) -> AveragedModel | None:
    """The exponential moving average of ``model``'s weights (``train.ema_decay`` = ``decay``; None when
    0), restored from a resumed run's ``state``. Updated after each optimizer step; its first update
    copies the weights."""
    if decay <= 0:
        return None
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    if state is not None:
        ema.load_state_dict(state)
    return ema


@contextlib.contextmanager
def averaged_weights(model: HighMMT, ema: AveragedModel | None) -> Any:
    """Within the block ``model`` holds the averaged weights (what validation scores and the best
    checkpoint saves); the live weights come back after it. No-op without an average."""
    if ema is None:
        yield
        return
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.module.state_dict())
    try:
        yield
    finally:
        model.load_state_dict(live)


def eval_model_of(hooks: Sequence[Any], ctx: TrainContext) -> nn.Module:
    """The module validation runs through: the model, or the one a training method replaces it with."""
    eval_models = [m for m in (h.eval_model(ctx) for h in hooks) if m is not ctx.model]
    if len(eval_models) > 1:
        raise ValueError(f"two training hooks replace the validation model: {[h.name for h in hooks]}")
    return eval_models[0] if eval_models else ctx.model


def validate(eval_model: nn.Module, loaded: dict[str, LoadedTask], tc: Any, accelerator: Accelerator, step: int, epoch: int,
             sums: dict[str, list[float]]) -> tuple[list[dict[str, Any]], float]:
    """The epoch's metrics rows (training loss, every validation metric) and the selection score:
    the weighted mean of the primary metrics (negated where lower is better)."""
    rows = [{"step": step, "epoch": epoch + 1, "task": t, "split": "train", "metric": "loss", "value": float(np.mean(v))}
            for t, v in sums.items() if v]
    selection = 0.0
    for t, lt in loaded.items():
        if tc.task_select_stacked.get(t):
            o, y = stacked_outputs(eval_model, lt, tc, accelerator.device)
        else:
            o, y = predict(eval_model, lt.splits["validation"], lt.spec, batch_size=tc.eval_batch_size,
                           limit=tc.max_eval_samples, device=accelerator.device, autocast=accelerator.autocast)
        scores = score(lt.spec, o, y)
        for m, v in scores.items():
            rows.append({"step": step, "epoch": epoch + 1, "task": t, "split": "validation", "metric": m, "value": v})
        primary = scores[lt.spec.metric]
        sign = 1.0 if HIGHER_IS_BETTER[lt.spec.metric] else -1.0
        selection += tc.eval_weights.get(t, 1.0) * sign * (0.0 if math.isnan(primary) else primary)
    return rows, selection / sum(tc.eval_weights.get(t, 1.0) for t in loaded)


def validation_batches(lt: LoadedTask, tc: Any, device: torch.device | str) -> Iterator[tuple[Any, torch.Tensor]]:
    """(inputs on ``device``, targets) of ``lt``'s validation split, at most ``tc.max_eval_samples`` rows, as validation
    scores them: what the part weights are fitted on."""
    dataset, spec = lt.splits["validation"], lt.spec
    for idx in eval_batches(len(dataset), tc.eval_batch_size, tc.max_eval_samples):
        batch = collate_rows(dataset, idx, spec)
        yield move_to(batch["inputs"], device), batch["target"]


def stacked_outputs(model: nn.Module, lt: LoadedTask, tc: Any, device: torch.device | str) -> tuple[np.ndarray, np.ndarray]:
    """``train.task_select_stacked``: the task's validation outputs [n, c] and targets as it will be scored: its output
    parts (``HighMMT.output_parts``) weighted by weights fitted on these rows (:func:`highmmt.heads.fit_part_weights`,
    the ridge toward equal weights chosen by cross-validation, as ``fit_run_part_weights`` does after training). The
    model's own part weights are not touched."""
    parts, target = collect_parts(model, lt.spec.name, validation_batches(lt, tc, device))
    with torch.enable_grad():
        weights = fit_part_weights(parts, target, lt.spec.task_type)  # its ridge chosen by cross-validation on these rows
    outputs = sum(weights[k] * v.float() for k, v in parts.items())
    return outputs.numpy(), target.numpy()


def fit_run_part_weights(out: Path, loaded: Mapping[str, LoadedTask], tc: Any, log: Any,
                         device: torch.device | str = "cpu") -> dict[str, Any]:
    """``train.part_weights=validation``: for every task whose outputs have several parts (a wide read-out, modality
    heads: ``HighMMT.part_names``), fit the weights of its parts on
    its validation split (``HighMMT.fit_part_weights``) for each set of weights it may be scored with, and
    write them back: ``model.safetensors`` (the mean's best epoch) and the task's own
    ``task_weights/<task>.safetensors`` where it has one. Also for a finished run folder (``loaded``: its tasks,
    as ``evaluate.py`` loads them). Returns {task: {"model": weights, "own": weights, "ridge": {"model": r, "own": r}}}
    (r: the ridge toward equal weights that cross-validation chose, "inf" for equal weights) and writes it as
    ``part_weights.json``."""
    model = HighMMT.from_pretrained(out).to(device)  # the saved weights, whatever wraps the training model
    tasks = [t for t in loaded if len(model.part_names(t)) >= 2]
    if not tasks:
        return {}

    fitted: dict[str, dict[str, Any]] = {t: {"ridge": {}} for t in tasks}

    def fit(t: str, which: str) -> None:
        fitted[t][which], ridge = model.fit_part_weights(t, validation_batches(loaded[t], tc, device), return_ridge=True)
        fitted[t]["ridge"][which] = ridge if math.isfinite(ridge) else "inf"  # JSON has no inf

    for t in tasks:
        fit(t, "model")
    final = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_save_safetensors(out / "model.safetensors", final, metadata={"format": "pt"})
    for t in tasks:
        model.load_state_dict(final)
        if model.load_task_weights(out, t):
            fit(t, "own")
            own = model.task_state({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, t)
            atomic_save_safetensors(out / TASK_WEIGHTS_DIR / f"{t}.safetensors", own, metadata={"format": "pt"})
    atomic_write_json(out / "part_weights.json", fitted)
    log("train.part_weights: " + "; ".join(f"{t}: " + ", ".join(f"{k} {w:.2f}" for k, w in v.get("own", v["model"]).items())
                                           for t, v in fitted.items()))
    return fitted


def save_task_bests(out: Path, model: HighMMT, hooks: Sequence[Any], loaded: dict[str, LoadedTask], tc: Any,
                    rows: Sequence[dict[str, Any]], task_bests: dict[str, dict[str, Any]], when: dict[str, Any]) -> None:
    """``train.select=task``: each task whose primary validation metric beat its own best so far gets the
    weights it reads saved as ``task_weights/<task>.safetensors`` when its validation split has at
    least ``train.select_min_rows`` rows (``evaluate.py`` and ``predict.py`` score it with them);
    ``task_weights/best.json`` says each task's best epoch and on how many validation rows it was
    chosen. ``task_bests`` (task -> epoch, step, value, validation rows) is updated in place."""
    state = None
    for t, lt in loaded.items():
        metric = lt.spec.metric
        value = next(r["value"] for r in rows if r["task"] == t and r["split"] == "validation" and r["metric"] == metric)
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        if math.isnan(value) or (t in task_bests and sign * value <= sign * task_bests[t]["value"]):
            continue
        n_rows = len(lt.splits["validation"])
        n_rows = min(n_rows, tc.max_eval_samples) if tc.max_eval_samples else n_rows
        if n_rows >= tc.select_min_rows:  # a smaller validation split keeps the mean's checkpoint: no file
            state = exported_state(model, hooks) if state is None else state
            atomic_save_safetensors(out / TASK_WEIGHTS_DIR / f"{t}.safetensors", model.task_state(state, t), metadata={"format": "pt"})
        task_bests[t] = {**when, "metric": metric, "value": value, "validation_rows": n_rows}
    atomic_write_json(out / TASK_WEIGHTS_DIR / "best.json", task_bests)


def exported_state(model: HighMMT, hooks: Sequence[Any]) -> dict[str, torch.Tensor]:
    """The weights as the methods export them (LoRA merged: they load into a plain HighMMT)."""
    state = model.state_dict()
    for h in hooks:
        state = h.export_weights(model, state)
    return state


def save_best(out: Path, model: HighMMT, extra: nn.ModuleDict, hooks: Sequence[Any], best: dict[str, Any]) -> None:
    """The best weights so far: ``model.safetensors`` as the methods export it (LoRA merged: it loads
    into a plain HighMMT; config.json already holds the model config), the methods' modules beside it."""
    atomic_save_safetensors(out / "model.safetensors", exported_state(model, hooks), metadata={"format": "pt"})
    if len(extra):  # hook modules (e.g. a translation decoder) that belong to these weights
        atomic_save_safetensors(out / "hooks.safetensors", extra.state_dict(), metadata={"format": "pt"})
    atomic_write_json(out / "best.json", best)


def restore_trainer_state(st: dict[str, Any] | None, out: Path, model: HighMMT, extra: nn.Module, optimizer: Any,
                          scheduler: Any, accelerator: Accelerator, streams: dict[str, TaskStream], log: Any) -> tuple[int, int, float]:
    """A resumed run's weights, optimizer, scheduler, loss scale, RNGs and stream positions;
    returns (epoch, global step, best selection score), (0, 0, -inf) for a fresh run."""
    if st is None:
        return 0, 0, -math.inf
    model.load_state_dict(load_weights(out / "trainer_state" / st["weights"]))
    if "extra" in st:
        extra.load_state_dict(st["extra"])
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    if accelerator.scaler is not None and "scaler" in st:  # fp16: the loss scale reached
        accelerator.scaler.load_state_dict(st["scaler"])
    random.setstate(st["rng"]["python"])
    name, keys, pos, has_gauss, cached = st["rng"]["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(st["rng"]["torch"])
    for t, (passes, position) in st["streams"].items():
        streams[t].state.passes, streams[t].state.position = passes, position
    log(f"resumed {out} at epoch {st['epoch']}, step {st['global_step']}")
    return st["epoch"], st["global_step"], st["best"]


def write_run_config(out: Path, run_config: dict[str, Any], resume: bool) -> None:
    """``config.json``; a resumed run must not change its training config (but for :data:`EXECUTION_KEYS`)."""
    out.mkdir(parents=True, exist_ok=True)
    if resume and (out / "config.json").is_file():
        saved_train = json.loads((out / "config.json").read_text()).get("train", {})
        check_resumed_config(saved_train, json.loads(json.dumps(run_config["train"], default=str)), out)
    atomic_write_json(out / "config.json", run_config)


class MetricsLog:
    """``metrics.jsonl`` (and tensorboard when installed): rows appended as they come. A resumed run
    keeps the rows of the epochs it checkpointed; an epoch logged but not checkpointed before a kill
    is dropped (it reruns)."""

    def __init__(self, out: Path, resume: bool, start_epoch: int, log: Any) -> None:
        self.path = out / "metrics.jsonl"
        old = read_metrics(self.path, log) if resume else []
        self.history = [r for r in old if r["epoch"] <= start_epoch]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in self.history).encode())
        self.writer = _tensorboard(out)

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.history.extend(rows)
        with open(self.path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        if self.writer is not None:
            for r in rows:
                self.writer.add_scalar(f"{r['task']}/{r['split']}/{r['metric']}", r["value"], r["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def augment_inputs(inputs: dict[str, Any], strength: float) -> None:
    """Train-time augmentation of float inputs, in place (``train.augment_noise`` = ``strength``).

    Each float ``x`` gets Gaussian jitter of ``strength`` x its std over real entries, then a random
    per-sample amplitude factor ``1 + strength * N(0, 1)`` (clamped to [0.5, 1.5]). Real entries are
    those the batch marks observed (``observed`` / ``numeric_observed``) or real (``mask``, broadcast
    over x's trailing axes); padding and unobserved entries stay zero. Integer inputs (text ids,
    uint8 video) are left alone.
    """
    for batch in inputs.values():
        x = batch.get("x") if isinstance(batch, dict) else None
        if x is None or not torch.is_floating_point(x):
            continue
        real = torch.ones_like(x, dtype=torch.bool)
        for key in ("observed", "numeric_observed", "mask"):
            m = batch.get(key)
            if m is not None and m.shape == x.shape[: m.ndim]:
                real = m.reshape(*m.shape, *([1] * (x.ndim - m.ndim))).expand_as(x)
                break
        if not bool(real.any()):
            continue
        std = x[real].float().std() if int(real.sum()) > 1 else x.new_tensor(0.0)
        scale = (1 + strength * torch.randn(x.shape[0], *([1] * (x.ndim - 1)), device=x.device)).clamp(0.5, 1.5)
        noisy = (x + strength * std * torch.randn_like(x)) * scale
        batch["x"] = torch.where(real, noisy, x).to(x.dtype)


#: the modality kinds ``train.augment_time`` warps: regular series with a step axis
WARPED_KINDS = ("timeseries", "pose")


def augment_time(inputs: dict[str, Any], strength: float, kinds: Mapping[str, str]) -> None:
    """Train-time window warping of regular series, in place (``train.augment_time`` = ``strength``).

    Each sample gets a window covering a random fraction ``1 - strength * U(0, 1)`` of its real steps, at a random
    start, stretched back (linear interpolation) over the same steps: the same movement, a little slower and
    cropped at its ends (window warping, Le Guennec et al. 2016). The window is drawn once per sample and shared by
    every series of the sample, so modalities recorded together stay together. It acts on the modalities whose
    kind (``kinds``: modality -> kind) is in :data:`WARPED_KINDS` (time series, poses: float ``x`` [b, t, ...]
    with ``mask`` [b, t] whose real steps come first; a sample whose mask is not so, or with fewer than two real
    steps, is left as it is); images, audio, video, sets, tables, text and irregular series are left alone.
    Draws use torch's global generator (seeded, saved on resume).
    """
    draws = None
    for name, batch in inputs.items():
        x, mask = (batch.get("x"), batch.get("mask")) if isinstance(batch, dict) else (None, None)
        if (kinds.get(name) not in WARPED_KINDS or x is None or mask is None or not torch.is_floating_point(x)
                or x.ndim < 3 or mask.ndim != 2 or tuple(x.shape[:2]) != tuple(mask.shape)):
            continue
        b, t = mask.shape
        if draws is None:
            draws = (1 - strength * torch.rand(b), torch.rand(b))
        frac, start = (d.to(x.device) for d in draws)
        steps = torch.arange(t, device=x.device)
        n = mask.sum(1)
        ok = (mask == (steps < n[:, None])).all(1) & (n >= 2)  # real steps first, at least two of them
        last = (n - 1).clamp_min(1).to(torch.float32)
        span = frac * last
        pos = start[:, None] * (last - span)[:, None] + steps[None, :].float() / last[:, None] * span[:, None]
        pos = torch.minimum(pos, last[:, None])
        lo = pos.floor().long()
        hi = torch.minimum(lo + 1, (n - 1).clamp_min(0)[:, None])
        per_step = (b, t) + (1,) * (x.ndim - 2)  # [b, t] broadcast over x's other axes
        w = (pos - lo.float()).reshape(per_step).to(x.dtype)
        warped = (torch.gather(x, 1, lo.reshape(per_step).expand_as(x)) * (1 - w)
                  + torch.gather(x, 1, hi.reshape(per_step).expand_as(x)) * w)
        keep = (ok[:, None] & mask).reshape(per_step)
        batch["x"] = torch.where(keep, warped, x)


def drop_one_modality(inputs: dict[str, Any], p: float) -> dict[str, Any]:
    """Modality dropout per batch (``train.modality_dropout`` = ``p``): with probability ``p`` one of a
    batch's two or more modalities, drawn uniformly, is left out, so the fusion fills its slot as for a
    missing modality. Draws use torch's global generator (seeded, saved on resume)."""
    if len(inputs) < 2 or float(torch.rand(())) >= p:
        return inputs
    names = sorted(inputs)
    gone = names[int(torch.randint(len(names), ()))]
    return {m: v for m, v in inputs.items() if m != gone}


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation metrics per task."""
    plt = pyplot()
    task_names = sorted({r["task"] for r in history})
    if not task_names:
        return
    fig, axes = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for t in task_names:
        loss = [(r["epoch"], r["value"]) for r in history if r["task"] == t and r["split"] == "train"]
        val = [(r["epoch"], r["value"]) for r in history if r["task"] == t and r["split"] == "validation"]
        metric = next((r["metric"] for r in history if r["task"] == t and r["split"] == "validation"), None)
        if loss:
            axes[0].plot(*zip(*loss), label=t)
        if val:
            val = [(e, v) for (e, v), r in zip(val, [r for r in history if r["task"] == t and r["split"] == "validation"]) if r["metric"] == metric]
            axes[1].plot(*zip(*val), label=f"{t} ({metric})")
    axes[0].set_ylabel("training loss")
    axes[1].set_ylabel("validation metric")
    axes[1].set_xlabel("epoch")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    save_figure(fig, path)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
