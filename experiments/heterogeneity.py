"""Modality and interaction heterogeneity of the task suite, and sharing groups from them.

    python -m experiments.heterogeneity                                  # the suite, small CPU setting
    python -m experiments.heterogeneity --preset default --steps 1000 --train-rows 0 --seeds 3   # GPU
    python -m experiments.heterogeneity --tasks synthetic_pair,synthetic_single --steps 5       # smoke
    python -m experiments.heterogeneity --protocol staged --k 3 --random-draws 5 --seeds 0,1,2  # + the paper's 3 stages

``--protocol staged`` then runs HighMMT's heterogeneity-aware sharing on the clustered groups
(share-all training -> weights copied into the groups -> multitask fine-tuning, each stage a
``train.py`` run) against random groupings of the same sizes and share-all for the same total
steps: ``experiments/heterogeneity_staged.py``; ``--groups-from DIR`` skips the measurement and
takes an earlier one's ``sharing_k<k>.json``.

Nodes: every modality of the given tasks, measured on the task with the most training rows that
reads it (the task restricted to that modality: HighMMT with only that modality's embedder, the
shared encoder and a new head), and every modality pair that occurs inside a task (the task
restricted to the pair, through the pairwise fusion). For each node a model is trained from scratch
(``L*``: best validation loss over ``--evals`` evaluations); for each ordered pair of nodes
(source -> target) a model for the target starts from the source model's transferable part (encoder
for modalities; encoder + fusion for pairs, or fusion only with ``--interaction-transfer fusion``),
with the same embedder / head initialisation and the same batches as the target's scratch run, and
is fully fine-tuned (``L*_{source->target}``). Then (see ``transference/heterogeneity.py``):
``T = L*_{s->t} - L*_t``, ``d = max(T_st, 0) + max(T_ts, 0)``, average-linkage clustering into k groups.

Writes into ``--output-dir`` (default ``experiments/results/heterogeneity``):
    heterogeneity.json          nodes, losses, T and d matrices, noise floor, groups per k, settings, timing
    unimodal_heatmap.png        T and d of the modalities (rows: source, columns: target)
    interaction_heatmap.png     the same for modality pairs
    sharing_k<k>.json           {"encoder": groups, "fusion": groups} (a model.sharing value)
    preset_k<k>.json            the preset with that sharing: ``train.py --preset <dir>/preset_k<k>.json``
    overrides_k<k>.txt          the same as ``--set model.sharing.encoder=... --set model.sharing.fusion=...``
    summary.md                  the tables

Scratch loss and noise floor: every node is trained from scratch ``--scratch-inits`` times (default
3) with the same embedder / head start and batches but different random starts of the transferable
part (the first is the seed's own; the others take it from an untrained model of another
initialisation, exactly as a transfer would). ``L*_t`` is their mean and the noise floor their
sample standard deviation (ddof = 1, ``benchmarks.common.mean_sd``): a transfer run scatters about
as much, so |T| below ~2 floors is not distinguishable from noise. With ``--seeds N`` everything is
repeated with N seeds and T averaged (``--seeds 0,1,2`` names the seeds).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import shlex
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import modalities  # noqa: F401  (registers the embedders)
import tasks as task_registry  # noqa: F401  (registers the built-in tasks)
import train
from benchmarks.common import format_seeds, hardware_line, load_average, machine_info, markdown_table, mean_sd, run_cli, write_json
from highmmt import HighMMT
from highmmt.config import HighMMTConfig, ModalityConfig, SharingConfig, TaskConfig, apply_overrides
from highmmt.heads import task_loss
from highmmt.plotting import pyplot, save_figure
from highmmt.sharing import pair_key, task_pairs
from tasks.cache import LoadedTask, load_task
from tasks.loader import collate_rows, move_to, score
from transference.config import RunConfig, TrainConfig
from transference.heterogeneity import (
    cluster,
    complete_low_rank,
    distance_matrix,
    explained_variance,
    sharing_config,
    transfer_matrix,
    transfer_weights,
    triangle_fraction,
)
from transference.schedules import warmup_cosine

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_OUT = ROOT / "experiments" / "results" / "heterogeneity"
# Above this many rows the training batches are collated on the fly instead of kept in memory.
CACHE_ROWS = 4096


# ---- nodes --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Node:
    """A modality (``kind="unimodal"``) or a modality pair ``"a|b"`` (``kind="interaction"``) and its task."""

    name: str
    kind: str
    task: str
    modalities: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.task})"


def choose_nodes(loaded: Mapping[str, LoadedTask]) -> tuple[list[Node], list[Node]]:
    """Every modality and every within-task modality pair, each on the task with the most training rows."""
    def pick(candidates: list[str]) -> str:
        return max(candidates, key=lambda t: (len(loaded[t].splits["train"]), -list(loaded).index(t)))

    readers: dict[str, list[str]] = {}
    pair_readers: dict[str, list[str]] = {}
    for t, lt in loaded.items():
        mods = list(lt.spec.modalities)
        for m in mods:
            readers.setdefault(m, []).append(t)
        for i, a in enumerate(mods):
            for b in mods[i + 1 :]:
                pair_readers.setdefault(pair_key(a, b), []).append(t)
    uni = [Node(m, "unimodal", pick(ts), (m,)) for m, ts in readers.items()]
    pairs = []
    for p, ts in pair_readers.items():
        t = pick(ts)
        a, b = p.split("|")
        order = tuple(m for m in loaded[t].spec.modalities if m in (a, b))
        pairs.append(Node(p, "interaction", t, order))
    return uni, pairs


def node_config(sizes: HighMMTConfig, node: Node, lt: LoadedTask) -> HighMMTConfig:
    """The preset's sizes, the node's modalities, one head, pairwise fusion shared as one block."""
    spec = lt.spec
    mods = {m: ModalityConfig(spec.modalities[m], dict(spec.modality_options.get(m, {}))) for m in node.modalities}
    head = {node.task: TaskConfig(list(node.modalities), spec.task_type, spec.num_classes)}
    fusion = dataclasses.replace(sizes.fusion, kind="pairwise")
    return dataclasses.replace(sizes, modalities=mods, tasks=head, fusion=fusion, sharing=SharingConfig("all", "all"))


# ---- data ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Settings:
    steps: int
    batch_size: int
    train_rows: int
    eval_rows: int
    evals: int
    lr: float
    weight_decay: float
    warmup: int
    grad_clip: float


class NodeData:
    """Fixed training batches (a seeded partition of a row subset, visited in a seeded order) and
    fixed validation batches of one node. Every run on the node with the same seed sees the same batches."""

    def __init__(self, node: Node, lt: LoadedTask, settings: Settings, seed: int) -> None:
        self.node, self.lt = node, lt
        rng = np.random.default_rng([seed, 17])
        train = lt.splits["train"]
        n = len(train) if settings.train_rows <= 0 else min(settings.train_rows, len(train))
        rows = np.sort(rng.choice(len(train), size=n, replace=False))
        rows = rows[rng.permutation(n)]
        bs = min(settings.batch_size, n)
        self.batches = [np.sort(rows[i : i + bs]) for i in range(0, n - bs + 1, bs)]
        passes = math.ceil(settings.steps / len(self.batches))
        self.order = np.concatenate([rng.permutation(len(self.batches)) for _ in range(passes)])[: settings.steps]
        self.cache: dict[int, Any] | None = {} if n <= CACHE_ROWS else None
        val = lt.splits["validation"]
        m = len(val) if settings.eval_rows <= 0 else min(settings.eval_rows, len(val))
        vrows = np.sort(np.random.default_rng([seed, 23]).choice(len(val), size=m, replace=False))
        self.val = [collate_rows(val, vrows[i : i + 128], lt.spec, node.modalities) for i in range(0, m, 128)]

    def batch(self, step: int) -> Any:
        b = int(self.order[step])
        if self.cache is not None and b in self.cache:
            return self.cache[b]
        out = collate_rows(self.lt.splits["train"], self.batches[b], self.lt.spec, self.node.modalities)
        if self.cache is not None:
            self.cache[b] = out
        return out


# ---- one training run -----------------------------------------------------------------------------
@torch.no_grad()
def validate(model: HighMMT, data: NodeData, device: torch.device) -> tuple[float, float]:
    """(mean validation loss, primary metric) of ``model`` on the node's validation batches."""
    model.eval()
    spec = data.lt.spec
    total, count, outs, ys = 0.0, 0, [], []
    for b in data.val:
        out = model(move_to(b["inputs"], device), data.node.task)
        y = b["target"].to(device)
        total += float(task_loss(out, y, spec.task_type)) * len(y)
        count += len(y)
        outs.append(out.float().cpu().numpy())
        ys.append(b["target"].numpy())
    model.train()
    metric = score(spec, np.concatenate(outs), np.concatenate(ys))[spec.metric]
    return total / count, float(metric)


def fit(
    cfg: HighMMTConfig,
    data: NodeData,
    settings: Settings,
    *,
    seed: int,
    device: torch.device,
    source: Mapping[str, torch.Tensor] | None = None,
    prefixes: Sequence[str] = (),
) -> dict[str, Any]:
    """Train one node model (from scratch, or from ``source``'s tensors under ``prefixes``), every
    parameter trainable; return the best validation loss (L*), its metric and the transferable state."""
    torch.manual_seed(seed)
    model = HighMMT(cfg)  # same seed: the same embedder / head start for scratch and transfer runs
    loaded = transfer_weights(model, source, prefixes) if source is not None else []
    model.to(device)
    tc = TrainConfig(lr=settings.lr, weight_decay=settings.weight_decay, grad_clip=settings.grad_clip)
    optimizer = train.build_optimizer(model, tc, nn.ModuleDict())
    total = settings.steps
    scheduler = warmup_cosine(optimizer, settings.warmup, total)
    step_loss = train.TaskLoss(model, tc)
    eval_at = {max(1, round(total * (i + 1) / settings.evals)) for i in range(settings.evals)}
    curve: list[tuple[int, float, float]] = []
    model.train()
    for step in range(total):
        train.train_step(step_loss, [(data.node.task, move_to(data.batch(step), device))], optimizer, scheduler, None, tc)
        if step + 1 in eval_at:
            curve.append((step + 1, *validate(model, data, device)))
    best = min(curve, key=lambda r: r[1])
    keep = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.startswith(("encoders.", "fusion."))}
    return {"loss": best[1], "metric": best[2], "step": best[0], "curve": curve, "loaded": len(loaded), "state": keep}


# ---- jobs (run in worker processes when --jobs > 1) -----------------------------------------------------
_WORLD: dict[str, Any] = {}


def _init_worker(world: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    _WORLD.update(world)


def _node_data(node: Node, seed: int) -> NodeData:
    key = (node.name, node.kind, seed)
    cache = _WORLD.setdefault("data", {})
    if key not in cache:
        cache.clear()  # one node at a time per worker keeps memory small
        cache[key] = NodeData(node, _WORLD["loaded"][node.task], _WORLD["settings"], seed)
    return cache[key]


def _scratch_job(node: Node, seed: int) -> dict[str, Any]:
    w = _WORLD
    started = time.time()
    data = _node_data(node, seed)
    out = fit(node_config(w["sizes"], node, w["loaded"][node.task]), data, w["settings"], seed=seed, device=w["device"])
    out["seconds"] = time.time() - started
    return out


def untrained(i: int) -> str:
    """Source name of the i-th extra scratch initialisation (an untrained encoder / fusion)."""
    return f"<untrained {i}>"


def _transfer_job(target: Node, seed: int, sources: Sequence[str], states: Mapping[str, Mapping[str, torch.Tensor]], prefixes: Sequence[str]) -> dict[str, Any]:
    """Runs on ``target`` starting from each source's transferable part; a source ``untrained(i)`` is
    an untrained model of another initialisation, i.e. one more scratch run of the target."""
    w = _WORLD
    data = _node_data(target, seed)
    cfg = node_config(w["sizes"], target, w["loaded"][target.task])
    results = {}
    for src in sources:
        started = time.time()
        if src in states:
            state = states[src]
        else:
            torch.manual_seed(10_000 * int(src.strip("<>").split()[1]) + seed)
            state = HighMMT(cfg).state_dict()
        r = fit(cfg, data, w["settings"], seed=seed, device=w["device"], source=state, prefixes=prefixes)
        r.pop("state")
        r["seconds"] = time.time() - started
        results[src] = r
    return results


def _run_jobs(jobs: list[tuple[Any, tuple]], workers: int, world: dict[str, Any], progress: Any) -> list[Any]:
    if workers <= 1:
        _init_worker(world)
        out = []
        for fn, args in jobs:
            out.append(fn(*args))
            progress()
        return out
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"), initializer=_init_worker, initargs=(world,)) as pool:
        futures = [pool.submit(fn, *args) for fn, args in jobs]
        out = []
        for f in futures:
            out.append(f.result())
            progress()
        return out


# ---- one matrix ----------------------------------------------------------------------------------
def sampled_pairs(names: Sequence[str], fraction: float, rank: int, seed: int) -> set[tuple[str, str]]:
    """Off-diagonal (source, target) pairs to measure: all, or a seeded ``fraction`` topped up so that
    every row and column holds at least ``rank`` measured entries (needed for the completion)."""
    pairs = [(s, t) for s in names for t in names if s != t]
    if fraction >= 1.0:
        return set(pairs)
    rng = np.random.default_rng(seed)
    chosen = {p for p in pairs if rng.random() < fraction}
    need = min(rank, len(names) - 1)
    for n in names:
        for axis in (0, 1):
            have = [p for p in chosen if p[axis] == n]
            spare = [p for p in pairs if p[axis] == n and p not in chosen]
            rng.shuffle(spare)
            chosen.update(spare[: max(0, need - len(have))])
    return chosen


def measure(
    nodes: Sequence[Node],
    *,
    seeds: Sequence[int],
    inits: int,
    prefixes: Sequence[str],
    fraction: float,
    rank: int,
    workers: int,
    world: dict[str, Any],
    log: Any,
) -> dict[str, Any]:
    """Scratch runs (``inits`` random starts of the transferable part), then transfers, for every
    seed of ``seeds``; T against the mean scratch loss, d, and the noise floor (sd of the scratch losses)."""
    names = [n.name for n in nodes]
    by_name = {n.name: n for n in nodes}
    kind = nodes[0].kind
    started = time.time()
    done = [0]
    measured = sampled_pairs(names, fraction, rank, seed=0) if len(names) > 1 else set()
    total = 2 * len(nodes) * len(seeds)

    def progress() -> None:
        done[0] += 1
        log(f"  [{kind}] {done[0]}/{total} jobs, {time.time() - started:.0f}s")

    jobs = [(_scratch_job, (n, s)) for s in seeds for n in nodes]
    results = _run_jobs(jobs, workers, world, progress)
    first = {(n.name, s): r for (_, (n, s)), r in zip(jobs, results)}
    states = {s: {n: first[(n, s)].pop("state") for n in names} for s in seeds}
    extra = [untrained(i) for i in range(1, inits)]
    tjobs = []
    for s in seeds:
        for tgt in names:
            srcs = [src for src in names if (src, tgt) in measured]
            tjobs.append((_transfer_job, (by_name[tgt], s, [*srcs, *extra], {src: states[s][src] for src in srcs}, tuple(prefixes))))
    tresults = _run_jobs(tjobs, workers, world, progress)
    transfer: dict[tuple[str, str, int], dict[str, Any]] = {}
    scratch: dict[tuple[str, int, int], dict[str, Any]] = {(n, s, 0): r for (n, s), r in first.items()}
    for (_, (tgt, s, _, _, _)), res in zip(tjobs, tresults):
        for src, r in res.items():
            if src in extra:
                scratch[(tgt.name, s, extra.index(src) + 1)] = r
            else:
                transfer[(src, tgt.name, s)] = r
    # L*_t of a seed: the mean over the scratch initialisations; the floor: their sample sd (averaged over seeds).
    inits_of = {(n, s): mean_sd(scratch[(n, s, i)]["loss"] for i in range(inits)) for n in names for s in seeds}
    l_scratch = {k: m.mean for k, m in inits_of.items()}
    noise = {n: float(np.mean([np.nan if inits_of[(n, s)].sd is None else inits_of[(n, s)].sd for s in seeds])) for n in names}
    per_seed = []
    for s in seeds:
        per_seed.append(transfer_matrix(
            names, {n: l_scratch[(n, s)] for n in names},
            {(src, tgt): r["loss"] for (src, tgt, ss), r in transfer.items() if ss == s},
        ))
    t_measured = np.mean(per_seed, axis=0)
    observed = np.isfinite(t_measured)
    completed = bool((~observed).any())
    t_full = complete_low_rank(t_measured, observed, rank=min(rank, len(names))) if completed else t_measured
    np.fill_diagonal(t_full, 0.0)
    d = distance_matrix(t_full)
    off = ~np.eye(len(names), dtype=bool) & observed
    floor = np.array([[noise[t] for t in names] for _ in names])
    # A single transfer run scatters like one scratch run: |T| > 2 sd / sqrt(seeds) is unlikely from noise alone.
    above = float((np.abs(t_measured[off]) > 2 * floor[off] / math.sqrt(len(seeds))).mean()) if off.any() and inits > 1 else float("nan")
    return {
        "names": names,
        "nodes": [dataclasses.asdict(n) for n in nodes],
        "transferred": list(prefixes),
        "scratch_inits": inits,
        "L_scratch": {n: float(np.mean([l_scratch[(n, s)] for s in seeds])) for n in names},
        "scratch": {f"{n}@{s}#{i}": r for (n, s, i), r in scratch.items()},
        "transfer": {f"{src}->{tgt}@{s}": r for (src, tgt, s), r in transfer.items()},
        "T_measured": _nan_to_none(t_measured),
        "T": t_full.tolist(),
        "T_per_seed": [_nan_to_none(m) for m in per_seed],
        "observed_fraction": float(off.sum() / max(1, len(names) * (len(names) - 1))),
        "completed_rank": rank if completed else None,
        "d": d.tolist(),
        "noise_floor": noise,
        "noise_floor_median": float(np.median(list(noise.values()))),
        "fraction_T_above_noise": above,
        "fraction_T_negative": float((t_measured[off] < 0).mean()) if off.any() else float("nan"),
        "triangle_fraction": triangle_fraction(d),
        "triangle_fraction_c5": triangle_fraction(d, c=5.0),
        "explained_variance_rank3": explained_variance(t_full, 3) if len(names) >= 3 else float("nan"),
        "seconds": time.time() - started,
    }


def _nan_to_none(m: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in m]


# ---- outputs -------------------------------------------------------------------------------------------
def heatmap(result: Mapping[str, Any], groups: Mapping[str, Sequence[str]] | None, path: Path, title: str) -> None:
    """T (source rows, target columns, diverging colours around 0) and d side by side, nodes ordered by group."""
    plt = pyplot()
    names = result["names"]
    order = [n for ms in groups.values() for n in ms] if groups else list(names)
    idx = [names.index(n) for n in order]
    labels = [next(f"{x['name']} ({x['task']})" for x in result["nodes"] if x["name"] == n) for n in order]
    t = np.array(result["T"], dtype=float)[np.ix_(idx, idx)]
    d = np.array(result["d"], dtype=float)[np.ix_(idx, idx)]
    n = len(order)
    size = max(5.0, 0.55 * n + 3)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    lim = float(np.abs(t).max()) or 1.0
    for ax, m, cmap, name, vmin in ((axes[0], t, "RdBu_r", "T(source -> target) = L*_transfer - L*_scratch", -lim), (axes[1], d, "viridis", "d = max(T,0) + max(T^T,0)", 0.0)):
        im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=lim if cmap == "RdBu_r" else None)
        ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
        if n <= 14:
            top = float(np.abs(m).max()) or 1.0
            for i in range(n):
                for j in range(n):
                    # light text on the dark ends of each colour map
                    dark = abs(m[i, j]) > 0.6 * top if cmap == "RdBu_r" else m[i, j] < 0.5 * top
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=5.5, color="white" if dark else "black")
        if groups:
            edges = np.cumsum([len(ms) for ms in groups.values()])[:-1] - 0.5
            for e in edges:
                ax.axhline(e, color="k", lw=1)
                ax.axvline(e, color="k", lw=1)
    axes[0].set_ylabel("source")
    axes[0].set_xlabel("target")
    axes[1].set_xlabel("target")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=110)


def emit_sharing(out: Path, preset: RunConfig, k: int, enc: Mapping[str, Sequence[str]] | None,
                 fus: Mapping[str, Sequence[str]] | None, tasks: Sequence[str]) -> dict[str, Any]:
    """Write sharing_k<k>.json, preset_k<k>.json and overrides_k<k>.txt; return the sharing dict."""
    sharing = sharing_config(enc or "all", fus or "all")
    write_json(out / f"sharing_k{k}.json", sharing)
    run = copy.deepcopy(preset)
    run.model.sharing = SharingConfig(encoder=sharing["encoder"], fusion=sharing["fusion"])
    if isinstance(sharing["fusion"], dict):
        run.model.fusion.kind = "pairwise"
    raw = run.to_dict()
    raw["model"] = {k2: v for k2, v in raw["model"].items() if k2 not in ("modalities", "tasks")}
    raw["tasks"] = list(tasks)
    write_json(out / f"preset_k{k}.json", raw)
    args = " ".join(f"--set {shlex.quote(f'model.sharing.{w}=' + json.dumps(sharing[w], separators=(',', ':')))}" for w in ("encoder", "fusion"))
    (out / f"overrides_k{k}.txt").write_text(args + "\n")
    return sharing


def summary_markdown(results: Mapping[str, Any]) -> str:
    lines = [f"Heterogeneity study; {results['hardware_line']}; wall time {results['wall_s']:.0f} s.", ""]
    s = results["settings"]
    lines.append(f"Settings: preset `{results['preset']}`, {s['steps']} steps, batch {s['batch_size']}, "
                 f"{s['train_rows'] or 'all'} training rows, {s['eval_rows'] or 'all'} validation rows, "
                 f"{format_seeds(seed_list(results['seeds']))}, L* = best of {s['evals']} evaluations; noise floor: the sample sd "
                 "(ddof = 1) of a node's scratch runs over its random starts.")
    for kind in ("unimodal", "interaction"):
        r = results.get(kind)
        if not r:
            continue
        names = r["names"]
        lines += ["", f"### {kind}: d matrix (transfer part: {', '.join(r['transferred'])})", ""]
        lines.append(markdown_table(["", *names], [[n, *row] for n, row in zip(names, r["d"])]))
        first = seed_list(results["seeds"])[0]  # the first seed's init 0 (seeds need not start at 0)
        scratch = [[n, next(x["task"] for x in r["nodes"] if x["name"] == n), r["L_scratch"][n], r["noise_floor"][n],
                    r["scratch"][f"{n}@{first}#0"]["metric"]] for n in names]
        lines += ["", markdown_table(["node", "task", f"L* scratch (mean of {r['scratch_inits']} inits)", "noise floor (sd)",
                                      f"val metric (seed {first}, init 0)"], scratch), ""]
        pct = lambda v: "-" if v is None or v != v else f"{v:.0%}"  # noqa: E731
        lines.append(f"{pct(r['fraction_T_negative'])} of measured T < 0 (transfer helped); {pct(r['fraction_T_above_noise'])} "
                     f"of |T| exceed twice the target's noise floor (median floor {r['noise_floor_median']:.3f}); triangle "
                     f"inequality holds for {pct(r['triangle_fraction'])} of triples ({pct(r['triangle_fraction_c5'])} "
                     f"with c=5); top-3 singular values carry {pct(r['explained_variance_rank3'])} of T; "
                     f"{r['observed_fraction']:.0%} of transfers measured"
                     + (f", the rest completed at rank {r['completed_rank']}." if r["completed_rank"] else "."))
        for k, g in results["groups"][kind].items():
            lines.append(f"- k={k}: " + "; ".join(f"{name}: {', '.join(ms)}" for name, ms in g.items()))
    return "\n".join(lines) + "\n"


# ---- main --------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="suite", help="comma-separated tasks/aliases (default: the suite)")
    p.add_argument("--preset", default="tiny", help="model sizes, lr, batch size and weight decay (default: tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override on the preset, e.g. model.dim=64")
    p.add_argument("--steps", type=int, default=150, help="training steps of every run (scratch and transfer)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-rows", type=int, default=1024, help="seeded subset of each task's training rows (0 = all)")
    p.add_argument("--eval-rows", type=int, default=256, help="validation rows per node (0 = all)")
    p.add_argument("--evals", type=int, default=3, help="validation evaluations per run; L* is the best")
    p.add_argument("--seeds", type=parse_seeds, default=[0], help="N (seeds 0..N-1) or a list a,b,c: every transfer is "
                   "measured with each and T averaged; --protocol staged also trains every stage with each (default: 1)")
    p.add_argument("--scratch-inits", type=int, default=3, help="scratch runs per node and seed (random starts of the transferable part); L* is their mean, the noise floor their sd")
    p.add_argument("--k", default="2,3", help="numbers of groups to emit (comma-separated)")
    p.add_argument("--linkage", default="average", help="agglomerative linkage: average | complete | single | weighted")
    p.add_argument("--sample-fraction", type=float, default=1.0, help="measure this fraction of transfers, complete the rest at --rank")
    p.add_argument("--rank", type=int, default=3, help="rank of the matrix completion")
    p.add_argument("--interaction-transfer", default="encoder+fusion", choices=["encoder+fusion", "fusion"])
    p.add_argument("--only", default="both", choices=["both", "unimodal", "interaction"])
    p.add_argument("--jobs", type=int, default=1, help="worker processes (one torch thread each)")
    p.add_argument("--output-dir", default=str(DEFAULT_OUT))
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even if a GPU is present")
    p.add_argument("--plot-only", action="store_true", help="redraw the heatmaps and summary from --output-dir's heterogeneity.json")
    p.add_argument("--quiet", action="store_true")
    staged = p.add_argument_group("the staged sharing protocol (--protocol staged; experiments/heterogeneity_staged.py)")
    staged.add_argument("--protocol", default="measure", choices=["measure", "staged"],
                        help="measure: the matrices and groups; staged: then share-all -> copy into the clustered groups -> "
                        "multitask fine-tuning, against random groups and share-all for the same total steps")
    staged.add_argument("--groups-from", default=None, metavar="DIR",
                        help="take the clustered groups from an earlier measurement's sharing_k<k>.json in DIR instead of measuring")
    staged.add_argument("--random-draws", type=int, default=5, help="random groupings per k (each through stages 1-3)")
    staged.add_argument("--stage1-steps", type=int, default=300, help="share-all training steps (stage 1)")
    staged.add_argument("--stage3-steps", type=int, default=100, help="multitask fine-tuning steps after the copy (stage 3)")
    staged.add_argument("--limit", type=int, default=1000, help="test rows per task when scoring (0 = all)")
    staged.add_argument("--write-doc", default=None, metavar="FILE", help="also put the table between FILE's staged-table markers")
    args = p.parse_args(argv)
    if min(args.steps, args.batch_size, args.evals, args.jobs, args.scratch_inits, args.random_draws, args.stage1_steps, args.stage3_steps) < 1:
        p.error("--steps, --batch-size, --evals, --scratch-inits, --jobs, --random-draws, --stage1-steps and --stage3-steps must be >= 1")
    if args.groups_from and args.protocol != "staged":
        p.error("--groups-from only goes with --protocol staged")
    if not 0.0 < args.sample_fraction <= 1.0:
        p.error(f"--sample-fraction must be in (0, 1], got {args.sample_fraction}")
    return args


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> [0, 1, 2] (a count, as before); ``"0,1,2"`` or ``"5,"`` -> those seeds."""
    try:
        if "," not in text:
            n = int(text)
            if n < 1:
                raise ValueError
            return list(range(n))
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be a count N >= 1 or a comma-separated list of seeds (one seed s: 's,'), got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds must name at least one seed, each once, got {text!r}")
    return seeds


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """The seeds of a results file (files written before seed lists hold a count)."""
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def draw(results: Mapping[str, Any], out: Path) -> None:
    """The heatmaps (nodes ordered by the largest k's groups, group borders drawn)."""
    ks = results["k"]
    for kind in ("unimodal", "interaction"):
        r = results.get(kind)
        if not r:
            continue
        biggest = results["groups"][kind][str(ks[-1])] if ks else None
        what = "Modality" if kind == "unimodal" else "Interaction"
        title = (f"{what} heterogeneity ({results['settings']['steps']} steps, preset {results['preset']}, "
                 f"{len(seed_list(results['seeds']))} seed(s)); lines: k={ks[-1] if ks else '-'} groups")
        heatmap(r, biggest, out / f"{kind}_heatmap.png", title)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.plot_only:
        out = Path(args.output_dir)
        path = out / "heterogeneity.json"
        if not path.is_file():
            raise FileNotFoundError(f"--plot-only: {path} does not exist; run the study into {out} first")
        results = json.loads(path.read_text())
        draw(results, out)
        (out / "summary.md").write_text(summary_markdown(results))
        return results
    wall = time.time()
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    preset, _ = train.load_preset(args.preset)
    preset = apply_overrides(preset, args.overrides)
    try:
        ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    except ValueError as e:
        raise ValueError(f"--k must be comma-separated integers, got {args.k!r}") from e
    task_names = train.expand_tasks(args.tasks.split(","))
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    torch.set_num_threads(1 if device.type == "cpu" else torch.get_num_threads())

    loaded = {}
    for t in task_names:
        lt = load_task(t, data_root=args.data_root, cache_dir=args.cache_dir, quiet=args.quiet)
        loaded[lt.spec.name] = lt
    uni, pairs = choose_nodes(loaded)
    settings = Settings(steps=args.steps, batch_size=args.batch_size, train_rows=args.train_rows, eval_rows=args.eval_rows,
                        evals=args.evals, lr=preset.train.lr, weight_decay=preset.train.weight_decay,
                        warmup=min(preset.train.warmup_steps, max(1, args.steps // 10)), grad_clip=preset.train.grad_clip)
    world = {"loaded": loaded, "sizes": preset.model, "settings": settings, "device": device}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.groups_from:
        return {"staged": run_staged(args, task_names, loaded, read_sharing(Path(args.groups_from), ks), out, log)}
    load_start = load_average()
    results: dict[str, Any] = {
        "tasks": list(loaded), "preset": args.preset, "overrides": args.overrides, "seeds": args.seeds,
        "settings": dataclasses.asdict(settings), "linkage": args.linkage, "k": ks,
        "sample_fraction": args.sample_fraction, "interaction_transfer": args.interaction_transfer,
        "groups": {"unimodal": {}, "interaction": {}},
    }
    common = {"seeds": args.seeds, "inits": args.scratch_inits, "fraction": args.sample_fraction, "rank": args.rank, "workers": args.jobs, "world": world, "log": log}
    if args.only in ("both", "unimodal"):
        log(f"unimodal heterogeneity: {len(uni)} modalities: " + ", ".join(n.label for n in uni))
        results["unimodal"] = measure(uni, prefixes=("encoders.",), **common)
    if args.only in ("both", "interaction") and pairs:
        prefixes = ("encoders.", "fusion.") if args.interaction_transfer == "encoder+fusion" else ("fusion.",)
        log(f"interaction heterogeneity: {len(pairs)} pairs: " + ", ".join(n.label for n in pairs))
        results["interaction"] = measure(pairs, prefixes=prefixes, **common)

    # Groups -> sharing configs, heatmaps.
    for kind, prefix in (("unimodal", "u"), ("interaction", "c")):
        r = results.get(kind)
        if not r:
            continue
        for k in ks:
            kk = min(k, len(r["names"]))
            results["groups"][kind][str(k)] = cluster(np.array(r["d"]), r["names"], kk, linkage=args.linkage, prefix=prefix)
    draw(results, out)
    results["sharing"] = {}
    for k in ks:
        enc = results["groups"]["unimodal"].get(str(k))
        fus = results["groups"]["interaction"].get(str(k))
        results["sharing"][str(k)] = emit_sharing(out, preset, k, enc, fus, list(loaded))
    # Only now: machine_info initialises CUDA, which forked workers (--jobs > 1) must not inherit.
    results["machine"] = machine_info(device)
    results["machine"]["load_average"], results["machine"]["load_average_end"] = load_start, results["machine"]["load_average"]
    results["hardware_line"] = hardware_line(results["machine"])
    results["wall_s"] = time.time() - wall
    results["python"] = platform.python_version()
    write_json(out / "heterogeneity.json", results)
    md = summary_markdown(results)
    (out / "summary.md").write_text(md)
    log(md)
    if args.protocol == "staged":  # its own staged.json; returned beside the measurement
        results["staged"] = run_staged(args, task_names, loaded, results["sharing"], out, log)
    return results


def read_sharing(folder: Path, ks: Sequence[int]) -> dict[str, Any]:
    """k -> the clustered sharing an earlier measurement wrote (``sharing_k<k>.json``)."""
    out = {}
    for k in ks:
        path = folder / f"sharing_k{k}.json"
        if not path.is_file():
            raise FileNotFoundError(f"--groups-from: {path} is missing; run `python -m experiments.heterogeneity --k {k} "
                                    f"--output-dir {folder}` first (it writes sharing_k<k>.json)")
        out[str(k)] = json.loads(path.read_text())
    return out


def run_staged(args: argparse.Namespace, task_names: Sequence[str], loaded: Mapping[str, LoadedTask],
               sharing: Mapping[str, Any], out: Path, log: Any) -> dict[str, Any]:
    """The staged protocol (``experiments/heterogeneity_staged.py``) on the clustered groups of every k,
    kept to the loaded tasks' modalities and pairs; outputs under ``out/staged``."""
    from experiments.heterogeneity_staged import restrict_sharing, staged_protocol

    mods = list(dict.fromkeys(m for lt in loaded.values() for m in lt.spec.modalities))
    pairs = task_pairs(list(lt.spec.modalities) for lt in loaded.values())
    ks = sorted(int(k) for k in sharing)
    grouped = {k: restrict_sharing(sharing[str(k)], mods, pairs) for k in ks}
    return staged_protocol(args, task_names, grouped, out / "staged", log)


if __name__ == "__main__":
    run_cli(main)
