"""A neural network against trees on the very same features (docs/experiments.md, session 13).

Where the model misses a tree reference on a series task (UTD-MHAD, spec-file omniglot strokes,
PhysioNet), is the gap the model's, or one of neural networks on such features? This script fits, on
``baseline.py``'s own feature blocks (``tasks.features``: per-channel statistics by default) and the
task's own splits:

- per modality: a random forest, gradient boosting (``tasks.baselines``' models and settings) and a
  one-hidden-layer MLP (scikit-learn ``MLPClassifier``, 256 units, L2 ``alpha`` picked on the validation
  split from ``--alphas``, one fit per seed), each on the block standardised as ``baseline.py`` does
  (training medians for missing values, missing-value indicators);
- for a multimodal task, each family's late fusion (log-probabilities summed over the modalities).

Validation and test values per family (the MLP: mean ± sample SD over seeds). Classification tasks only.

    python -m experiments.stats_mlp --tasks utd_mhad --output results/stats_mlp/utd.json
    python -m experiments.stats_mlp --tasks path/to/spec.yaml --blocks stats,resampled --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

import tasks as task_registry  # noqa: F401  (registers the built-in tasks)
from benchmarks.common import format_mean_sd
from highmmt.checkpoint import atomic_write_json
from tasks.baselines import BaselineSettings, Design, _tree_model, extract_features, model_outputs, skip_reason
from tasks.cache import load_task
from tasks.loader import score

FAMILIES = ("rf", "gb", "mlp")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--tasks", required=True, help="comma-separated task names or spec files")
    p.add_argument("--blocks", default="stats", help="feature blocks per modality (tasks.features), comma-separated")
    p.add_argument("--seeds", default="0,1,2", help="MLP seeds")
    p.add_argument("--alphas", default="0.01,1.0", help="MLP L2 strengths tried, picked on validation")
    p.add_argument("--hidden", type=int, default=256, help="MLP hidden units")
    p.add_argument("--rf-trees", type=int, default=BaselineSettings().rf_trees, help="random forest trees (baseline.py's default)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--output", default=None, help="JSON file to write (default: print only)")
    return p.parse_args(argv)


def _metric(spec: Any, outputs: np.ndarray, y: np.ndarray) -> float:
    return float(score(spec, outputs, y)[spec.metric])


def _mlp(alpha: float, hidden: int, seed: int) -> Any:
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier((hidden,), alpha=alpha, max_iter=800, random_state=seed)


def fit_family(family: str, spec: Any, X: dict[str, np.ndarray], y: dict[str, np.ndarray], *, seed: int,
               alphas: Sequence[float], hidden: int, settings: BaselineSettings) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One model of ``family`` on the training rows -> its outputs on validation and test, and what was picked."""
    if family == "mlp":
        best: tuple[float, Any, float] | None = None
        for alpha in alphas:
            model = _mlp(alpha, hidden, seed).fit(X["train"], y["train"])
            value = _metric(spec, model_outputs(model, X["validation"], spec), y["validation"])
            if best is None or value > best[0]:
                best = (value, model, alpha)
        assert best is not None
        model, picked = best[1], {"alpha": best[2]}
    else:
        model, picked = _tree_model(family, spec, settings, len(y["train"])).fit(X["train"], y["train"]), {}
    return {s: model_outputs(model, X[s], spec) for s in ("validation", "test")}, picked


def run_task(lt: Any, *, blocks: Sequence[str], seeds: Sequence[int], alphas: Sequence[float], hidden: int,
             families: Sequence[str] = FAMILIES, settings: BaselineSettings = BaselineSettings()) -> dict[str, Any]:
    """Each family on each modality's blocks (and fused), on ``lt``'s own splits; ``settings``: the trees'
    (``baseline.py``'s defaults) and the thread limit for every fit."""
    spec = lt.spec
    if spec.task_type != "classification":
        raise ValueError(f"task {spec.name!r}: stats_mlp compares classifiers; its task_type is {spec.task_type!r}")
    with threadpool_limits(limits=settings.jobs):
        return _run_task(lt, blocks, seeds, alphas, hidden, families, settings)


def _run_task(lt: Any, blocks: Sequence[str], seeds: Sequence[int], alphas: Sequence[float], hidden: int,
              families: Sequence[str], settings: BaselineSettings) -> dict[str, Any]:
    spec = lt.spec
    started = time.perf_counter()
    feats = extract_features(lt)
    rows = feats.splits
    y = {s: feats.targets[rows[s]].astype(int) for s in ("train", "validation", "test")}
    outputs: dict[str, dict[str, list[dict[str, np.ndarray]]]] = {}
    result: dict[str, Any] = {"task": spec.name, "metric": spec.metric, "blocks": list(blocks), "seeds": list(seeds),
                              "modalities": {}}
    for m in spec.modalities:
        keys = [(m, b) for b in blocks if (m, b) in feats.blocks and feats.block_types[(m, b)] == "dense"]
        if not keys:
            continue
        design = Design(feats, keys).fit(rows["train"])
        X = {s: design.transform(rows[s]) for s in ("train", "validation", "test")}
        entry: dict[str, Any] = {"n_features": int(X["train"].shape[1])}
        for family in families:
            if skip_reason(family, spec, False, settings):
                continue
            runs = []
            for seed in (seeds if family == "mlp" else [settings.seed]):
                out, picked = fit_family(family, spec, X, y, seed=seed, alphas=alphas, hidden=hidden, settings=settings)
                runs.append(out)
                entry.setdefault(f"{family}_picked", []).append(picked)
            outputs.setdefault(family, {})[m] = runs
            entry[family] = {s: [_metric(spec, r[s], y[s]) for r in runs] for s in ("validation", "test")}
        result["modalities"][m] = entry
    if len(result["modalities"]) > 1:
        fused: dict[str, Any] = {}
        for family, per_modality in outputs.items():
            if len(per_modality) < 2:
                continue
            n = min(len(v) for v in per_modality.values())
            fused[family] = {s: [_metric(spec, sum(v[i][s] for v in per_modality.values()), y[s]) for i in range(n)]
                             for s in ("validation", "test")}
        result["late_fusion"] = fused
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def markdown(results: Sequence[dict[str, Any]]) -> str:
    lines = ["| task | part | features | family | validation | test |", "|---|---|---|---|---|---|"]
    fmt = lambda v: format_mean_sd(v, per_seed=len(v) > 1)  # noqa: E731
    for r in results:
        parts = [(m, e.get("n_features", "-"), e) for m, e in r["modalities"].items()]
        if "late_fusion" in r:
            parts.append(("late fusion", "-", r["late_fusion"]))
        for name, n, e in parts:
            for family in FAMILIES:
                if family in e:
                    lines.append(f"| {r['task']} | {name} | {n} | {family} | {fmt(e[family]['validation'])} | {fmt(e[family]['test'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    blocks = [b for b in args.blocks.split(",") if b]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    alphas = [float(a) for a in args.alphas.split(",") if a]
    results = []
    for name in [t for t in args.tasks.split(",") if t]:
        lt = load_task(name, data_root=args.data_root, cache_dir=args.cache_dir, quiet=True)
        results.append(run_task(lt, blocks=blocks, seeds=seeds, alphas=alphas, hidden=args.hidden,
                                settings=BaselineSettings(rf_trees=args.rf_trees)))
    if args.output:
        atomic_write_json(Path(args.output), {"command": ["experiments.stats_mlp", *(argv or [])], "results": results})
    print(markdown(results))
    return results


if __name__ == "__main__":
    from highmmt.cli import run_cli

    run_cli(main)
