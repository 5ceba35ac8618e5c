"""Transfer to new tasks: load a trained model into a new one, freeze by policy, LoRA, layer-wise lr decay.

``train.py --init-from RUN --tasks NEW`` calls, in order:

1. :func:`load_pretrained`: every tensor whose name and shape match is loaded. An encoder or fusion
   *group* that the checkpoint does not have (changed ``sharing``) is copied from the checkpoint
   group its modalities (pairs, tasks) used there, or from the checkpoint's only group (HighMMT's
   "homogeneous pre-training, then copy into groups"). A modality the checkpoint never saw keeps a
   freshly initialised embedder; a new task keeps a fresh head. The :class:`TransferReport` says
   what was loaded, copied, left new, mismatched in shape and left unused.
2. :func:`apply_policy`: ``requires_grad`` by the freezing policy (``train.finetune``):

   ==================  ===========================================================================
   ``full``            every parameter trains
   ``head``            only the task heads train
   ``embedders_head``  modality embedders (and modality-type embeddings) and heads train over the
                       frozen shared encoder(s) and fusion
   ``lora``            heads train, plus rank-r LoRA adapters (peft) on every pre-trained linear
                       layer of the shared encoders and the fusion; all base weights stay frozen
   ``prefix``          prefix tuning (Frozen, Tsimpoukelli et al. 2021): every checkpoint parameter
                       stays frozen; a prefix modality's embedder makes k tokens prepended to a
                       host modality's tokens; only the new parts (that embedder if new, the
                       projector to k tokens, a new head with ``train.prefix.new_head``) train
   ==================  ===========================================================================

   Parameters that were *not* loaded from the checkpoint (a new modality's embedder, a new fusion
   group, a head whose shape changed) always train: freezing a random initialisation would only
   remove capacity. Without ``--init-from`` the policy applies to every parameter as written.
   A parameter its module marks ``highmmt_frozen`` (a ``freeze=true`` pretrained backbone) never trains.
   ``prefix`` (:func:`prefix_model_config`, ``train.prefix``) rewires the model config first: the
   tasks that read the prefix modality read the host instead (the prefix modality goes in through
   it, see :mod:`highmmt.model`), and their head is copied from a checkpoint task unless
   ``new_head``. A parameter the checkpoint lacks outside the prefix modality and a new head is an
   error: it would stay random and frozen. (Until this was built, ``prefix`` named the parts of
   ``embedders_head``.)
3. :func:`layer_lr_scales`: layer-wise learning-rate decay over the depth order
   embedders -> encoder layers -> fusion layers -> heads; the heads get ``lr``, a part k steps
   earlier ``lr * decay**k``.
4. :func:`export_state_dict`: the weights to save as ``model.safetensors``, LoRA merged into the
   base weights, so :meth:`HighMMT.from_pretrained` and ``evaluate.py`` load them unchanged.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from highmmt.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_weights
from highmmt.config import HighMMTConfig
from highmmt.sharing import encoder_groups, fusion_groups, task_pairs
from highmmt.model import PREFIX_OPTION
from transference.config import FINETUNE_POLICIES, PrefixConfig, RunConfig, TrainConfig
from transference.hooks import TrainContext, TrainHook, register_hook_factory

PARTS = ("embedders", "encoders", "fusion", "heads", "other")  # other: any module added to HighMMT later
TRAINABLE_PARTS: dict[str, frozenset[str]] = {
    "full": frozenset(PARTS),
    "head": frozenset({"heads"}),
    "embedders_head": frozenset({"embedders", "heads"}),
    "lora": frozenset({"heads"}),
    "prefix": frozenset(),  # only what the checkpoint lacks: the prefix modality's parts, a new head
}
# Top-level attribute of HighMMT -> part (modality-type embeddings belong to their embedder).
# Representation tuning (MAG, between encoder and fusion) counts as fusion: it mixes modalities.
# A prefix modality's projector to k tokens belongs to its embedder too.
_TOP_LEVEL = {"embedders": "embedders", "modality_embedding": "embedders", "prefixes": "embedders", "encoders": "encoders",
              "fusion": "fusion", "heads": "heads", "modality_heads": "heads", "summary_heads": "heads", "representation_tuning": "fusion"}
LORA_PARTS = ("encoders", "fusion")


def _base_name(name: str) -> str:
    """A parameter's name without peft's ``base_layer`` wrapper (the name it has in a saved model)."""
    return name.replace(".base_layer.", ".")


def is_lora_name(name: str) -> bool:
    return ".lora_" in name


def part_of(name: str) -> str:
    """The part (embedders, encoders, fusion, heads; else other) a HighMMT parameter name belongs to.

    ``other`` trains under ``full`` only (unless new to the checkpoint).
    """
    return _TOP_LEVEL.get(name.split(".", 1)[0], "other")


def _module_of(name: str) -> str:
    """Short module name for reports: ``embedders.text``, ``heads.subjectivity``, ``encoders.shared``."""
    parts = name.split(".")
    if parts[0] == "fusion" and len(parts) > 2:
        return ".".join(parts[:3])
    return ".".join(parts[:2])


# ---- 1. loading a checkpoint into a new model ---------------------------------------------------
@dataclass
class TransferReport:
    """What :func:`load_pretrained` did. Names are state-dict keys of the new model unless noted."""

    checkpoint: str
    loaded: list[str] = field(default_factory=list)
    copied: dict[str, str] = field(default_factory=dict)  # new-model group prefix <- checkpoint group prefix
    new: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # same name, other shape (left new)
    unused: list[str] = field(default_factory=list)  # checkpoint keys nothing was loaded from
    total: int = 0

    def summary(self) -> str:
        group = lambda names: sorted({_module_of(n) for n in names})  # noqa: E731
        parts = [f"init-from {self.checkpoint}: loaded {len(self.loaded)}/{self.total} tensors"]
        if self.copied:
            parts.append("copied groups " + ", ".join(f"{k} <- {v}" for k, v in sorted(self.copied.items())))
        parts.append(f"new: {group(self.new) or 'nothing'}")
        if self.mismatched:
            parts.append(f"shape changed (left new): {sorted(self.mismatched)}")
        if self.unused:
            parts.append(f"unused from the checkpoint: {group(self.unused)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["new_modules"] = sorted({_module_of(n) for n in self.new})
        d["unused_modules"] = sorted({_module_of(n) for n in self.unused})
        return d


def check_checkpoint(checkpoint: str | Path) -> Path:
    """The checkpoint's weights file; a clear error when the folder or the file is missing."""
    directory = Path(checkpoint)
    if not directory.is_dir():
        raise FileNotFoundError(f"--init-from: checkpoint folder {directory} does not exist")
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(
            f"--init-from: {directory} holds no {WEIGHTS_NAME}; expected a finished train.py run folder "
            f"or a save_pretrained folder (found: {sorted(p.name for p in directory.iterdir())[:10]})"
        )
    return weights


def read_checkpoint_config(checkpoint: str | Path) -> HighMMTConfig | None:
    """The model config of a run folder or ``save_pretrained`` folder (None without ``config.json``)."""
    cfg_path = Path(checkpoint) / CONFIG_NAME
    if not cfg_path.is_file():
        return None
    raw = json.loads(cfg_path.read_text())
    return HighMMTConfig.from_dict(raw["model"] if "model" in raw and "train" in raw else raw)


def read_checkpoint(checkpoint: str | Path) -> tuple[dict[str, Tensor], HighMMTConfig | None]:
    """The weights and (when present) the model config of a run folder or ``save_pretrained`` folder."""
    weights = check_checkpoint(checkpoint)
    return load_weights(weights), read_checkpoint_config(weights.parent)


def _bottleneck_groups(cfg: HighMMTConfig) -> dict[str, str]:
    """Task -> bottleneck group, as HighMMT builds it."""
    if cfg.sharing.fusion == "all":
        return {t: "shared" for t in cfg.tasks}
    return {t: t.replace(".", "_") for t in cfg.tasks}


def _member_groups(cfg: HighMMTConfig) -> list[tuple[str, dict[str, str]]]:
    """(key prefix, member -> group) for every kind of shared group of a model config.

    Members are modalities (encoders), unordered pairs ``a|b`` (pairwise fusion) or tasks
    (bottleneck fusion); a group's weights live under ``prefix + group``.
    """
    encoded = [m for m, mc in cfg.modalities.items() if PREFIX_OPTION not in mc.options]  # prefix modalities have no encoder
    out = [("encoders.", encoder_groups(cfg.sharing.encoder, encoded))]
    if cfg.fusion.kind == "pairwise":
        pairs = task_pairs(t.modalities for t in cfg.tasks.values())
        out.append(("fusion.blocks.", fusion_groups(cfg.sharing.fusion, pairs)))
    elif cfg.fusion.kind == "bottleneck" and isinstance(cfg.sharing.fusion, str):
        groups = _bottleneck_groups(cfg)
        out += [("fusion.layers.", groups), ("fusion.tokens.", groups)]
    return out


def group_sources(new: HighMMTConfig, old: HighMMTConfig) -> dict[str, str]:
    """New-model group prefix -> checkpoint group prefix, for groups the checkpoint lacks by name.

    The source is the checkpoint group that most of the new group's members (modalities, pairs or
    tasks) belonged to; failing that (all members are new), the checkpoint's only group, if it has
    just one. Groups with no source stay freshly initialised.
    """
    old_kinds = dict(_member_groups(old))
    sources: dict[str, str] = {}
    for prefix, members in _member_groups(new):
        before = old_kinds.get(prefix)
        if before is None:  # the checkpoint has another fusion kind
            continue
        old_names = sorted(set(before.values()))
        for group in sorted(set(members.values())):
            if group in old_names:
                continue
            votes = Counter(before[m] for m, g in members.items() if g == group and m in before)
            if votes:
                src = max(sorted(votes), key=lambda g: votes[g])
            elif len(old_names) == 1:
                src = old_names[0]
            else:
                continue
            sources[prefix + group] = prefix + src
    return sources


def _under(key: str, prefixes: Collection[str]) -> bool:
    """Whether ``key`` is one of the module prefixes or inside one."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _rename(key: str, sources: Mapping[str, str]) -> str | None:
    for target, source in sources.items():
        if key == target or key.startswith(target + "."):
            return source + key[len(target):]
    return None


def load_pretrained(model: nn.Module, checkpoint: str | Path, *, copy: Mapping[str, str] | None = None,
                    fresh: Collection[str] = ()) -> TransferReport:
    """Load every matching tensor of ``checkpoint`` into ``model`` (a :class:`~highmmt.HighMMT`).

    Matching: same name and shape; or, for a shared group the checkpoint lacks, the same tensor of
    the group :func:`group_sources` picks; or, for a module named in ``copy`` (new-model prefix ->
    checkpoint prefix, e.g. ``{"heads.new": "heads.old"}``), the checkpoint module's tensor. Modules
    named in ``fresh`` (prefixes) and everything else keep their initialisation.

    Raises:
        FileNotFoundError: the folder does not exist or holds no ``model.safetensors``.
    """
    state, old_cfg = read_checkpoint(checkpoint)
    own = model.state_dict()
    sources = {**(group_sources(model.config, old_cfg) if old_cfg is not None else {}), **(copy or {})}
    report = TransferReport(checkpoint=str(checkpoint), total=len(own))
    to_load: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, value in own.items():
        if _under(key, fresh):
            report.new.append(key)
            continue
        if key in state and _rename(key, copy or {}) is None:
            if state[key].shape == value.shape:
                to_load[key] = state[key]
                used.add(key)
                report.loaded.append(key)
            else:
                report.mismatched.append(f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(value.shape)}")
                report.new.append(key)
            continue
        src = _rename(key, sources)
        if src is not None and src in state and state[src].shape == value.shape:
            to_load[key] = state[src]
            used.add(src)
            report.loaded.append(key)
            target = next(t for t in sources if key == t or key.startswith(t + "."))
            report.copied[target] = sources[target]
        else:
            report.new.append(key)
    report.unused = sorted(set(state) - used)
    model.load_state_dict(to_load, strict=False)
    return report


# ---- 2. freezing policies and LoRA --------------------------------------------------------------
def lora_targets(model: nn.Module, skip: Collection[str] = ()) -> list[str]:
    """Names of the ``nn.Linear`` layers of the shared encoders and the fusion, except those whose
    weight is in ``skip`` (new layers train in full and need no adapter)."""
    return [
        n for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.split(".", 1)[0] in LORA_PARTS and f"{n}.weight" not in skip
    ]


def add_lora(model: nn.Module, *, rank: int, alpha: float, dropout: float = 0.0, skip: Collection[str] = ()) -> nn.Module:
    """Wrap the shared encoders' and fusion's linear layers with LoRA adapters (in place, peft).

    Layers whose weight is named in ``skip`` are left alone; with nothing left to adapt the model
    is returned unchanged.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:  # pragma: no cover - peft is a dependency
        raise ImportError("train.finetune=lora needs peft (pip install 'peft>=0.10')") from e
    if not lora_targets(model):
        raise ValueError("train.finetune=lora: the model has no linear layer in its encoders or fusion to adapt")
    targets = lora_targets(model, skip)
    if not targets:
        return model
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return inject_adapter_in_model(config, model)


def apply_policy(
    model: nn.Module,
    policy: str,
    *,
    new: Collection[str] = (),
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
) -> dict[str, int]:
    """Set ``requires_grad`` by ``policy`` (adding LoRA adapters for ``lora``); return trainable counts.

    Args:
        model: a :class:`~highmmt.HighMMT`.
        policy: one of ``full``, ``head``, ``embedders_head``, ``lora``, ``prefix`` (only ``new`` trains).
        new: parameter names that were not loaded from a checkpoint; they always train.
        lora_rank, lora_alpha: LoRA's rank r and scale alpha (the update is ``alpha / r * B @ A``).

    Returns:
        trainable parameter counts per part (plus ``lora``), ``trainable`` and ``total``.
    """
    if policy not in FINETUNE_POLICIES:
        raise ValueError(f"unknown fine-tuning policy {policy!r}; known: {list(FINETUNE_POLICIES)}")
    new = set(new)
    if policy == "lora":
        add_lora(model, rank=lora_rank, alpha=lora_alpha, skip=new)
    trainable = TRAINABLE_PARTS[policy]
    for name, p in model.named_parameters():
        wanted = is_lora_name(name) or _base_name(name) in new or part_of(name) in trainable
        p.requires_grad_(wanted and not getattr(p, "highmmt_frozen", False))
    return trainable_counts(model)


def trainable_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per part (LoRA adapters counted apart), trainable and total."""
    counts = {p: 0 for p in (*PARTS, "lora")}
    total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            counts["lora" if is_lora_name(name) else part_of(name)] += p.numel()
    counts["trainable"] = sum(counts[p] for p in (*PARTS, "lora"))
    counts["total"] = total
    return counts


def describe_counts(policy: str, counts: Mapping[str, int]) -> str:
    """One log line: how many parameters train, and in which parts."""
    parts = ", ".join(f"{p} {counts[p]:,}" for p in (*PARTS, "lora") if counts[p])
    share = counts["trainable"] / max(counts["total"], 1)
    return f"fine-tuning policy {policy!r}: {counts['trainable']:,} of {counts['total']:,} parameters trainable ({share:.1%}; {parts})"


# ---- prefix tuning: the model config and what may be new ------------------------------------------
@dataclass
class PrefixPlan:
    """What :func:`prefix_model_config` decided: the prefix modality, its host and k, the tasks that
    read it, and for each of them the checkpoint task whose head it reuses (none with ``new_head``)."""

    modality: str
    host: str
    tokens: int
    tasks: list[str]
    head_from: dict[str, str]
    new_modality: bool

    def allowed_new(self) -> tuple[str, ...]:
        """Module prefixes that may be new to the checkpoint (and so train)."""
        own = (f"embedders.{_key(self.modality)}", f"modality_embedding.{_key(self.modality)}") if self.new_modality else ()
        heads = tuple(f"heads.{_key(t)}" for t in self.tasks if t not in self.head_from)
        return (*own, f"prefixes.{_key(self.modality)}", *heads)

    def describe(self) -> str:
        heads = "; ".join(f"{t}: head of checkpoint task {self.head_from[t]!r}, frozen" if t in self.head_from else f"{t}: new head"
                          for t in self.tasks)
        embedder = "a new embedder, trained" if self.new_modality else "the checkpoint's embedder, frozen"
        return (f"prefix tuning: modality {self.modality!r} ({embedder}) -> {self.tokens} prefix tokens in front of "
                f"host {self.host!r}'s tokens in the frozen encoder; {heads}")


def _key(name: str) -> str:
    return name.replace(".", "_")


def check_prefix_host(pc: PrefixConfig, ckpt: HighMMTConfig, where: str = "") -> None:
    """``train.prefix.host`` must be a modality of the checkpoint (``where``: its folder, for the message)."""
    if pc.host not in ckpt.modalities:
        raise ValueError(f"train.prefix.host={pc.host!r} is not a modality of the checkpoint{' ' + where if where else ''}; "
                         f"its modalities: {sorted(ckpt.modalities)}")


def _choose_prefix_modality(pc: PrefixConfig, cfg: HighMMTConfig, ckpt: HighMMTConfig) -> str:
    """``train.prefix.modality``, else the trained tasks' one modality new to the checkpoint, else
    their one modality besides the host."""
    if pc.modality:
        if pc.modality not in cfg.modalities:
            raise ValueError(f"train.prefix.modality={pc.modality!r} is read by none of the trained tasks; "
                             f"their modalities: {sorted(cfg.modalities)}")
        return pc.modality
    others = [m for m in cfg.modalities if m != pc.host]
    new = [m for m in others if m not in ckpt.modalities]
    for candidates in (new, others):
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise ValueError(f"train.finetune=prefix: the trained tasks read several modalities that could be the prefix "
                             f"{candidates}; name one with train.prefix.modality")
    raise ValueError(f"train.finetune=prefix: the trained tasks read no modality besides the host {pc.host!r} to make the prefix")


def _head_source(task: str, mods: list[str], tc: Any, pc: PrefixConfig, ckpt: HighMMTConfig) -> str:
    """The checkpoint task whose (frozen) head ``task`` reuses, checked to fit."""
    if pc.head_from:
        src = pc.head_from
    elif task in ckpt.tasks:
        src = task
    elif len(ckpt.tasks) == 1:
        src = next(iter(ckpt.tasks))
    else:
        raise ValueError(f"train.finetune=prefix: task {task!r} is not in the checkpoint, whose tasks are {sorted(ckpt.tasks)}; "
                         "name the head to reuse with train.prefix.head_from=TASK, or train a new one with train.prefix.new_head=true")
    if src not in ckpt.tasks:
        raise ValueError(f"train.prefix.head_from={src!r} is not a task of the checkpoint; its tasks: {sorted(ckpt.tasks)}")
    old = ckpt.tasks[src]
    if old.modalities != mods:
        raise ValueError(f"train.finetune=prefix: the head of checkpoint task {src!r} reads {old.modalities}, but task {task!r} "
                         f"with the prefix reads {mods}; reuse another head (train.prefix.head_from) or train.prefix.new_head=true")
    if (old.task_type, old.num_outputs) != (tc.task_type, tc.num_outputs):
        raise ValueError(f"train.finetune=prefix: the head of checkpoint task {src!r} has {old.num_outputs} {old.task_type} outputs, "
                         f"task {task!r} needs {tc.num_outputs} {tc.task_type}; set train.prefix.new_head=true for a new head")
    return src


def prefix_model_config(cfg: HighMMTConfig, ckpt: HighMMTConfig, pc: PrefixConfig) -> tuple[HighMMTConfig, PrefixPlan]:
    """The model config for prefix tuning, and the plan.

    The prefix modality p gets the model option ``prefix: {host, tokens}``; every task that reads p
    reads the host in its place (once), so its fusion and head are shaped like the checkpoint's for
    the host; the host's modality entry is the checkpoint's.

    Args:
        cfg: the model config from the trained tasks' specs.
        ckpt: the ``--init-from`` checkpoint's model config.
        pc: ``train.prefix``.
    """
    check_prefix_host(pc, ckpt)
    p = _choose_prefix_modality(pc, cfg, ckpt)
    modalities = dict(cfg.modalities)
    modalities[p] = replace(cfg.modalities[p], options={**cfg.modalities[p].options, PREFIX_OPTION: {"host": pc.host, "tokens": pc.tokens}})
    modalities.setdefault(pc.host, ckpt.modalities[pc.host])
    tasks, readers, heads = {}, [], {}
    for name, tc in cfg.tasks.items():
        if p not in tc.modalities:
            tasks[name] = tc
            continue
        mods = list(dict.fromkeys(pc.host if m == p else m for m in tc.modalities))
        tasks[name] = replace(tc, modalities=mods)
        readers.append(name)
        if not pc.new_head:
            heads[name] = _head_source(name, mods, tc, pc, ckpt)
    plan = PrefixPlan(modality=p, host=pc.host, tokens=pc.tokens, tasks=readers, head_from=heads, new_modality=p not in ckpt.modalities)
    return replace(cfg, modalities=modalities, tasks=tasks), plan


def load_for_prefix(model: nn.Module, checkpoint: str | Path, plan: PrefixPlan) -> TransferReport:
    """:func:`load_pretrained` for prefix tuning: each prefix task's head copied from its
    ``plan.head_from`` task, a new head left fresh; then :func:`check_prefix_report`."""
    copy = {f"heads.{_key(t)}": f"heads.{_key(s)}" for t, s in plan.head_from.items() if t != s}
    fresh = [f"heads.{_key(t)}" for t in plan.tasks if t not in plan.head_from]
    report = load_pretrained(model, checkpoint, copy=copy, fresh=fresh)
    check_prefix_report(report, plan)
    return report


def check_prefix_report(report: TransferReport, plan: PrefixPlan) -> None:
    """Prefix tuning trains only the prefix modality's new parts and new heads: any other parameter
    the checkpoint did not provide (it would stay random and frozen) is an error naming it."""
    allowed = plan.allowed_new()
    stray = sorted({_module_of(n) for n in report.new if not _under(n, allowed)})
    if stray:
        raise ValueError(
            f"train.finetune=prefix keeps the checkpoint's model frozen, but these parts are not in it (or changed shape) and would "
            f"stay random: {stray}{'; shape changes: ' + str(report.mismatched) if report.mismatched else ''}. Train the tasks "
            "with the checkpoint's modality declarations and fusion sharing (e.g. sharing.fusion=all), or use another policy"
        )


# ---- 3. layer-wise learning-rate decay ------------------------------------------------------------
def layer_depths(model: nn.Module) -> dict[str, int]:
    """Parameter name -> depth: 0 embedders, then one per encoder layer, one per fusion layer, heads last.

    The encoder's latents go with its first layer and its final norm with its last; bottleneck
    fusion tokens and the representation-tuning gate go with the first fusion layer. A module in
    no part (``other``) is an error: the depth order would not know where it sits.
    """
    cfg = model.config
    enc = cfg.encoder.depth
    fus = cfg.fusion.depth if cfg.fusion.kind != "none" else 0
    depths: dict[str, int] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        part = part_of(name)
        if part == "embedders":
            d = 0
        elif part == "encoders":
            d = 1 + int(parts[3]) if parts[2] == "layers" else (1 if parts[2] == "latents" else enc)
        elif part == "fusion":
            d = enc + 1 + (int(parts[3]) if parts[1] in ("blocks", "layers") else 0)
        elif part == "heads":
            d = enc + fus + 1
        else:
            raise ValueError(f"train.layer_decay: parameter {name!r} is in no part of the depth order "
                             "embedders -> encoders -> fusion -> heads")
        depths[name] = d
    return depths


def layer_lr_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Parameter name -> lr multiplier ``decay ** (head depth - depth)`` (1.0 everywhere when decay = 1)."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"train.layer_decay must be in (0, 1] (1.0 = off), got {decay}")
    depths = layer_depths(model)
    top = max(depths.values(), default=0)
    return {n: decay ** (top - d) for n, d in depths.items()}


# ---- 4. saving -------------------------------------------------------------------------------------
def export_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with every LoRA adapter merged into its base weight.

    The keys are those of the plain model (no ``base_layer`` / ``lora_`` entries), so the result loads
    into :class:`~highmmt.HighMMT` built from the same config. A model without LoRA is returned as is.
    """
    from_lora: dict[str, Tensor] = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            delta = None
            if not getattr(module, "merged", False):
                for adapter in module.active_adapters:
                    d = module.get_delta_weight(adapter)
                    delta = d if delta is None else delta + d
            if delta is not None:
                from_lora[f"{name}.weight"] = delta
    state = model.state_dict()
    if not from_lora:
        return state
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if is_lora_name(key):
            continue
        key = _base_name(key)
        out[key] = (value + from_lora[key].to(value.dtype)) if key in from_lora else value
    return out


# ---- 5. the method: train.finetune (and --init-from) ------------------------------------------------
ARCHITECTURE_FIELDS = ("dim", "encoder", "fusion", "head_hidden")


def architecture_from_checkpoint(run: RunConfig, checkpoint: str | Path, overrides: Sequence[str], log: Callable[[str], None]) -> RunConfig:
    """With ``--init-from``, the model's widths and depths are the checkpoint's (the preset still sets
    training), so that its weights fit; a ``--set model...`` override that contradicts them is an error."""
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        return run
    raw = json.loads(path.read_text())
    ckpt = HighMMTConfig.from_dict(raw["model"] if "model" in raw and "train" in raw else raw)
    differ = [f for f in ARCHITECTURE_FIELDS if getattr(ckpt, f) != getattr(run.model, f)]
    if not differ:
        return run
    keys = [o.split("=", 1)[0] for o in overrides]
    forced = [k for k in keys if k.split(".")[0] == "model" and k.split(".")[1:2] and k.split(".")[1] in differ]
    if forced:
        raise ValueError(
            f"--init-from {checkpoint}: {', '.join(forced)} contradicts the checkpoint's model "
            f"({', '.join(f'{f}={getattr(ckpt, f)}' for f in differ)}); its weights would not fit. Drop the override."
        )
    log(f"init-from {checkpoint}: model {', '.join(differ)} taken from the checkpoint (the preset's differ)")
    model = replace(run.model, **{f: getattr(ckpt, f) for f in differ})
    return replace(run, model=model)


class FinetuneHook(TrainHook):
    """``--init-from`` and ``train.finetune``: load the matching weights of a checkpoint, freeze by
    policy (LoRA adapters for ``lora``), layer-wise lr decay, LoRA merged into the saved weights.
    Always on (the ``full`` policy without ``--init-from`` trains every parameter from scratch)."""

    name = "finetune"

    def __init__(self, run: RunConfig) -> None:
        self.tc = run.train
        self.checkpoint_config: HighMMTConfig | None = None  # prefix tuning: the --init-from model's config
        self.prefix: PrefixPlan | None = None

    def check_run(self, run: Any, *, init_from: str | Path | None, overrides: Sequence[str], log: Callable[[str], None]) -> Any:
        if self.tc.finetune == "prefix" and not init_from:
            raise ValueError("train.finetune=prefix tunes a prefix for a trained model: it needs --init-from RUN")
        if not init_from:
            return run
        check_checkpoint(init_from)  # before any data is parsed
        if self.tc.finetune == "prefix":
            config = read_checkpoint_config(init_from)
            if config is None:
                raise ValueError(f"train.finetune=prefix: {init_from} has no {CONFIG_NAME}; prefix tuning needs the checkpoint's "
                                 "modalities and tasks")
            check_prefix_host(self.tc.prefix, config, str(init_from))  # before any data is parsed
            self.checkpoint_config = config
        return architecture_from_checkpoint(run, init_from, overrides, log)

    def model_config(self, cfg: HighMMTConfig, specs: Sequence[Any]) -> HighMMTConfig:
        if self.checkpoint_config is None:
            return cfg
        cfg, self.prefix = prefix_model_config(cfg, self.checkpoint_config, self.tc.prefix)
        return cfg

    def prepare_model(self, ctx: TrainContext) -> dict[str, Any]:
        report, plan = None, self.prefix
        if ctx.init_from:
            report = load_pretrained(ctx.model, ctx.init_from) if plan is None else load_for_prefix(ctx.model, ctx.init_from, plan)
            ctx.log(report.summary())
            if plan is not None:
                ctx.log(plan.describe())
        # Parameters the checkpoint did not provide always train (under prefix: nothing else).
        counts = apply_policy(ctx.model, self.tc.finetune, new=report.new if report else (),
                              lora_rank=self.tc.lora_rank, lora_alpha=self.tc.lora_alpha)
        ctx.log(describe_counts(self.tc.finetune, counts))
        notes = {"init_from": report.to_dict() if report else None, "trainable_parameters": counts}
        if plan is not None:
            notes["prefix"] = asdict(plan)
        return notes

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        return layer_lr_scales(model, self.tc.layer_decay) if self.tc.layer_decay < 1.0 else {}

    def export_weights(self, model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return export_state_dict(model)


@register_hook_factory
def _factory(run: Any) -> FinetuneHook | None:
    return FinetuneHook(run) if isinstance(getattr(run, "train", None), TrainConfig) else None


__all__ = [
    "ARCHITECTURE_FIELDS",
    "FINETUNE_POLICIES",
    "FinetuneHook",
    "PrefixPlan",
    "TRAINABLE_PARTS",
    "TransferReport",
    "add_lora",
    "apply_policy",
    "architecture_from_checkpoint",
    "check_checkpoint",
    "check_prefix_host",
    "check_prefix_report",
    "export_state_dict",
    "group_sources",
    "layer_depths",
    "layer_lr_scales",
    "load_for_prefix",
    "load_pretrained",
    "part_of",
    "prefix_model_config",
    "read_checkpoint",
    "read_checkpoint_config",
    "trainable_counts",
]
