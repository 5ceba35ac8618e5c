"""Pretrained backbone embedder: any timm model or ``nn.Module`` turns a modality into tokens.

Options (``ModalityConfig("pretrained", {...})``; or a task spec's ``modality_options`` with a
``backbone`` key, which switches that modality to this kind, see :func:`modality_config`):

- ``backbone``: ``"timm:<name>"`` (``timm.create_model(name, pretrained=False, num_classes=0,
  in_chans=channels, **backbone_options)``: nothing is downloaded) or ``"module:package.module:Attr"``
  (``Attr(**backbone_options)``, any ``nn.Module``).
- ``input_kind``: the raw input's kind (``image`` by default): batches come from that kind's
  ``collate``. ``image`` and ``video`` inputs become float [0, 1] NCHW images (video: frame by frame);
  any other kind's ``x`` goes to the backbone as it is (floats cast to the model's dtype).
- ``weights``: a local ``.safetensors``/``.pt``/``.pth``/``.bin`` file loaded strictly into the
  backbone; ``weights_prefix`` keeps only keys under a prefix (``"embedders.glyph.backbone."`` takes
  the backbone out of a highmmt checkpoint). A timm classifier in the file is ignored.
- ``freeze``: the backbone's weights stay fixed (no gradients, run under ``no_grad``, kept in eval
  mode so batch-norm statistics stay fixed too); only the projection to width d learns.
- ``tokens``: ``spatial`` (``forward_features``: every spatial position, patch or frame a token) or
  ``pooled`` (the backbone's pooled features, one token per image / frame).
- ``image_size``: resize images / frames to ``image_size`` x ``image_size`` first (0: as they come).
- ``feature_dim``: the backbone's output width, for modules without ``num_features``/``embed_dim``.
- ``channels`` (image/video), ``max_frames`` (video) and the input kind's other options, used by its
  collate.

Tokens: backbone features [b, f, h', w'] -> [b, h'w', f]; [b, n, f] as they are; [b, f] -> one
token; then ``Linear(f -> d)`` + fixed sinusoidal positions (2-d grid, frames x grid, or 1-d).
A token is real if any pixel (frame, step) under it is.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from highmmt.config import ModalityConfig
from highmmt.embedder import Batch, Embedder, sinusoidal_positions
from highmmt.pretrained import backbone_weights_wanted, build_backbone, feature_width, load_backbone_weights
from highmmt.registry import EMBEDDERS
from modalities._common import batch_mask, finish, pixels_to_float, positive_int, resample, sincos_grid, who, zero_invalid

TOKEN_MODES = ("spatial", "pooled")
PIXEL_KINDS = ("image", "video")
# This kind's own options; everything else belongs to the input kind (collate options).
OWN_OPTIONS = ("backbone", "input_kind", "weights", "weights_prefix", "freeze", "tokens", "image_size",
               "feature_dim", "backbone_options")


def _input_options(kind: str, input_kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options meant for ``input_kind``, checked against its embedder's constructor."""
    if input_kind == kind:
        raise ValueError(f"{kind} embedder: input_kind may not be {kind!r} itself")
    cls = EMBEDDERS.get(input_kind)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "name", "dim"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"{kind} embedder: unknown option(s) {unknown}; its own: {sorted(OWN_OPTIONS)}; "
                         f"input_kind {input_kind!r} accepts: {sorted(accepted)}")
    return dict(options)


def modality_config(kind: str, options: Mapping[str, Any]) -> ModalityConfig:
    """A task spec's (kind, options) -> the model's ModalityConfig: a ``backbone`` option makes it ``pretrained``.

    ``("image", {"channels": 1, "backbone": "timm:resnet18"})`` -> ``ModalityConfig("pretrained",
    {"channels": 1, "backbone": "timm:resnet18", "input_kind": "image"})``; other options pass unchanged.
    """
    options = dict(options)
    if "backbone" not in options or kind == PretrainedEmbedder.kind:
        return ModalityConfig(kind, options)
    if options.setdefault("input_kind", kind) != kind:
        raise ValueError(f"modality of kind {kind!r}: option input_kind={options['input_kind']!r} contradicts the kind")
    return ModalityConfig(PretrainedEmbedder.kind, options)


@EMBEDDERS.register("pretrained")
class PretrainedEmbedder(Embedder):
    """A (pretrained) backbone as a modality embedder.

    Args:
        name: the modality's name. dim: token width d.
        backbone, input_kind, weights, weights_prefix, freeze, tokens, image_size, feature_dim,
        backbone_options: see the module docstring.
        **input_options: the input kind's options (``channels``, ``max_frames``...).
    """

    kind = "pretrained"

    def __init__(
        self,
        *,
        name: str,
        dim: int,
        backbone: str,
        input_kind: str = "image",
        weights: str = "",
        weights_prefix: str = "",
        freeze: bool = False,
        tokens: str = "spatial",
        image_size: int = 0,
        feature_dim: int = 0,
        backbone_options: Mapping[str, Any] | None = None,
        **input_options: Any,
    ) -> None:
        super().__init__(name=name, dim=dim)
        what = f"modality {name!r} ({self.kind})"
        self.input_kind = input_kind
        self.input_options = _input_options(self.kind, input_kind, input_options)
        if tokens not in TOKEN_MODES:
            raise ValueError(f"{what}: option 'tokens' must be one of {TOKEN_MODES}, got {tokens!r}")
        if not isinstance(freeze, bool):
            raise TypeError(f"{what}: option 'freeze' must be true or false, got {freeze!r}")
        self.tokens = tokens
        self.freeze = freeze
        self.image_size = positive_int(self.kind, "image_size", image_size) if image_size else 0
        self.channels = positive_int(self.kind, "channels", input_options.get("channels", 1))
        max_frames = input_options.get("max_frames")
        self.max_frames = positive_int(self.kind, "max_frames", max_frames) if max_frames is not None else 0

        opts = dict(backbone_options or {})
        if isinstance(backbone, str) and backbone.startswith("timm:") and input_kind in PIXEL_KINDS:
            opts.setdefault("in_chans", self.channels)
        self.backbone, self.is_timm = build_backbone(backbone, opts, what=what)
        if weights and backbone_weights_wanted():
            classifier = (getattr(self.backbone, "pretrained_cfg", None) or {}).get("classifier") if self.is_timm else None
            ignore = [f"{c}." for c in ([classifier] if isinstance(classifier, str) else list(classifier or []))]
            load_backbone_weights(self.backbone, weights, prefix=weights_prefix, ignore=ignore, what=what)
        width = feature_dim or feature_width(self.backbone)
        if not width:
            raise ValueError(f"{what}: cannot tell the output width of backbone {backbone!r} (no num_features / "
                             "embed_dim attribute); give option feature_dim")
        self.feature_dim = positive_int(self.kind, "feature_dim", width)
        self.to_tokens = nn.Linear(self.feature_dim, dim)
        if freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
            for p in self.backbone.parameters():  # fine-tuning policies (transference/finetune.py) leave these frozen
                p.highmmt_frozen = True

    def train(self, mode: bool = True) -> "PretrainedEmbedder":
        super().train(mode)
        if self.freeze:  # batch-norm statistics and dropout of a frozen backbone stay as loaded
            self.backbone.eval()
        return self

    # ---- CPU side ----------------------------------------------------------------------------------
    @classmethod
    def collate(cls, samples: Sequence[Any], **options: Any) -> Batch:
        """The input kind's collate (``input_kind`` option, default ``image``) with its own options."""
        input_kind = options.get("input_kind", "image")
        own = {k: v for k, v in options.items() if k not in OWN_OPTIONS}
        try:
            return EMBEDDERS.get(input_kind).collate(samples, **own)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{cls.kind} (input_kind {input_kind}): {e}") from e

    # ---- model side --------------------------------------------------------------------------------
    def _features(self, x: Tensor) -> Tensor:
        """Backbone input -> features [b, f, h', w'] | [b, n, f] | [b, f] (timm with ``tokens=pooled``: its own pooling, [b, f])."""
        context = torch.no_grad() if self.freeze else contextlib.nullcontext()
        with context:
            if self.is_timm:
                feats = self.backbone.forward_features(x)
                if self.tokens == "pooled":  # the model's own pooling (average, class token...)
                    feats = self.backbone.forward_head(feats, pre_logits=True)
                elif getattr(self.backbone, "output_fmt", "NCHW") == "NHWC" and feats.dim() == 4:  # e.g. Swin
                    feats = rearrange(feats, "b h w f -> b f h w")
            else:
                feats = self.backbone(x)
                if isinstance(feats, (tuple, list)):
                    feats = feats[0]
                if not isinstance(feats, Tensor):
                    raise TypeError(f"{who(self)}: the backbone returned {type(feats).__name__}, expected a tensor")
        if feats.dim() not in (2, 3, 4):
            raise ValueError(f"{who(self)}: backbone features should be [b, f], [b, n, f] or [b, f, h, w], got shape {tuple(feats.shape)}")
        width = feats.shape[1] if feats.dim() in (2, 4) else feats.shape[2]
        if width != self.feature_dim:
            raise ValueError(f"{who(self)}: backbone features have width {width}, expected feature_dim={self.feature_dim} "
                             f"(shape {tuple(feats.shape)})")
        return feats

    def _to_tokens(self, feats: Tensor, pixel_mask: Tensor | None, step_mask: Tensor | None = None) -> tuple[Tensor, Tensor, tuple[int, ...]]:
        """features -> rows [b, n, f], mask [b, n], position grid shape.

        ``tokens=pooled`` with per-position features (a plain module's output) averages the real ones.
        ``step_mask`` [b, n] marks real rows of [b, n, f] features that kept the input's steps.
        """
        b = feats.shape[0]
        if feats.dim() == 2:
            return feats.unsqueeze(1), torch.ones(b, 1, dtype=torch.bool, device=feats.device), (1,)
        if feats.dim() == 3:
            rows, grid = feats, (feats.shape[1],)
            mask = step_mask if step_mask is not None and step_mask.shape == feats.shape[:2] else \
                torch.ones(b, feats.shape[1], dtype=torch.bool, device=feats.device)
        else:
            h, w = feats.shape[2:]
            rows, grid = rearrange(feats, "b f h w -> b (h w) f"), (h, w)
            if pixel_mask is None:
                mask = torch.ones(b, h * w, dtype=torch.bool, device=feats.device)
            else:  # a token is real if any pixel under it is
                mask = F.adaptive_max_pool2d(pixel_mask[:, None].to(feats.dtype), (h, w))[:, 0] > 0
                mask = rearrange(mask, "b h w -> b (h w)")
        if self.tokens == "pooled":
            weights = mask.to(rows.dtype).unsqueeze(-1)
            rows = (rows * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
            return rows, mask.any(dim=1, keepdim=True), (1,)
        return rows, mask, grid

    def _images(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """x [b, h, w, c] float, mask [b, h, w] -> images [b, c, h, w] and mask at ``image_size``."""
        images = rearrange(x, "b h w c -> b c h w")
        if self.image_size and tuple(images.shape[2:]) != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
            mask = F.interpolate(mask[:, None].to(images.dtype), size=size, mode="nearest")[:, 0] > 0.5
        return images, mask

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Batch of the input kind -> tokens [b, n, d], mask [b, n]."""
        x = batch["x"]
        dtype = self.to_tokens.weight.dtype
        if self.input_kind == "image":
            self.check_rank(x, 4, "[b, h, w, c]")
            self.check_size(x, 3, self.channels, "channels")
            b, h, w, _ = x.shape
            mask = batch_mask(self, batch, (b, h, w))
            x = zero_invalid(pixels_to_float(self, x, dtype, where=mask.unsqueeze(-1)), mask)
            images, mask = self._images(x, mask)
            rows, token_mask, grid = self._to_tokens(self._features(images).to(dtype), mask)
        elif self.input_kind == "video":
            self.check_rank(x, 5, "[b, t, h, w, c]")
            self.check_size(x, 4, self.channels, "channels")
            b, t, h, w, _ = x.shape
            frame_mask = batch_mask(self, batch, (b, t))
            if self.max_frames:
                frame_mask, (x,) = resample(frame_mask, self.max_frames, x)
                t = x.shape[1]
            x = pixels_to_float(self, x, dtype, where=frame_mask[:, :, None, None, None])
            real = rearrange(frame_mask, "b t -> (b t)")
            frames = rearrange(x, "b t h w c -> (b t) h w c")[real]  # only real frames reach the backbone
            images, _ = self._images(frames, torch.ones(frames.shape[:3], dtype=torch.bool, device=x.device))
            per_frame, _, grid = self._to_tokens(self._features(images).to(dtype), None)  # [r, n, f]
            rows = per_frame.new_zeros(b * t, *per_frame.shape[1:])
            rows[real] = per_frame
            rows = rearrange(rows, "(b t) n f -> b (t n) f", b=b)
            token_mask = frame_mask.repeat_interleave(per_frame.shape[1], dim=1)
            grid = (t, *grid) if grid != (1,) else (t,)
        else:
            if torch.is_floating_point(x):
                self.check_finite(x)
                x = x.to(dtype)
            m = batch.get("mask")
            step_mask = m.to(device=x.device, dtype=torch.bool) if isinstance(m, Tensor) and m.dim() == 2 else None
            rows, token_mask, grid = self._to_tokens(self._features(x).to(dtype), None, step_mask)
        tokens = self.to_tokens(rows)
        # Always added (even for one token), so a token's code never depends on the batch's grid size.
        if len(grid) > 1:
            tokens = tokens + sincos_grid(grid, dim=self.dim, device=tokens.device, dtype=tokens.dtype)
        else:
            tokens = tokens + sinusoidal_positions(tokens.shape[1], self.dim, device=tokens.device, dtype=tokens.dtype)
        return finish(tokens, token_mask)
