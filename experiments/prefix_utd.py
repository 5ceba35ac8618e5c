"""Prefix tuning on real data (Frozen): a frozen UTD-MHAD skeleton model learns to read the wrist IMU.

    HIGHMMT_DATA=../shared/data python -m experiments.prefix_utd                  # ~45 CPU-minutes, 1 thread
    python -m experiments.prefix_utd --seeds 0 --fractions 0.2 --lrs 0.003        # a quick look

Frozen (Tsimpoukelli et al. 2021) keeps a trained language model frozen and trains a vision encoder
whose output becomes k prefix embeddings in front of the text. Here, on UTD-MHAD's 27 actions:

1. **source**: a ``train.py`` run (``--preset``) on ``utd_skeleton``, UTD-MHAD read through the
   skeleton only (a bring-your-own spec over the parsed cache, written to ``OUT/specs``).
2. **target**: ``utd_inertial``, the same actions and split read through the wrist IMU only, a
   modality the source never saw. ``experiments.transfer`` (``--init-from`` the source) compares
   training from scratch with ``full``, ``embedders_head``, ``lora`` and ``prefix`` fine-tuning at
   each ``--fractions`` of the training labels, ``--seeds`` each. ``prefix``: the whole source stays
   frozen, its skeleton head included (the classes are the same), and a new IMU embedder writes
   ``--prefix-tokens`` tokens that are the skeleton's whole token sequence (the target has no
   skeleton input). Without the prefix the frozen source cannot read the IMU at all.

``--lrs`` is a learning-rate grid for ``--lr-methods``; each cell reports the lr with the best mean
validation score over seeds. UTD-MHAD has 323 training rows and 27 classes: every fraction keeps at
least one row per class, so 1% and 5% are the same 27 rows (5% is run). Writes ``OUT/transfer.{json,md,png}``
(see ``experiments.transfer``) and, with ``--doc``, the table between the ``prefix-utd`` markers of that file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import run_cli
from experiments import transfer
from experiments.colearn import subset_spec
from experiments.common import data_flags, train_unless_done
from tasks.cache import load_task

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="short", help="the preset of every run (default: short, the default preset when the study was run)")
    p.add_argument("--fractions", default="0.05,0.2,1.0")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--policies", default="full,embedders_head,lora,prefix")
    p.add_argument("--lrs", default="0.001,0.003", help="learning-rate grid (chosen on validation), for --lr-methods")
    p.add_argument("--lr-methods", default="scratch,full,prefix")
    p.add_argument("--prefix-tokens", type=int, default=2)
    p.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every target run (after train.epochs=10, steps_per_epoch=60, warmup_steps=30)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output-dir", default=str(ROOT / "experiments" / "results" / "prefix_utd"))
    p.add_argument("--doc", default="", help="markdown file whose prefix-utd section is rewritten ('' = none)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.output_dir)
    utd = load_task("utd_mhad", data_root=args.data_root, cache_dir=args.cache_dir, quiet=True)
    source_spec = subset_spec(utd, ["skeleton"], "utd_skeleton", out / "specs")
    target_spec = subset_spec(utd, ["inertial"], "utd_inertial", out / "specs")
    source = out / "source"
    paths = data_flags(args)
    train_unless_done(source, ["--preset", args.preset, "--tasks", str(source_spec), "--seed", "0", "--quiet",
                               "--set", f"train.threads={args.threads}", *paths], log=out / "source.log")
    finetune = ["train.epochs=10", "train.steps_per_epoch=60", "train.warmup_steps=30", *args.finetune_set]
    results = transfer.main([
        "--target-tasks", str(target_spec), "--init-from", str(source), "--fractions", args.fractions, "--seeds", args.seeds,
        "--policies", args.policies, "--prefix-host", "skeleton", "--prefix-head", "reuse", "--prefix-tokens", str(args.prefix_tokens),
        "--layer-decay", "1", "--lrs", args.lrs, "--lr-methods", args.lr_methods, "--preset", args.preset, "--threads", str(args.threads),
        "--output-dir", str(out), "--doc", args.doc, "--doc-section", "prefix-utd", *[a for o in finetune for a in ("--finetune-set", o)], *paths,
    ])
    return results


if __name__ == "__main__":
    run_cli(main)
