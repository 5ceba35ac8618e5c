"""Pretrained backbones, embedders + heads over a frozen encoder, and representation tuning (MAG).

Letters: b batch, n tokens, l latents, d width, f a backbone's feature width, C context modalities.

- **Backbones** (:func:`build_backbone`, :func:`load_backbone_weights`): any timm model
  (``"timm:<name>"``, built with ``pretrained=False`` so nothing is downloaded) or any ``nn.Module``
  (``"module:package.module:Attr"``, called with keyword options) with weights from a local
  ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` file. The ``pretrained`` embedder kind
  (``modalities/pretrained.py``) turns one into a modality embedder.
- **Embedders + heads over a frozen encoder**: ``train.py --init-from RUN --finetune embedders_head``
  (``transference/finetune.py``) keeps the loaded shared encoder(s) and fusion frozen; only the embedders,
  their modality-type embeddings and the heads learn. This is not prefix tuning (Frozen, Tsimpoukelli
  et al. 2021, prepends k trainable prefix tokens to a frozen model's token sequence), which is not
  built; the former policy name ``prefix`` is an error that says so.
- **Representation tuning** (Rahman et al. 2020, *MAG*): :class:`MultimodalAdaptationGate` shifts
  the frozen encoder's latents of a primary modality by a gated sum of projections of the other
  modalities' pooled latents, ``h' = h + alpha * H``, ``alpha = min(||h|| / ||H|| * beta, 1)``.
  Switched on by ``model.representation_tuning.primary``; ``.position`` says where
  :class:`RepresentationTuning` shifts: ``after_encoder`` (default) between the encoder and the
  fusion, ``inside_encoder`` inside the primary's encoder pass (as MAG sits inside BERT; see the
  class). A fresh gate is new to any checkpoint, so it trains under every ``train.finetune`` policy:
  ``--finetune head`` trains only the gate and the heads, ``--finetune embedders_head`` adds the
  embedders. Both positions use the same gate, under the same parameter names.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from highmmt.checkpoint import check_state_dict
from highmmt.config import REPRESENTATION_TUNING_POSITIONS, HighMMTConfig

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")

# ---- backbones ----------------------------------------------------------------------------------
_FROM_CHECKPOINT: contextvars.ContextVar[bool] = contextvars.ContextVar("highmmt_weights_from_checkpoint", default=False)


@contextlib.contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Build models whose every weight will come from a checkpoint: backbones skip their ``weights`` file.

    ``HighMMT.from_pretrained`` builds inside this, so a saved model loads without the backbone file
    it was first initialised from.
    """
    token = _FROM_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _FROM_CHECKPOINT.reset(token)


def backbone_weights_wanted() -> bool:
    """False while :func:`weights_from_checkpoint` is active."""
    return not _FROM_CHECKPOINT.get()


def build_backbone(spec: str, options: Mapping[str, Any] | None = None, *, what: str = "backbone") -> tuple[nn.Module, bool]:
    """``"timm:<name>"`` or ``"module:package.module:Attr"`` -> (module, is_timm).

    timm models are built with ``pretrained=False, num_classes=0`` (features, no classifier) plus
    ``options``; an arbitrary module is ``Attr(**options)`` (``Attr`` a class or factory function).
    """
    options = dict(options or {})
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"{what}: backbone must look like 'timm:<model name>' or 'module:package.module:Attr', got {spec!r}")
    source, _, target = spec.partition(":")
    if source == "timm":
        import timm

        if not timm.is_model(target):
            close = timm.list_models(f"*{target.split('_')[0]}*")[:8]
            raise ValueError(f"{what}: timm has no model {target!r} (timm {timm.__version__}); similar: {close}")
        for key in ("pretrained", "num_classes"):
            if key in options:
                raise ValueError(f"{what}: backbone_options may not set {key!r}: weights come from the 'weights' "
                                 "file and the classifier is always dropped (num_classes=0)")
        try:
            return timm.create_model(target, pretrained=False, num_classes=0, **options), True
        except TypeError as e:
            raise ValueError(f"{what}: timm.create_model({target!r}) rejected backbone_options {options}: {e}") from e
    if source == "module":
        module_name, _, attr = target.partition(":")
        if not module_name or not attr:
            raise ValueError(f"{what}: expected 'module:package.module:Attr', got {spec!r}")
        try:
            factory: Any = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(f"{what}: cannot import module {module_name!r} named by {spec!r}: {e}") from e
        for part in attr.split("."):
            if not hasattr(factory, part):
                raise ValueError(f"{what}: module {module_name!r} has no attribute {attr!r}")
            factory = getattr(factory, part)
        if not callable(factory):
            raise TypeError(f"{what}: {spec!r} is not callable (a class or factory function was expected)")
        try:
            module = factory(**options)
        except TypeError as e:
            raise ValueError(f"{what}: {spec} rejected backbone_options {options}: {e}") from e
        if not isinstance(module, nn.Module):
            raise TypeError(f"{what}: {spec}(**backbone_options) returned {type(module).__name__}, expected an nn.Module")
        return module, False
    raise ValueError(f"{what}: unknown backbone source {source!r} in {spec!r}; use 'timm:<name>' or 'module:package.module:Attr'")


def feature_width(module: nn.Module, *, what: str = "backbone") -> int | None:
    """A backbone's output feature width f from its attributes (timm: ``num_features``), or None."""
    for attr in ("num_features", "embed_dim", "out_features", "hidden_size", "feature_dim"):
        v = getattr(module, attr, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def read_weights(path: str | Path, *, what: str = "backbone") -> dict[str, Tensor]:
    """A local weights file -> flat ``{name: tensor}``; ``.pt``/``.pth``/``.bin`` load with ``weights_only``.

    A torch file holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped; a ``module.``
    prefix on every key (DataParallel) is dropped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: weights file {str(path)!r} does not exist (weights are only read from local files; nothing is downloaded)")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"{what}: weights file {str(path)!r} should end in one of {WEIGHT_SUFFIXES}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
            raise ValueError(f"{what}: cannot read {str(path)!r} as a torch state dict: {e}") from e
        for key in ("state_dict", "model", "module"):
            if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{what}: {str(path)!r} does not hold a flat name -> tensor state dict")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_backbone_weights(
    module: nn.Module,
    path: str | Path,
    *,
    prefix: str = "",
    ignore: Sequence[str] = (),
    what: str = "backbone",
) -> int:
    """Load a local weights file into ``module``, strictly; return the number of tensors loaded.

    Args:
        prefix: keep only keys under this prefix, with the prefix removed (e.g. ``"embedders.glyph.backbone."``
            takes a backbone out of a highmmt ``model.safetensors``).
        ignore: key prefixes silently dropped from the file (a timm checkpoint's classifier, ``"fc."``).
    Raises:
        FileNotFoundError for a missing file; ValueError naming the missing, unexpected and mis-shaped keys.
    """
    state = read_weights(path, what=what)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{what}: no tensor in {str(path)!r} starts with weights_prefix {prefix!r}")
    own = module.state_dict()
    state = {k: v for k, v in state.items() if k in own or not any(k.startswith(p) for p in ignore)}
    check_state_dict(own, state, where=f"{what}: weights {str(path)!r}")
    module.load_state_dict(state)
    return len(state)


# ---- representation tuning (MAG) ----------------------------------------------------------------
class MultimodalAdaptationGate(nn.Module):
    """Gated shift of a primary modality's representation by context modalities (Rahman et al. 2020).

    For each context c: gate ``g_c = relu(W_gc [h; v_c])`` (per token), ``H = sum_c g_c * (W_c v_c) + b``,
    ``alpha = min(||h|| / ||H|| * beta, 1)`` per token, output ``h + dropout(alpha * H)``. The
    projections ``W_c`` and ``b`` start at zero, so an untrained gate is the identity and training starts
    from the frozen model's exact outputs (the paper follows the shift with BERT's LayerNorm; the
    encoder here already ends normalised by its own blocks, and a LayerNorm would break that identity).

    Args:
        dim: width d of h and of each context vector. num_context: C. beta: the paper's scaling
        hyper-parameter (larger: larger shifts allowed). dropout: on the shift. eps: guards ||H|| = 0.
    """

    def __init__(self, *, dim: int, num_context: int, beta: float = 1.0, dropout: float = 0.0, eps: float = 1e-6) -> None:
        super().__init__()
        if num_context < 1:
            raise ValueError(f"MAG needs at least one context modality, got num_context={num_context}")
        if beta <= 0:
            raise ValueError(f"MAG beta must be > 0, got {beta}")
        self.beta = float(beta)
        self.eps = eps
        self.to_gate = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(num_context))
        self.to_shift = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(num_context))
        self.shift_bias = nn.Parameter(torch.zeros(dim))
        for proj in self.to_shift:
            nn.init.zeros_(proj.weight)
        self.dropout = nn.Dropout(dropout)

    def shift(self, h: Tensor, context: Sequence[Tensor | None]) -> Tensor:
        """h [b, n, d], context: C vectors [b, d] (None: that modality is absent) -> H [b, n, d]."""
        if len(context) != len(self.to_gate):
            raise ValueError(f"MAG was built for {len(self.to_gate)} context modalities, got {len(context)}")
        total = self.shift_bias.to(h.dtype).expand_as(h)
        for v, to_gate, to_shift in zip(context, self.to_gate, self.to_shift):
            if v is None:
                continue
            v = v.unsqueeze(1).expand(-1, h.shape[1], -1)  # [b, n, d]
            gate = torch.relu(to_gate(torch.cat([h, v], dim=-1)))
            total = total + gate * to_shift(v)
        return total

    def forward(self, h: Tensor, context: Sequence[Tensor | None]) -> Tensor:
        """h [b, n, d] -> shifted h [b, n, d]."""
        H = self.shift(h, context)
        alpha = (h.norm(dim=-1, keepdim=True) / (H.norm(dim=-1, keepdim=True) + self.eps) * self.beta).clamp(max=1.0)
        return h + self.dropout(alpha * H)


class RepresentationTuning(nn.Module):
    """MAG on the latents of ``primary`` from the pooled latents of ``context`` modalities.

    Applies whenever the primary is among a task's present modalities; absent context modalities
    contribute nothing (with none present the primary's latents pass unchanged).

    ``position`` says where the primary's latents are shifted:

    - ``"after_encoder"``: :meth:`forward` shifts the encoder's output latents [b, l, d] of the
      primary, which the fusion then reads.
    - ``"inside_encoder"``: the shift lands inside the primary's own encoder pass, as MAG sits after
      layer j of BERT and the later layers read the shifted word states. A Perceiver layer is a
      cross-attention from l learned latents to the tokens, then self-attention blocks over the
      latents; the latents are the encoder's token-level hidden states. The shift is applied after
      encoder layer ``layer``'s cross-attention (and its feed-forward), before its self-attention
      blocks: that is the first point where the latents depend on the example (before it they are
      the learned latent array, the same for every input, so the gate would read nothing of the
      primary), and from there every later block of the encoder, the final LayerNorm included,
      reads the shifted states (at HighMMT's depth 1, the self-attention block and the norm).
      The context is the same as for ``after_encoder``: the mean-pooled output latents of the
      context modalities, encoded first without any shift; the primary is encoded last
      (:meth:`encoding_order`, :meth:`encoder_adapt`), so the context never depends on the
      primary and there is no circular dependence. Because only the position differs, the two
      settings have the same parameters under the same names.

    Args:
        dim: d. primary: modality name. context: modality names (default: every other modality).
        beta, dropout: see :class:`MultimodalAdaptationGate`.
        position: ``"after_encoder"`` | ``"inside_encoder"``. layer: the encoder layer (1-based)
            after whose cross-attention ``inside_encoder`` shifts.
    """

    def __init__(self, *, dim: int, primary: str, context: Sequence[str], beta: float = 1.0, dropout: float = 0.0,
                 position: str = "after_encoder", layer: int = 1) -> None:
        super().__init__()
        if position not in REPRESENTATION_TUNING_POSITIONS:
            raise ValueError(f"representation tuning position must be one of {REPRESENTATION_TUNING_POSITIONS}, got {position!r}")
        self.primary = primary
        self.context = list(context)
        self.position = position
        self.layer = layer
        self.gate = MultimodalAdaptationGate(dim=dim, num_context=len(self.context), beta=beta, dropout=dropout)

    @classmethod
    def from_config(cls, config: HighMMTConfig) -> "RepresentationTuning | None":
        """None when ``config.representation_tuning.primary`` is empty; names and the layer are checked."""
        rt = config.representation_tuning
        if not rt.primary:
            if rt.context:
                raise ValueError(f"model.representation_tuning.context={rt.context} needs model.representation_tuning.primary")
            return None
        known = sorted(config.modalities)
        if rt.primary not in config.modalities:
            raise ValueError(f"model.representation_tuning.primary {rt.primary!r} is not a modality of the model; known: {known}")
        context = list(rt.context) or [m for m in config.modalities if m != rt.primary]
        for m in context:
            if m not in config.modalities or m == rt.primary:
                raise ValueError(f"model.representation_tuning.context names {m!r}; expected modalities other than the "
                                 f"primary {rt.primary!r} among {known}")
        if not context:
            raise ValueError(f"model.representation_tuning: the model has no modality besides {rt.primary!r} to condition on")
        if rt.position == "inside_encoder" and not 1 <= rt.layer <= config.encoder.depth:
            raise ValueError(f"model.representation_tuning.layer={rt.layer}: the encoder has layers 1..{config.encoder.depth} "
                             "(model.encoder.depth)")
        return cls(dim=config.dim, primary=rt.primary, context=context, beta=rt.beta, dropout=rt.dropout,
                   position=rt.position, layer=rt.layer)

    def pooled_context(self, latents: Mapping[str, Tensor]) -> list[Tensor | None] | None:
        """The context modalities' latents [b, l, d] -> their means [b, d] (None: absent); None when none is present."""
        if not any(m in latents for m in self.context):
            return None
        return [latents[m].mean(dim=1) if m in latents else None for m in self.context]

    def encoding_order(self, modalities: Sequence[str]) -> list[str]:
        """The order to encode ``modalities`` in: for ``inside_encoder`` the primary last (its shift
        reads the others' latents); unchanged otherwise."""
        if self.position != "inside_encoder" or self.primary not in modalities:
            return list(modalities)
        return [m for m in modalities if m != self.primary] + [self.primary]

    def encoder_adapt(self, modality: str, latents: Mapping[str, Tensor]) -> dict[int, Callable[[Tensor], Tensor]] | None:
        """For ``inside_encoder`` and the primary: ``{layer: f}`` for ``PerceiverEncoder.forward``'s
        ``adapt``, with f shifting the primary's latents [b, l, d] by the gate from the context
        modalities already in ``latents``; None otherwise (nothing to shift, or no context present)."""
        if self.position != "inside_encoder" or modality != self.primary:
            return None
        pooled = self.pooled_context(latents)
        if pooled is None:
            return None

        def shift(h: Tensor) -> Tensor:
            sizes = {m: v.shape[0] for m, v in zip(self.context, pooled) if v is not None}
            if any(b != h.shape[0] for b in sizes.values()):
                raise ValueError(f"representation tuning: the primary {self.primary!r} has batch size {h.shape[0]}, "
                                 f"its context {sizes}")
            return self.gate(h, pooled)

        return {self.layer: shift}

    def forward(self, latents: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``after_encoder``: {modality: latents [b, l, d]} -> the same dict with the primary's latents
        shifted. ``inside_encoder`` shifts during encoding (:meth:`encoder_adapt`); calling this then
        is an error, so that code encoding modalities one by one cannot skip the shift silently."""
        if self.position != "after_encoder":
            raise ValueError(f"representation tuning with position={self.position!r} shifts the primary {self.primary!r} "
                             "inside its encoder pass: encode through HighMMT.latents (or pass encoder_adapt's result "
                             "to the encoder), not by calling the module on finished latents")
        out = dict(latents)
        pooled = self.pooled_context(latents)
        if self.primary not in latents or pooled is None:
            return out
        out[self.primary] = self.gate(latents[self.primary], pooled)
        return out
