"""Zero-shot study: AV-MNIST digits never labeled for the image, recognized through audio prototypes (``train.zeroshot``).

    HIGHMMT_DATA=../shared/data python -m experiments.zeroshot                    # 3 seeds, default preset
    python -m experiments.zeroshot --epochs 2 --steps 20 --seeds 0 --limit 500    # a quick look

Each run is an ordinary ``train.py`` run (in this process, one torch thread) on AV-MNIST with
``train.zeroshot`` on: the image (A) is supervised on the seen digits only (the ``--unseen`` digits'
rows leave its training and validation splits), image and audio (B) are aligned by a symmetric
InfoNCE loss on paired rows without labels, and every test image is classified by the nearest
prototype of labeled training audio clips of each digit (unseen digits included). Runs per seed:

- ``alignment on all rows (transductive)``: the alignment reads every training pair, unseen
  digits' included (their labels dropped);
- ``alignment on seen rows (inductive)``: the alignment reads the seen digits' pairs only;
- ``no alignment (weight 0)``: the control; projections and prototypes as above, no alignment loss.

Figures (test split, ``transference.zeroshot.evaluate_split``): per-class mean accuracy on the seen
and on the unseen digits' images, all ten digits competing (generalized zero-shot), their harmonic
mean, the conventional zero-shot accuracy (unseen images among the unseen digits only), and the
chance levels (1/10 and 1/|unseen|). Mean ± sample SD over seeds (``benchmarks.common``).

Writes ``results.json`` and ``results.md`` into ``--output-dir`` (default
``experiments/results/zeroshot``) and the table into ``--doc`` (default ``docs/zeroshot.md``,
between the results markers); finished runs are reused (``experiments.common.train_unless_done``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import compare, format_mean_sd, hardware_line, machine_info, markdown_table, run_cli, stats_note, write_json
from experiments.common import data_flags, train_unless_done, write_doc_section
from tasks.cache import load_task
from transference.zeroshot import evaluate_split, load_classifier

ROOT = Path(__file__).resolve().parents[1]
RESULTS_BEGIN = "<!-- zeroshot results: written by python -m experiments.zeroshot -->"
RESULTS_END = "<!-- end of zeroshot results -->"
PROTOCOLS = {"all": "alignment on all rows (transductive)", "seen": "alignment on seen rows (inductive)"}
CONTROL = "no alignment (weight 0)"
FIGURES = ("zeroshot_seen_accuracy", "zeroshot_unseen_accuracy", "zeroshot_harmonic", "zeroshot_zsl_accuracy")


def arms(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """(run label, train.zeroshot settings) of each run of one seed."""
    base = {"method": "contrastive", "primary": args.primary, "secondary": args.secondary, "unseen_classes": args.unseen,
            "temperature": args.temperature, "prototypes_per_class": args.prototypes_per_class}
    runs = [(PROTOCOLS[p], {**base, "align_rows": p, "weight": args.weight}) for p in args.protocols]
    return runs + [(CONTROL, {**base, "weight": 0.0})]


def run_one(folder: Path, args: argparse.Namespace, common: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """Train (unless finished) and score one run on the test split."""
    sets = [f"train.zeroshot.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in settings.items()]
    timing = folder / "timing.json"
    if (folder / "DONE").exists() and timing.exists():
        info = json.loads(timing.read_text())
    else:
        argv = ["--tasks", args.task, *common, *[a for s in sets for a in ("--set", s)]]
        info = {"train_wall_s": train_unless_done(folder, argv), "argv": argv}
        write_json(timing, info)
    lt = load_task(args.task, data_root=args.data_root, cache_dir=args.cache_dir, quiet=True)
    classifier = load_classifier(folder)
    scores = evaluate_split(classifier, lt.splits["test"], lt.spec, device=torch.device("cpu"), limit=args.limit)
    return {**scores, **info, "folder": str(folder)}


def _slug(label: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in label.lower()).split())


def markdown(results: dict[str, Any]) -> str:
    """The results table: each figure's mean ± SD over seeds, each run against the control."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in results["rows"]:
        by_run.setdefault(r["run"], []).append(r)
    first = results["rows"][0]
    control = by_run.get(CONTROL)
    lines = [f"Task {results['task']}: {results['primary']} classified through {results['secondary']} prototypes, unseen classes "
             f"{results['unseen']}. Hardware: {hardware_line(results['machine'])}. Settings: {results['settings']}. Whole study "
             f"{results['wall_s'] / 60:.1f} min wall. " + stats_note(results["seeds"]), "",
             f"Chance: {first['zeroshot_chance']:.3f} for the seen / unseen accuracy (all classes compete), "
             f"{first['zeroshot_zsl_chance']:.3f} for the zero-shot accuracy among the unseen classes only.", ""]
    lines.append(markdown_table(
        ["run", "seen acc", "unseen acc", "harmonic", "unseen vs no alignment", "unseen acc (unseen classes only)", "train time (s)"],
        [[run, *(format_mean_sd((r[k] for r in rs), per_seed=True) for k in FIGURES[:3]),
          "-" if control is None or rs is control else compare([r["zeroshot_unseen_accuracy"] for r in rs],
                                                               [r["zeroshot_unseen_accuracy"] for r in control]).format(),
          format_mean_sd((r["zeroshot_zsl_accuracy"] for r in rs), per_seed=True),
          round(sum(r["train_wall_s"] for r in rs) / len(rs))] for run, rs in by_run.items()]))
    return "\n".join(lines) + "\n"


def write_doc(doc: Path, table: str, command: str) -> None:
    """Replace the text between the results markers of ``doc`` (appended when it has none)."""
    write_doc_section(doc, RESULTS_BEGIN, RESULTS_END, f"Made by `{command}`.\n\n{table}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="avmnist")
    p.add_argument("--primary", default="mnist_image", help="A: labeled for the seen classes only, classified at test time")
    p.add_argument("--secondary", default="fsdd_audio", help="B: its labeled examples give every class's prototype")
    p.add_argument("--unseen", default="7,8,9", help="comma-separated classes never labeled for the primary")
    p.add_argument("--protocols", default="all,seen", help=f"comma-separated alignment rows, of {list(PROTOCOLS)}")
    p.add_argument("--preset", default="short", help="the preset of every run (default: short, the default preset when the study was run)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--steps", type=int, default=100, help="steps per epoch")
    p.add_argument("--weight", type=float, default=1.0, help="train.zeroshot.weight of the aligned runs")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--prototypes-per-class", type=int, default=50, help="labeled secondary training rows per class behind each prototype")
    p.add_argument("--limit", type=int, default=0, help="test rows scored (0 = all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each run is repeated per seed")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra override for every run")
    p.add_argument("--output-dir", default=str(ROOT / "experiments" / "results" / "zeroshot"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "zeroshot.md"), help="markdown file whose results section is rewritten ('' = none)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    args.unseen = [int(c) for c in args.unseen.split(",") if c]
    args.protocols = [x for x in args.protocols.split(",") if x]
    bad = [x for x in args.protocols if x not in PROTOCOLS]
    if bad:
        raise ValueError(f"--protocols: unknown {bad}; known: {list(PROTOCOLS)}")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    out = Path(args.output_dir)
    seeds = [int(x) for x in args.seeds.split(",")]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        common = ["--preset", args.preset, "--seed", str(seed), "--quiet", "--cpu",
                  "--set", f"train.epochs={args.epochs}", "--set", f"train.steps_per_epoch={args.steps}",
                  "--set", f"train.threads={args.threads}", "--set", "train.precision=fp32", *[a for o in args.overrides for a in ("--set", o)]]
        common += data_flags(args)
        for label, settings in arms(args):
            row = {"seed": seed, "run": label, **run_one(out / f"seed{seed}" / _slug(label), args, common, settings)}
            rows.append(row)
            print(f"[seed {seed}] {label}: seen {row['zeroshot_seen_accuracy']:.3f}, unseen {row['zeroshot_unseen_accuracy']:.3f}, "
                  f"harmonic {row['zeroshot_harmonic']:.3f}, {row['train_wall_s']:.0f} s", flush=True)
    results = {
        "task": args.task, "primary": args.primary, "secondary": args.secondary, "unseen": args.unseen,
        "settings": f"preset {args.preset}, {args.epochs} epochs x {args.steps} steps, weight {args.weight}, temperature "
                    f"{args.temperature}, {args.prototypes_per_class} prototype rows per class, fp32 CPU, {args.threads} thread(s)"
                    + (f", first {args.limit} test rows" if args.limit else ", whole test split"),
        "seeds": seeds, "machine": machine_info(torch.device("cpu")), "rows": rows, "wall_s": time.perf_counter() - started,
    }
    write_json(out / "results.json", results)
    table = markdown(results)
    (out / "results.md").write_text(table)
    if args.doc:
        command = "python -m experiments.zeroshot " + " ".join(argv if argv is not None else sys.argv[1:])
        write_doc(Path(args.doc), table, command.strip())
    print(table)
    return results


if __name__ == "__main__":
    run_cli(main)
