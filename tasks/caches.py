"""List and prune the parsed-data cache.

    python -m tasks.caches list  [--cache-dir DIR] [--data-root DIR]
    python -m tasks.caches prune [--cache-dir DIR] [--data-root DIR] [--older-than DAYS] [--dry-run]

Each built-in task is cached under ``<cache dir>/<task>-<key>`` (``tasks/cache.py``); a new source
file, option or ``CODE_VERSION`` makes a new folder and leaves the old one behind. ``list`` shows every
folder with its size, age and whether it is the current one for the task's default options and the
data root's files. ``prune`` removes the folders that are not current (a cache built with non-default
options counts as not current: pass ``--older-than`` to keep recent ones) and leftover temporary
build folders.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tasks as task_registry  # noqa: F401  (registers the built-in tasks)
from highmmt.registry import TASKS
from tasks.cache import cache_key, merge_options, resolve_cache_dir, resolve_data_root


@dataclass
class CacheFolder:
    path: Path
    task: str | None
    size: int
    age_days: float
    current: bool


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def scan(cache_dir: Path, data_root: Path) -> list[CacheFolder]:
    """Every task folder (and temporary build folder) in ``cache_dir``."""
    current: dict[str, str] = {}
    for name in TASKS.names():
        task = TASKS.get(name)
        if not hasattr(task, "source_files") or task.missing_files(data_root):
            continue
        current[name] = f"{name}-{cache_key(task, data_root, merge_options(task, {}))}"
    found = []
    now = time.time()
    for path in sorted(p for p in cache_dir.iterdir() if p.is_dir()) if cache_dir.is_dir() else []:
        task = next((n for n in TASKS.names() if path.name.startswith(f"{n}-") or path.name.startswith(f".{n}-")), None)
        if task is None:
            continue  # not a task cache (e.g. baselines/)
        found.append(CacheFolder(path, task, folder_size(path), (now - path.stat().st_mtime) / 86400,
                                 current.get(task) == path.name))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("list", "prune"))
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--older-than", type=float, default=0.0, help="prune: keep folders younger than this many days")
    p.add_argument("--dry-run", action="store_true", help="prune: say what would go, remove nothing")
    args = p.parse_args(argv)
    cache_dir, data_root = resolve_cache_dir(args.cache_dir), resolve_data_root(args.data_root)
    folders = scan(cache_dir, data_root)
    if args.action == "list":
        for f in folders:
            print(f"{f.path.name:45s} {f.size / 2**20:9.1f} MiB {f.age_days:7.1f} days  {'current' if f.current else 'old'}")
        print(f"{len(folders)} folder(s), {sum(f.size for f in folders) / 2**20:.1f} MiB in {cache_dir}")
        return 0
    gone = [f for f in folders if not f.current and f.age_days >= args.older_than]
    for f in gone:
        print(f"{'would remove' if args.dry_run else 'removing'} {f.path} ({f.size / 2**20:.1f} MiB)")
        if not args.dry_run:
            shutil.rmtree(f.path, ignore_errors=True)
    print(f"{len(gone)} folder(s), {sum(f.size for f in gone) / 2**20:.1f} MiB {'to free' if args.dry_run else 'freed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
