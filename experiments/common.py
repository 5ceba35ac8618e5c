"""What the studies share: train a run folder unless it is finished (statistics, timing and report
helpers are in ``benchmarks/common.py``)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import train
from tasks.cache import load_task

ROOT = Path(__file__).resolve().parents[1]


def task_modalities(task_names: Sequence[str], data_root: str | None, cache_dir: str | None) -> dict[str, list[str]]:
    """Task (as named: a built-in name or a spec file's path) -> its modalities, from the loaded specs
    (a built-in task loads from its cache)."""
    return {t: list(load_task(t, data_root=data_root, cache_dir=cache_dir, quiet=True).spec.modalities) for t in task_names}


def train_unless_done(folder: Path, argv: Sequence[str], *, log: Path | None = None, threads: int | None = None) -> float:
    """``train.py argv`` into ``folder`` unless it holds a finished run (``DONE``): a killed run
    resumes, anything else there is overwritten. Returns the seconds spent training (0.0 when the
    run was finished before).

    Args:
        log: where the run's output is appended (None: not redirected).
        threads: None trains in this process; a number trains in a subprocess with that many
            OpenMP threads (0: the default), so that several runs can share the CPU.
    Raises:
        RuntimeError: the subprocess failed; the message names the log.
    """
    if (folder / "DONE").exists():
        return 0.0
    resume = ["--resume"] if (folder / "trainer_state" / "state.pt").exists() else ["--overwrite"]
    folder.mkdir(parents=True, exist_ok=True)
    argv = [*argv, "--output-dir", str(folder), *resume]
    started = time.time()
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "a")) if log is not None else None
        if threads is not None:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else dict(os.environ)
            done = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], env=env, cwd=ROOT, stdout=out,
                                  stderr=subprocess.STDOUT if out is not None else None)
            if done.returncode != 0:
                raise RuntimeError(f"training {folder} failed (exit {done.returncode}); see {log or 'the output above'}")
        else:
            if out is not None:
                stack.enter_context(contextlib.redirect_stdout(out))
                stack.enter_context(contextlib.redirect_stderr(out))
            train.main(argv)
    return time.time() - started


def write_doc_section(path: Path, begin: str, end: str, text: str, *, append: bool = True) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` of the markdown file ``path`` with
    ``text``, so that a study regenerates its table inside a hand-written page.

    Args:
        append: where the markers are missing, append them with ``text`` (the file is created when
            it does not exist); False makes that an error naming the file and the markers.
    Raises:
        ValueError: the markers are missing and ``append`` is False.
    """
    block = f"{begin}\n{text.strip()}\n{end}"
    old = path.read_text() if path.is_file() else ""
    if begin in old and end in old.split(begin, 1)[1]:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    elif append:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block + "\n"
    else:
        raise ValueError(f"{path}: no block between {begin!r} and {end!r} to replace")
    path.write_text(new)


def loop_seconds(run_dir: Path) -> float:
    """The training loop's seconds from a finished run's DONE file ("... steps in 123s")."""
    match = re.search(r" in (\d+(?:\.\d+)?)s", (run_dir / "DONE").read_text()) if (run_dir / "DONE").exists() else None
    return float(match.group(1)) if match else float("nan")


def data_flags(args: object) -> list[str]:
    """``train.py``'s ``--data-root`` / ``--cache-dir`` arguments from a study's parsed arguments
    (each left out when unset)."""
    return [a for flag, value in (("--data-root", getattr(args, "data_root", None)), ("--cache-dir", getattr(args, "cache_dir", None)))
            if value for a in (flag, value)]


def doc_markers(section: str) -> tuple[str, str]:
    """The begin / end markers of a page's ``section`` that a study's ``--doc`` rewrites."""
    return f"<!-- {section}:begin -->", f"<!-- {section}:end -->"


def publish(table: str, doc: str, section: str) -> None:
    """Print a study's table and, with ``--doc``, write it into that page between ``section``'s markers."""
    if doc:
        write_doc_section(Path(doc), *doc_markers(section), table)
    print(table)
