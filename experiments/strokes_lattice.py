"""Omniglot strokes: how much of the alphabet is in the coordinates' lattice (docs/byo-accuracy.md).

The publisher's pen coordinates lie on a lattice whose step differs by alphabet (the drawing canvas was
scaled per alphabet before the points were stored), so the step of a drawing's x values alone names most
alphabets, and trees on statistics such as min(x) find it through exact values. This script measures, on
each spec-file strokes task given (the plain export and ``byo_omniglot_strokes_px``, whose x and y are
snapped to the glyph's 105-pixel grid):

- per alphabet, the most common value over its training drawings of a drawing's step (the smallest gap
  between its distinct x values);
- a decision tree on that one number (validation / test accuracy);
- gradient boosting (``baseline.py``'s model settings, on the raw statistics: no imputation or scaling, so
  within 0.01 of ``baseline.py``'s ``stats_gb``) on min(x) alone and on all per-channel statistics
  (``tasks.features.series_stats``), validation / test accuracy.

    python -m experiments.strokes_lattice --specs WORK/byo_omniglot_strokes/spec.yaml,WORK/byo_omniglot_strokes_px/spec.yaml \\
        --output results/strokes_lattice.json
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import run_cli
from highmmt.checkpoint import atomic_write_json
from tasks.baselines import BaselineSettings, _tree_model
from tasks.features import STAT_NAMES, series_stats

SPLITS = ("train", "validation", "test")


def coordinate_step(series: np.ndarray, channel: int = 0) -> float:
    """The smallest gap between a series' distinct values of one channel (rounded to 1e-5); NaN if none."""
    values = np.unique(np.round(series[:, channel].astype(np.float64), 5))
    gaps = np.diff(values)
    gaps = gaps[gaps > 1e-4]
    return float(gaps.min()) if len(gaps) else float("nan")


def load_spec_series(spec_file: Path) -> tuple[Any, dict[str, tuple[list[np.ndarray], np.ndarray]]]:
    """(the task spec, {split: (series [t, c] per row, class indices)}) of a classification spec file with one
    timeseries column, read by the spec loader (``tasks.byo``: its formats, split names and checks)."""
    from tasks.byo import load_byo_spec

    spec, splits = load_byo_spec(spec_file)
    columns = [c for c, kind in spec.modalities.items() if kind == "timeseries"]
    if len(columns) != 1 or spec.task_type != "classification":
        raise ValueError(f"{spec_file}: expected a classification task with one timeseries column, got "
                         f"{spec.task_type} with timeseries columns {columns}")
    out = {}
    for split in SPLITS:
        rows = splits[split].with_format("numpy")
        series = [np.asarray(v, dtype=np.float64).reshape(len(v), -1) for v in rows[columns[0]]]
        out[split] = (series, np.asarray(rows[spec.target], dtype=np.int64))
    return spec, out


def measure(spec_file: Path) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score
    from sklearn.tree import DecisionTreeClassifier

    spec, data = load_spec_series(spec_file)
    y = {s: data[s][1] for s in SPLITS}
    step = {s: np.nan_to_num(np.array([coordinate_step(x) for x in data[s][0]]), nan=-1.0)[:, None] for s in SPLITS}
    per_class = {}
    for c in np.unique(y["train"]):
        counts = Counter(np.round(step["train"][y["train"] == c, 0], 4).tolist())
        (value, n), = counts.most_common(1)
        per_class[int(c)] = {"step": value, "share": n / int((y["train"] == c).sum())}
    tree = DecisionTreeClassifier(random_state=0).fit(step["train"], y["train"])
    stats = {s: np.stack([series_stats(x) for x in data[s][0]]) for s in SPLITS}
    x_min = STAT_NAMES.index("min")  # channel 0 comes first (channel-major)

    def boosted(cols: Any) -> dict[str, float]:
        model = _tree_model("gb", spec, BaselineSettings(), len(y["train"]))
        model.fit(stats["train"][:, cols], y["train"])
        return {s: float(accuracy_score(y[s], model.predict(stats[s][:, cols]))) for s in ("validation", "test")}

    return {
        "spec": str(spec_file),
        "rows": {s: len(y[s]) for s in SPLITS},
        "x_step_by_class": per_class,
        "tree_on_x_step": {s: float(tree.score(step[s], y[s])) for s in ("validation", "test")},
        "gb_on_min_x": boosted([x_min]),
        "gb_on_all_stats": boosted(slice(None)),
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--specs", required=True, help="comma-separated spec files of strokes tasks")
    p.add_argument("--output", default=None, help="JSON file to write (default: print only)")
    args = p.parse_args(argv)
    results = []
    with threadpool_limits(1):
        for f in args.specs.split(","):
            r = measure(Path(f))
            results.append(r)
            print(f"{f}: tree on the x step {r['tree_on_x_step']}, GB on min(x) {r['gb_on_min_x']}, "
                  f"GB on all statistics {r['gb_on_all_stats']}", flush=True)
            print("  x step by class: " + ", ".join(f"{c}: {v['step']} ({v['share']:.0%})" for c, v in r["x_step_by_class"].items()))
    if args.output:
        atomic_write_json(args.output, results)
    return results


if __name__ == "__main__":
    run_cli(main)
