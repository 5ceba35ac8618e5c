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

    The encoder's latents of modality ``primary`` are shifted by a gated sum of projections of the
    pooled latents of the ``context`` modalities (empty: every other modality) before fusion;
    ``beta`` caps the shift's norm relative to the latents', ``dropout`` applies to the shift.
    """

    primary: str = ""
    context: list[str] = field(default_factory=list)
    beta: float = 1.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.beta <= 0.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.representation_tuning: beta must be > 0 and dropout in [0, 1), got {self.beta} and {self.dropout}")


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
    token_dropout: float = 0.0
    gradient_checkpointing: bool = False
    representation_tuning: RepresentationTuningConfig = field(default_factory=RepresentationTuningConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.token_dropout < 1.0:
            raise ValueError(f"model.token_dropout must be in [0, 1), got {self.token_dropout}")
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


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COLEARN_METHODS = ("none", "translation", "contrastive")
MISSING_SLOTS = ("auto", "translation", "zero", "none")


@dataclass
class ColearnConfig:
    """Co-learning between two modalities of a task (``transference/colearn.py``; off while ``method`` is none).

    ``translation`` (Pham et al. 2019): a decoder maps the primary modality's latents to the secondary's
    (and back to the primary's when ``cyclic``); ``contrastive`` (CLIP / ALIGN): a symmetric InfoNCE
    loss at ``temperature`` aligns the two modalities' pooled, projected latents. ``weight`` scales the
    co-learning loss. ``tasks``: where it applies (empty: every task that reads both modalities).
    ``missing_slot``: what the head also learns to read in the secondary's slot, and what fills it when
    the secondary is missing (validation scores that primary-only path): ``translation`` (the
    translated latents), ``zero`` (a zero slot: modality dropout), ``none``; ``auto`` is
    ``translation`` for the translation method, else ``none``. ``supervise_secondary=false`` keeps the
    secondary out of the supervised forward: its labels are never used (cross-modal label transfer).
    """

    method: str = "none"
    primary: str = ""
    secondary: str = ""
    tasks: list[str] = field(default_factory=list)
    weight: float = 1.0
    cyclic: bool = False
    temperature: float = 0.1
    detach_target: bool = True
    missing_slot: str = "auto"
    supervise_secondary: bool = True
    decoder_depth: int = 1
    proj_dim: int = 0

    def __post_init__(self) -> None:
        if self.method not in COLEARN_METHODS:
            raise ValueError(f"train.colearn.method must be one of {COLEARN_METHODS}, got {self.method!r}")
        if self.missing_slot not in MISSING_SLOTS:
            raise ValueError(f"train.colearn.missing_slot must be one of {MISSING_SLOTS}, got {self.missing_slot!r}")
        if self.method == "none":
            return
        if not self.primary or not self.secondary:
            raise ValueError(f"train.colearn.method={self.method} needs train.colearn.primary and train.colearn.secondary "
                             f"(modality names), got primary={self.primary!r}, secondary={self.secondary!r}")
        if self.primary == self.secondary:
            raise ValueError(f"train.colearn.primary and train.colearn.secondary must differ, both are {self.primary!r}")
        if self.weight < 0.0:
            raise ValueError(f"train.colearn.weight must be >= 0, got {self.weight}")
        if self.temperature <= 0.0:
            raise ValueError(f"train.colearn.temperature must be > 0, got {self.temperature}")
        if self.decoder_depth < 1 or self.proj_dim < 0:
            raise ValueError(f"train.colearn.decoder_depth must be >= 1 and proj_dim >= 0 (0 = the model width), "
                             f"got {self.decoder_depth} and {self.proj_dim}")
        if self.method == "contrastive" and self.missing_slot == "translation":
            raise ValueError("train.colearn.missing_slot=translation needs method=translation (contrastive has no decoder)")


SEMI_METHODS = ("none", "self_training", "co_training", "co_regularization")
SEMI_PREDICT = ("views", "views+fused", "fused")


@dataclass
class SemiConfig:
    """Learning from unlabeled data (``transference/semisup.py``): off while ``method`` is none and
    ``labeled_fraction`` is 1 (``method=none`` with a fraction < 1 is the supervised-only baseline).

    ``labeled_fraction`` keeps labels for a stratified, seeded fraction of each training split (at least
    one row per class; ``train.py --labeled-fraction``); the other rows, and a bring-your-own task's
    ``unlabeled`` split, are the unlabeled pool. ``tasks``: classification tasks it applies to (empty:
    all). ``views``: two views of a task for co-training / co-regularization, ``"a+b|c"`` over modality
    names or kinds, one string for every task or ``{task: "a|b"}`` (empty: first modality | the rest).
    Pseudo-labeling rounds start after ``warmup_epochs`` and repeat every ``epochs_per_round``; each
    labels at most ``round_fraction`` of the initial pool (per view for co-training), only predictions
    of confidence >= ``threshold``, top-confidence first (per predicted class when ``class_balance``),
    scoring at most ``score_limit`` pool rows (0: all). Self-training adds a consistency loss
    (``consistency_weight``) between clean and ``noise``-perturbed unlabeled inputs; co-regularization
    an agreement loss (``agreement_weight``) between the views. ``predict_with``: what co-trained tasks
    predict with (``views``: the views' ensemble, ``views+fused`` also the task's own head, ``fused``).
    """

    method: str = "none"
    labeled_fraction: float = 1.0
    tasks: list[str] = field(default_factory=list)
    views: Union[str, dict[str, str]] = ""
    threshold: float = 0.9
    round_fraction: float = 0.1
    warmup_epochs: int = 1
    epochs_per_round: int = 1
    score_limit: int = 0
    class_balance: bool = True
    noise: float = 0.1
    consistency_weight: float = 1.0
    agreement_weight: float = 1.0
    unlabeled_batch_size: int = 0
    predict_with: str = "views"

    def __post_init__(self) -> None:
        if self.method not in SEMI_METHODS:
            raise ValueError(f"train.semi.method must be one of {SEMI_METHODS}, got {self.method!r}")
        if self.predict_with not in SEMI_PREDICT:
            raise ValueError(f"train.semi.predict_with must be one of {SEMI_PREDICT}, got {self.predict_with!r}")
        if not 0.0 < self.labeled_fraction <= 1.0:
            raise ValueError(f"train.semi.labeled_fraction must be in (0, 1], got {self.labeled_fraction}")
        if not 0.0 <= self.threshold <= 1.0 or not 0.0 < self.round_fraction <= 1.0:
            raise ValueError(f"train.semi.threshold must be in [0, 1] and round_fraction in (0, 1], "
                             f"got {self.threshold} and {self.round_fraction}")
        if self.warmup_epochs < 1 or self.epochs_per_round < 1:
            raise ValueError(f"train.semi.warmup_epochs and epochs_per_round must be >= 1, "
                             f"got {self.warmup_epochs} and {self.epochs_per_round}")
        for key in ("score_limit", "noise", "consistency_weight", "agreement_weight", "unlabeled_batch_size"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.semi.{key} must be >= 0, got {getattr(self, key)}")


FINETUNE_POLICIES = ("full", "head", "embedders_head", "lora")
# Policy names that are no longer accepted -> why, and what to use instead.
RETIRED_FINETUNE_POLICIES = {
    "prefix": "'prefix' trained the same parameters as 'embedders_head' (embedders and heads over a frozen "
              "encoder) and is now called that: use --finetune embedders_head. Real prefix tuning (Frozen, "
              "Tsimpoukelli et al. 2021: k trainable prefix tokens prepended to a frozen model's token sequence) "
              "is not built yet",
}



@dataclass
class TrainConfig:
    """How to train (``train.py``). Per-task dicts are keyed by task name."""

    epochs: int = 10
    steps_per_epoch: int = 100
    strategy: str = "highmmt"
    temperature: float = 2.0
    min_task_fraction: float = 0.2
    batch_size: int = 32
    batch_sizes: dict[str, int] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)
    eval_weights: dict[str, float] = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    # auto: from the device's capabilities (transference/autotune.py); compile: torch.compile the model (see the README's
    # Speed section for when it pays on a CPU)
    precision: str = "auto"
    compile: bool = False
    eval_batch_size: int = 128
    max_eval_samples: int = 2000
    prefetch_workers: int = 1
    threads: int = 0
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_fraction: float = 1.0
    augment_noise: float = 0.0
    label_smoothing: float = 0.0  # classification losses in train.py (highmmt.heads.task_loss)
    bad_rows: str = "error"  # rows with a missing value or NaN/inf: "error" names them, "drop" leaves them out
    # Modality name -> embedder options merged over the task specs' (a ``backbone`` option makes the
    # modality a pretrained backbone, modalities/pretrained.py).
    modality_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    colearn: ColearnConfig = field(default_factory=ColearnConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)  # learning from unlabeled data; see transference/semisup.py
    # Transfer (--init-from): freezing policy, LoRA sizes, layer-wise lr decay (1.0 = off); see transference/finetune.py.
    finetune: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    layer_decay: float = 1.0
    # Sharing analysis (analysis/interference.py): permute this task's training labels ("" = none), and train
    # only this part besides the heads ("" = every part; embedders | encoders | fusion; the rest stays at its start).
    shuffle_labels: str = ""
    train_only: str = ""

    def __post_init__(self) -> None:
        if self.train_only not in ("", "embedders", "encoders", "fusion"):
            raise ValueError(f"train.train_only must be '', 'embedders', 'encoders' or 'fusion', got {self.train_only!r}")
        if self.augment_noise < 0.0:
            raise ValueError(f"train.augment_noise must be >= 0, got {self.augment_noise}")
        if self.bad_rows not in ("error", "drop"):
            raise ValueError(f"train.bad_rows must be 'error' or 'drop', got {self.bad_rows!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1:
            raise ValueError("train.epochs, train.steps_per_epoch and train.batch_size must be >= 1")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train.train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.finetune in RETIRED_FINETUNE_POLICIES:
            raise ValueError(f"train.finetune={self.finetune!r} is no longer accepted: {RETIRED_FINETUNE_POLICIES[self.finetune]}")
        if self.finetune not in FINETUNE_POLICIES:
            raise ValueError(f"train.finetune must be one of {FINETUNE_POLICIES}, got {self.finetune!r}")
        if self.lora_rank < 1 or self.lora_alpha <= 0:
            raise ValueError(f"train.lora_rank must be >= 1 and train.lora_alpha > 0, got {self.lora_rank} and {self.lora_alpha}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"train.layer_decay must be in (0, 1] (1.0 = off), got {self.layer_decay}")


@dataclass
class RunConfig:
    """A preset / a run's resolved config: model sizes + training. ``model.modalities`` and
    ``model.tasks`` are filled from the task specs at run time."""

    model: HighMMTConfig = field(default_factory=HighMMTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    "ColearnConfig",
    "EncoderConfig",
    "FusionConfig",
    "HighMMTConfig",
    "ModalityConfig",
    "RepresentationTuningConfig",
    "RunConfig",
    "SemiConfig",
    "TrainConfig",
    "SharingConfig",
    "TaskConfig",
    "apply_overrides",
    "from_dict",
]

_ = typing  # keep typing imported for get_type_hints on postponed annotations
