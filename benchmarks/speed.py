"""Speed and memory benchmark: what does training and running a HighMMT model cost on this machine?

Sections (all in one JSON file, each also printed as a markdown table):

``presets``
    For each preset (``configs/tiny.json``, ``configs/default.json``) the model of the whole suite
    is built, and synthetic batches shaped like each suite task's collated batch (the task's
    modalities, embedder options and typical sample sizes; no data needed) are pushed through it:
    training samples/s (forward, backward, gradient clipping, AdamW step), inference latency per
    sample (batch 1) and inference samples/s at the evaluation batch size, then one ``suite step``
    (a batch of every task, one backward, one optimizer step: the ``highmmt`` schedule's step when
    all tasks are active). Each preset runs in a fresh process, so its peak resident memory is its
    own (GPU: ``max_memory_allocated``).
``efficiency``
    The shared Perceiver encoder's achieved FLOP/s in forward + backward (FLOPs counted from the
    shapes: every matmul, 2 FLOPs per multiply-add; backward = 2 x forward) as a fraction of a
    plain ``torch.matmul`` of a similar size ([b*n, d] x [d, 4d]) timed in the same run, turn by turn.
``scaling``
    Training step time as the number of modalities grows 1..10 at fixed tokens per modality, for
    the pairwise (HighMMT) and the bottleneck (linear-cost) fusion; and as one modality's length
    grows (the Perceiver's cost is linear in the number of tokens).
``options``
    The same training step in fp32 and bf16 autocast, eager and ``torch.compile``, and with another
    intra-op thread count: the fastest is the recommended default for this device.

    python -m benchmarks.speed                     # everything (~5 min on 2 CPU cores)
    python -m benchmarks.speed --threads 1         # on a machine other work shares (see the warning it prints)
    python -m benchmarks.speed --sections presets --presets default
    python -m benchmarks.speed --compile all       # compile fp32 and bf16 (default: the faster eager one)
    python -m benchmarks.speed --quick             # seconds: tiny sizes (smoke test)

Timing rules: warm-up calls, then the median of repeats; measurements that are compared take turns.

Writes ``benchmarks/results/speed.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import modalities  # noqa: F401  (registers the embedders)
import train
from benchmarks.common import (
    autocast,
    contention_warning,
    current_rss_mb,
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
    time_call,
    time_interleaved,
    write_json,
)
from highmmt import HighMMT, HighMMTConfig
from highmmt.config import EncoderConfig, ModalityConfig, TaskConfig
from highmmt.encoder import PerceiverEncoder
from highmmt.registry import EMBEDDERS
from transference import autotune
from transference.config import TrainConfig

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "speed.json"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SECTIONS = ("presets", "efficiency", "scaling", "options")
TARGETS = {"flops_ratio": 0.5, "bottleneck_t8_over_t2": 4.5, "default_peak_memory_mb": 4096}

# ---- the suite's shapes ---------------------------------------------------------------------------
# Typical raw sample sizes per task and modality (ranges are (low, high) inclusive, drawn per
# sample, so a batch pads to its longest sample as the real collate does). Sources: each data
# folder's README and the task modules' default options.
KIND_SIZES: dict[str, dict[str, Any]] = {
    "image": {"hw": (28, 28)},
    "video": {"frames": (16, 16), "hw": (48, 64)},
    "audio": {"length": (1150, 9600)},  # FSDD: 0.14-2.3 s at 8 kHz, median 0.42 s
    "timeseries": {"length": (64, 64)},
    "irregular_timeseries": {"length": (30, 200), "observed": 0.15},
    "tabular": {},
    "text": {"length": (40, 256)},
    "pose": {"length": (32, 32)},
    "set": {"length": (16, 16)},
}
MODALITY_SIZES: dict[str, dict[str, Any]] = {
    "strokes": {"length": (30, 128)},  # omniglot: <= max_points = 128
    "force_torque": {"length": (15, 15)},  # robot failures: 15 steps
    "inertial": {"length": (64, 64)},  # utd_mhad inertial_steps
    "skeleton": {"length": (32, 32)},  # utd_mhad skeleton_frames
}
# Used when a task is not registered (or its registered spec cannot build a model).
FALLBACK_TASKS: dict[str, dict[str, Any]] = {
    "avmnist": {"modalities": {"mnist_image": "image", "fsdd_audio": "audio"}, "num_classes": 10,
                "options": {"mnist_image": {"channels": 1}, "fsdd_audio": {"sample_rate": 8000}}},
    "utd_mhad": {"modalities": {"depth": "video", "skeleton": "pose", "inertial": "timeseries"}, "num_classes": 27,
                 "options": {"depth": {"channels": 1}, "skeleton": {"joints": 20, "coords": 3}, "inertial": {"channels": 6}}},
    "physionet_mortality": {"modalities": {"static": "tabular", "vitals": "irregular_timeseries"}, "num_classes": 2,
                            "options": {"static": {"num_numeric": 4, "categorical_cardinalities": [4]}, "vitals": {"channels": 37}}},
    "omniglot": {"modalities": {"glyph": "image", "strokes": "timeseries"}, "num_classes": 242,
                 "options": {"glyph": {"channels": 1}, "strokes": {"channels": 4}}},
    "sentiment": {"modalities": {"text": "text"}, "num_classes": 2, "options": {}},
    "subjectivity": {"modalities": {"text": "text"}, "num_classes": 2, "options": {}},
    **{f"robot_failures_lp{k}": {"modalities": {"force_torque": "timeseries"}, "num_classes": c,
                                 "options": {"force_torque": {"channels": 6}}}
       for k, c in zip(range(1, 6), (4, 5, 4, 3, 5))},
}
QUICK_TASKS = ["avmnist", "robot_failures_lp1"]


def sizes_from_task_options(name: str, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Sample sizes a built-in task's preprocessing options fix (frames, steps, image side); an option
    set to None (keep everything) leaves the typical size above."""
    sizes: dict[str, dict[str, Any]] = {}

    def fixed(modality: str, key: str, value: Any, pair: bool = True) -> None:
        if isinstance(value, int) and not isinstance(value, bool):
            sizes.setdefault(modality, {})[key] = (value, value) if pair else value

    if name == "utd_mhad":
        fixed("depth", "frames", options.get("depth_frames"))
        size = options.get("depth_size")
        if isinstance(size, (list, tuple)) and len(size) == 2:
            sizes.setdefault("depth", {})["hw"] = tuple(int(v) for v in size)
        fixed("skeleton", "length", options.get("skeleton_frames"))
        fixed("inertial", "length", options.get("inertial_steps"))
    elif name == "omniglot":
        side = options.get("image_size")
        if isinstance(side, int):
            sizes["glyph"] = {"hw": (side, side)}
        points = options.get("max_points")
        if isinstance(points, int):
            sizes["strokes"] = {"length": (min(30, points), points)}
    return sizes


def describe_tasks(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Task name -> {modalities, options, num_classes, task_type, source}: the registered spec when it
    builds a model, else the fallback above (the reason is recorded)."""
    import tasks as _tasks  # noqa: F401  (registers the built-in tasks; parent process only)
    from highmmt.registry import TASKS

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        desc: dict[str, Any] | None = None
        note = "registered spec"
        if name in TASKS:
            builtin = TASKS.get(name)
            spec = builtin.spec
            desc = {"modalities": dict(spec.modalities), "num_classes": spec.num_classes, "task_type": spec.task_type,
                    "options": {m: dict(o) for m, o in spec.modality_options.items()},
                    "sizes": sizes_from_task_options(name, builtin.options)}
            try:
                HighMMT(suite_config(_sizes("tiny"), {name: desc}))
            except (ValueError, TypeError) as e:
                note = f"fallback shapes: the registered spec does not build a model ({e})"
                desc = None
        else:
            note = "fallback shapes: task not registered"
        if desc is None:
            if name not in FALLBACK_TASKS:
                raise ValueError(f"unknown task {name!r}: not registered and no fallback shapes; known: {sorted(FALLBACK_TASKS)}")
            desc = {"task_type": "classification", **copy.deepcopy(FALLBACK_TASKS[name])}
        desc["source"] = note
        out[name] = desc
    return out


# ---- presets and configs -------------------------------------------------------------------------------
def _preset(name: str) -> dict[str, Any]:
    """A preset's JSON (``configs/<name>.json`` or a path)."""
    import json

    path = Path(name) if name.endswith(".json") else CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise ValueError(f"unknown preset {name!r}; known presets: {known} (or give a .json file)")
    return json.loads(path.read_text())


def _sizes(preset: str) -> HighMMTConfig:
    return HighMMTConfig.from_dict(_preset(preset).get("model", {}))


def _train_options(preset: str) -> dict[str, Any]:
    from highmmt.config import from_dict
    from transference.config import TrainConfig

    return vars(from_dict(TrainConfig, _preset(preset).get("train", {})))


def suite_config(sizes: HighMMTConfig, descs: Mapping[str, Mapping[str, Any]]) -> HighMMTConfig:
    """The preset's sizes with one modality per modality name and one head per task (train.model_config)."""
    mods: dict[str, ModalityConfig] = {}
    for d in descs.values():
        for m, kind in d["modalities"].items():
            mods[m] = ModalityConfig(kind, dict(d["options"].get(m, {})))
    heads = {t: TaskConfig(list(d["modalities"]), d.get("task_type", "classification"), d["num_classes"]) for t, d in descs.items()}
    cfg = sizes.to_dict()
    cfg.update(modalities={m: vars(mc) for m, mc in mods.items()}, tasks={t: vars(tc) for t, tc in heads.items()})
    return HighMMTConfig.from_dict(cfg)


# ---- synthetic batches ------------------------------------------------------------------------------------
def make_sample(kind: str, options: Mapping[str, Any], size: Mapping[str, Any], rng: np.random.Generator) -> Any:
    """One raw sample of ``kind`` in its canonical format (``tasks/base.py``)."""

    def draw(key: str) -> int:
        lo, hi = size[key]
        return int(rng.integers(lo, hi + 1))

    c = int(options.get("channels", 1))
    if kind == "image":
        h, w = size["hw"]
        return rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    if kind == "video":
        h, w = size["hw"]
        return rng.integers(0, 256, (draw("frames"), h, w, c), dtype=np.uint8)
    if kind == "audio":
        return rng.uniform(-0.5, 0.5, draw("length")).astype(np.float32)
    if kind in ("timeseries", "set"):
        return rng.standard_normal((draw("length"), c)).astype(np.float32)
    if kind == "pose":
        return rng.standard_normal((draw("length"), int(options.get("joints", 20)), int(options.get("coords", 3)))).astype(np.float32)
    if kind == "irregular_timeseries":
        t = draw("length")
        observed = rng.random((t, c)) < size.get("observed", 0.15)
        values = np.where(observed, rng.standard_normal((t, c)), 0).astype(np.float32)
        return {"values": values, "observed": observed, "times": np.sort(rng.uniform(0, 48, t)).astype(np.float32)}
    if kind == "tabular":
        f, cards = int(options.get("num_numeric", 0)), list(options.get("categorical_cardinalities", []))
        return {"numeric": rng.standard_normal(f).astype(np.float32), "numeric_observed": np.ones(f, bool),
                "categorical": np.array([rng.integers(0, k) for k in cards], dtype=np.int64)}
    if kind == "text":
        letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ,.'", dtype=np.uint8)
        return rng.choice(letters, draw("length")).tobytes().decode()
    raise ValueError(f"no synthetic samples for modality kind {kind!r}")


def make_batch(desc: Mapping[str, Any], batch_size: int, seed: int) -> dict[str, Any]:
    """A collated batch ``{"inputs": {m: batch dict}, "target": [b]}`` shaped like the task's real ones."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for m, kind in desc["modalities"].items():
        options = desc["options"].get(m, {})
        size = {**KIND_SIZES[kind], **MODALITY_SIZES.get(m, {}), **desc.get("sizes", {}).get(m, {})}
        samples = [make_sample(kind, options, size, rng) for _ in range(batch_size)]
        inputs[m] = EMBEDDERS.get(kind).collate(samples, **options)
    target = torch.from_numpy(rng.integers(0, desc["num_classes"], batch_size))
    return {"inputs": inputs, "target": target}


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def make_optimizer(model: torch.nn.Module, lr: float = 1e-3, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    return autotune.adamw(model.parameters(), lr=lr, weight_decay=weight_decay)  # as train.py: fused where it can be


def train_step_fn(
    model: HighMMT, optimizer: torch.optim.Optimizer, batches: Mapping[str, Mapping[str, Any]],
    device: torch.device, precision: str, grad_clip: float = 1.0,
) -> Callable[[], float]:
    """One optimizer step over one batch of each task in ``batches``: train.py's train_step, minus the data."""
    tc = TrainConfig(grad_clip=grad_clip)
    step_loss = train.TaskLoss(model, tc, autocast=lambda: autocast(device, precision))

    def step() -> float:
        return sum(loss for _, loss in train.train_step(step_loss, list(batches.items()), optimizer, None, None, tc))

    return step


# ---- section: presets --------------------------------------------------------------------------------------
def bench_preset(preset: str, descs: dict[str, dict[str, Any]], opts: dict[str, Any]) -> dict[str, Any]:
    """Training / inference speed and peak memory of one preset's suite model (run in its own process)."""
    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    device = torch.device(opts["device"])
    precision = opts["precision"]
    sync = synchronizer(device)
    warmup, repeats = opts["warmup"], opts["repeats"]
    rss_start = current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    train_opts = _train_options(preset)
    model = HighMMT(suite_config(_sizes(preset), descs)).to(device)
    counts = model.parameter_counts()
    optimizer = make_optimizer(model, train_opts["lr"], train_opts["weight_decay"])
    batch_sizes = {t: train_opts["batch_sizes"].get(t, train_opts["batch_size"]) for t in descs}
    eval_batch = min(train_opts["eval_batch_size"], opts.get("max_eval_batch") or train_opts["eval_batch_size"])
    batches = {t: to_device(make_batch(d, batch_sizes[t], seed=i), device) for i, (t, d) in enumerate(descs.items())}
    singles = {t: to_device(make_batch(d, 1, seed=100 + i), device) for i, (t, d) in enumerate(descs.items())}
    evals = {t: to_device(make_batch(d, eval_batch, seed=200 + i), device) for i, (t, d) in enumerate(descs.items())}

    per_task: dict[str, Any] = {}
    for t, d in descs.items():
        model.train()
        with torch.no_grad():
            tokens = {m: int(model.embedders[m.replace(".", "_")](v)[0].shape[1]) for m, v in batches[t]["inputs"].items()}
        step = train_step_fn(model, optimizer, {t: batches[t]}, device, precision, train_opts["grad_clip"])
        train_times = summarize(time_call(step, warmup=warmup, repeats=repeats, sync=sync))
        model.eval()
        with torch.inference_mode(), autocast(device, precision):
            latency = summarize(time_call(lambda: model(singles[t]["inputs"], t), warmup=warmup, repeats=repeats, sync=sync))
            evaluation = summarize(time_call(lambda: model(evals[t]["inputs"], t), warmup=1, repeats=max(1, repeats // 2), sync=sync))
        per_task[t] = {
            "modalities": d["modalities"],
            "shapes_from": d["source"],
            "tokens": tokens,
            "batch_size": batch_sizes[t],
            "train_step": train_times,
            "train_samples_per_s": 1e3 * batch_sizes[t] / train_times["median_ms"],
            "inference_latency_ms_per_sample": latency["median_ms"],
            "inference_latency": latency,
            "eval_batch_size": eval_batch,
            "eval_samples_per_s": 1e3 * eval_batch / evaluation["median_ms"],
        }
    model.train()
    suite = summarize(time_call(train_step_fn(model, optimizer, batches, device, precision, train_opts["grad_clip"]),
                                warmup=warmup, repeats=repeats, sync=sync))
    result: dict[str, Any] = {
        "preset": preset,
        "parameters": counts["total"],
        "shared_parameters": counts["shared"],
        "tasks": per_task,
        "suite_step": suite,
        "suite_step_samples": sum(batch_sizes.values()),
        "suite_samples_per_s": 1e3 * sum(batch_sizes.values()) / suite["median_ms"],
        "rss_at_start_mb": rss_start,
        "peak_rss_mb": peak_rss_mb(),
        "isolated_process": bool(opts.get("isolated")),
        "load_average_end": load_average(),
    }
    if device.type == "cuda":
        result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def run_presets(presets: Sequence[str], descs: dict[str, dict[str, Any]], opts: dict[str, Any], isolate: bool) -> dict[str, Any]:
    out = {}
    for preset in presets:
        _preset(preset)  # a bad name fails here, in the parent
        print(f"[speed]   preset {preset} ...", file=sys.stderr, flush=True)
        if isolate:
            # A fresh process per preset: ru_maxrss is a high-water mark, so each preset's peak is its own.
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                out[preset] = pool.apply(bench_preset, (preset, descs, {**opts, "isolated": True}))
        else:
            out[preset] = bench_preset(preset, descs, opts)
    return out


# ---- section: efficiency -------------------------------------------------------------------------------------
def encoder_flops(cfg: EncoderConfig, *, b: int, n: int, d: int) -> int:
    """Matmul FLOPs of one PerceiverEncoder forward: tokens [b, n, d] -> latents [b, l, d].

    Counts every projection, QK^T and attention x V (2 FLOPs per multiply-add); LayerNorm, softmax,
    GELU and residual adds are not counted (they are memory-bound and, by convention, not FLOPs).
    """
    l, e = cfg.num_latents, cfg.dim_head
    hidden = cfg.mlp_mult * d

    def attention(h: int, queries: int, keys: int) -> int:
        inner = h * e
        return 2 * b * (queries * d * inner + keys * d * 2 * inner + 2 * h * queries * keys * e + queries * inner * d)

    def feed_forward() -> int:
        return 2 * b * l * 2 * d * hidden

    per_layer = attention(cfg.cross_heads, l, n) + feed_forward()
    per_layer += cfg.self_per_cross * (attention(cfg.heads, l, l) + feed_forward())
    return cfg.depth * per_layer


# Profiler op names -> what they are, for the time breakdown of the encoder step.
OP_CATEGORIES = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention kernel and softmax", ("scaled_dot_product", "flash_attention", "softmax", "aten::isneginf", "aten::all")),
    ("dropout masks (random numbers)", ("bernoulli", "dropout", "aten::uniform_", "aten::random_")),
    ("layer norm", ("layer_norm",)),
    ("copies and fills", ("aten::copy_", "aten::cat", "aten::clone", "aten::fill_", "aten::zero_", "aten::stack")),
    ("element-wise and reductions", ("aten::add", "aten::mul", "aten::sub", "aten::div", "aten::gelu", "aten::sum",
                                     "aten::mean", "aten::where", "aten::masked_fill", "aten::softmax", "aten::neg")),
)


def op_time_breakdown(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Share of one step's wall time per kind of op (CPU profiler, self times); the rest is Python,
    dispatch and autograd bookkeeping between the ops."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with _silence_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        wall_us = (time.perf_counter() - start) * 1e6
    shares = {name: 0.0 for name, _ in OP_CATEGORIES}
    shares["other ops"] = 0.0
    for evt in prof.key_averages():
        if not evt.key.startswith("aten::") and not any(k in evt.key for _, keys in OP_CATEGORIES for k in keys):
            continue  # autograd-engine and profiler wrappers: their time is inside the aten ops or overhead
        category = next((name for name, keys in OP_CATEGORIES if any(k in evt.key for k in keys)), "other ops")
        shares[category] += evt.self_cpu_time_total
    shares = {k: v / wall_us for k, v in shares.items()}
    shares["outside ops (python, dispatch, autograd)"] = max(0.0, 1.0 - sum(shares.values()))
    return shares


def bench_efficiency(sizes: HighMMTConfig, cases: Sequence[Mapping[str, Any]], opts: dict[str, Any]) -> dict[str, Any]:
    """Encoder forward + backward FLOP/s against a plain matmul's, both timed turn by turn.

    Each case gives ``batch``, ``tokens`` and optionally ``threads`` (CPU intra-op threads for both
    timings), ``dim`` / ``dim_head`` (a wider encoder than the preset's, to show what width buys),
    ``compile`` (the encoder under torch.compile) and ``breakdown`` (profile where the time goes).
    """
    device = torch.device(opts["device"])
    precision = opts["precision"]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    sync = synchronizer(device)
    rows = []
    for case in cases:
        b, n = case["batch"], case["tokens"]
        d = case.get("dim", sizes.dim)
        cfg = dataclasses.replace(sizes.encoder, dim_head=case.get("dim_head", sizes.encoder.dim_head),
                                  dropout=case.get("dropout", sizes.encoder.dropout),
                                  attention_dropout=case.get("attention_dropout", sizes.encoder.attention_dropout))
        torch.manual_seed(0)
        encoder = PerceiverEncoder(dim=d, cfg=cfg).to(device)
        compile_s = None
        if case.get("compile"):
            encoder.compile()
        tokens = torch.randn(b, n, d, device=device, requires_grad=True)  # grads flow on into the embedders
        mask = torch.ones(b, n, dtype=torch.bool, device=device)
        mask[b // 2 :, (3 * n) // 4 :] = False  # half the batch padded by a quarter: masks are on, as in training
        a = torch.randn(b * n, d, device=device, dtype=dtype)
        w = torch.randn(d, 4 * d, device=device, dtype=dtype)

        def encoder_step() -> None:
            tokens.grad = None
            with autocast(device, precision):
                out = encoder(tokens, mask)
            out.float().sum().backward()

        with num_threads(case.get("threads")):
            if case.get("compile"):
                start = time.perf_counter()
                with _quiet_dynamo():
                    encoder_step()
                sync()
                compile_s = time.perf_counter() - start
            times = time_interleaved({"encoder": encoder_step, "matmul": lambda: torch.matmul(a, w)},
                                     warmup=opts["warmup"], repeats=opts["efficiency_repeats"], sync=sync)
            threads = torch.get_num_threads()
            breakdown = op_time_breakdown(encoder_step, 3) if case.get("breakdown") and device.type == "cpu" else None
        flops = 3 * encoder_flops(cfg, b=b, n=n, d=d)
        mm_flops = 2 * b * n * d * 4 * d
        enc, mm = summarize(times["encoder"]), summarize(times["matmul"])
        row: dict[str, Any] = {
            "batch": b, "tokens": n, "dim": d, "dim_head": cfg.dim_head, "dropout": cfg.dropout,
            "attention_dropout": cfg.attention_dropout, "threads": threads,
            "compiled": bool(case.get("compile")), "label": case.get("label", ""),
            "encoder_fwd_bwd_flops": flops,
            "encoder_step": enc,
            "encoder_gflops": flops / enc["median_ms"] / 1e6,
            "matmul_shape": [[b * n, d], [d, 4 * d]],
            "matmul_dtype": str(dtype).replace("torch.", ""),
            "matmul": mm,
            "matmul_gflops": mm_flops / mm["median_ms"] / 1e6,
            "matmul_gflops_best": mm_flops / mm["min_ms"] / 1e6,
        }
        row["ratio"] = row["encoder_gflops"] / row["matmul_gflops"]
        row["ratio_best"] = (flops / enc["min_ms"]) / (mm_flops / mm["min_ms"])
        if compile_s is not None:
            row["compile_s"] = compile_s
        if breakdown is not None:
            row["time_breakdown"] = breakdown
        row["headline"] = bool(case.get("headline"))
        rows.append(row)
    return {"encoder": {"dim": sizes.dim, **vars(sizes.encoder)}, "precision": precision, "sizes": rows}


@contextlib.contextmanager
def _silence_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop lines) for the duration."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def _quiet_dynamo() -> Iterator[None]:
    """Keep torch.compile's graph-break warnings (the embedders' input checks) off the console."""
    logger = logging.getLogger("torch._dynamo")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def graph_breaks() -> int:
    with contextlib.suppress(Exception):
        from torch._dynamo.utils import counters

        return int(sum(counters["graph_break"].values()))
    return 0


def efficiency_cases(*, quick: bool, device: torch.device, compile_: bool, dropout: float = 0.0) -> list[dict[str, Any]]:
    """The encoder sizes timed: default-preset training batches of short to long modalities (the headline
    is 32 x 256 tokens), then what changes the ratio: a 4x batch, the other thread count, no dropout,
    dropout on attention probabilities (on the CPU it leaves the fused kernel), a wider encoder, compile."""
    if quick:
        return [{"batch": 2, "tokens": 16, "headline": True, "breakdown": True}]
    cases: list[dict[str, Any]] = [
        {"batch": 32, "tokens": 64},
        {"batch": 32, "tokens": 256, "headline": True, "breakdown": True},
        {"batch": 32, "tokens": 512},
        {"batch": 128, "tokens": 512, "label": "4x batch"},
    ]
    if device.type == "cpu":
        other = 1 if torch.get_num_threads() > 1 else (os.cpu_count() or 1)
        if other != torch.get_num_threads():
            cases.append({"batch": 32, "tokens": 256, "threads": other, "label": f"{other} thread{'s' if other > 1 else ''}"})
    if dropout > 0:
        cases.append({"batch": 32, "tokens": 256, "dropout": 0.0, "label": f"no dropout (preset: {dropout:g})"})
        cases.append({"batch": 32, "tokens": 256, "attention_dropout": "probs",
                      "label": "attention dropout on probabilities (the classic kind; preset: keys)"})
    cases.append({"batch": 32, "tokens": 256, "dim": 256, "dim_head": 64, "label": "wider encoder (d=256, 64-wide heads)"})
    if compile_:
        cases.append({"batch": 32, "tokens": 256, "compile": True, "label": "torch.compile"})
    return cases


# ---- section: scaling ------------------------------------------------------------------------------------------
def modality_model(sizes: HighMMTConfig, num: int, fusion: str, *, tokens: int) -> tuple[HighMMT, dict[str, Any]]:
    """A one-task model reading ``num`` timeseries modalities of ``tokens`` steps each, and its batch desc."""
    names = [f"m{i}" for i in range(num)]
    desc = {"modalities": {m: "timeseries" for m in names}, "num_classes": 4, "task_type": "classification",
            "options": {m: {"channels": 4, "max_len": max(256, tokens)} for m in names},
            "sizes": {m: {"length": (tokens, tokens)} for m in names}}
    sizes = dataclasses.replace(sizes, fusion=dataclasses.replace(sizes.fusion, kind=fusion))
    return HighMMT(suite_config(sizes, {"scaling": desc})), desc


def bench_scaling(sizes: HighMMTConfig, opts: dict[str, Any]) -> dict[str, Any]:
    """Step time vs number of modalities (pairwise and bottleneck fusion) and vs input length."""
    device = torch.device(opts["device"])
    precision = opts["precision"]
    sync = synchronizer(device)
    b, tokens = opts["scaling_batch"], opts["scaling_tokens"]
    out: dict[str, Any] = {"batch": b, "tokens_per_modality": tokens, "modalities": {}, "length": {}}
    for fusion in ("pairwise", "bottleneck"):
        steps = {}
        for num in opts["scaling_modalities"]:
            torch.manual_seed(0)
            model, desc = modality_model(sizes, num, fusion, tokens=tokens)
            model.to(device).train()
            batch = to_device(make_batch(desc, b, seed=num), device)
            steps[num] = train_step_fn(model, make_optimizer(model), {"scaling": batch}, device, precision)
        # All modality counts take turns, so a burst of background load hits them alike.
        times = time_interleaved(steps, warmup=opts["warmup"], repeats=opts["repeats"], sync=sync)
        out["modalities"][fusion] = {str(m): summarize(t) for m, t in times.items()}
    for fusion, rows in out["modalities"].items():
        if "2" in rows and "8" in rows:
            out[f"{fusion}_t8_over_t2"] = rows["8"]["median_ms"] / rows["2"]["median_ms"]
    steps = {}
    for n in opts["scaling_lengths"]:
        torch.manual_seed(0)
        model, desc = modality_model(sizes, 1, "bottleneck", tokens=n)
        model.to(device).train()
        batch = to_device(make_batch(desc, opts["length_batch"], seed=n), device)
        steps[n] = train_step_fn(model, make_optimizer(model), {"scaling": batch}, device, precision)
    times = time_interleaved(steps, warmup=opts["warmup"], repeats=opts["repeats"], sync=sync)
    out["length_batch"] = opts["length_batch"]
    out["length"] = {str(n): {**summarize(t), "us_per_token": 1e6 * float(np.median(t)) / (n * opts["length_batch"])}
                     for n, t in times.items()}
    lengths = sorted(opts["scaling_lengths"])
    if len(lengths) >= 2:
        lo, hi = lengths[0], lengths[-1]
        out["length_time_ratio"] = out["length"][str(hi)]["median_ms"] / out["length"][str(lo)]["median_ms"]
        out["length_ratio"] = hi / lo
        # Slope of log(time) vs log(tokens) over the upper half of the lengths: 1 = linear, 2 = quadratic.
        upper = lengths[len(lengths) // 2 :] if len(lengths) >= 4 else lengths
        x = np.log([n for n in upper])
        y = np.log([out["length"][str(n)]["median_ms"] for n in upper])
        out["length_loglog_slope"] = float(np.polyfit(x, y, 1)[0])
    return out


# ---- section: options ------------------------------------------------------------------------------------------------
def bench_options(preset: str, descs: dict[str, dict[str, Any]], opts: dict[str, Any]) -> dict[str, Any]:
    """One task's training step in fp32 / bf16 autocast, eager / torch.compile, and with another thread count.

    Compiling costs minutes on a small CPU, so by default only the precision whose eager step is faster
    (in a short first round) is compiled; ``opts["compile"] == "all"`` compiles both.
    """
    device = torch.device(opts["device"])
    sync = synchronizer(device)
    task = opts["options_task"]
    desc = descs[task]
    train_opts = _train_options(preset)
    batch = to_device(make_batch(desc, train_opts["batch_sizes"].get(task, train_opts["batch_size"]), seed=0), device)
    torch.manual_seed(0)
    base = HighMMT(suite_config(_sizes(preset), {task: desc})).to(device).train()
    variants: dict[str, tuple[str, bool, int | None]] = {"fp32 eager": ("fp32", False, None)}
    # The other thread setting worth knowing: one thread (robust on a busy machine) or all CPUs.
    other_threads = 1 if torch.get_num_threads() > 1 else (os.cpu_count() or 1)
    if device.type == "cpu" and other_threads != torch.get_num_threads():
        variants[f"fp32 eager, {other_threads} thread{'s' if other_threads > 1 else ''}"] = ("fp32", False, other_threads)
    variants["bf16 autocast eager"] = ("bf16", False, None)

    steps: dict[str, Callable[[], Any]] = {}
    for name, (precision, _, threads) in variants.items():
        model = copy.deepcopy(base)
        steps[name] = _with_threads(train_step_fn(model, make_optimizer(model), {task: batch}, device, precision), threads)
    first_round: dict[str, Any] = {}
    to_compile: list[str] = []
    if opts["compile"]:
        eager = {k: steps[k] for k in ("fp32 eager", "bf16 autocast eager")}
        first_round = {k: summarize(t) for k, t in time_interleaved(eager, warmup=1, repeats=3, sync=sync).items()}
        faster = min(first_round, key=lambda k: first_round[k]["median_ms"]).split()[0]
        to_compile = ["fp32", "bf16"] if opts["compile"] == "all" else [faster]
    compile_s: dict[str, float] = {}
    breaks_seen: dict[str, int] = {}
    errors: dict[str, str] = {}
    for precision in to_compile:
        name = "fp32 compiled" if precision == "fp32" else "bf16 autocast compiled"
        model = copy.deepcopy(base)
        step = train_step_fn(model, make_optimizer(model), {task: batch}, device, precision)
        model.compile()
        start, breaks = time.perf_counter(), graph_breaks()
        try:
            with _quiet_dynamo():
                step()  # compiles forward and backward
                step()
        except Exception as e:  # noqa: BLE001 - a compiler failure is a result, not a crash
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            continue
        sync()
        compile_s[name] = time.perf_counter() - start
        breaks_seen[name] = graph_breaks() - breaks
        steps[name] = step
    times = time_interleaved(steps, warmup=opts["warmup"], repeats=opts["repeats"], sync=sync)
    rows = {name: summarize(t) for name, t in times.items()}
    fastest = min(rows, key=lambda k: rows[k]["median_ms"])
    base_ms = rows["fp32 eager"]["median_ms"]
    for name, r in rows.items():
        r["speedup_vs_fp32_eager"] = base_ms / r["median_ms"]
        if name in compile_s:
            r["compile_and_first_steps_s"] = compile_s[name]
            r["graph_breaks"] = breaks_seen[name]
    return {"preset": preset, "task": task, "batch_size": int(batch["target"].shape[0]), "variants": rows,
            "eager_first_round": first_round, "compiled": to_compile, "errors": errors, "fastest": fastest,
            "threads": torch.get_num_threads(), "optimizer_step": bench_optimizer(preset, descs, opts)}


def bench_optimizer(preset: str, descs: dict[str, dict[str, Any]], opts: dict[str, Any]) -> dict[str, Any]:
    """One AdamW step over the whole suite model (every parameter with a gradient), torch's three
    implementations timed turn by turn: the per-tensor loop, ``foreach`` and ``fused`` (train.py's,
    where the parameters allow it)."""
    device = torch.device(opts["device"])
    torch.manual_seed(0)
    model = HighMMT(suite_config(_sizes(preset), descs)).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    kinds = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    optimizers = {name: torch.optim.AdamW(copy.deepcopy(list(model.parameters())), lr=1e-3, **kw) for name, kw in kinds.items()}
    for opt in optimizers.values():  # copies have no grads: give them the model's
        for p, q in zip(opt.param_groups[0]["params"], model.parameters()):
            p.grad = q.grad.clone()
    times = time_interleaved({name: opt.step for name, opt in optimizers.items()}, warmup=opts["warmup"],
                             repeats=opts["repeats"], sync=synchronizer(device))
    out = {name: summarize(t) for name, t in times.items()}
    return {"parameter_tensors": len(list(model.parameters())), **out,
            "fused_speedup_vs_for_loop": out["for-loop"]["median_ms"] / out["fused"]["median_ms"]}


def _with_threads(fn: Callable[[], Any], threads: int | None) -> Callable[[], Any]:
    if threads is None:
        return fn

    def run() -> Any:
        with num_threads(threads):
            return fn()

    return run


# ---- tables --------------------------------------------------------------------------------------------------------------
def tables(report: dict[str, Any]) -> str:
    parts = [f"Hardware: {hardware_line(report['machine'])}; precision {report['precision']}."]
    if report.get("contention_warning"):
        parts[0] += f" Warning: {report['contention_warning']}."
    if "presets" in report:
        rows = []
        for preset, r in report["presets"].items():
            for t, tr in r["tasks"].items():
                tokens = "+".join(str(n) for n in tr["tokens"].values())
                rows.append([preset, t, tokens, tr["batch_size"], tr["train_samples_per_s"], tr["train_step"]["median_ms"],
                             tr["inference_latency_ms_per_sample"], tr["eval_samples_per_s"]])
            rows.append([preset, "**suite step** (all tasks)", "", r["suite_step_samples"], r["suite_samples_per_s"],
                         r["suite_step"]["median_ms"], "", ""])
        parts.append("Training and inference per task (synthetic batches shaped like each task's):\n\n" + markdown_table(
            ["preset", "task", "tokens per modality", "batch", "train samples/s", "train step ms", "latency ms/sample (b=1)",
             "eval samples/s"], rows))
        mem_rows = [[p, f"{r['parameters']:,}", r["rss_at_start_mb"], r["peak_rss_mb"], r.get("peak_gpu_memory_mb", float("nan"))]
                    for p, r in report["presets"].items()]
        parts.append("Memory (peak resident set of a process that imported the library, built the suite model and "
                     "ran every measurement above; GPU: peak allocated):\n\n" + markdown_table(
                         ["preset", "parameters", "RSS after imports MB", "peak RSS MB", "peak GPU MB"], mem_rows))
    if "efficiency" in report:
        e = report["efficiency"]
        rows = [[r["label"] or ("**headline**" if r["headline"] else ""), r["batch"], r["tokens"], r["dim"], r["threads"],
                 r["encoder_step"]["median_ms"], r["encoder_gflops"], r["matmul_gflops"], r["ratio"], r["ratio_best"]]
                for r in e["sizes"]]
        text = (f"Shared encoder efficiency ({e['encoder']['num_latents']} latents, dropout {e['encoder']['dropout']:g}, "
                f"{e['precision']}): forward + backward "
                "FLOP/s (matmul FLOPs counted from the shapes) over the FLOP/s of a [b*n, d] x [d, 4d] matmul timed turn "
                "by turn:\n\n" + markdown_table(
                    ["case", "batch", "tokens", "d", "threads", "fwd+bwd ms", "encoder GFLOP/s", "matmul GFLOP/s",
                     "ratio (medians)", "ratio (best times)"], rows))
        for r in e["sizes"]:
            if "time_breakdown" in r:
                shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(r["time_breakdown"].items(), key=lambda kv: -kv[1]))
                text += f"\n\nWhere the {r['batch']} x {r['tokens']} step's time goes (profiler): {shares}."
        parts.append(text)
    if "scaling" in report:
        s = report["scaling"]
        nums = sorted({int(m) for rows in s["modalities"].values() for m in rows})
        rows = [[f, *[s["modalities"][f][str(m)]["median_ms"] for m in nums]] for f in s["modalities"]]
        ratio = " ".join(f"{f}: t(8)/t(2) = {s[f + '_t8_over_t2']:.2f}." for f in s["modalities"] if f + "_t8_over_t2" in s)
        parts.append(f"Training step ms vs number of modalities ({s['tokens_per_modality']} tokens each, batch "
                     f"{s['batch']}). {ratio}\n\n" + markdown_table(["fusion", *[str(m) for m in nums]], rows))
        lengths = sorted(int(n) for n in s["length"])
        rows = [[n, s["length"][str(n)]["median_ms"], s["length"][str(n)]["us_per_token"]] for n in lengths]
        slope = f" log-log slope over the longer half: {s['length_loglog_slope']:.2f} (1 = linear)." if "length_loglog_slope" in s else ""
        parts.append(f"Training step vs input length (one modality, batch {s['length_batch']}).{slope}\n\n"
                     + markdown_table(["tokens", "step ms", "us per token"], rows))
    if "options" in report:
        o = report["options"]
        rows = [[name, r["median_ms"], r["speedup_vs_fp32_eager"], r.get("compile_and_first_steps_s", float("nan"))]
                for name, r in o["variants"].items()]
        rows += [[name, "failed: " + err, "", ""] for name, err in o["errors"].items()]
        text = (f"Precision and compile options ({o['preset']} preset, {o['task']}, batch {o['batch_size']}); "
                f"fastest: **{o['fastest']}**\n\n" + markdown_table(
                    ["variant", "train step ms", "speed-up vs fp32 eager", "compile + 2 steps s"], rows))
        if "optimizer_step" in o:
            os_ = o["optimizer_step"]
            text += (f"\n\nAdamW step over the suite model ({os_['parameter_tensors']} tensors): "
                     + ", ".join(f"{k} {os_[k]['median_ms']:.2f} ms" for k in ("for-loop", "foreach", "fused"))
                     + f" (fused {os_['fused_speedup_vs_for_loop']:.1f}x the for-loop).")
        parts.append(text)
    if "targets" in report:
        rows = [[k, v["target"], v["measured"], "yes" if v["met"] else "NO"] for k, v in report["targets"].items()]
        parts.append("Targets:\n\n" + markdown_table(["target", "goal", "measured", "met"], rows))
    return "\n\n".join(parts)


def check_targets(report: dict[str, Any]) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    eff = report.get("efficiency")
    if eff:
        row = next((r for r in eff["sizes"] if r["headline"]), eff["sizes"][0])
        targets[f"encoder fwd+bwd FLOP/s / matmul FLOP/s (b={row['batch']}, n={row['tokens']}, {row['threads']} threads)"] = {
            "target": f">= {TARGETS['flops_ratio']}", "measured": row["ratio"], "met": row["ratio"] >= TARGETS["flops_ratio"]}
    sc = report.get("scaling", {})
    if "bottleneck_t8_over_t2" in sc:
        v = sc["bottleneck_t8_over_t2"]
        targets["bottleneck fusion t(8 modalities) / t(2)"] = {
            "target": f"<= {TARGETS['bottleneck_t8_over_t2']}", "measured": v, "met": v <= TARGETS["bottleneck_t8_over_t2"]}
    default = report.get("presets", {}).get("default")
    if default:
        v = default.get("peak_gpu_memory_mb", default["peak_rss_mb"])
        targets["default preset peak memory MB"] = {
            "target": f"< {TARGETS['default_peak_memory_mb']}", "measured": v, "met": v < TARGETS["default_peak_memory_mb"]}
    return targets


# ---- main --------------------------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--presets", default="tiny,default", help="presets to benchmark (names in configs/ or JSON files)")
    p.add_argument("--tasks", default=None, help="suite tasks whose shapes are used (default: the whole suite)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 on a GPU, else fp32")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    p.add_argument("--cpu", action="store_true", help="benchmark the CPU even if a GPU is present")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls per measurement")
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="run the presets in this process (faster; peak memory then covers everything run before)")
    p.add_argument("--compile", default="faster", choices=["none", "faster", "all"],
                   help="torch.compile variants in the options section: none, the precision whose eager step is "
                        "faster (default), or fp32 and bf16")
    p.add_argument("--options-task", default="omniglot",
                   help="task whose training step the options section times (default omniglot: two modalities, "
                        "pairwise fusion, a moderate compile time)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and one repeat (smoke test; numbers meaningless)")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help=f"JSON output (default {DEFAULT_OUTPUT})")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; known: {list(SECTIONS)}")
    device = pick_device(args.cpu)
    precision = resolve_precision(args.precision, device)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    if args.quick and args.presets == "tiny,default":
        presets = ["tiny"]
    names = args.tasks.split(",") if args.tasks else (QUICK_TASKS if args.quick else None)
    if names is None:
        import train

        names = list(train.SUITE)
    opts: dict[str, Any] = {
        "device": str(device), "precision": precision, "threads": args.threads,
        "warmup": 1 if args.quick else args.warmup, "repeats": 1 if args.quick else args.repeats,
        "efficiency_repeats": 1 if args.quick else 2 * args.repeats + 1,
        "max_eval_batch": 8 if args.quick else None,
        "scaling_batch": 4 if args.quick else 32, "scaling_tokens": 16 if args.quick else 64,
        "scaling_modalities": [1, 2, 3] if args.quick else list(range(1, 11)),
        "length_batch": 2 if args.quick else 16,
        "scaling_lengths": [16, 32] if args.quick else [64, 128, 256, 512, 1024, 2048, 4096],
        "compile": None if args.quick or args.compile == "none" else args.compile,
        "options_task": args.options_task if args.options_task in names else names[0],
    }
    report: dict[str, Any] = {"benchmark": "speed", "precision": precision, "sections": sections, "targets_goal": TARGETS,
                              "section_s": {}, "section_load_average": {}}
    started = time.perf_counter()
    with num_threads(args.threads):
        report["machine"] = machine_info(device)
        report["contention_warning"] = contention_warning(report["machine"], device)
        if report["contention_warning"]:
            print(f"[speed] warning: {report['contention_warning']}", file=sys.stderr, flush=True)
        descs = describe_tasks(names)
        report["task_shapes"] = descs
        sizes = _sizes("tiny" if args.quick else "default")
        cases = efficiency_cases(quick=args.quick, device=device, compile_=bool(opts["compile"]), dropout=sizes.encoder.dropout)
        runners: dict[str, Callable[[], Any]] = {
            "presets": lambda: run_presets(presets, descs, opts, args.isolate),
            "efficiency": lambda: bench_efficiency(sizes, cases, opts),
            "scaling": lambda: bench_scaling(sizes, opts),
            "options": lambda: bench_options("tiny" if args.quick else "default", descs, opts),
        }
        for section in SECTIONS:
            if section not in sections:
                continue
            print(f"[speed] {section} ...", file=sys.stderr, flush=True)
            t0, load0 = time.perf_counter(), load_average()
            report[section] = runners[section]()
            report["section_s"][section] = time.perf_counter() - t0
            report["section_load_average"][section] = {"start": load0, "end": load_average()}
        report["machine"]["load_average_end"] = load_average()
    report["targets"] = check_targets(report)
    report["wall_s"] = time.perf_counter() - started
    path = write_json(args.output, report)
    print(tables(report))
    print(f"\nwrote {path} ({report['wall_s']:.0f} s)", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
