"""Regularly sampled time-series embedder: ``patch`` steps -> one token.

One sample: float32 [t, c]; t varies.

Batch (from ``collate``): ``x`` [b, t, c] float32, ``mask`` [b, t] bool (True = real step).

Tokens: sequences longer than ``max_len`` steps are uniformly resampled down to ``max_len`` (in
``collate`` when it is given the option, else in ``embed``; the same rule either way); then groups of
``patch`` steps (zero-padded to a multiple), each ``Linear(patch * c -> d)`` + fixed sinusoidal
position. A token is real if any of its steps is. At most ``max_len / patch`` tokens (256 by default).
With ``summary=True``, one more token carries per-channel statistics of all real steps (count, mean,
std, min, max, first, last of the kept steps; ``modalities._common.SummaryToken``). ``stem="conv"`` replaces the linear
patch projection with a convolutional stem (``modalities._common.ConvStem1d``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from einops import rearrange
from torch import Tensor, nn

from highmmt.embedder import Batch, Embedder, sinusoidal_positions
from highmmt.registry import EMBEDDERS
from modalities._common import (
    ConvStem1d,
    check_stem,
    SummaryToken,
    append_token,
    collate_float_sequences,
    batch_mask,
    finish,
    pad_axis,
    positive_int,
    resample,
    zero_invalid,
)

LAYOUT = "[t, c]"


@EMBEDDERS.register("timeseries")
class TimeseriesEmbedder(Embedder):
    """Patch embedding of multichannel series.

    Args:
        name: the modality's name.
        dim: token width d.
        channels: c.
        max_len: steps kept per sample (uniformly resampled when longer).
        patch: steps per token.
        summary: add one token of per-channel summary statistics.
        summary_segments: also the statistics of this many consecutive parts of the series, in that token.
        summary_steps: also each channel's mean absolute change between consecutive values, in that token.
        summary_norm: standardise the token's statistics by the training rows' mean and std first.
        stem: ``"linear"`` (one linear map per patch) or ``"conv"`` (``ConvStem1d``).
    """

    kind = "timeseries"

    def __init__(self, *, name: str, dim: int, channels: int = 1, max_len: int = 256, patch: int = 1,
                 summary: bool = True, summary_segments: int = 0, summary_steps: bool = False,
                 summary_norm: bool = False, stem: str = "conv") -> None:
        super().__init__(name=name, dim=dim)
        self.channels = positive_int(self.kind, "channels", channels)
        self.max_len = positive_int(self.kind, "max_len", max_len)
        self.patch = positive_int(self.kind, "patch", patch)
        self.stem = check_stem(self.kind, stem)
        if stem == "linear":
            self.to_tokens = nn.Linear(self.patch * self.channels, dim)
        else:
            self.to_tokens = ConvStem1d(self.channels, dim, self.patch)
        self.summary = SummaryToken(self.channels, dim, summary_segments, summary_steps, summary_norm) if summary else None
        self.summary_size = self.summary.features if summary else 0

    @classmethod
    def collate(cls, samples: Sequence[Any], **options: Any) -> Batch:
        """samples: arrays [t_i, c] -> ``x`` [b, t, c] float32, ``mask`` [b, t].

        ``options`` are the embedder's options: ``max_len`` resamples here, ``channels`` is checked.
        """
        return collate_float_sequences(
            cls.kind, samples, rank=2, layout=LAYOUT, axes={1: ("channels", options.get("channels"))},
            cap=("max_len", options.get("max_len")),
        )

    def summary_statistics(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        """The summary token's statistics of a batch [b, summary_size] (see :class:`SummaryToken`)."""
        x, mask = self._steps(self.as_batch(inputs))
        return self.summary.statistics(x, mask.unsqueeze(-1).expand_as(x))

    def _steps(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """A checked batch -> its kept steps x [b, t', c] (0 at padding) and mask [b, t']."""
        x = batch["x"]
        self.check_rank(x, 3, "[b, t, c]")
        self.check_size(x, 2, self.channels, "channels")
        self.check_float(x)
        b, t, _ = x.shape
        mask = batch_mask(self, batch, (b, t))
        self.check_finite(x, where=mask.unsqueeze(-1))
        x = zero_invalid(x, mask).to(next(self.to_tokens.parameters()).dtype)
        mask, (x,) = resample(mask, self.max_len, x)
        return x, mask

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``x`` [b, t, c] (+ ``mask`` [b, t]) -> tokens [b, n, d], mask [b, n]."""
        x, mask = self._steps(batch)
        summary = None if self.summary is None else self.summary(x, mask.unsqueeze(-1).expand_as(x))
        x, mask = pad_axis(x, 1, self.patch), pad_axis(mask, 1, self.patch)
        token_mask = rearrange(mask, "b (n p) -> b n p", p=self.patch).any(dim=-1)
        if self.stem == "linear":
            tokens = self.to_tokens(rearrange(x, "b (n p) c -> b n (p c)", p=self.patch))
        else:
            tokens = self.to_tokens(rearrange(x, "b t c -> b c t"))
        tokens = tokens + sinusoidal_positions(tokens.shape[1], self.dim, device=x.device, dtype=tokens.dtype)
        tokens, token_mask = finish(tokens, token_mask)
        return (tokens, token_mask) if summary is None else append_token(tokens, token_mask, summary)
