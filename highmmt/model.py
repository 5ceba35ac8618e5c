"""The HighMMT model: per-modality embedders -> shared encoder(s) -> fusion -> per-task heads.

Letters: b batch, n tokens, l latents, d width, M modalities of a task, c outputs.

::

    inputs {modality: tensor | batch dict}
      --embedders[m] (ModuleDict by modality)--> tokens [b, n, d], mask [b, n]
      --+ modality-type embedding [d]
      (--[prefix tokens [b, k, d] ; tokens] when a prefix modality is given: prefix tuning, below)
      --encoders[group(m)] (shared Perceiver)--> latents [b, l, d]
      --fusion (pairwise | bottleneck | none)--> fused [b, M * d]
      --heads[task] (ModuleDict by task)-------> outputs [b, c]

Prefix tuning (Frozen, Tsimpoukelli et al. 2021; set up by ``train.finetune=prefix``): a *prefix
modality* p, whose config options hold ``{"prefix": {"host": h, "tokens": k}}``, is never encoded on
its own. Its embedder's tokens are pooled and mapped to k prefix tokens (:class:`PrefixProjector`),
which the encoder reads in front of the *host* modality h's tokens: [prefix ; host tokens]. Tasks
list the host, not p, among their modalities, and accept p as an input; with p given and h not,
the k prefix tokens alone are h's sequence. The ``prefix`` option is the model's: the embedder
never sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from highmmt.checkpoint import (
    CONFIG_NAME,
    TASK_WEIGHTS_DIR,
    WEIGHTS_NAME,
    atomic_save_safetensors,
    atomic_write_json,
    check_state_dict,
    load_weights,
)
from highmmt.config import HighMMTConfig, ModalityConfig, TaskConfig
from highmmt.embedder import Embedder
from highmmt.encoder import PerceiverEncoder
from highmmt.fusion import BottleneckFusion, NoFusion, PairwiseFusion
from highmmt.heads import PartWeights, SummaryHead, TaskHead, choose_part_ridge, fit_part_weights, mix_rows, naive_bayes_prior
from highmmt.pretrained import RepresentationTuning, weights_from_checkpoint
from highmmt.registry import EMBEDDERS
from highmmt.sharing import encoder_groups, fusion_groups, task_pairs


def drop_tokens(mask: Tensor, p: float) -> Tensor:
    """Token dropout: each real token of mask [b, n] is hidden from the encoder with probability p
    (training only; word dropout in Iyyer et al. 2015, time/patch masking for other modalities); a row
    keeps at least one real token."""
    kept = mask & (torch.rand(mask.shape, device=mask.device) >= p)
    first_real = torch.zeros_like(mask).scatter_(1, mask.float().argmax(dim=1, keepdim=True), True) & mask
    return torch.where(kept.any(dim=1, keepdim=True), kept, first_real)


# Embedder options whose default changed, with the values they have had. A saved config that does not
# state them was written under one of those; ``from_pretrained`` tries them when the weights do not fit
# today's defaults, so older run folders keep loading.
EARLIER_DEFAULTS: dict[str, tuple[Any, ...]] = {"summary": (False,), "stem": ("linear", "conv")}


def fits(model: nn.Module, state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` has exactly the model's keys and shapes."""
    own = model.state_dict()
    return own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own)


def with_part_weights(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Weights written before output parts had weights (``part_weights.<t>.weight``, a buffer) weigh every part 1:
    each such buffer the model has and ``state`` lacks is added as ones, when ``state`` holds that task's head."""
    for key, value in model.state_dict().items():
        task = key.split(".")[1] if key.startswith("part_weights.") else None
        if task is not None and key not in state and any(k.startswith(f"heads.{task}.") for k in state):
            state[key] = torch.ones_like(value)
    return state


def with_earlier_defaults(config: HighMMTConfig, state: Mapping[str, Tensor]) -> HighMMTConfig | None:
    """``config`` with, for each modality whose weights in ``state`` do not fit its embedder under
    today's defaults, the earlier values of ``EARLIER_DEFAULTS`` (options it does not state) that do;
    None when some modality fits none of them."""
    import dataclasses
    import inspect

    modalities = {}
    for name, mc in config.modalities.items():
        prefix = f"embedders.{_key(name)}."
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        cls = EMBEDDERS.get(mc.kind)
        accepted = inspect.signature(cls.__init__).parameters
        fills: list[dict[str, Any]] = [{}]
        options = embedder_options(mc)
        for k in (k for k in EARLIER_DEFAULTS if k in accepted and k not in options):
            fills = [f for base in fills for f in (base, *({**base, k: v} for v in EARLIER_DEFAULTS[k]))]
        for fill in sorted(fills, key=len):
            with weights_from_checkpoint():
                if fits(cls(name=name, dim=config.dim, **options, **fill), own):
                    modalities[name] = dataclasses.replace(mc, options={**mc.options, **fill})
                    break
        else:
            return None
    return dataclasses.replace(config, modalities=modalities)


PREFIX_OPTION = "prefix"  # ModalityConfig.options key: {"host": modality, "tokens": k}


def embedder_options(mc: ModalityConfig) -> dict[str, Any]:
    """The options the modality's embedder is built with (all but the model's ``prefix`` entry)."""
    return {k: v for k, v in mc.options.items() if k != PREFIX_OPTION}


def prefix_hosts(config: HighMMTConfig) -> dict[str, tuple[str, int]]:
    """Prefix modality -> (host modality, k prefix tokens), checked; empty without prefix tuning."""
    out: dict[str, tuple[str, int]] = {}
    for name, mc in config.modalities.items():
        if PREFIX_OPTION not in mc.options:
            continue
        spec = mc.options[PREFIX_OPTION]
        if not isinstance(spec, Mapping) or set(spec) != {"host", "tokens"}:
            raise ValueError(f"modality {name!r}: option {PREFIX_OPTION!r} must be {{'host': modality, 'tokens': k}}, got {spec!r}")
        host, k = spec["host"], spec["tokens"]
        if host not in config.modalities or host == name:
            raise ValueError(f"modality {name!r}: prefix host {host!r} must be another modality of the model {sorted(config.modalities)}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"modality {name!r}: prefix tokens must be an integer >= 1, got {k!r}")
        out[name] = (host, k)
    for name, (host, _) in out.items():
        if host in out:
            raise ValueError(f"modality {name!r}: its prefix host {host!r} is itself a prefix modality")
    for task, tc in config.tasks.items():
        for m in tc.modalities:
            if m in out:
                raise ValueError(f"task {task!r} lists prefix modality {m!r} among its modalities; a prefix modality is "
                                 f"read through its host: list {out[m][0]!r} instead")
    return out


class PrefixProjector(nn.Module):
    """Frozen's visual prefix: a modality's tokens -> k prefix tokens for another modality's sequence.

    The real tokens are mean-pooled and one linear map gives k tokens (Frozen maps its vision
    encoder's pooled output to k * d and reshapes).

    Shapes: tokens [b, n, d], mask [b, n] (True = real) -> prefix [b, k, d].
    """

    def __init__(self, *, dim: int, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.to_prefix = nn.Linear(dim, tokens * dim)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        weights = mask.to(tokens.dtype).unsqueeze(-1)  # [b, n, 1]
        pooled = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return rearrange(self.to_prefix(pooled), "b (k d) -> b k d", k=self.tokens)


@torch.no_grad()
def collect_parts(model: nn.Module, task: str, batches: Iterable[tuple[Mapping[str, Any], Tensor]],
                  expected: Iterable[str] | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """``task``'s output parts (:meth:`HighMMT.output_parts`) over ``batches`` of (inputs, targets), in eval mode,
    each concatenated on the CPU, and the targets. ``model``: a HighMMT or a module that wraps one and passes
    ``return_parts`` on. ``expected`` (the task's part names): every batch must give all of them."""
    was_training = model.training
    model.eval()
    collected: dict[str, list[Tensor]] = {}
    targets = []
    for inputs, target in batches:
        _, parts = model(inputs, task, return_parts=True)
        if expected is not None and set(parts) != set(expected):
            raise ValueError(f"task {task!r}: fitting part weights needs every part in every batch "
                             f"({list(expected)}), got {sorted(parts)}: a modality is missing")
        for k, v in parts.items():
            collected.setdefault(k, []).append(v.cpu())
        targets.append(target.cpu())
    model.train(was_training)
    if not targets:
        raise ValueError(f"task {task!r}: no rows to fit part weights on")
    return {k: torch.cat(v) for k, v in collected.items()}, torch.cat(targets)


def _key(name: str) -> str:
    """ModuleDict keys may not contain dots."""
    return name.replace(".", "_")


class HighMMT(nn.Module):
    """One model for many modalities and tasks.

    Args:
        config: a :class:`HighMMTConfig` (modalities, tasks, sizes, sharing).

    ``forward(inputs, task)`` takes a dict modality name -> tensor (or the batch dict its
    embedder's ``collate`` made); any non-empty subset of the task's modalities may be given.
    """

    def __init__(self, config: HighMMTConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.embedders = nn.ModuleDict()
        for name, mc in config.modalities.items():
            self.embedders[_key(name)] = self._build_embedder(name, mc)
        self.modality_embedding = nn.ParameterDict(
            {_key(m): nn.Parameter(torch.randn(d) * 0.02) for m in config.modalities}
        )
        # Prefix tuning: prefix modality -> host; its projector to k tokens. Prefix modalities have no encoder.
        hosts = prefix_hosts(config)
        self.prefix_host = {m: host for m, (host, _) in hosts.items()}
        self.prefixes = nn.ModuleDict({_key(m): PrefixProjector(dim=d, tokens=k) for m, (_, k) in hosts.items()})
        self.encoder_group = encoder_groups(config.sharing.encoder, [m for m in config.modalities if m not in hosts])
        self.encoders = nn.ModuleDict(
            {
                g: PerceiverEncoder(dim=d, cfg=config.encoder, gradient_checkpointing=config.gradient_checkpointing)
                for g in sorted(set(self.encoder_group.values()))
            }
        )
        self.fusion = self._build_fusion()
        # MAG between encoder and fusion (None unless config.representation_tuning.primary is set).
        self.representation_tuning = RepresentationTuning.from_config(config)
        self.heads = nn.ModuleDict({_key(t): self._build_head(tc) for t, tc in config.tasks.items()})
        # Late fusion (model.modality_heads): one head per encoded modality of each multimodal, non-regression task.
        self.modality_heads = nn.ModuleDict({
            _key(t): nn.ModuleDict({_key(m): TaskHead(in_dim=d, out_dim=tc.num_outputs, hidden=config.head_hidden,
                                                      dropout=config.head_dropout) for m in mods})
            for t, tc in config.tasks.items() if (mods := self.late_fusion_modalities(t))
        })
        # Summary read-outs (model.summary_heads): one MLP per task and modality on that modality's summary statistics.
        self.summary_heads = nn.ModuleDict({
            _key(t): nn.ModuleDict({_key(m): SummaryHead(self.embedders[_key(m)].summary_size, tc.num_outputs,
                                                         hidden=2 * d, dropout=config.head_dropout) for m in mods})
            for t, tc in config.tasks.items() if (mods := self.summary_modalities(t))
        })
        # The weights of a task's output parts (part_names: the fused head, the wide read-outs, each modality head;
        # a buffer, 1 until fitted on held-out rows by fit_part_weights: stacking), for tasks with two or more parts.
        self.part_weights = nn.ModuleDict({_key(t): PartWeights(len(names)) for t in config.tasks
                                           if len(names := self.part_names(t)) >= 2})

    # ---- construction -------------------------------------------------------------------------
    def _build_embedder(self, name: str, mc: ModalityConfig) -> Embedder:
        cls = EMBEDDERS.get(mc.kind)
        options = embedder_options(mc)
        try:
            return cls(name=name, dim=self.config.dim, **options)
        except TypeError as e:
            raise ValueError(f"modality {name!r} ({mc.kind}): bad embedder options {options}: {e}") from e

    def _build_head(self, tc: TaskConfig) -> TaskHead:
        return TaskHead(
            in_dim=len(tc.modalities) * self.config.dim,
            out_dim=tc.num_outputs,
            hidden=self.config.head_hidden,
            dropout=self.config.head_dropout,
            wide_dropout=self.config.wide_dropout,
            wide={_key(m): self.embedders[_key(m)].wide_size for m in tc.modalities
                  if m in self.config.modalities and self.embedders[_key(m)].wide_size},
        )

    def late_fusion_modalities(self, task: str) -> list[str]:
        """The modalities whose own head adds to ``task``'s outputs (``model.modality_heads``): with the option
        on, every modality the task encodes (a prefix modality is read through its host) when there are at
        least two of them and the task is not a regression (a sum of regressors each fitted alone would
        over-shoot); else none."""
        tc = self.config.tasks[task]
        mods = [m for m in tc.modalities if m not in self.prefix_host]
        return mods if self.config.modality_heads and len(mods) >= 2 and tc.task_type != "regression" else []

    def summary_modalities(self, task: str) -> list[str]:
        """The modalities whose summary statistics ``task`` reads directly (``model.summary_heads``): with the
        option on, every modality of a non-regression task whose embedder has a summary token (series,
        poses, irregular series; a prefix modality is read through its host); else none."""
        tc = self.config.tasks[task]
        if not self.config.summary_heads or tc.task_type == "regression":
            return []
        return [m for m in tc.modalities if m not in self.prefix_host and self.embedders[_key(m)].summary_size > 0]

    def part_names(self, task: str) -> list[str]:
        """The parts of ``task``'s outputs that get a weight (:meth:`fit_part_weights`), in the buffer's order:
        ``"deep"`` (the head on the fused vector), ``"wide"`` (its wide read-outs, if any), ``"modality:<m>"``
        (the modality heads) and ``"summary:<m>"`` (the summary heads). Regression tasks keep one part (their
        wide read-out stays inside ``"deep"``)."""
        tc = self.config.tasks[task]
        wide = bool(self.heads[_key(task)].wide) and tc.task_type != "regression"
        return (["deep"] + (["wide"] if wide else []) + [f"modality:{m}" for m in self.late_fusion_modalities(task)]
                + [f"summary:{m}" for m in self.summary_modalities(task)])

    def _build_fusion(self) -> nn.Module:
        cfg = self.config
        if cfg.fusion.kind == "none":
            return NoFusion()
        if cfg.fusion.kind == "pairwise":
            pairs = task_pairs(t.modalities for t in cfg.tasks.values())
            return PairwiseFusion(dim=cfg.dim, cfg=cfg.fusion, groups=fusion_groups(cfg.sharing.fusion, pairs))
        if isinstance(cfg.sharing.fusion, Mapping):
            raise ValueError("explicit fusion groups are defined over modality pairs and need fusion.kind='pairwise'")
        shared = cfg.sharing.fusion == "all"
        groups = {t: ("shared" if shared else _key(t)) for t in cfg.tasks}
        return BottleneckFusion(dim=cfg.dim, cfg=cfg.fusion, groups=groups)

    # ---- forward --------------------------------------------------------------------------------
    def _check_inputs(self, inputs: Any, task: str) -> TaskConfig:
        if task not in self.config.tasks:
            raise ValueError(f"unknown task {task!r}; this model has tasks {sorted(self.config.tasks)}")
        tc = self.config.tasks[task]
        if not isinstance(inputs, Mapping):
            raise TypeError(f"inputs must be a dict of modality name -> tensor, got {type(inputs).__name__}")
        if not inputs:
            raise ValueError(f"task {task!r}: no modality given; it reads {tc.modalities}")
        for m in inputs:
            if m not in self.config.modalities:
                raise ValueError(f"unknown modality {m!r}; this model has modalities {sorted(self.config.modalities)}")
            if m not in tc.modalities and self.prefix_host.get(m) not in tc.modalities:
                raise ValueError(f"task {task!r} does not read modality {m!r}; it reads {tc.modalities}"
                                 + (f" and the prefix modalities {sorted(p for p, h in self.prefix_host.items() if h in tc.modalities)}"
                                    if any(h in tc.modalities for h in self.prefix_host.values()) else ""))
        return tc

    def _cast(self, value: Tensor | Mapping[str, Tensor]) -> Tensor | dict[str, Tensor]:
        """Floating inputs follow the model's parameter dtype; integer/bool ones are left alone."""
        dtype = self.modality_embedding[next(iter(self.modality_embedding))].dtype

        def cast(t: Tensor) -> Tensor:
            return t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != dtype else t

        if isinstance(value, Mapping):
            return {k: cast(v) for k, v in value.items()}
        return cast(value)

    def embed(self, name: str, value: Tensor | Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """One modality's input -> tokens [b, n, d] (+ its modality-type embedding), mask [b, n]."""
        tokens, mask = self.embedders[_key(name)](self._cast(value))
        if self.training and self.config.token_dropout > 0:
            mask = drop_tokens(mask, self.config.token_dropout)
        return tokens + self.modality_embedding[_key(name)].to(tokens.dtype), mask

    def prefix_tokens(self, host: str, inputs: Mapping[str, Any]) -> Tensor | None:
        """The prefix tokens [b, k, d] that the prefix modalities present in ``inputs`` make for
        ``host`` (several: concatenated in config order); None when there are none."""
        parts = [self.prefixes[_key(p)](*self.embed(p, inputs[p])) for p, h in self.prefix_host.items() if h == host and p in inputs]
        return torch.cat(parts, dim=1) if parts else None

    def encode_modality(self, name: str, value: Tensor | Mapping[str, Tensor] | None, prefix: Tensor | None = None,
                        adapt: Mapping[int, Callable[[Tensor], Tensor]] | None = None) -> Tensor:
        """One modality's input -> latents [b, l, d] through its embedder and encoder group.

        ``prefix`` [b, k, d] (prefix tuning's extension point): tokens the encoder reads in front of
        the modality's own, [prefix ; tokens] (always attended to); with ``value`` None the prefix
        alone is the modality's sequence. ``adapt`` {layer: f}: passed to the encoder (representation
        tuning inside the encoder shifts the latents there).
        """
        if value is None:
            if prefix is None:
                raise ValueError(f"modality {name!r}: no input and no prefix to encode")
            tokens, mask = prefix, torch.ones(prefix.shape[:2], dtype=torch.bool, device=prefix.device)
        else:
            tokens, mask = self.embed(name, value)
            if prefix is not None:
                if prefix.shape[0] != tokens.shape[0]:
                    raise ValueError(f"modality {name!r}: the prefix has batch size {prefix.shape[0]}, the input {tokens.shape[0]}")
                tokens = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)
                mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.bool, device=mask.device), mask], dim=1)
        return self.encoders[self.encoder_group[name]](tokens, mask, adapt=adapt)

    def latents(self, inputs: Mapping[str, Tensor | Mapping[str, Tensor]], task: str) -> dict[str, Tensor]:
        """inputs -> {modality: latents [b, l, d]} for each of ``task``'s modalities present (or
        given through a prefix modality), as the fusion reads them (after representation tuning)."""
        tc = self._check_inputs(inputs, task)
        rt = self.representation_tuning  # MAG: after the encoder, or inside the primary's (encoded last)
        latents = {}
        for m in rt.encoding_order(tc.modalities) if rt is not None else tc.modalities:
            prefix = self.prefix_tokens(m, inputs) if self.prefix_host else None
            if m in inputs or prefix is not None:
                adapt = rt.encoder_adapt(m, latents) if rt is not None else None
                latents[m] = self.encode_modality(m, inputs.get(m), prefix=prefix, adapt=adapt)
        latents = {m: latents[m] for m in tc.modalities if m in latents}
        sizes = {m: z.shape[0] for m, z in latents.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"task {task!r}: modalities disagree on batch size: {sizes}")
        if rt is not None and rt.position == "after_encoder":
            latents = rt(latents)
        return latents

    def encode(self, inputs: Mapping[str, Tensor | Mapping[str, Tensor]], task: str) -> Tensor:
        """inputs -> fused [b, M * d] (the head's input)."""
        return self.fusion(self.latents(inputs, task), self.config.tasks[task].modalities, _key(task))

    def head(self, task: str, fused: Tensor, inputs: Mapping[str, Tensor | Mapping[str, Tensor]] | None = None,
             latents: Mapping[str, Tensor] | None = None) -> Tensor:
        """fused [b, M * d] -> ``task``'s outputs [b, c]; the head also reads the wide inputs (sparse
        bags, see :class:`TaskHead`) of those of its modalities in ``inputs`` whose embedder has one, and,
        with ``model.modality_heads``, adds the modality heads' outputs on ``latents`` (see :meth:`forward`)."""
        return self.output_parts(task, fused, inputs, latents or {})[0]

    def output_parts(self, task: str, fused: Tensor, inputs: Mapping[str, Any] | None,
                     latents: Mapping[str, Tensor], mix: tuple[Tensor, float] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``task``'s outputs [b, c] and the parts they are the weighted sum of: ``"deep"`` (the head on the
        fused vector), ``"wide"`` (the wide read-outs, where the head has them for these inputs),
        ``"modality:<m>"`` (the modality heads, late fusion, for the modalities in ``latents``) and ``"summary:<m>"``
        (the summary heads, for the modalities in ``inputs``); the weights
        are the task's part weights (1 until :meth:`fit_part_weights`), or 1 for a task with one part
        (or a regression, whose wide read-out adds to its deep part unweighted). ``mix`` (see :meth:`forward`;
        ``fused`` and ``latents`` are then already mixed) mixes the parts read from ``inputs``: the wide read-outs'
        logits (linear in the bag, so the same as mixing the bags) and the summary heads' standardised statistics."""
        deep, wide = self.heads[_key(task)].deep_and_wide(fused, self.wide_bags(inputs, task))
        if wide is not None and mix is not None:
            wide = mix_rows(wide, *mix)
        parts = {"deep": deep}
        outputs = deep
        if wide is not None:
            parts["wide"] = wide
            outputs = deep + wide.to(deep.dtype)
        if _key(task) in self.modality_heads:
            heads = self.modality_heads[_key(task)]
            for m in self.late_fusion_modalities(task):
                if m in latents:
                    parts[f"modality:{m}"] = heads[_key(m)](latents[m].mean(dim=1))
        if _key(task) in self.summary_heads and inputs is not None:
            heads = self.summary_heads[_key(task)]
            for m in self.summary_modalities(task):
                if inputs.get(m) is not None:
                    stats = self.embedders[_key(m)].summary_statistics(self._cast(inputs[m]))
                    parts[f"summary:{m}"] = heads[_key(m)](stats, mix)
        if _key(task) not in self.part_weights:
            return outputs, parts
        # a task with part weights is never a regression (part_names), so every part here has a weight
        weights = dict(zip(self.part_names(task), self.part_weights[_key(task)].weight))
        outputs = sum(weights[k].to(outputs.dtype) * v.to(outputs.dtype) for k, v in parts.items())
        return outputs, parts

    def part_weight(self, task: str, part: str) -> Tensor | float:
        """The weight of ``part`` (one of :meth:`part_names`) in ``task``'s outputs: 1 until :meth:`fit_part_weights`,
        and for a task without part weights."""
        if _key(task) not in self.part_weights:
            return 1.0
        names = self.part_names(task)
        if part not in names:
            raise ValueError(f"task {task!r} has no output part {part!r}; its parts are {names}")
        return self.part_weights[_key(task)].weight[names.index(part)]

    @torch.no_grad()
    def fit_part_weights(self, task: str, batches: Iterable[tuple[Mapping[str, Any], Tensor]], *,
                         return_ridge: bool = False) -> dict[str, float] | tuple[dict[str, float], float]:
        """Fit ``task``'s part weights on held-out rows: ``batches`` yields (inputs, targets); each part
        (:meth:`part_names`: the fused head, the wide read-outs, each modality head, each summary head) gets the
        positive weight that minimises the task's loss of the weighted sum (:func:`highmmt.heads.fit_part_weights`,
        stacking; the ridge toward equal weights chosen by cross-validation on these rows). Sets the buffer and
        returns {part name: weight}, with ``return_ridge`` also the ridge chosen (``inf``: equal weights)."""
        if _key(task) not in self.part_weights:
            raise ValueError(f"task {task!r} has one output part: no wide read-out, modality heads or summary heads "
                             "(model.modality_heads needs two or more modalities, model.summary_heads a series; "
                             "regression tasks have no part weights)")
        parts, target = collect_parts(self, task, batches, self.part_names(task))
        task_type = self.config.tasks[task].task_type
        with torch.enable_grad():
            ridge, _ = choose_part_ridge(parts, target, task_type)
            fitted = fit_part_weights(parts, target, task_type, ridge=ridge)
        order = self.part_names(task)
        buffer = self.part_weights[_key(task)].weight
        buffer.copy_(torch.tensor([fitted[k] for k in order], dtype=buffer.dtype, device=buffer.device))
        weights = {k: fitted[k] for k in order}
        return (weights, ridge) if return_ridge else weights

    def wide_bags(self, inputs: Mapping[str, Any] | None, task: str) -> dict[str, tuple[Tensor, Tensor]]:
        """{modality key: (ids, weights)}: the sparse bags of ``task``'s modalities in ``inputs`` that its head reads."""
        head, bags = self.heads[_key(task)], {}
        for m in self.config.tasks[task].modalities:
            if _key(m) in head.wide and inputs is not None and inputs.get(m) is not None:
                bags[_key(m)] = self.embedders[_key(m)].wide_bag(self._cast(inputs[m]))
        return bags

    def has_wide(self, task: str) -> bool:
        """Whether ``task``'s head has a wide read-out (of any of its modalities)."""
        return bool(self.heads[_key(task)].wide)

    @torch.no_grad()
    def set_wide_priors(self, task: str, batches: Iterable[tuple[Mapping[str, Any], Tensor]], alpha: float = 1.0) -> dict[str, int]:
        """Set the prior of each of ``task``'s wide read-outs to multinomial naive Bayes fitted on ``batches``
        ((inputs, class labels [b]) of its training rows; see :func:`highmmt.heads.naive_bayes_prior`).
        Returns {modality key: ids seen in training}."""
        tc, head = self.config.tasks[task], self.heads[_key(task)]
        if tc.task_type != "classification":
            raise ValueError(f"task {task!r}: a naive Bayes prior needs class labels; the task is {tc.task_type}")
        bags: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {m: [] for m in head.wide}
        for inputs, target in batches:
            for m, (ids, weights) in self.wide_bags(inputs, task).items():
                bags[m].append((ids.cpu(), weights.cpu(), target.cpu()))
        seen = {}
        for m, readout in head.wide.items():
            prior = naive_bayes_prior(bags[m], readout.prior.shape[0], tc.num_outputs, alpha)
            readout.prior.copy_(prior.to(readout.prior.device, readout.prior.dtype))
            seen[m] = int(torch.cat([ids[(weights > 0) & (ids > 0)] for ids, weights, _ in bags[m]]).unique().numel())
        return seen

    def wide_logits(self, inputs: Mapping[str, Any], task: str) -> Tensor | None:
        """The wide read-outs alone [b, c] (None when ``task``'s head has none for these inputs)."""
        return self.heads[_key(task)].wide_logits(self.wide_bags(inputs, task))

    def forward(self, inputs: Mapping[str, Tensor | Mapping[str, Tensor]], task: str, *,
                return_latents: bool = False, return_parts: bool = False,
                mix: tuple[Tensor, float] | None = None) -> Tensor | tuple[Any, ...]:
        """inputs -> outputs [b, c] of ``task``'s head; with ``return_latents`` also the latents
        {modality: [b, l, d]} the fusion read (training methods that work on latents use them), with
        ``return_parts`` also the parts {name: [b, c]} the outputs are the sum of (:meth:`output_parts`),
        in that order.

        The outputs are the head's on the fused vector, plus its wide read-outs, plus, with
        ``model.modality_heads``, one head per modality present on that modality's mean-pooled latents
        (late fusion: a sum of logits, so the class ranking is that of the mean of the parts' log-probabilities).

        ``mix`` = (perm [b], lam): manifold mixup (Verma et al. 2019) at the encoder's output. Every modality's
        latents become ``lam * z + (1 - lam) * z[perm]`` before the fusion, with the same rows and ``lam`` for all
        of them, and the parts that read the inputs directly are mixed alike (:meth:`output_parts`); the caller
        mixes the targets' losses the same way (``train.mixup``).
        """
        latents = self.latents(inputs, task)
        if mix is not None:
            latents = {m: mix_rows(z, *mix) for m, z in latents.items()}
        fused = self.fusion(latents, self.config.tasks[task].modalities, _key(task))
        outputs, parts = self.output_parts(task, fused, inputs, latents, mix)
        extra = ((latents,) if return_latents else ()) + ((parts,) if return_parts else ())
        return (outputs, *extra) if extra else outputs

    # ---- bookkeeping -----------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, Any]:
        """Parameters per part: embedders (per modality), encoders (per group), fusion, heads (per task)."""

        def count(module: nn.Module | nn.Parameter) -> int:
            if isinstance(module, nn.Parameter):
                return module.numel()
            return sum(p.numel() for p in module.parameters())

        emb = {m: count(self.embedders[_key(m)]) + count(self.modality_embedding[_key(m)])
               + (count(self.prefixes[_key(m)]) if m in self.prefix_host else 0) for m in self.config.modalities}
        enc = {g: count(e) for g, e in self.encoders.items()}
        heads = {t: count(self.heads[_key(t)]) + sum(count(extra[_key(t)]) for extra in (self.modality_heads, self.summary_heads)
                                                      if _key(t) in extra)
                 for t in self.config.tasks}
        return {
            "embedders": emb,
            "encoders": enc,
            "fusion": count(self.fusion),
            "heads": heads,
            "shared": sum(enc.values()) + count(self.fusion),
            "total": count(self),
        }

    def task_state(self, state: Mapping[str, Tensor], task: str) -> dict[str, Tensor]:
        """The entries of ``state`` (this model's state dict) that ``task`` reads: its modalities'
        embedders, modality embeddings and prefixes, the encoders, the fusion, its own head; other
        tasks' heads and other modalities' embedders are left out."""
        if task not in self.config.tasks:
            raise ValueError(f"unknown task {task!r}; the model has {sorted(self.config.tasks)}")
        others = {
            "embedders": {_key(m) for m in self.config.modalities} - {_key(m) for m in self.config.tasks[task].modalities},
            "heads": {_key(t) for t in self.config.tasks if t != task},
        }
        others["modality_embedding"] = others["prefixes"] = others["embedders"]
        others["modality_heads"] = others["summary_heads"] = others["part_weights"] = others["heads"]
        def reads(key: str) -> bool:
            part, _, rest = key.partition(".")
            return rest.split(".")[0] not in others.get(part, ())

        return {k: v for k, v in state.items() if reads(k)}

    def load_task_weights(self, directory: str | Path, task: str) -> bool:
        """Overlay ``task``'s own best weights (``task_weights/<task>.safetensors``, ``train.select=task``)
        on the loaded ones; False (nothing changed) when the run folder has none for it."""
        path = Path(directory) / TASK_WEIGHTS_DIR / f"{task}.safetensors"
        if not path.is_file():
            return False
        state = with_part_weights(self, load_weights(path))
        own = self.task_state(self.state_dict(), task)
        check_state_dict(own, state, where=str(path))
        self.load_state_dict(state, strict=False)
        return True

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors(directory / WEIGHTS_NAME, self.state_dict(), metadata={"format": "pt"})
        atomic_write_json(directory / CONFIG_NAME, self.config.to_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "HighMMT":
        """Rebuild from ``config.json`` and load ``model.safetensors``; mismatches raise ValueError."""
        import json

        directory = Path(directory)
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; expected a folder written by save_pretrained")
        raw = json.loads(cfg_path.read_text())
        # A training run's config.json nests the model config beside the training config.
        config = HighMMTConfig.from_dict(raw["model"] if "model" in raw and "train" in raw else raw)
        with weights_from_checkpoint():  # backbones skip their own weight files: the checkpoint holds them
            model = cls(config)
        state = with_part_weights(model, load_weights(directory / WEIGHTS_NAME))
        if not fits(model, state):
            legacy = with_earlier_defaults(config, state)
            if legacy is None:  # the error names what today's defaults expect
                check_state_dict(model.state_dict(), state, where=str(directory))
            with weights_from_checkpoint():
                model = cls(legacy)
            check_state_dict(model.state_dict(), state, where=str(directory))
        model.load_state_dict(state)
        return model.to(map_location)
