"""Translation co-learning where the secondary is privileged information (issue 14): does it beat
a model trained on the primary alone?

    python -m experiments.colearn_privileged                                   # seeds 0-5, ~2 CPU-minutes
    python -m experiments.colearn_privileged --seeds 0,1,2,3,4,5,6,7,8,9,10,11 --arms centered

Task ``synthetic_privileged`` (tasks/synthetic.py): 60% of the training labels name a wrong class
(validation and test are clean); the primary reads the class noisily, the secondary (seen only in
training) names it cleanly (Vapnik & Vashist 2009; Lopez-Paz et al. 2016, "clean labels as
privileged information"). Every run is an ordinary ``train.py`` run (tiny preset, fp32, one thread,
``--epochs`` x ``--steps``), scored on the test split through the primary alone. Arms, each against
the primary-alone model of the same seed: ``centered`` (translation, ``translation_loss=centered_mse``),
``normalized`` (translation, the default ``normalized_mse``), ``no_translation`` (the head path over
[primary, translated secondary] with ``weight=0``: what the method does without its translation loss).

Writes ``results.json`` into ``--output-dir`` (default ``experiments/results/colearn_privileged``);
finished runs are reused. Tested at seeds 0-2 by
``tests/test_learning.py::test_translation_beats_the_primary_alone_when_the_secondary_is_privileged_information``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import compare, format_mean_sd, hardware_line, machine_info, write_json
from experiments.colearn import accuracy, subset_spec
from experiments.common import train_unless_done
from highmmt import HighMMT
from tasks.cache import load_task
from transference.colearn import load_predictor

ROOT = Path(__file__).resolve().parents[1]
TASK, PRIMARY, SECONDARY = "synthetic_privileged", "privileged_primary", "privileged_secondary"
ARMS = {
    "centered": ["train.colearn.translation_loss=centered_mse"],
    "normalized": [],
    "no_translation": ["train.colearn.translation_loss=centered_mse", "train.colearn.weight=0"],
}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {list(ARMS)}")
    p.add_argument("--seeds", default="0,1,2,3,4,5")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=15, help="steps per epoch")
    p.add_argument("--output-dir", default=str(ROOT / "experiments" / "results" / "colearn_privileged"))
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    arms = args.arms.split(",")
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ValueError(f"--arms: unknown {bad}; known: {list(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.output_dir)
    started = time.perf_counter()
    common = ["--preset", "tiny", "--quiet", "--set", "train.precision=fp32", "--set", "train.threads=1",
              "--set", f"train.epochs={args.epochs}", "--set", f"train.steps_per_epoch={args.steps}"]
    if args.cache_dir:
        common += ["--cache-dir", args.cache_dir]
    lt = load_task(TASK, cache_dir=args.cache_dir, quiet=True)
    alone_spec = subset_spec(lt, [PRIMARY], f"{PRIMARY}_only", out / "specs")
    alone_lt = load_task(alone_spec, quiet=True)

    def run(folder: Path, task: str, seed: int, sets: Sequence[str]) -> float:
        return train_unless_done(folder, [*common, "--tasks", task, "--seed", str(seed), *[a for s in sets for a in ("--set", s)]])

    alone = []
    for seed in seeds:
        run(out / f"alone_seed{seed}", str(alone_spec), seed, [])
        alone.append(accuracy(HighMMT.from_pretrained(out / f"alone_seed{seed}"), alone_lt, None, 0))
    results: dict[str, Any] = {"seeds": seeds, "epochs": args.epochs, "steps": args.steps, "alone": alone, "arms": {}}
    colearn = ["train.colearn.method=translation", f"train.colearn.primary={PRIMARY}", f"train.colearn.secondary={SECONDARY}"]
    print(f"primary alone: {format_mean_sd(alone, per_seed=True)}")
    for arm in arms:
        acc = []
        for seed in seeds:
            folder = out / f"{arm}_seed{seed}"
            run(folder, TASK, seed, [*colearn, *ARMS[arm]])
            acc.append(accuracy(load_predictor(folder), lt, [PRIMARY], 0))
        gains = np.array(acc) - np.array(alone)
        verdict = compare(acc, alone)
        results["arms"][arm] = {"accuracy": acc, "gains": gains.round(4).tolist(), "wins": int((gains > 0).sum()),
                                "mean_gain": float(gains.mean()), "verdict": verdict.verdict}
        print(f"{arm}: {format_mean_sd(acc, per_seed=True)}; gains {gains.round(3).tolist()}, {int((gains > 0).sum())} wins of "
              f"{len(seeds)}, mean {gains.mean():+.3f} ({verdict.verdict})")
    results["wall_s"] = time.perf_counter() - started
    results["machine"] = machine_info(torch.device("cpu"))
    print(f"{results['wall_s']:.0f} s; {hardware_line(results['machine'])}")
    write_json(out / "results.json", results)
    return results


if __name__ == "__main__":
    main()
