"""Co-learning: one modality helps another during training; at test time one may be missing.

Two training hooks (``transference.hooks``), switched on by ``train.colearn`` (:class:`ColearnConfig`):

- ``translation`` (Pham et al. 2019, MCTN): a :class:`Translator` maps the primary modality's latents
  to the secondary's (normalised MSE against the secondary's latents, detached by default so the
  two encoders cannot meet by collapsing), and with ``cyclic`` a second one maps the translation
  back to the primary's latents. ``translation_loss=centered_mse`` takes the batch mean out of that
  MSE (:func:`centered_mse`), so the loss is about what differs from sample to sample. With ``missing_slot=translation`` the task head also learns to read
  [primary, translated secondary], which is what it reads at test time when only the primary is given.
- ``contrastive`` (CLIP / ALIGN): the two modalities' pooled latents are projected and aligned by a
  symmetric InfoNCE loss at a fixed temperature (a coordinated representation). With
  ``supervise_secondary=false`` the secondary never enters the supervised forward, so its labels
  are never used; :func:`class_prototypes` + :func:`nearest_prototype` then classify the secondary
  through prototypes built from labeled primary examples: cross-modal label transfer. It is not
  zero-shot learning (Socher et al. 2013 classify classes never seen in training): every class is
  seen in training, only through the other modality's labels.

Letters: b batch, l latents, d width, p projection width, c classes, n examples.

The hook reads the latents of the supervised forward (a forward pre-hook on ``model.fusion``), so
co-learning adds no second encoding of a modality already encoded. Its modules (translators,
projections) are trained with the model, saved in the trainer state and, beside the best
``model.safetensors``, in ``hooks.safetensors``; :func:`load_predictor` rebuilds the primary-only
predictor from a run folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor, nn

from highmmt.config import HighMMTConfig
from highmmt.heads import task_loss
from highmmt.layers import CrossBlock
from highmmt.model import HighMMT, _key
from tasks.loader import predict, score
from transference.config import ColearnConfig
from transference.hooks import TrainContext, TrainHook, load_hook_modules, register_hook_factory, saved_section

HOOK_NAME = "colearn"


# ---- losses and cross-modal label transfer ------------------------------------------------------
def normalized_mse(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """MSE divided by the target's variance (detached): 1.0 for predicting the target's mean, scale-free."""
    if pred.shape != target.shape:
        raise ValueError(f"normalized_mse needs pred and target of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return F.mse_loss(pred.float(), target.float()) / target.detach().float().var().clamp_min(eps)


def centered_mse(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """:func:`normalized_mse` in two parts: the per-sample deviations from the batch mean (normalized by
    the target's deviations), plus the batch mean's error (normalized by the target's variance).

    pred, target [b, ...] -> a scalar: 1.0 + 0.0 for a translation that gets the batch mean right and
    ignores its input; 0.0 for a perfect one. Why: much of an encoder's latent values does not depend on
    the sample (the latents differ by position whatever the input); with :func:`normalized_mse` a decoder
    lowers the loss a long way by learning that part alone, and the part that carries the secondary's
    information about the sample gets a small share of the gradient.
    """
    if pred.shape != target.shape or pred.ndim < 2:
        raise ValueError(f"centered_mse needs pred and target [b, ...] of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.float(), target.float()
    pred_mean, target_mean = pred.mean(dim=0), target.mean(dim=0)
    deviations = target - target_mean
    spread = deviations.detach().pow(2).mean().clamp_min(eps)
    return F.mse_loss(pred - pred_mean, deviations) / spread + F.mse_loss(pred_mean, target_mean) / target.detach().var().clamp_min(eps)


TRANSLATION_LOSS_FNS = {"normalized_mse": normalized_mse, "centered_mse": centered_mse}


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """CLIP's symmetric InfoNCE: row i of ``a`` [b, p] and row i of ``b`` [b, p] are the positive pair.

    ``log(b)`` for unrelated features, towards 0 for aligned ones.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"info_nce needs two [b, p] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    logits = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def class_prototypes(embeddings: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Unit-norm mean embedding per class: embeddings [n, p], labels [n] -> prototypes [c, p]."""
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"class_prototypes needs embeddings [n, p] and labels [n], got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
    labels = labels.long()
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"class_prototypes: no example of class(es) {missing} among {len(labels)} labeled examples")
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=torch.float32, device=embeddings.device)
    sums.index_add_(0, labels, F.normalize(embeddings.float(), dim=-1))
    return F.normalize(sums, dim=-1)


def nearest_prototype(embeddings: Tensor, prototypes: Tensor) -> Tensor:
    """Class of the most cosine-similar prototype: embeddings [n, p], prototypes [c, p] -> [n]."""
    if embeddings.ndim != 2 or prototypes.ndim != 2 or embeddings.shape[1] != prototypes.shape[1]:
        raise ValueError(f"nearest_prototype needs [n, p] and [c, p], got {tuple(embeddings.shape)} and {tuple(prototypes.shape)}")
    return (F.normalize(embeddings.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).T).argmax(dim=-1)


# ---- modules -----------------------------------------------------------------------------------
class Translator(nn.Module):
    """Perceiver-style decoder: learned queries cross-attend to source latents.

    Args:
        dim: latent width d. num_latents: output latents l. depth: CrossBlocks. heads, dim_head, mlp_mult: block sizes.

    Shapes: source [b, l_src, d] -> [b, l, d] (LayerNorm'd, like the encoder's latents, then a linear map).
    """

    def __init__(self, *, dim: int, num_latents: int, depth: int = 1, heads: int = 4, dim_head: int = 32, mlp_mult: int = 2) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.blocks = nn.ModuleList(CrossBlock(dim=dim, heads=heads, dim_head=dim_head, mlp_mult=mlp_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, source: Tensor) -> Tensor:
        x = repeat(self.queries.to(source.dtype), "l d -> b l d", b=source.shape[0])
        for block in self.blocks:
            x = block(x, source)
        return self.to_out(self.norm(x))


def build_modules(cfg: ColearnConfig, model_cfg: HighMMTConfig) -> nn.ModuleDict:
    """The trainable co-learning modules for ``cfg`` (empty when there is nothing to learn)."""
    d, enc = model_cfg.dim, model_cfg.encoder
    mods = nn.ModuleDict()
    if cfg.method == "translation":
        make = lambda: Translator(dim=d, num_latents=enc.num_latents, depth=cfg.decoder_depth, heads=enc.heads,  # noqa: E731
                                  dim_head=enc.dim_head, mlp_mult=enc.mlp_mult)
        if cfg.weight > 0 or resolved_slot(cfg) == "translation":
            mods["to_secondary"] = make()
        if cfg.cyclic and cfg.weight > 0:
            mods["to_primary"] = make()
    elif cfg.method == "contrastive":
        p = cfg.proj_dim or d
        mods["project"] = nn.ModuleDict({"primary": nn.Linear(d, p), "secondary": nn.Linear(d, p)})
    return mods


def resolved_slot(cfg: ColearnConfig) -> str:
    """``missing_slot`` with ``auto`` resolved (translation for the translation method, else none)."""
    if cfg.missing_slot != "auto":
        return cfg.missing_slot
    return "translation" if cfg.method == "translation" else "none"


def target_tasks(cfg: ColearnConfig, model_cfg: HighMMTConfig) -> list[str]:
    """Tasks co-learning applies to; a modality or task that does not fit is a clear error."""
    known = sorted(model_cfg.modalities)
    for role, m in (("primary", cfg.primary), ("secondary", cfg.secondary)):
        if m not in model_cfg.modalities:
            raise ValueError(f"train.colearn.{role}={m!r} is not a modality of the trained tasks; known: {known}")
    if cfg.tasks:
        for t in cfg.tasks:
            if t not in model_cfg.tasks:
                raise ValueError(f"train.colearn.tasks names task {t!r}, which is not being trained ({sorted(model_cfg.tasks)})")
            mods = model_cfg.tasks[t].modalities
            for role, m in (("primary", cfg.primary), ("secondary", cfg.secondary)):
                if m not in mods:
                    raise ValueError(f"train.colearn: task {t!r} does not read the {role} modality {m!r}; it reads {mods}")
        return list(cfg.tasks)
    found = [t for t, tc in model_cfg.tasks.items() if cfg.primary in tc.modalities and cfg.secondary in tc.modalities]
    if not found:
        raise ValueError(f"train.colearn: no trained task reads both {cfg.primary!r} and {cfg.secondary!r}; "
                         f"tasks and their modalities: { {t: tc.modalities for t, tc in model_cfg.tasks.items()} }")
    return found


class ColearnPredictor(nn.Module):
    """The test-time path without the secondary modality, as a drop-in model: ``forward(inputs, task)``.

    For a co-learning task the secondary is dropped from ``inputs`` (if given) and its slot holds
    the translation of the primary's latents (``missing_slot=translation``) or zeros; other tasks
    go through the model unchanged.

    Args:
        model: the trained HighMMT. modules: :func:`build_modules`' output (trained). cfg: the co-learning config.
    """

    def __init__(self, model: HighMMT, modules: nn.ModuleDict, cfg: ColearnConfig, tasks: Iterable[str]) -> None:
        super().__init__()
        self.model = model
        self.colearn = modules
        self.cfg = cfg
        self.tasks = list(tasks)

    def forward(self, inputs: Mapping[str, Any], task: str) -> Tensor:
        """inputs {modality: tensor | batch dict} -> outputs [b, c]."""
        if task not in self.tasks:
            return self.model(inputs, task)
        cfg, model = self.cfg, self.model
        if cfg.primary not in inputs:
            raise ValueError(f"task {task!r}: the co-learning predictor needs the primary modality {cfg.primary!r}; got {sorted(inputs)}")
        order = model.config.tasks[task].modalities
        # as in HighMMT.encode (representation tuning after or inside the encoder, prefixes), without the secondary
        present = {m: v for m, v in inputs.items() if m != cfg.secondary}
        latents = model.latents(present, task)
        if resolved_slot(cfg) == "translation":
            latents[cfg.secondary] = self.colearn["to_secondary"](latents[cfg.primary])
        return model.head(task, model.fusion(latents, order, _key(task)), present, latents)


# ---- the training hook -------------------------------------------------------------------------
class ColearnHook(TrainHook):
    """Adds the co-learning loss to each step of the configured tasks (see the module docstring).

    Args:
        cfg: the run's ``train.colearn``.
    """

    name = HOOK_NAME

    def __init__(self, cfg: ColearnConfig) -> None:
        self.cfg = cfg
        self.tasks: list[str] = []
        self._modules = nn.ModuleDict()
        self._predictor: ColearnPredictor | None = None  # evaluate.py: the primary-only path
        self._parts: dict[str, dict[str, list[float]]] = {}

    def task_metrics(self, model: nn.Module, spec: Any, dataset: Any, *, run_dir: Path, run_config: Mapping[str, Any],
                     device: torch.device, batch_size: int, limit: int) -> dict[str, float]:
        """``<metric>_without_<secondary>``: the task scored with the secondary modality missing (its slot
        translated or zero)."""
        if self._predictor is None:
            self._predictor = load_predictor(run_dir, map_location=device, model=model)
        if spec.name not in self._predictor.tasks:
            return {}
        kept = [m for m in spec.modalities if m != self.cfg.secondary]
        without = score(spec, *predict(self._predictor, dataset, spec, batch_size=batch_size, limit=limit, device=device, modalities=kept))
        return {f"{spec.metric}_without_{self.cfg.secondary}": without[spec.metric]}

    # -- protocol --
    def setup(self, ctx: TrainContext, state: dict[str, Any] | None) -> None:
        model: HighMMT = ctx.model
        self.tasks = target_tasks(self.cfg, model.config)
        if state is not None and state.get("config") != self._config_record():
            raise ValueError(f"--resume: the run was trained with train.colearn={state.get('config')}, "
                             f"now it is {self._config_record()}; resume with the same co-learning settings")
        self._modules = build_modules(self.cfg, model.config)
        ctx.log(f"co-learning: {self.cfg.method} {self.cfg.primary} -> {self.cfg.secondary} on {self.tasks} "
                f"({sum(p.numel() for p in self._modules.parameters()):,} extra parameters)")

    def modules(self) -> dict[str, nn.Module]:
        return dict(self._modules.items())

    def training_inputs(self, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """With ``supervise_secondary=false`` the supervised forward does not see the secondary."""
        if task not in self.tasks or self.cfg.supervise_secondary or self.cfg.secondary not in inputs:
            return inputs
        kept = {m: v for m, v in inputs.items() if m != self.cfg.secondary}
        return kept or inputs

    def extra_loss(self, ctx: TrainContext, task: str, batch: dict[str, Any], outputs: Tensor) -> Tensor | None:
        if task not in self.tasks:
            return None
        model: HighMMT = ctx.model
        # The latents of the forward that made ``outputs``; a withheld secondary is encoded here.
        latents: dict[str, Tensor] = dict(ctx.latents or {})
        autocast = ctx.autocast() if ctx.autocast is not None else contextlib.nullcontext()
        with autocast:
            for m in model.config.tasks[task].modalities:
                if m not in latents and m in batch["inputs"]:
                    latents[m] = model.encode_modality(m, batch["inputs"][m])
            parts = self._losses(model, task, latents, batch["target"], batch["inputs"])
        total = sum(parts.values(), outputs.new_zeros((), dtype=torch.float32))
        record = self._parts.setdefault(task, {})
        for k, v in parts.items():
            record.setdefault(k, []).append(float(v.detach()))
        return total

    def end_epoch(self, ctx: TrainContext, epoch: int) -> list[dict[str, Any]]:
        step = (epoch + 1) * ctx.run.train.steps_per_epoch
        rows = [
            {"step": step, "epoch": epoch + 1, "task": t, "split": "train", "metric": f"colearn_{k}", "value": sum(v) / len(v)}
            for t, parts in self._parts.items() for k, v in parts.items() if v
        ]
        self._parts = {}
        return rows

    def eval_model(self, ctx: TrainContext) -> nn.Module:
        return ColearnPredictor(ctx.model, self._modules, self.cfg, self.tasks)

    def state_dict(self) -> dict[str, Any]:
        return {"config": self._config_record(), "tasks": list(self.tasks)}

    # -- internals --
    def _config_record(self) -> dict[str, Any]:
        c = self.cfg
        return {"method": c.method, "primary": c.primary, "secondary": c.secondary, "cyclic": c.cyclic,
                "missing_slot": resolved_slot(c), "supervise_secondary": c.supervise_secondary}

    def _losses(self, model: HighMMT, task: str, latents: dict[str, Tensor], target: Tensor,
                inputs: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
        """Latents {m: [b, l, d]} of this batch (and its inputs, for the heads' wide read-outs) -> named
        loss parts (already weighted)."""
        cfg = self.cfg
        if cfg.primary not in latents or cfg.secondary not in latents:
            raise ValueError(f"co-learning on task {task!r} needs both {cfg.primary!r} and {cfg.secondary!r} in every "
                             f"training batch; this batch has {sorted(latents)}")
        z_p, z_s = latents[cfg.primary], latents[cfg.secondary]
        parts: dict[str, Tensor] = {}
        translated = None
        if cfg.method == "translation" and "to_secondary" in self._modules:
            translated = self._modules["to_secondary"](z_p)
            if cfg.weight > 0:
                target_s = z_s.detach() if cfg.detach_target else z_s
                loss = TRANSLATION_LOSS_FNS[cfg.translation_loss]
                parts["translation"] = cfg.weight * loss(translated, target_s)
                if cfg.cyclic:
                    parts["cycle"] = cfg.weight * loss(self._modules["to_primary"](translated), z_p.detach())
        elif cfg.method == "contrastive" and cfg.weight > 0:
            proj = self._modules["project"]
            parts["contrastive"] = cfg.weight * info_nce(proj["primary"](z_p.mean(dim=1)), proj["secondary"](z_s.mean(dim=1)), cfg.temperature)
        slot = resolved_slot(cfg)
        if slot != "none":
            order = model.config.tasks[task].modalities
            kept = {m: z for m, z in latents.items() if m != cfg.secondary}
            if slot == "translation":
                kept[cfg.secondary] = translated
            out = model.head(task, model.fusion(kept, order, _key(task)),
                             {m: v for m, v in (inputs or {}).items() if m != cfg.secondary}, kept)
            parts["head_" + slot] = task_loss(out, target, model.config.tasks[task].task_type)
        return parts


@register_hook_factory
def _factory(run: Any) -> ColearnHook | None:
    cfg = getattr(getattr(run, "train", None), "colearn", None)
    if cfg is None or cfg.method == "none":
        return None
    return ColearnHook(cfg)


# ---- after training ------------------------------------------------------------------------------
def load_predictor(run_dir: str | Path, map_location: str | torch.device = "cpu", *, model: HighMMT | None = None) -> ColearnPredictor:
    """A finished co-learning run folder -> its primary-only predictor (best weights + their co-learning
    modules). ``model``: the run's model when the caller has already loaded it (it is not read again)."""
    cfg = saved_section(run_dir, ColearnConfig, "colearn")
    if cfg.method == "none":
        raise ValueError(f"{run_dir} was trained without co-learning (train.colearn.method is none)")
    if model is None:
        model = HighMMT.from_pretrained(run_dir, map_location=map_location)
    modules = build_modules(cfg, model.config)
    if len(modules):
        load_hook_modules(run_dir, modules, HOOK_NAME, "the co-learning modules")
    return ColearnPredictor(model, modules.to(map_location), cfg, target_tasks(cfg, model.config)).eval()


def trainable_parameters(predictor_or_model: nn.Module) -> int:
    """Parameters that training updates (the model's and the co-learning modules')."""
    return sum(p.numel() for p in predictor_or_model.parameters() if p.requires_grad)


__all__ = [
    "ColearnHook",
    "ColearnPredictor",
    "Translator",
    "build_modules",
    "centered_mse",
    "class_prototypes",
    "info_nce",
    "load_predictor",
    "nearest_prototype",
    "normalized_mse",
    "target_tasks",
    "trainable_parameters",
]

