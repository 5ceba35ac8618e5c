"""The method protocol: the points where a training method plugs into ``train.py`` and ``evaluate.py``.

Fine-tuning policies, semi-supervised learning, co-learning and similar methods change *what* is
learned (frozen parts, extra heads, extra losses, extra modules, a training set that grows) but not
the loop. A method is a :class:`TrainHook` subclass whose factory is registered with
:func:`register_hook_factory` and returns a hook when the run config switches the method on; the
scripts never name a method. ``train.py`` calls, in order:

1. ``check_run(run, init_from=, overrides=, log=)`` before any data is parsed: fail fast, or return the run
   config changed (e.g. the model's widths taken from the ``--init-from`` checkpoint).
2. ``model_config(cfg, specs)``: the model config the method needs (e.g. one head per view).
3. ``prepare_model(ctx)`` once the model is built: load weights, freeze parts, add adapters; returns
   entries for the run's ``config.json``.
4. ``setup(ctx, state)`` once, before the index streams are built. It may replace entries of
   ``ctx.loaded`` (e.g. keep a labeled subset of a training split). ``state`` is what
   ``state_dict()`` returned at the last checkpoint when the run is resumed, else ``None``.
5. ``modules()``: extra trainable modules (e.g. a translation decoder). Their parameters join the
   optimizer and their weights are saved with the trainer state (not in ``model.safetensors``).
   ``lr_scales(model)``: per-parameter learning-rate factors (e.g. layer-wise decay).
6. per step and task: ``training_inputs(task, inputs)``: the inputs the model's forward gets (e.g.
   a modality withheld); then ``extra_loss(ctx, task, batch, outputs)``, added to the supervised loss;
   ``ctx.latents`` holds the latents {modality: [b, l, d]} of the forward that made ``outputs``.
7. per epoch, after the optimizer steps and before validation: ``end_epoch(ctx, epoch)``; it may
   replace ``ctx.loaded[task]`` (e.g. add pseudo-labeled rows); ``train.py`` then rebuilds the
   streams of tasks whose training split changed size. It returns rows for ``metrics.jsonl``.
8. ``eval_model(ctx)``: the module validation runs through (default: the model itself), e.g. an
   ensemble of two views. ``export_weights(model, state)``: the weights written as
   ``model.safetensors`` (e.g. LoRA merged into the base weights).

``evaluate.py`` builds the same hooks from a finished run's ``config.json`` (:func:`hooks_for_run`)
and calls ``predictor(...)`` (what the run predicts with) and ``task_metrics(...)`` (extra test
figures of one task).

The context carries no hidden globals: everything a hook may touch is on :class:`TrainContext`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from highmmt.config import HighMMTConfig, from_dict
from transference.config import RunConfig, TrainConfig


@dataclass
class TrainContext:
    """What a hook sees. ``loaded`` maps task name -> ``tasks.cache.LoadedTask`` (replaceable)."""

    model: nn.Module
    loaded: dict[str, Any]
    run: Any  # transference.config.RunConfig
    device: torch.device
    seed: int
    out: Path
    log: Callable[[str], None] = print
    autocast: Callable[[], Any] | None = None
    init_from: str | Path | None = None  # --init-from: the checkpoint the model starts from
    latents: dict[str, Tensor] | None = None  # during extra_loss: the latents of the forward that made ``outputs``
    extra: dict[str, Any] = field(default_factory=dict)


class TrainHook:
    """Base hook: every method is a no-op, subclasses override what they need."""

    name = "hook"

    # ---- training (train.py) ----
    def check_run(self, run: Any, *, init_from: str | Path | None, overrides: Sequence[str], log: Callable[[str], None]) -> Any:
        return run

    def model_config(self, cfg: HighMMTConfig, specs: Sequence[Any]) -> HighMMTConfig:
        return cfg

    def prepare_model(self, ctx: TrainContext) -> dict[str, Any]:
        return {}

    def setup(self, ctx: TrainContext, state: dict[str, Any] | None) -> None:
        pass

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        return {}

    def training_inputs(self, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return inputs

    def extra_loss(self, ctx: TrainContext, task: str, batch: dict[str, Any], outputs: Tensor) -> Tensor | None:
        return None

    def end_epoch(self, ctx: TrainContext, epoch: int) -> list[dict[str, Any]]:
        return []

    def eval_model(self, ctx: TrainContext) -> nn.Module:
        return ctx.model

    def export_weights(self, model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return state

    def state_dict(self) -> dict[str, Any]:
        return {}

    # ---- a finished run (evaluate.py) ----
    def predictor(self, model: nn.Module, run_dir: Path, run_config: Mapping[str, Any], device: torch.device) -> nn.Module | None:
        """The module the run predicts with instead of ``model`` (None: ``model``)."""
        return None

    def task_metrics(self, model: nn.Module, spec: Any, dataset: Any, *, run_dir: Path, run_config: Mapping[str, Any],
                     device: torch.device, batch_size: int, limit: int) -> dict[str, float]:
        """Extra test figures of task ``spec`` on ``dataset`` (added to its metrics)."""
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


def hooks_for_run(run_config: Mapping[str, Any]) -> list[TrainHook]:
    """The hooks of a finished run, from its ``config.json`` (``model`` and ``train`` sections)."""
    run = RunConfig(model=HighMMTConfig.from_dict(run_config.get("model", {})),
                    train=from_dict(TrainConfig, run_config.get("train", {}), prefix="train."))
    return build_hooks(run)


def run_predictor(model: nn.Module, ckpt: Path, run_config: Mapping[str, Any], device: torch.device,
                  methods: Sequence[TrainHook] | None = None) -> nn.Module:
    """What a finished run predicts with: ``model``, or the module one of its training methods puts in its place
    (:meth:`TrainHook.predictor`: a co-training run's views, ...). ``evaluate.py``, ``predict.py`` and
    ``experiments.ensemble`` all score through it."""
    methods = hooks_for_run(run_config) if methods is None else methods
    predictors = [p for p in (h.predictor(model, ckpt, run_config, device) for h in methods) if p is not None and p is not model]
    if len(predictors) > 1:
        raise ValueError(f"{ckpt}: two training methods replace the predictor: {[h.name for h in methods]}")
    return predictors[0] if predictors else model


# ---- a finished run folder ----------------------------------------------------------------------
HOOK_WEIGHTS = "hooks.safetensors"  # the hooks' modules, saved beside the best model.safetensors


def saved_section(run_dir: Path, cls: type, section: str) -> Any:
    """A run folder's ``train.<section>`` settings (from its ``config.json``) as ``cls``."""
    raw = json.loads((Path(run_dir) / "config.json").read_text())
    return from_dict(cls, raw.get("train", {}).get(section, {}), prefix=f"train.{section}.")


def load_hook_modules(run_dir: Path, modules: nn.Module, hook_name: str, what: str) -> None:
    """Load ``modules`` in place from the run folder's :data:`HOOK_WEIGHTS` (the entries under
    ``hook_name``); ``what`` names them in the error when the file is missing."""
    from highmmt.checkpoint import load_weights

    path = Path(run_dir) / HOOK_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {HOOK_WEIGHTS} ({what} saved with the best weights)")
    prefix = hook_name + "."
    modules.load_state_dict({k[len(prefix):]: v for k, v in load_weights(path).items() if k.startswith(prefix)})
