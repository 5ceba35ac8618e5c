"""Check a task (a bring-your-own spec file or a suite task) against its data without training.

    python -m tasks.check my_task.yaml [--data-root DIR] [--cache-dir DIR] [--max-bad 20]

Loads the task as ``train.py`` would (so a bad spec fails with the same error naming the file and
key), prints what it inferred (modality kinds and options, classes, split sizes and class balance),
then reads every row of every split through the embedders' collate and reports each bad row by
split, dataset row and column: a missing value, a value that does not convert, a wrong shape or
channel count, NaN or infinity. Exit status 1 when a row is bad, 2 for a bad spec.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

import modalities  # noqa: F401  (registers the embedders)
import tasks as task_registry  # noqa: F401  (registers the built-in tasks)
from highmmt.registry import EMBEDDERS
from tasks.cache import LoadedTask, load_task, rows_to_samples

CHUNK = 256


def describe(lt: LoadedTask) -> list[str]:
    """What the task is, as loaded: kinds, options (stated or inferred), classes, splits."""
    spec = lt.spec
    lines = [f"task {spec.name!r} ({lt.source}): {spec.task_type}, target {spec.target!r}, metric {spec.metric}"
             + (f", {spec.num_classes} classes" if spec.num_classes else "")]
    for m, kind in spec.modalities.items():
        lines.append(f"  modality {m!r}: {kind} {dict(spec.modality_options.get(m, {}))}")
    for split, ds in lt.splits.items():
        line = f"  split {split!r}: {len(ds)} rows"
        if spec.task_type == "classification" and spec.target in ds.column_names and len(ds):
            counts = np.bincount(np.asarray(ds.with_format("arrow")[spec.target]).astype(np.int64), minlength=spec.num_classes or 0)
            names = spec.class_names or [str(i) for i in range(len(counts))]
            line += ", classes " + ", ".join(f"{n}: {c}" for n, c in zip(names, counts))
        lines.append(line)
    return lines


def _bad_in(kind: str, samples: list[Any], options: dict[str, Any]) -> str | None:
    """Why these samples cannot be fed to the embedder, or None."""
    for x in samples:
        for arr in (x.values() if isinstance(x, dict) else [x]):
            a = np.asarray(arr) if not isinstance(arr, str) else None
            if a is not None and np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                return "holds NaN or infinity"
    try:
        EMBEDDERS.get(kind).collate(samples, **options)
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def bad_rows(lt: LoadedTask, max_bad: int = 20) -> list[tuple[str, int, str, str]]:
    """(split, row, column, problem) of up to ``max_bad`` bad rows; chunks that fail are re-read row by row."""
    spec, found = lt.spec, []
    for split, ds in lt.splits.items():
        for start in range(0, len(ds), CHUNK):
            idx = list(range(start, min(start + CHUNK, len(ds))))
            if _chunk_problem(ds, idx, spec) is None:
                continue
            for row in idx:
                problem = _chunk_problem(ds, [row], spec)
                if problem is not None:
                    found.append((split, row, *problem))
                    if len(found) >= max_bad:
                        return found
    return found


def _chunk_problem(ds: Any, idx: list[int], spec: Any) -> tuple[str, str] | None:
    try:
        samples, _ = rows_to_samples(ds, idx, spec)
    except (ValueError, TypeError, KeyError) as e:
        return "-", str(e)
    for m, kind in spec.modalities.items():
        problem = _bad_in(kind, samples[m], dict(spec.modality_options.get(m, {})))
        if problem is not None:
            return m, problem
    return None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", help="a spec file (.yaml / .json) or a suite task name")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--max-bad", type=int, default=20, help="stop after this many bad rows")
    args = p.parse_args(argv)
    try:
        lt = load_task(args.task, data_root=args.data_root, cache_dir=args.cache_dir, quiet=True)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(describe(lt)))
    bad = bad_rows(lt, args.max_bad)
    for split, row, column, problem in bad:
        print(f"bad row: split {split!r}, row {row}, column {column!r}: {problem}")
    print(f"{len(bad)}{'+' if len(bad) >= args.max_bad else ''} bad row(s)" if bad else "every row reads")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
