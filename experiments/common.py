"""What the studies share: train a run folder unless it is finished (statistics, timing and report
helpers are in ``benchmarks/common.py``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path

import train


def train_unless_done(folder: Path, argv: Sequence[str], *, log: Path | None = None) -> float:
    """``train.main(argv)`` into ``folder`` unless it holds a finished run (``DONE``): a killed run
    resumes, anything else there is overwritten. ``log``: where its output is appended (None: not
    redirected). Returns the seconds spent training (0.0 when the run was finished before)."""
    if (folder / "DONE").exists():
        return 0.0
    resume = ["--resume"] if (folder / "trainer_state" / "state.pt").exists() else ["--overwrite"]
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with contextlib.ExitStack() as stack:
        if log is not None:
            f = stack.enter_context(open(log, "a"))
            stack.enter_context(contextlib.redirect_stdout(f))
            stack.enter_context(contextlib.redirect_stderr(f))
        train.main([*argv, "--output-dir", str(folder), *resume])
    return time.time() - started
