"""Fit the part weights of finished runs (``train.part_weights=validation``, which train.py does at the end of
training) for run folders trained before that step existed; then ``evaluate.py`` scores them with the weights.

    python -m experiments.part_weights --checkpoint results/s12/mhmt/seed0/multitask [--checkpoint ...]

Runs ``train.fit_run_part_weights`` on each folder (its tasks loaded as ``evaluate.py`` loads them) and
prints the fitted weights; ``part_weights.json`` in the folder records them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import evaluate
import train
from transference.config import TrainConfig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, help="a finished train.py run folder (repeatable)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {}
    for ckpt in map(Path, args.checkpoint):
        run_cfg = evaluate.read_run_config(ckpt)
        saved, default = run_cfg.get("train", {}), TrainConfig()
        tc = argparse.Namespace(**{k: saved.get(k, getattr(default, k)) for k in ("eval_batch_size", "max_eval_samples")})
        loaded = {name: evaluate.load_run_task(run_cfg, name, data_root=args.data_root, cache_dir=args.cache_dir, quiet=True)
                  for name in run_cfg["tasks"]}
        out[str(ckpt)] = train.fit_run_part_weights(ckpt, loaded, tc, print)
    return out


if __name__ == "__main__":
    main()
