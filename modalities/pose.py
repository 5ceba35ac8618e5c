"""Pose (skeleton) embedder: one token per frame, or one per joint per frame.

One sample: float32 [t, j, c] (joints x coordinates per frame); t varies.

Batch (from ``collate``): ``x`` [b, t, j, c] float32, ``mask`` [b, t] bool (True = real frame).

Tokens: sequences longer than ``max_frames`` are uniformly resampled down (in ``collate`` when it is
given the option, else in ``embed``). ``tokens="frame"``: one token per frame, ``Linear(j * c -> d)``
of all joints + fixed sinusoidal time position (at most ``max_frames`` tokens). ``tokens="joint"``:
one token per (frame, joint), ``Linear(c -> d)`` + a learned joint-identity embedding + the time
position, ordered (frame, joint) (at most ``max_frames * j`` tokens: lower ``max_frames``).
``stem="conv"`` (frame tokens only) replaces the per-frame linear map with a convolutional stem over the
frames (``modalities._common.ConvStem1d``, stride 1): a token sees its neighbouring frames, so the joints'
motion, before the shared encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from highmmt.embedder import Batch, Embedder, sinusoidal_positions
from highmmt.registry import EMBEDDERS
from modalities._common import (
    ConvStem1d,
    SummaryToken,
    append_token,
    collate_float_sequences,
    batch_mask,
    check_stem,
    finish,
    positive_int,
    resample,
    zero_invalid,
)

LAYOUT = "[t, j, c]"
TOKEN_MODES = ("frame", "joint")


@EMBEDDERS.register("pose")
class PoseEmbedder(Embedder):
    """Skeleton sequence embedding.

    Args:
        name: the modality's name.
        dim: token width d.
        joints: j (20 for the Kinect v1 skeleton).
        coords: c, coordinates per joint.
        tokens: ``"frame"`` (one token per frame) or ``"joint"`` (one per joint per frame).
        max_frames: frames kept per sample (uniformly resampled when longer).
        summary: add one token of per-(joint, coordinate) summary statistics.
        summary_segments: also the statistics of this many consecutive parts of the sequence, in that token.
        summary_steps: also each channel's mean absolute change between consecutive values, in that token.
        summary_norm: standardise the token's statistics by the training rows' mean and std first.
        stem: ``"linear"`` (one linear map per frame) or ``"conv"`` (``ConvStem1d`` over the frames;
            ``tokens="frame"`` only).
    """

    kind = "pose"

    def __init__(
        self,
        *,
        name: str,
        dim: int,
        joints: int = 20,
        coords: int = 3,
        tokens: str = "frame",
        max_frames: int = 64,
        summary: bool = True,
        summary_segments: int = 0,
        summary_steps: bool = False,
        summary_norm: bool = False,
        stem: str = "linear",
    ) -> None:
        super().__init__(name=name, dim=dim)
        self.joints = positive_int(self.kind, "joints", joints)
        self.coords = positive_int(self.kind, "coords", coords)
        self.max_frames = positive_int(self.kind, "max_frames", max_frames)
        if tokens not in TOKEN_MODES:
            raise ValueError(f"pose embedder: option 'tokens' must be one of {TOKEN_MODES}, got {tokens!r}")
        self.tokens = tokens
        self.stem = check_stem(self.kind, stem)
        if stem == "conv" and tokens != "frame":
            raise ValueError(f"pose embedder: option stem='conv' needs tokens='frame', got tokens={tokens!r}")
        if stem == "conv":
            self.to_tokens = ConvStem1d(self.joints * self.coords, dim, 1)
        elif tokens == "frame":
            self.to_tokens = nn.Linear(self.joints * self.coords, dim)
        else:
            self.to_tokens = nn.Linear(self.coords, dim)
            self.joint_embed = nn.Parameter(torch.randn(self.joints, dim) * 0.02)
        self.summary = SummaryToken(self.joints * self.coords, dim, summary_segments, summary_steps, summary_norm) if summary else None
        self.summary_size = self.summary.features if summary else 0

    @classmethod
    def collate(cls, samples: Sequence[Any], **options: Any) -> Batch:
        """samples: arrays [t_i, j, c] -> ``x`` [b, t, j, c] float32, ``mask`` [b, t].

        ``options`` are the embedder's options: ``max_frames`` resamples here, ``joints``/``coords`` are checked.
        """
        axes = {1: ("joints", options.get("joints")), 2: ("coords", options.get("coords"))}
        return collate_float_sequences(
            cls.kind, samples, rank=3, layout=LAYOUT, axes=axes, cap=("max_frames", options.get("max_frames"))
        )

    def summary_statistics(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        """The summary token's statistics of a batch [b, summary_size] (see :class:`SummaryToken`)."""
        x, mask = self._frames(self.as_batch(inputs))
        flat = rearrange(x, "b t j c -> b t (j c)")
        return self.summary.statistics(flat, mask.unsqueeze(-1).expand_as(flat))

    def _frames(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """A checked batch -> its kept frames x [b, t', j, c] (0 at padding) and mask [b, t']."""
        x = batch["x"]
        self.check_rank(x, 4, "[b, t, j, c]")
        self.check_size(x, 2, self.joints, "joints")
        self.check_size(x, 3, self.coords, "coords")
        self.check_float(x)
        b, t = x.shape[:2]
        mask = batch_mask(self, batch, (b, t))
        self.check_finite(x, where=mask[:, :, None, None])
        x = zero_invalid(x, mask).to(next(self.to_tokens.parameters()).dtype)
        mask, (x,) = resample(mask, self.max_frames, x)
        return x, mask

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``x`` [b, t, j, c] (+ ``mask`` [b, t]) -> tokens [b, t, d] or [b, t * j, d], mask to match."""
        x, mask = self._frames(batch)
        flat = rearrange(x, "b t j c -> b t (j c)")
        summary = None if self.summary is None else self.summary(flat, mask.unsqueeze(-1).expand_as(flat))
        t = x.shape[1]
        time = sinusoidal_positions(t, self.dim, device=x.device, dtype=x.dtype)  # [t, d]

        if self.tokens == "frame":  # the conv stem reads [b, channels, t]
            tokens = self.to_tokens(flat.transpose(1, 2) if self.stem == "conv" else flat)
            tokens, mask = finish(tokens + time, mask)
        else:
            tokens = self.to_tokens(x) + self.joint_embed + time.unsqueeze(1)  # [b, t, j, d]
            tokens = rearrange(tokens, "b t j d -> b (t j) d")
            tokens, mask = finish(tokens, repeat(mask, "b t -> b (t j)", j=self.joints))
        return (tokens, mask) if summary is None else append_token(tokens, mask, summary)
