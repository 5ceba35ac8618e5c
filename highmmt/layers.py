"""Attention and feed-forward blocks on ``torch.nn.functional.scaled_dot_product_attention``.

Letters: b batch, n query tokens, m context tokens, h heads, e head width, d model width.
Masks are boolean, True = a real token that may be attended to.

Attention dropout defaults to dropping keys through the attention mask (see :class:`Attention`),
which keeps the fused attention kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from highmmt.config import ATTENTION_DROPOUT_KINDS


def _check_probability(p: float, what: str = "dropout probability") -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {p}")


class Attention(nn.Module):
    """Multi-head (cross- or self-) attention with pre-norm on query and context.

    Args:
        dim: query width d.
        context_dim: context width (default ``dim``).
        cross: cross-attention (a separate pre-norm for the context) or self-attention.
        heads, dim_head: number and width of heads.
        dropout: attention dropout probability (training only).
        dropout_kind: ``"keys"``: each (example, key) pair is hidden from every query and head with
            probability ``dropout``, through the attention mask, so softmax renormalises over the
            keys left (DropKey-style, Li et al. 2023; here shared over queries and heads, i.e. token
            dropout on the context). A query whose keys would all be hidden keeps them. The fused
            attention kernel still runs. ``"probs"``: attention probabilities are dropped after the
            softmax and rescaled (the classic kind; on the CPU it leaves the fused kernel).
    """

    def __init__(
        self,
        *,
        dim: int,
        context_dim: int | None = None,
        heads: int = 4,
        dim_head: int = 32,
        dropout: float = 0.0,
        dropout_kind: str = "keys",
        cross: bool = False,
    ) -> None:
        super().__init__()
        if dropout_kind not in ATTENTION_DROPOUT_KINDS:
            raise ValueError(f"attention dropout kind must be one of {ATTENTION_DROPOUT_KINDS}, got {dropout_kind!r}")
        _check_probability(dropout, "attention dropout")
        context_dim = context_dim or dim
        inner = heads * dim_head
        self.heads = heads
        self.dropout = dropout
        self.dropout_kind = dropout_kind
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim) if cross else None
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """x [b, n, d], context [b, m, dc] (default x), mask [b, m] -> [b, n, d] (not residual)."""
        x = self.norm(x)
        if self.norm_context is None:
            if context is not None:
                raise ValueError("a self-attention layer was given a context")
            context = x
        else:
            if context is None:
                raise ValueError("a cross-attention layer needs a context")
            context = self.norm_context(context)
        q = rearrange(self.to_q(x), "b n (h e) -> b h n e", h=self.heads)
        k, v = rearrange(self.to_kv(context), "b m (two h e) -> two b h m e", two=2, h=self.heads)
        attn_mask = None if mask is None else rearrange(mask, "b m -> b 1 1 m")
        dropout_p = self.dropout if self.training else 0.0
        if dropout_p > 0.0 and self.dropout_kind == "keys":
            attn_mask, dropout_p = drop_keys(attn_mask, batch=k.shape[0], keys=k.shape[2], p=dropout_p, device=k.device), 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        return self.to_out(rearrange(out, "b h n e -> b n (h e)"))


def drop_keys(attn_mask: Tensor | None, *, batch: int, keys: int, p: float, device: torch.device) -> Tensor:
    """``attn_mask`` [b, 1, 1, m] (or None = all keys real) with each key also hidden with probability
    ``p``; a row left with no key keeps the keys ``attn_mask`` allowed."""
    allowed = torch.rand((batch, 1, 1, keys), device=device) >= p
    if attn_mask is not None:
        allowed &= attn_mask
    emptied = ~allowed.any(dim=-1, keepdim=True)
    if attn_mask is None:
        return allowed | emptied
    return allowed | (emptied & attn_mask)


class FeedForward(nn.Module):
    """Pre-norm GELU MLP: [b, n, d] -> [b, n, d] (not residual)."""

    def __init__(self, *, dim: int, mlp_mult: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mlp_mult),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim * mlp_mult, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CrossBlock(nn.Module):
    """Cross-attention (x <- context), then self-attention, then feed-forward, all residual.

    The Crossmodal Transformer block of HighMMT (Q from one modality, K/V from another).
    """

    def __init__(
        self,
        *,
        dim: int,
        heads: int,
        dim_head: int,
        mlp_mult: int,
        dropout: float = 0.0,
        dropout_kind: str = "keys",
        cross_heads: int | None = None,
    ) -> None:
        super().__init__()
        self.cross = Attention(dim=dim, heads=cross_heads or heads, dim_head=dim_head, dropout=dropout, dropout_kind=dropout_kind, cross=True)
        self.self_attn = Attention(dim=dim, heads=heads, dim_head=dim_head, dropout=dropout, dropout_kind=dropout_kind)
        self.ff = FeedForward(dim=dim, mlp_mult=mlp_mult, dropout=dropout)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """x [b, n, d], context [b, m, d], context_mask [b, m] -> [b, n, d]."""
        x = x + self.cross(x, context, context_mask)
        x = x + self.self_attn(x)
        return x + self.ff(x)


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over tokens: x [b, n, d], mask [b, n] -> [b, d]."""
    if mask is None:
        return x.mean(dim=1)
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


__all__ = ["Attention", "CrossBlock", "FeedForward", "drop_keys", "masked_mean"]


class RunningStandardize(nn.Module):
    """Standardise each feature by the mean and standard deviation of every training row seen so far.

    In training mode each batch first joins the running moments (Chan et al.'s parallel update: exact
    mean and variance over all rows seen), then every row is standardised with them, so a row's value
    never depends on the rest of its batch, and evaluation uses the training rows' statistics. Meant for
    features computed from the data alone (a series' summary statistics), whose distribution does not
    move while the model trains. Features that never vary keep a standard deviation of 1.
    """

    def __init__(self, features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("m2", torch.zeros(features))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Add the rows of x [b, f] to the running moments."""
        x = x.detach().float()
        n = float(x.shape[0])
        if n == 0:
            return
        mean = x.mean(dim=0)
        m2 = ((x - mean) ** 2).sum(dim=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += m2 + delta**2 * (self.count * n / total)
        self.count.fill_(total)

    def forward(self, x: Tensor) -> Tensor:
        """x [b, f] -> standardised [b, f]."""
        if self.training:
            self.update(x)
        x = x.float()
        std = (self.m2 / (self.count - 1).clamp(min=1)).sqrt()
        std = torch.where(std > self.eps, std, torch.ones_like(std))
        # fewer than two rows seen: x as it is (a tensor condition, so no host sync on an accelerator)
        return torch.where(self.count >= 2, (x - self.mean) / std, x)
