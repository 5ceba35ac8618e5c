"""Pretrained encoders, embedders + heads over a frozen encoder, and representation tuning (MAG) against plain training.

    HIGHMMT_DATA=../shared/data python -m experiments.pretrained          # ~10 CPU-minutes, 1 thread per run
    python -m experiments.pretrained --steps 3000 --source-steps 5000      # longer (a GPU)
    python -m experiments.pretrained --synthetic-mag                       # MAG's two positions on a planted task (~15 CPU-s)

No pretrained weights can be downloaded here, so the "pretrained" image backbone is self-pretrained:
a timm ``test_resnet`` (random init, 0.37 M parameters) is trained as the glyph embedder of a
multitask run on Omniglot + robot failures LP1-5 (``source/``), and its weights are then read from
that run's ``model.safetensors`` through the ``weights`` / ``weights_prefix`` options. The same run
is the multitask checkpoint that the ``embedders_head`` runs start from. Runs (``train.py`` run folders under
``--output-dir``; finished ones are skipped, so the study resumes):

    source/                       omniglot + robot_failures with a timm glyph backbone (the checkpoint)
    avmnist/plain                 the default patch image embedder, trained from scratch
    avmnist/timm_scratch          timm test_resnet image backbone, random init, trained
    avmnist/timm_frozen_random    the same backbone with random weights, frozen (control)
    avmnist/timm_frozen           the source's backbone, frozen (only its projection to d learns)
    avmnist/timm_finetuned        the source's backbone, fine-tuned
    avmnist/head                  --init-from avmnist/plain, only the head trains (frozen model)
    avmnist/head_mag              the same + MAG: image latents shifted by the audio (gate + head train)
    avmnist/head_mag_inside       the same, MAG inside the image's encoder pass (position=inside_encoder)
    utd_mhad/scratch              plain training from random init (no checkpoint)
    utd_mhad/full                 --init-from source, plain fine-tuning of everything
    utd_mhad/embedders_head       --init-from source, --finetune embedders_head: encoder + fusion frozen, new embedders + head
    utd_mhad/embedders_head_mag   the same + MAG (skeleton latents shifted by inertial + depth)
    utd_mhad/embedders_head_mag_inside  the same, MAG inside the skeleton's encoder pass (position=inside_encoder)

MAG's two positions (``model.representation_tuning.position``): ``after_encoder`` shifts the frozen
encoder's output latents before fusion; ``inside_encoder`` shifts the primary's latents after the
encoder layer's cross-attention, so its self-attention block and final norm read the shifted states
(``--set model.representation_tuning.layer=j`` picks the layer of a deeper encoder; the presets have
depth 1). Each ``*_mag_inside`` row is compared with its ``*_mag`` row: same seeds, steps and gate.

Each run gets the same number of optimizer steps (``--steps``); AV-MNIST runs train on a stratified
``--avmnist-fraction`` of the training split (low-resource, where a pretrained encoder should help).
Reported per run: trainable / total parameters, test accuracy of the best-validation checkpoint
(mean ± sample sd over seeds, each seed's value in brackets), the difference from the run it is
measured against (``COMPARED_WITH``) with the verdict of ``benchmarks.common.compare``, training wall
time (``train.py``'s own clock, evaluation excluded). Writes ``results.json`` and
``results.md`` in ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import modalities  # noqa: F401  (registers the embedders)
from benchmarks.common import STATS_RULE, compare, format_mean_sd, format_seeds, hardware_line, machine_info, run_cli
from experiments.common import data_flags, publish, train_unless_done
from highmmt import HighMMT
from highmmt.checkpoint import atomic_write_bytes, atomic_write_json
from tasks.cache import load_task
from tasks.loader import predict, score

ROOT = Path(__file__).resolve().parents[1]

BACKBONE = {"backbone": "timm:test_resnet", "image_size": 28}
ROBOT = ["robot_failures_lp1", "robot_failures_lp2", "robot_failures_lp3", "robot_failures_lp4", "robot_failures_lp5"]
# Run group -> the group it is measured against in the table (what the one change is made to).
COMPARED_WITH = {
    "avmnist/timm_scratch": "avmnist/plain",
    "avmnist/timm_frozen": "avmnist/timm_frozen_random",
    "avmnist/timm_finetuned": "avmnist/timm_scratch",
    "avmnist/head_mag": "avmnist/head",
    "avmnist/head_mag_inside": "avmnist/head_mag",
    "utd_mhad/full": "utd_mhad/scratch",
    "utd_mhad/embedders_head": "utd_mhad/full",
    "utd_mhad/embedders_head_mag": "utd_mhad/embedders_head",
    "utd_mhad/embedders_head_mag_inside": "utd_mhad/embedders_head_mag",
}
INSIDE = ["--set", "model.representation_tuning.position=inside_encoder"]


def runs(out: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The study: (name, tasks, train.py arguments, description) in dependency order."""
    source = out / "source"
    pretrained = {**BACKBONE, "weights": str(source / "model.safetensors"), "weights_prefix": "embedders.glyph.backbone."}
    opts = lambda m, o: ["--set", "train.modality_options=" + json.dumps({m: o})]  # noqa: E731
    avm = ["--train-fraction", str(args.avmnist_fraction)]
    mag_avm = ["--set", "model.representation_tuning.primary=mnist_image", "--set", 'model.representation_tuning.context=["fsdd_audio"]']
    mag_utd = ["--set", "model.representation_tuning.primary=skeleton", "--set", 'model.representation_tuning.context=["inertial","depth"]']
    init = lambda run: ["--init-from", str(out / run)]  # noqa: E731
    utd = [
        ("utd_mhad/scratch", [], "plain training from random init"),
        ("utd_mhad/full", init("source") + ["--finetune", "full"], "from source: plain fine-tuning (everything trains)"),
        ("utd_mhad/embedders_head", init("source") + ["--finetune", "embedders_head"],
         "from source: embedders + head over a frozen encoder and fusion"),
        ("utd_mhad/embedders_head_mag", init("source") + ["--finetune", "embedders_head"] + mag_utd,
         "from source: embedders + head + MAG (skeleton <- inertial, depth)"),
        ("utd_mhad/embedders_head_mag_inside", init("source") + ["--finetune", "embedders_head"] + mag_utd + INSIDE,
         "from source: embedders + head + MAG inside the skeleton's encoder pass"),
    ]
    seeds = [int(v) for v in str(args.utd_seeds).split(",") if v != ""] or [args.seed]
    return [
        {"name": "source", "tasks": ["omniglot", *ROBOT], "steps": args.source_steps, "args": opts("glyph", BACKBONE),
         "what": "multitask source: omniglot (timm glyph backbone, random init) + robot LP1-5"},
        {"name": "avmnist/plain", "tasks": ["avmnist"], "args": avm, "what": "patch image embedder, from scratch"},
        {"name": "avmnist/timm_scratch", "tasks": ["avmnist"], "args": avm + opts("mnist_image", BACKBONE),
         "what": "timm test_resnet image backbone, random init"},
        {"name": "avmnist/timm_frozen_random", "tasks": ["avmnist"], "args": avm + opts("mnist_image", {**BACKBONE, "freeze": True}),
         "what": "timm test_resnet, random init, frozen (control for the next row)"},
        {"name": "avmnist/timm_frozen", "tasks": ["avmnist"], "args": avm + opts("mnist_image", {**pretrained, "freeze": True}),
         "what": "self-pretrained backbone (source glyph), frozen"},
        {"name": "avmnist/timm_finetuned", "tasks": ["avmnist"], "args": avm + opts("mnist_image", pretrained),
         "what": "self-pretrained backbone (source glyph), fine-tuned"},
        {"name": "avmnist/head", "tasks": ["avmnist"], "steps": args.steps // 2, "args": avm + init("avmnist/plain") + ["--finetune", "head"],
         "what": "from avmnist/plain: head only (frozen model)"},
        {"name": "avmnist/head_mag", "tasks": ["avmnist"], "steps": args.steps // 2,
         "args": avm + init("avmnist/plain") + ["--finetune", "head"] + mag_avm,
         "what": "from avmnist/plain: head + MAG (image <- audio), rest frozen"},
        {"name": "avmnist/head_mag_inside", "tasks": ["avmnist"], "steps": args.steps // 2,
         "args": avm + init("avmnist/plain") + ["--finetune", "head"] + mag_avm + INSIDE,
         "what": "from avmnist/plain: head + MAG inside the image's encoder pass, rest frozen"},
    ] + [
        {"name": name if seed == seeds[0] else f"{name}-seed{seed}", "group": name, "seed": seed, "tasks": ["utd_mhad"],
         "args": extra, "what": what}
        for seed in seeds for name, extra, what in utd
    ]


def train_run(run: dict[str, Any], out: Path, args: argparse.Namespace) -> None:
    """``train.py`` in a subprocess (one torch thread), unless the run folder is finished."""
    folder = out / run["name"]
    steps = run.get("steps", args.steps)
    epochs = max(1, min(args.epochs, steps // 50))
    argv = ["--preset", args.preset, "--tasks", ",".join(run["tasks"]), "--quiet", "--seed", str(run.get("seed", args.seed)),
            "--set", f"train.epochs={epochs}", "--set", f"train.steps_per_epoch={steps // epochs}",
            "--set", f"train.warmup_steps={min(50, steps // 10)}", "--set", f"train.threads={args.threads}",
            *data_flags(args),
            *run["args"]]
    folder.parent.mkdir(parents=True, exist_ok=True)
    train_unless_done(folder, argv, log=folder.parent / f"{folder.name}.log", threads=args.threads)


def test_scores(folder: Path, tasks: Sequence[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Test-split metrics of a run's best-validation model."""
    model = HighMMT.from_pretrained(folder).eval()
    out = {}
    for t in tasks:
        lt = load_task(t, data_root=args.data_root, cache_dir=args.cache_dir, quiet=True)
        with torch.inference_mode():
            out[t] = score(lt.spec, *predict(model, lt.splits["test"], lt.spec, batch_size=256, limit=args.test_limit))
    return out


def summarize(run: dict[str, Any], out: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = out / run["name"]
    cfg = json.loads((folder / "config.json").read_text())
    done = (folder / "DONE").read_text()
    m = re.search(r"(\d+) steps in (\d+)s", done)
    counts = cfg.get("trainable_parameters") or {}
    eval_tasks = run["tasks"] if run["name"] != "source" else ["omniglot"]
    with torch.inference_mode():
        scores = test_scores(folder, eval_tasks, args)
    emb = cfg["model"]["modalities"]
    return {
        "name": run["name"], "group": run.get("group", run["name"]), "seed": run.get("seed", args.seed),
        "what": run["what"], "tasks": run["tasks"], "args": run["args"],
        "steps": int(m.group(1)) if m else None, "train_s": float(m.group(2)) if m else None,
        "trainable": counts.get("trainable"), "total": counts.get("total"), "trainable_parts": counts,
        "test": scores, "best": json.loads((folder / "best.json").read_text()),
        "embedders": {k: v["kind"] for k, v in emb.items()},
    }


def markdown(results: dict[str, Any]) -> str:
    """One row per run group: accuracy mean ± sd over seeds (each seed's value in brackets), the
    difference from the group in ``COMPARED_WITH`` with its verdict, mean training time."""
    lines = [
        f"Preset `{results['preset']}`, {results['steps']} optimizer steps per run (source: {results['source_steps']}; "
        f"head-only runs: half), AV-MNIST on {results['avmnist_fraction']:.0%} of its training split; test split, "
        f"best-validation checkpoint; {results['hardware']}.",
        "",
        "| run | what | seeds | trainable params | of total | test accuracy | difference from | training time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results["runs"]:
        groups.setdefault(r["group"], []).append(r)
    accs = {name: [x["test"]["omniglot" if name == "source" else x["tasks"][0]]["accuracy"] for x in rs] for name, rs in groups.items()}
    for name, rs in groups.items():
        r = rs[0]
        acc = format_mean_sd(accs[name], per_seed=True)
        base = COMPARED_WITH.get(name)
        versus = f"{base}: {compare(accs[name], accs[base]).format()}" if base in accs else "-"
        share = r["trainable"] / r["total"] if r["trainable"] is not None and r["total"] else float("nan")
        train_s = sum(x["train_s"] for x in rs) / len(rs)
        lines.append(f"| {name} | {r['what']} | {','.join(str(x['seed']) for x in rs)} | {r['trainable']:,} | "
                     f"{r['total']:,} ({share:.0%}) | {acc}{' (omniglot)' if name == 'source' else ''} | {versus} | {train_s:.0f} |")
    seeds = sorted({x["seed"] for x in results["runs"]})
    lines += ["", f"Each row is over the seeds in its seeds column ({format_seeds(seeds)} in all): {STATS_RULE}"]
    lines.append("")
    lines.append(f"Whole study: {results['wall_s'] / 60:.1f} min wall, {results['cpu_s'] / 60:.1f} CPU-min "
                 "(training, evaluation and start-up of every run).")
    return "\n".join(lines) + "\n"


# ---- MAG's positions on a planted interaction (no data files) ------------------------------------------
MAG_ARMS = ("head_only", "after_encoder", "inside_encoder")


def planted_interaction(n: int, generator: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    """Two modalities a, b [n, 6 steps, 2 channels] of unit noise; each carries a hidden bit as an
    offset of +-1 on channel 0; the label is the XOR of the two bits, so neither modality alone
    says anything about it and a linear read-out of the two side by side cannot compute it."""
    bits = torch.randint(0, 2, (2, n), generator=generator)
    x = {m: torch.randn(n, 6, 2, generator=generator) for m in ("a", "b")}
    for m, bit in zip(("a", "b"), bits):
        x[m][:, :, 0] += (2 * bit - 1).unsqueeze(1).float()
    return x, bits[0] ^ bits[1]


def synthetic_mag_run(arm: str, seed: int, *, steps: int = 150, batch: int = 64, rows: int = 1024) -> float:
    """Test accuracy of one arm of :func:`synthetic_mag` for one seed.

    A HighMMT (dim 16, 4 latents, no fusion: the head reads the two modalities' pooled latents side by
    side) at random init is frozen, as a pretrained model would be; only the head (``head_only``) or
    the head and a MAG gate on a from b (at ``after_encoder`` or ``inside_encoder``) train, AdamW lr
    3e-3, ``steps`` steps of ``batch`` rows out of ``rows`` training rows; tested on ``rows`` fresh rows.
    """
    from highmmt import HighMMTConfig, ModalityConfig, TaskConfig
    from highmmt.config import RepresentationTuningConfig

    torch.manual_seed(seed)
    rt = {} if arm == "head_only" else {"primary": "a", "context": ["b"], "position": arm}
    cfg = HighMMTConfig(dim=16, modalities={m: ModalityConfig("timeseries", {"channels": 2}) for m in ("a", "b")},
                        tasks={"xor": TaskConfig(["a", "b"], "classification", 2)},
                        representation_tuning=RepresentationTuningConfig(**rt))
    cfg.encoder.num_latents, cfg.encoder.dim_head, cfg.fusion.kind = 4, 8, "none"
    model = HighMMT(cfg)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("heads.", "representation_tuning.")))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(1000 + seed)
    (train_x, train_y), (test_x, test_y) = planted_interaction(rows, g), planted_interaction(rows, g)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, rows, (batch,), generator=g)
        loss = torch.nn.functional.cross_entropy(model({m: v[i] for m, v in train_x.items()}, "xor"), train_y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.inference_mode():
        return (model(test_x, "xor").argmax(dim=-1) == test_y).float().mean().item()


def synthetic_mag(seeds: Sequence[int] = (0, 1, 2), steps: int = 150) -> dict[str, list[float]]:
    """Arm -> test accuracy per seed on :func:`planted_interaction` (chance 0.5), same seeds and budget."""
    return {arm: [synthetic_mag_run(arm, s, steps=steps) for s in seeds] for arm in MAG_ARMS}


def synthetic_mag_markdown(acc: dict[str, list[float]], seeds: Sequence[int], wall_s: float) -> str:
    lines = ["| arm | test accuracy | difference from |", "|---|---|---|"]
    against = {"after_encoder": "head_only", "inside_encoder": "after_encoder"}
    for arm, values in acc.items():
        versus = f"{against[arm]}: {compare(values, acc[against[arm]]).format()}" if arm in against else "-"
        lines.append(f"| {arm} | {format_mean_sd(values, per_seed=True)} | {versus} |")
    lines += ["", f"{format_seeds(seeds)}: {STATS_RULE}",
              f"{hardware_line(machine_info(torch.device('cpu')))}, one torch thread, {wall_s:.0f} s wall in all."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="short", help="the preset of every run (default: short, the default preset when the study was run)")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps of each study run (head-only runs: half)")
    p.add_argument("--source-steps", type=int, default=800, help="steps of the multitask source run")
    p.add_argument("--epochs", type=int, default=3, help="validation points per run (the best one is tested)")
    p.add_argument("--avmnist-fraction", type=float, default=0.1, help="share of AV-MNIST's training split used")
    p.add_argument("--only", default="", help="comma-separated run names (prefixes) to do; default all")
    p.add_argument("--test-limit", type=int, default=0, help="test rows per task (0: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--utd-seeds", default="0,1,2", help="seeds of the UTD-MHAD runs (they share the source checkpoint)")
    p.add_argument("--output-dir", default="experiments/results/pretrained")
    p.add_argument("--doc", default="", metavar="FILE", help="also put the table between FILE's <!-- SECTION:begin/end --> markers")
    p.add_argument("--doc-section", default="pretrained", metavar="SECTION", help="the markers' name (default: pretrained)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--synthetic-mag", action="store_true",
                   help="only MAG's positions (head only / after_encoder / inside_encoder) on a planted XOR task, --utd-seeds seeds")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.synthetic_mag:
        seeds = [int(v) for v in str(args.utd_seeds).split(",") if v != ""]
        started = time.time()
        acc = synthetic_mag(seeds)
        print(synthetic_mag_markdown(acc, seeds, time.time() - started))
        return {"synthetic_mag": acc, "seeds": seeds}
    out = Path(args.output_dir)
    started = time.time()
    results: dict[str, Any] = {"preset": args.preset, "steps": args.steps, "source_steps": args.source_steps, "seed": args.seed,
                               "avmnist_fraction": args.avmnist_fraction, "runs": []}
    wanted = [w for w in args.only.split(",") if w]
    for run in runs(out, args):
        if wanted and not any(run["name"].startswith(w) for w in wanted):
            continue
        t0 = time.time()
        train_run(run, out, args)
        results["runs"].append(summarize(run, out, args))
        r = results["runs"][-1]
        print(f"[{time.time() - started:.0f}s] {run['name']}: test {json.dumps(r['test'])} trainable {r['trainable']:,} "
              f"train {r['train_s']}s (this call {time.time() - t0:.0f}s)", flush=True)
    results["wall_s"] = time.time() - started
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    results["cpu_s"] = sum(u.ru_utime + u.ru_stime for u in usage)
    info = machine_info(torch.device("cpu"))
    results["machine"] = info
    results["hardware"] = f"{hardware_line(info)}, fp32, one torch thread per run"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    table = markdown(results)
    atomic_write_bytes(out / "results.md", table.encode())
    publish(table, args.doc, args.doc_section)
    return results


if __name__ == "__main__":
    run_cli(main)
