"""Training hooks: the points where training methods plug into ``train.py``'s loop.

Semi-supervised learning, co-learning and similar methods change *what* is learned (extra losses,
extra modules, a training set that grows) but not the loop itself. A method is a :class:`TrainHook`
subclass; ``train.py`` calls, in order:

1. ``setup(ctx, state)`` once, before the index streams are built. It may replace entries of
   ``ctx.loaded`` (e.g. keep a labeled subset of a training split). ``state`` is what
   ``state_dict()`` returned at the last checkpoint when the run is resumed, else ``None``.
2. ``modules()``: extra trainable modules (e.g. a translation decoder). Their parameters join the
   optimizer and their weights are saved with the trainer state (not in ``model.safetensors``).
3. per step and task: ``extra_loss(ctx, task, batch, outputs)``, added to the supervised loss.
4. per epoch, after the optimizer steps and before validation: ``end_epoch(ctx, epoch)``; it may
   replace ``ctx.loaded[task]`` (e.g. add pseudo-labeled rows); ``train.py`` then rebuilds the
   streams of tasks whose training split changed size. It returns rows for ``metrics.jsonl``.
5. ``eval_model(ctx)``: the module validation runs through (default: the model itself), e.g. an
   ensemble of two views.

The context carries no hidden globals: everything a hook may touch is on :class:`TrainContext`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class TrainContext:
    """What a hook sees. ``loaded`` maps task name -> ``tasks.cache.LoadedTask`` (replaceable)."""

    model: nn.Module
    loaded: dict[str, Any]
    run: Any  # highmmt.config.RunConfig
    device: torch.device
    seed: int
    out: Path
    log: Callable[[str], None] = print
    autocast: Callable[[], Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class TrainHook:
    """Base hook: every method is a no-op, subclasses override what they need."""

    name = "hook"

    def setup(self, ctx: TrainContext, state: dict[str, Any] | None) -> None:
        pass

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def extra_loss(self, ctx: TrainContext, task: str, batch: dict[str, Any], outputs: Tensor) -> Tensor | None:
        return None

    def end_epoch(self, ctx: TrainContext, epoch: int) -> list[dict[str, Any]]:
        return []

    def eval_model(self, ctx: TrainContext) -> nn.Module:
        return ctx.model

    def state_dict(self) -> dict[str, Any]:
        return {}


HookFactory = Callable[[Any], "TrainHook | None"]
_FACTORIES: list[HookFactory] = []


def register_hook_factory(factory: HookFactory) -> HookFactory:
    """``factory(run_config) -> TrainHook | None``; it returns None when its method is switched off."""
    _FACTORIES.append(factory)
    return factory


def build_hooks(run: Any) -> list[TrainHook]:
    """The hooks the run config switches on, in registration order."""
    hooks = [h for h in (f(run) for f in _FACTORIES) if h is not None]
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise ValueError(f"two training hooks share a name: {names}")
    return hooks
