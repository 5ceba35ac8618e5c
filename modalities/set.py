"""Set embedder: one token per element, no positional encoding (permutation equivariant).

One sample: float32 [n, c], unordered elements; n varies.

Batch (from ``collate``): ``x`` [b, n, c] float32, ``mask`` [b, n] bool (True = real element).

Tokens: one per element, a small MLP ``Linear(c -> d), GELU, Linear(d -> d)`` applied to each element
alone, so permuting a sample's elements permutes its tokens and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from highmmt.embedder import Batch, Embedder
from highmmt.registry import EMBEDDERS
from modalities._common import (
    collate_float_sequences,
    batch_mask,
    finish,
    positive_int,
    zero_invalid,
)

LAYOUT = "[n, c]"


@EMBEDDERS.register("set")
class SetEmbedder(Embedder):
    """Per-element embedding of sets.

    Args:
        name: the modality's name.
        dim: token width d.
        channels: c, features per element.
    """

    kind = "set"

    def __init__(self, *, name: str, dim: int, channels: int = 1) -> None:
        super().__init__(name=name, dim=dim)
        self.channels = positive_int(self.kind, "channels", channels)
        self.to_tokens = nn.Sequential(nn.Linear(self.channels, dim), nn.GELU(), nn.Linear(dim, dim))

    @classmethod
    def collate(cls, samples: Sequence[Any], **options: Any) -> Batch:
        """samples: arrays [n_i, c] -> ``x`` [b, n, c] float32, ``mask`` [b, n]."""
        return collate_float_sequences(
            cls.kind, samples, rank=2, layout=LAYOUT, axes={1: ("channels", options.get("channels"))}
        )

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``x`` [b, n, c] (+ ``mask`` [b, n]) -> tokens [b, n, d], mask [b, n]."""
        x = batch["x"]
        self.check_rank(x, 3, "[b, n, c]")
        self.check_size(x, 2, self.channels, "channels")
        self.check_float(x)
        b, n, _ = x.shape
        mask = batch_mask(self, batch, (b, n))
        self.check_finite(x, where=mask.unsqueeze(-1))
        x = zero_invalid(x, mask).to(self.to_tokens[0].weight.dtype)
        return finish(self.to_tokens(x), mask)
