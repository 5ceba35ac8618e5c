"""Cross-modal fusion of per-modality latents into one vector per sample.

Letters: b batch, l latents, d width, M modalities of the task, k fusion tokens.

Every fusion returns ``[b, M * d]``: one slot of width d per modality of the task, in the task's
order. A modality absent from the inputs gives a zero slot, so a task's head has one fixed input
size whatever subset of its modalities is present.

- :class:`PairwiseFusion` (HighMMT): for every ordered pair (i <- j) of present modalities a
  Crossmodal Transformer block lets i's latents attend to j's; slot i is the mean over j of the
  pooled result (slot i is i's pooled latents when i has no partner). Cost grows as M^2.
- :class:`BottleneckFusion`: k shared fusion tokens attend to all modalities' latents, then each
  modality's latents attend back to the k tokens. Cost grows linearly in M.
- :class:`NoFusion`: slot i is i's pooled latents (late fusion of shared encoders).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from highmmt.config import FusionConfig
from highmmt.layers import Attention, CrossBlock, FeedForward
from highmmt.sharing import pair_key


def _slots(pooled: Mapping[str, Tensor], order: Sequence[str], ref: Tensor) -> Tensor:
    """Concatenate per-modality vectors [b, d] in ``order``; absent modalities give zeros."""
    zeros = torch.zeros_like(ref)
    return torch.cat([pooled.get(m, zeros) for m in order], dim=-1)


class NoFusion(nn.Module):
    def forward(self, latents: Mapping[str, Tensor], order: Sequence[str], task: str) -> Tensor:
        pooled = {m: z.mean(dim=1) for m, z in latents.items()}
        return _slots(pooled, order, next(iter(pooled.values())))


class PairwiseFusion(nn.Module):
    """HighMMT's pairwise cross-modal fusion with pair-group parameter sharing.

    Args:
        dim: latent width d.
        cfg: fusion sizes.
        groups: unordered pair ``"a|b"`` -> group name; one stack of ``cfg.depth`` blocks per group.
    """

    def __init__(self, *, dim: int, cfg: FusionConfig, groups: Mapping[str, str]) -> None:
        super().__init__()
        self.pair_group = dict(groups)
        self.blocks = nn.ModuleDict(
            {
                g: nn.ModuleList(
                    CrossBlock(dim=dim, heads=cfg.heads, dim_head=cfg.dim_head, mlp_mult=cfg.mlp_mult, dropout=cfg.dropout,
                               dropout_kind=cfg.attention_dropout)
                    for _ in range(cfg.depth)
                )
                for g in sorted(set(groups.values()))
            }
        )

    def forward(self, latents: Mapping[str, Tensor], order: Sequence[str], task: str) -> Tensor:
        present = [m for m in order if m in latents]
        pooled: dict[str, Tensor] = {}
        by_group: dict[str, list[tuple[str, str]]] = {}
        for i in present:
            for j in present:
                if i != j:
                    by_group.setdefault(self.pair_group[pair_key(i, j)], []).append((i, j))
        sums: dict[str, Tensor] = {}
        for group, pairs in by_group.items():
            # All ordered pairs of one group run as one batch: [p * b, l, d].
            x = torch.cat([latents[i] for i, _ in pairs])
            ctx = torch.cat([latents[j] for _, j in pairs])
            for block in self.blocks[group]:
                x = block(x, ctx)
            outs = rearrange(x.mean(dim=1), "(p b) d -> p b d", p=len(pairs))
            for (i, _), out in zip(pairs, outs):
                sums[i] = sums[i] + out if i in sums else out
        for i in present:
            partners = len(present) - 1
            pooled[i] = sums[i] / partners if partners else latents[i].mean(dim=1)
        return _slots(pooled, order, pooled[present[0]])


class BottleneckFusion(nn.Module):
    """Linear-cost fusion through k shared bottleneck tokens.

    Args:
        dim: latent width d.
        cfg: fusion sizes (``num_tokens`` = k).
        groups: task name -> group name (one bottleneck module per group).
    """

    def __init__(self, *, dim: int, cfg: FusionConfig, groups: Mapping[str, str]) -> None:
        super().__init__()
        self.task_group = dict(groups)
        names = sorted(set(groups.values()))
        self.tokens = nn.ParameterDict({g: nn.Parameter(torch.randn(cfg.num_tokens, dim) * 0.02) for g in names})
        self.layers = nn.ModuleDict(
            {
                g: nn.ModuleList(
                    nn.ModuleList(
                        [
                            Attention(dim=dim, heads=cfg.heads, dim_head=cfg.dim_head, dropout=cfg.dropout,
                                      dropout_kind=cfg.attention_dropout, cross=True),
                            FeedForward(dim=dim, mlp_mult=cfg.mlp_mult, dropout=cfg.dropout),
                            Attention(dim=dim, heads=cfg.heads, dim_head=cfg.dim_head, dropout=cfg.dropout,
                                      dropout_kind=cfg.attention_dropout, cross=True),
                            FeedForward(dim=dim, mlp_mult=cfg.mlp_mult, dropout=cfg.dropout),
                        ]
                    )
                    for _ in range(cfg.depth)
                )
                for g in names
            }
        )

    def forward(self, latents: Mapping[str, Tensor], order: Sequence[str], task: str) -> Tensor:
        present = [m for m in order if m in latents]
        group = self.task_group[task]
        z = torch.stack([latents[m] for m in present])  # [M, b, l, d]
        num = z.shape[0]
        tokens = repeat(self.tokens[group].to(z.dtype), "k d -> b k d", b=z.shape[1])
        for gather, gather_ff, scatter, scatter_ff in self.layers[group]:
            everything = rearrange(z, "m b l d -> b (m l) d")
            tokens = tokens + gather(tokens, everything)
            tokens = tokens + gather_ff(tokens)
            flat = rearrange(z, "m b l d -> (m b) l d")
            ctx = repeat(tokens, "b k d -> (m b) k d", m=num)
            flat = flat + scatter(flat, ctx)
            flat = flat + scatter_ff(flat)
            z = rearrange(flat, "(m b) l d -> m b l d", m=num)
        pooled = dict(zip(present, z.mean(dim=2)))
        return _slots(pooled, order, pooled[present[0]])
