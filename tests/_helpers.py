"""Helpers shared by the test files (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

import train

# Training runs in tests: tiny preset, fp32, one thread (deterministic on a given machine and torch).
FIXED = ["--preset", "tiny", "--quiet", "--set", "train.precision=fp32", "--set", "train.threads=1"]


@contextlib.contextmanager
def killed_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> Iterator[None]:
    """Inside the block, ``train.main`` dies (KeyboardInterrupt) right after checkpointing ``epoch``:
    a simulated kill; the block must raise it. The real checkpoint function is back afterwards."""
    real_save = train.save_trainer_state

    def save_then_die(out, model, optimizer, scheduler, state):
        real_save(out, model, optimizer, scheduler, state)
        if state["epoch"] == epoch:
            raise KeyboardInterrupt(f"simulated kill after the checkpoint of epoch {epoch}")

    monkeypatch.setattr(train, "save_trainer_state", save_then_die)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(train, "save_trainer_state", real_save)


@pytest.fixture
def fast_isolated_training(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No training-curve plots (a third of a tiny run; tests/test_train.py covers them). Process-wide
    state left as found: torch's thread count (``train.threads=1`` and the heterogeneity study set
    it), and accelerate's singleton state, which keeps the first run's mixed precision and refuses
    any other (these runs are fp32; another test file's ``precision=auto`` may have measured bf16).
    Use it with ``pytestmark = pytest.mark.usefixtures("fast_isolated_training")``."""
    monkeypatch.setattr(train, "_plot_curves", lambda history, path: None)
    threads = torch.get_num_threads()
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(threads)


def fit(out: Path, cache: Path, tasks: str, *extra: str, seed: int, epochs: int, steps: int) -> Path:
    """One tiny training run of ``tasks`` into ``out`` (:data:`FIXED` settings, ``epochs`` x ``steps``)."""
    train.main([*FIXED, "--tasks", tasks, "--output-dir", str(out), "--cache-dir", str(cache), "--seed", str(seed),
                "--set", f"train.epochs={epochs}", "--set", f"train.steps_per_epoch={steps}", *extra])
    return out
