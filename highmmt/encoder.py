"""Shared Perceiver-style unimodal encoder.

Learned latents [l, d] cross-attend to a modality's tokens [b, n, d], then self-attend, so the cost
is O(n * l) per layer and does not grow quadratically with input length. HighMMT applies ONE such
encoder to every modality (parameter sharing); ``highmmt.sharing`` decides how many copies exist.

An encoder pass may take ``adapt`` {j: f}: f maps the latents [b, l, d] to new latents [b, l, d] right
after layer j's cross-attention (and its feed-forward), before that layer's self-attention blocks;
representation tuning inside the encoder (``highmmt/pretrained.py``) shifts a modality's latents there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from einops import repeat
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from highmmt.config import EncoderConfig
from highmmt.layers import Attention, FeedForward


class PerceiverLayer(nn.Module):
    """latents <- cross-attend(tokens); then ``self_per_cross`` x (self-attention + feed-forward)."""

    def __init__(self, *, dim: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cross = Attention(
            dim=dim, heads=cfg.cross_heads, dim_head=cfg.dim_head, dropout=cfg.dropout, dropout_kind=cfg.attention_dropout, cross=True
        )
        self.cross_ff = FeedForward(dim=dim, mlp_mult=cfg.mlp_mult, dropout=cfg.dropout)
        self.self_blocks = nn.ModuleList(
            nn.ModuleList(
                [
                    Attention(
                        dim=dim, heads=cfg.heads, dim_head=cfg.dim_head, dropout=cfg.dropout, dropout_kind=cfg.attention_dropout
                    ),
                    FeedForward(dim=dim, mlp_mult=cfg.mlp_mult, dropout=cfg.dropout),
                ]
            )
            for _ in range(cfg.self_per_cross)
        )

    def forward(self, latents: Tensor, tokens: Tensor, mask: Tensor | None, adapt: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """latents [b, l, d], tokens [b, n, d], mask [b, n] -> latents [b, l, d]; ``adapt`` (if given)
        maps the latents between the cross-attention and the self-attention blocks."""
        latents = latents + self.cross(latents, tokens, mask)
        latents = latents + self.cross_ff(latents)
        if adapt is not None:
            latents = adapt(latents)
        for attn, ff in self.self_blocks:
            latents = latents + attn(latents)
            latents = latents + ff(latents)
        return latents


class PerceiverEncoder(nn.Module):
    """Encode tokens into a fixed number of latents.

    Args:
        dim: token and latent width d.
        cfg: depth, number of latents, heads...
        gradient_checkpointing: recompute layer activations in backward to save memory.

    Shapes: tokens [b, n, d], mask [b, n] (True = real) -> latents [b, l, d]. ``forward``'s ``adapt``
    {j: f} (j = 1..depth) applies f to the latents after layer j's cross-attention (module docstring).
    """

    def __init__(self, *, dim: int, cfg: EncoderConfig, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, dim) * 0.02)
        self.layers = nn.ModuleList(PerceiverLayer(dim=dim, cfg=cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim)
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, tokens: Tensor, mask: Tensor | None = None,
                adapt: Mapping[int, Callable[[Tensor], Tensor]] | None = None) -> Tensor:
        adapt = dict(adapt or {})
        if any(not 1 <= j <= len(self.layers) for j in adapt):
            raise ValueError(f"encoder adapt: layers {sorted(adapt)} requested; this encoder has layers 1..{len(self.layers)}")
        latents = repeat(self.latents.to(tokens.dtype), "l d -> b l d", b=tokens.shape[0])
        for j, layer in enumerate(self.layers, start=1):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                latents = checkpoint(layer, latents, tokens, mask, adapt.get(j), use_reentrant=False)
            else:
                latents = layer(latents, tokens, mask, adapt.get(j))
        return self.norm(latents)
