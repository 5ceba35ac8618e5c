"""Each task's loss-gradient norm at initialisation, split into the heads' wide read-outs and the rest.

What a multitask step sums and clips (``train.grad_clip``): builds the preset's model on the suite's
tasks (or ``--tasks``) exactly as ``train.py`` does (the naive Bayes priors included when the config
asks for them), then, for each task, the gradient of its training loss (``train.TaskLoss``) on
``--batches`` random training batches, and reports the mean norm of the wide read-outs' gradient, of the
shared encoder's, and of everything else.

    python -m experiments.grad_norms --preset default [--set train.wide_prior=none ...] [--output norms.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

import train
from highmmt import HighMMT
from tasks.loader import collate_rows

PARTS = ("wide", "encoder", "rest")


def part_of(name: str) -> str:
    return "wide" if ".wide." in name else "encoder" if name.startswith("encoders.") else "rest"


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--tasks", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    targs = train.parse_args(["--preset", args.preset, "--seed", str(args.seed), "--quiet", "--cpu",
                              *(["--tasks", args.tasks] if args.tasks else []),
                              *[x for o in args.overrides for x in ("--set", o)]])
    run, names = train.resolve_run(targs)
    tc = run.train
    loaded, _ = train.load_tasks(targs, names, tc, Accelerator(cpu=True), lambda msg: None)
    torch.manual_seed(args.seed)
    model = HighMMT(train.model_config(run.model, [lt.spec for lt in loaded.values()]))
    if tc.wide_prior == "naive_bayes":
        train.fit_wide_priors(model, loaded, tc.wide_prior_alpha, lambda msg: None)
    loss_of = train.TaskLoss(model, tc)
    model.train()
    rng = np.random.default_rng(args.seed)
    norms: dict[str, dict[str, float]] = {}
    for task, lt in loaded.items():
        rows = len(lt.splits["train"])
        per_batch = []
        for _ in range(args.batches):
            batch = collate_rows(lt.splits["train"], rng.choice(rows, min(tc.batch_size, rows), replace=False), lt.spec)
            model.zero_grad(set_to_none=True)
            loss_of(batch, task).backward()
            squares = dict.fromkeys(PARTS, 0.0)
            for name, p in model.named_parameters():
                if p.grad is not None:
                    squares[part_of(name)] += float(p.grad.float().norm() ** 2)
            per_batch.append([squares[p] ** 0.5 for p in PARTS])
        norms[task] = dict(zip(PARTS, np.round(np.mean(per_batch, 0), 3).tolist()))
    print("| task | " + " | ".join(PARTS) + " |\n|---|" + "---|" * len(PARTS))
    for task, row in norms.items():
        print(f"| {task} | " + " | ".join(f"{row[p]:.3f}" for p in PARTS) + " |")
    if args.output:
        Path(args.output).write_text(json.dumps({"overrides": args.overrides, "norms": norms}, indent=1))
    return norms


if __name__ == "__main__":
    main()
