"""Non-parallel multitask schedules: which tasks contribute a batch at each optimizer step.

Each task is trained over its own subset of modalities; a schedule only decides the mix. An epoch
is ``steps`` optimizer steps. ``batches[t]`` is how many batches task t has per full pass of its data.

- ``highmmt``: HighMMT's schedule (paper B.5). Every step takes one batch of every *active* task and
  sums their weighted losses. The largest task runs alone first and smaller tasks join toward the
  end of the epoch: task t is active in the last ``min(steps, batches[t])`` steps. With very unequal
  sizes a tiny task would then see one batch per epoch; ``min_fraction`` keeps every task active
  in at least that fraction of the steps (0 = the paper's schedule exactly); a mapping gives each task its own
  (a task it does not name: 0).
- ``round_robin``: one task per step, cycling in a fixed order.
- ``size_proportional``: one task per step, drawn with probability proportional to its size.
- ``temperature``: one task per step, drawn with probability proportional to size ** (1 / T)
  (T = 1 is size-proportional, large T tends to uniform).

Schedules are pure functions of (sizes, steps, seed, epoch), so a resumed run replays them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from highmmt.registry import STRATEGIES

@dataclass(frozen=True)
class MultitaskSchedule:
    """A schedule: ``steps[i]`` lists the tasks that contribute a batch at step i."""

    steps: list[list[str]]

    def __len__(self) -> int:
        return len(self.steps)

    def batches_per_task(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for tasks in self.steps:
            for t in tasks:
                out[t] = out.get(t, 0) + 1
        return out


def _check(batches: Mapping[str, int], steps: int) -> None:
    if not batches:
        raise ValueError("a multitask schedule needs at least one task")
    if steps < 1:
        raise ValueError(f"steps per epoch must be >= 1, got {steps}")
    for t, n in batches.items():
        if n < 1:
            raise ValueError(f"task {t!r} has {n} batches; every task needs at least one")


@STRATEGIES.register("highmmt")
def highmmt_schedule(
    batches: Mapping[str, int], steps: int, seed: int = 0, epoch: int = 0, temperature: float = 1.0,
    min_fraction: float | Mapping[str, float] = 0.0
) -> MultitaskSchedule:
    _check(batches, steps)
    fractions = dict(min_fraction) if isinstance(min_fraction, Mapping) else {t: min_fraction for t in batches}
    for t, f in fractions.items():
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"min_fraction must be in [0, 1], got {f}" + (f" for task {t!r}" if isinstance(min_fraction, Mapping) else ""))
    floor = {t: int(round(fractions.get(t, 0.0) * steps)) for t in batches}
    active_from = {t: steps - min(steps, max(n, floor[t])) for t, n in batches.items()}
    order = sorted(batches, key=lambda t: (-batches[t], t))
    return MultitaskSchedule([[t for t in order if i >= active_from[t]] for i in range(steps)])


@STRATEGIES.register("round_robin")
def round_robin_schedule(batches: Mapping[str, int], steps: int, seed: int = 0, epoch: int = 0, temperature: float = 1.0, min_fraction: float = 0.0) -> MultitaskSchedule:
    _check(batches, steps)
    order = sorted(batches)
    offset = epoch * steps
    return MultitaskSchedule([[order[(offset + i) % len(order)]] for i in range(steps)])


def _sampled(batches: Mapping[str, int], steps: int, seed: int, epoch: int, power: float) -> MultitaskSchedule:
    _check(batches, steps)
    order = sorted(batches)
    sizes = np.array([batches[t] for t in order], dtype=np.float64) ** power
    rng = np.random.default_rng([seed, epoch, 7919])
    picks = rng.choice(len(order), size=steps, p=sizes / sizes.sum())
    return MultitaskSchedule([[order[i]] for i in picks])


@STRATEGIES.register("size_proportional")
def size_proportional_schedule(
    batches: Mapping[str, int], steps: int, seed: int = 0, epoch: int = 0, temperature: float = 1.0, min_fraction: float = 0.0
) -> MultitaskSchedule:
    return _sampled(batches, steps, seed, epoch, 1.0)


@STRATEGIES.register("temperature")
def temperature_schedule(
    batches: Mapping[str, int], steps: int, seed: int = 0, epoch: int = 0, temperature: float = 2.0, min_fraction: float = 0.0
) -> MultitaskSchedule:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _sampled(batches, steps, seed, epoch, 1.0 / temperature)


def make_schedule(
    name: str, batches: Mapping[str, int], steps: int, *, seed: int = 0, epoch: int = 0, temperature: float = 2.0,
    min_fraction: float | Mapping[str, float] = 0.0
) -> MultitaskSchedule:
    """Build the named schedule (see module docstring)."""
    return STRATEGIES.get(name)(batches, steps, seed=seed, epoch=epoch, temperature=temperature, min_fraction=min_fraction)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of every training run: linear warmup over ``warmup_steps`` (step i
    at (i + 1) / warmup of the peak), then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
