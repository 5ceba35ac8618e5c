"""The entry-point wrapper of every command-line script (train, evaluate, baseline, predict, studies)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def run_cli(main: Callable[[], Any]) -> None:
    """Run ``main()``; a user error (bad flag value, missing file, bad data) prints one line and exits 2."""
    try:
        main()
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
