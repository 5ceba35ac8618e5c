"""Text embedder with a byte-level tokenizer (no vocabulary file, nothing to download).

One sample: ``str``. ``encode`` maps it to its UTF-8 bytes, ids 0..255; ``PAD_ID`` = 256 pads.
``decode(encode(s)) == s`` for any string.

Batch (from ``collate``): ``x`` [b, n] int64 ids, ``mask`` [b, n] bool (True = real byte).

Tokens: one per byte, ``Embedding(VOCAB_SIZE, d)`` + fixed sinusoidal position; texts longer than
``max_len`` bytes keep their first ``max_len`` (``collate`` truncates too when given ``max_len``).
An empty string gives one (padding) token, kept real so attention has something to read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from highmmt.embedder import Batch, Embedder, sinusoidal_positions
from highmmt.registry import EMBEDDERS
from modalities._common import batch_mask, finish, nonempty, pad_stack, positive_int, who

PAD_ID = 256
VOCAB_SIZE = 257


def encode(text: str) -> list[int]:
    """str -> byte ids (0..255)."""
    return list(text.encode("utf-8"))


def decode(ids: Iterable[int]) -> str:
    """Byte ids -> str; special ids are dropped, broken UTF-8 (e.g. cut by truncation) becomes U+FFFD."""
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


@EMBEDDERS.register("text")
class TextEmbedder(Embedder):
    """Byte embedding of strings.

    Args:
        name: the modality's name.
        dim: token width d.
        max_len: bytes kept per text.
    """

    kind = "text"

    def __init__(self, *, name: str, dim: int, max_len: int = 256) -> None:
        super().__init__(name=name, dim=dim)
        self.max_len = positive_int(self.kind, "max_len", max_len)
        self.token_embed = nn.Embedding(VOCAB_SIZE, dim)

    @classmethod
    def collate(cls, samples: Sequence[Any], **options: Any) -> Batch:
        """samples: strings -> ``x`` [b, n] int64 byte ids (``PAD_ID`` after the end), ``mask`` [b, n].

        ``options`` are the embedder's options: ``max_len`` truncates here.
        """
        nonempty(cls.kind, samples)
        max_len = options.get("max_len")
        max_len = None if max_len is None else positive_int(cls.kind, "max_len", max_len)
        ids = []
        for i, s in enumerate(samples):
            if not isinstance(s, str):
                raise TypeError(f"{cls.kind} sample {i}: expected a str, got {type(s).__name__}")
            ids.append(np.asarray(encode(s)[:max_len], dtype=np.int64))
        x, mask = pad_stack(cls.kind, ids, dtype=np.int64, pad_value=PAD_ID)
        return {"x": x, "mask": mask}

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``x`` [b, n] int ids (+ ``mask`` [b, n]) -> tokens [b, n, d], mask [b, n] (n <= max_len)."""
        x = batch["x"]
        self.check_rank(x, 2, "[b, n] (byte ids)")
        if torch.is_floating_point(x) or torch.is_complex(x) or x.dtype == torch.bool:
            raise TypeError(f"{who(self)}: expected integer byte ids, got {x.dtype}")
        b, n = x.shape
        mask = batch_mask(self, batch, (b, n))
        x = torch.where(mask, x, torch.full_like(x, PAD_ID))
        if bool(((x < 0) | (x >= VOCAB_SIZE)).any()):
            raise ValueError(
                f"{who(self)}: ids must lie in 0..{VOCAB_SIZE - 1}, got min {int(x.min())} max {int(x.max())}"
            )
        x, mask = x[:, : self.max_len], mask[:, : self.max_len]
        tokens = self.token_embed(x.long())
        tokens = tokens + sinusoidal_positions(tokens.shape[1], self.dim, device=x.device, dtype=tokens.dtype)
        return finish(tokens, mask)
