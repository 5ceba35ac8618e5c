"""Helpers shared by the test files (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

import train


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
