"""Typed configuration: one dataclass per component, nested into :class:`HighMMTConfig`.

Configs round-trip through JSON (``to_dict`` / ``from_dict``) and accept typed dotted overrides
(``apply_overrides(cfg, ["encoder.depth=2"])``): an unknown key or a value of the wrong type is an
error that names the key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

TASK_TYPES = ("classification", "multilabel", "regression")
FUSION_KINDS = ("pairwise", "bottleneck", "none")
ATTENTION_DROPOUT_KINDS = ("keys", "probs")
REPRESENTATION_TUNING_POSITIONS = ("after_encoder", "inside_encoder")


def _check_dropout(section: str, dropout: float, kind: str) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{section}.dropout must be in [0, 1), got {dropout}")
    if kind not in ATTENTION_DROPOUT_KINDS:
        raise ValueError(f"{section}.attention_dropout must be one of {ATTENTION_DROPOUT_KINDS}, got {kind!r}")


@dataclass
class ModalityConfig:
    """One modality: its kind (embedder) and the embedder's options."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskConfig:
    """One task's head: the modalities it reads (ordered), its type and output size."""

    modalities: list[str]
    task_type: str = "classification"
    num_outputs: int = 2

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {TASK_TYPES}, got {self.task_type!r}")
        if self.num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {self.num_outputs}")
        if not self.modalities:
            raise ValueError("a task needs at least one modality")


@dataclass
class EncoderConfig:
    """Shared Perceiver-style unimodal encoder (HighMMT: depth 1, 12-20 latents, 1 cross head).

    ``dropout`` applies to the feed-forward hidden layer and to attention. ``attention_dropout``
    says how attention is dropped: ``"keys"`` (default) hides each (example, key) pair from every
    query and head with probability ``dropout`` through the attention mask, so the fused attention
    kernel still runs; ``"probs"`` drops attention probabilities after the softmax (the classic
    kind; on the CPU it leaves the fused kernel, ~1.2x slower encoder step at the default preset).
    """

    depth: int = 1
    num_latents: int = 16
    cross_heads: int = 1
    heads: int = 4
    dim_head: int = 32
    self_per_cross: int = 1
    mlp_mult: int = 2
    dropout: float = 0.0
    attention_dropout: str = "keys"

    def __post_init__(self) -> None:
        _check_dropout("encoder", self.dropout, self.attention_dropout)


@dataclass
class FusionConfig:
    """Cross-modal fusion: ``pairwise`` (HighMMT, cost ~ M^2), ``bottleneck`` (cost ~ M) or ``none``.

    ``dropout`` and ``attention_dropout`` as in :class:`EncoderConfig`.
    """

    kind: str = "pairwise"
    depth: int = 1
    heads: int = 4
    dim_head: int = 32
    mlp_mult: int = 2
    num_tokens: int = 8
    dropout: float = 0.0
    attention_dropout: str = "keys"

    def __post_init__(self) -> None:
        _check_dropout("fusion", self.dropout, self.attention_dropout)
        if self.kind not in FUSION_KINDS:
            raise ValueError(f"fusion.kind must be one of {FUSION_KINDS}, got {self.kind!r}")


@dataclass
class SharingConfig:
    """Parameter sharing.

    ``encoder``: ``"all"`` (one encoder for every modality, HighMMT's default), ``"none"`` (one per
    modality) or ``{group: [modality, ...]}`` covering every modality once.
    ``fusion``: ``"all"``, ``"none"`` (one block per modality pair) or ``{group: ["a|b", ...]}`` over
    unordered modality pairs written ``"a|b"``.
    """

    encoder: Union[str, dict[str, list[str]]] = "all"
    fusion: Union[str, dict[str, list[str]]] = "all"


@dataclass
class RepresentationTuningConfig:
    """Representation tuning (MAG, Rahman et al. 2020; ``highmmt/pretrained.py``), off while ``primary`` is empty.

    The latents of modality ``primary`` are shifted by a gated sum of projections of the pooled
    latents of the ``context`` modalities (empty: every other modality); ``beta`` caps the shift's
    norm relative to the latents', ``dropout`` applies to the shift. ``position``: where the shift
    lands: ``"after_encoder"`` (the encoder's output latents, before fusion) or ``"inside_encoder"``
    (the primary's latents inside its encoder, after encoder layer ``layer``'s cross-attention, so
    the rest of the encoder reads the shifted states, as MAG sits inside BERT); ``layer`` (1..depth)
    is read by ``inside_encoder`` only.
    """

    primary: str = ""
    context: list[str] = field(default_factory=list)
    beta: float = 1.0
    dropout: float = 0.0
    position: str = "after_encoder"
    layer: int = 1

    def __post_init__(self) -> None:
        if self.beta <= 0.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.representation_tuning: beta must be > 0 and dropout in [0, 1), got {self.beta} and {self.dropout}")
        if self.position not in REPRESENTATION_TUNING_POSITIONS:
            raise ValueError(f"model.representation_tuning.position must be one of {REPRESENTATION_TUNING_POSITIONS}, got {self.position!r}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"model.representation_tuning.layer must be an integer >= 1 (an encoder layer), got {self.layer!r}")
        if self.position == "after_encoder" and self.layer != 1:
            raise ValueError(f"model.representation_tuning.layer={self.layer} needs position='inside_encoder'; "
                             "'after_encoder' shifts the encoder's output")


@dataclass
class HighMMTConfig:
    """Everything needed to rebuild a model (saved as ``config.json``)."""

    dim: int = 64
    modalities: dict[str, ModalityConfig] = field(default_factory=dict)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    sharing: SharingConfig = field(default_factory=SharingConfig)
    head_hidden: int = 0
    head_dropout: float = 0.0
    # The wide read-outs' input dropout: in training, each id of a sparse bag (a text's distinct n-grams) is dropped
    # with this probability and the rest scaled by 1 / (1 - p) (dropout on a linear model's features, Wager et al.
    # 2013: an adaptive L2 penalty that weighs rare features more); 0 = off.
    wide_dropout: float = 0.0
    modality_heads: bool = False
    summary_heads: bool = False
    token_dropout: float = 0.0
    gradient_checkpointing: bool = False
    representation_tuning: RepresentationTuningConfig = field(default_factory=RepresentationTuningConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.token_dropout < 1.0:
            raise ValueError(f"model.token_dropout must be in [0, 1), got {self.token_dropout}")
        if not 0.0 <= self.wide_dropout < 1.0:
            raise ValueError(f"model.wide_dropout must be in [0, 1), got {self.wide_dropout}")
        for name, task in self.tasks.items():
            for m in task.modalities:
                if m not in self.modalities:
                    raise ValueError(
                        f"task {name!r} reads modality {m!r}, which is not in the config's modalities "
                        f"{sorted(self.modalities)}"
                    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HighMMTConfig":
        return from_dict(cls, d)


# ---- generic dataclass <-> dict with type checks ----------------------------------------------
def _check_value(value: Any, tp: Any, key: str) -> Any:
    """Coerce/check ``value`` against the annotation ``tp``; raise naming ``key``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _check_value(value, arg, key)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise TypeError(f"{key}: {value!r} matches none of {tp}")
    if tp is type(None):
        if value is not None:
            raise TypeError(f"{key}: expected None, got {value!r}")
        return None
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key + ".")
    if origin is dict:
        kt, vt = get_args(tp) or (Any, Any)
        if not isinstance(value, Mapping):
            raise TypeError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {_check_value(k, kt, key): _check_value(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple) or tp in (list, tuple):
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{key}: expected a list, got {type(value).__name__}")
        et = args[0] if args else Any
        return [_check_value(v, et, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, d: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(prefix + k for k in unknown)}; known: {sorted(names)}")
    kwargs = {k: _check_value(v, hints[k], prefix + k) for k, v in d.items()}
    return cls(**kwargs)


def parse_override_value(text: str) -> Any:
    """Parse the right side of ``key=value``: JSON if it parses (numbers, true, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg: Any, overrides: Iterable[str]) -> Any:
    """Return a copy of dataclass ``cfg`` with ``a.b.c=value`` overrides applied (typed, checked)."""
    d = dataclasses.asdict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = d
        for i, p in enumerate(parts[:-1]):
            if not isinstance(node, dict) or p not in node:
                raise ValueError(f"override {key!r}: unknown key {'.'.join(parts[: i + 1])!r}")
            node = node[p]
        if not isinstance(node, dict) or parts[-1] not in node:
            known = sorted(node) if isinstance(node, dict) else []
            raise ValueError(f"override {key!r}: unknown key; known at this level: {known}")
        node[parts[-1]] = parse_override_value(raw)
    return from_dict(type(cfg), d)


__all__ = [
    "EncoderConfig",
    "FusionConfig",
    "HighMMTConfig",
    "ModalityConfig",
    "RepresentationTuningConfig",
    "SharingConfig",
    "TaskConfig",
    "apply_overrides",
    "from_dict",
]

_ = typing  # keep typing imported for get_type_hints on postponed annotations
