"""The contract every modality embedder follows, and helpers they share.

Data flow for one modality (letters: b batch, n tokens, d width)::

    raw sample (numpy, the kind's canonical format, see each ``modalities/<kind>.py``)
      --Embedder.collate(list of samples)--> batch dict of tensors (padded, with a validity mask)
      --Embedder.forward(batch dict)------> tokens [b, n, d] float, mask [b, n] bool (True = real token)

``collate`` is a classmethod that runs on CPU in data-loader workers; it needs no weights.
``forward`` adds positional encodings itself; the model adds the modality-type embedding.

An embedder may also hand the heads a *wide* input: a sparse bag of feature ids that each task's head
reads linearly beside the shared encoder (Wide & Deep, Cheng et al. 2016). It sets ``wide_size`` (ids
lie in 0..wide_size-1, 0 contributes nothing) and implements ``wide_bag``; ``wide_size`` 0 means none.

An embedder also accepts a plain tensor instead of a batch dict (no padding), so
``model({"image": torch.rand(2, 28, 28, 1)}, task="t")`` works.

Input checks (``check_finite``, ``check_rank``...) raise ``ValueError``/``TypeError`` naming the
modality and what was expected, as the user sees them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

Batch = dict[str, Tensor]


class Embedder(nn.Module):
    """Base class: turn one modality's raw input into tokens.

    Subclasses set ``kind`` and implement ``collate`` and ``embed``.

    Args:
        name: the modality's name in the model (for error messages), e.g. ``"mnist_image"``.
        dim: output token width d.
        **options: kind-specific options (channels, patch size...), stored in the model config.
    """

    kind: ClassVar[str] = ""

    def __init__(self, *, name: str, dim: int) -> None:
        super().__init__()
        self.name = name
        self.dim = dim
        self.wide_size = 0  # > 0: the embedder hands the heads a sparse bag of ids (``wide_bag``)
        self.summary_size = 0  # > 0: the embedder hands the heads its summary statistics (``summary_statistics``)

    # ---- CPU side -------------------------------------------------------------------------
    @classmethod
    def collate(cls, samples: Sequence[Any]) -> Batch:
        """Stack a list of raw samples into a padded batch dict (must contain ``"x"``)."""
        raise NotImplementedError

    # ---- model side -----------------------------------------------------------------------
    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Return tokens [b, n, d] and mask [b, n] (True = real token) for a checked batch."""
        raise NotImplementedError

    def wide_bag(self, inputs: Tensor | Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The sparse wide input of a batch: ids [b, k] int64 in 0..wide_size-1 and weights [b, k]
        float (0 for padding); only for embedders with ``wide_size`` > 0."""
        raise NotImplementedError(f"modality {self.name!r} ({self.kind}): this embedder has no wide input")

    def summary_statistics(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        """A batch's summary statistics [b, summary_size] (what its summary token is made from), for the
        summary heads (``model.summary_heads``); only for embedders with ``summary_size`` > 0."""
        raise NotImplementedError(f"modality {self.name!r} ({self.kind}): this embedder has no summary statistics")

    def as_batch(self, inputs: Tensor | Mapping[str, Tensor]) -> Batch:
        """Accept a bare tensor as ``{"x": tensor}``; check the container type."""
        if isinstance(inputs, Tensor):
            return {"x": inputs}
        if isinstance(inputs, Mapping):
            if "x" not in inputs:
                raise ValueError(
                    f"modality {self.name!r} ({self.kind}): batch dict needs key 'x', got keys {sorted(inputs)}"
                )
            return dict(inputs)
        raise TypeError(
            f"modality {self.name!r} ({self.kind}): expected a tensor or a dict of tensors, "
            f"got {type(inputs).__name__}"
        )

    def forward(self, inputs: Tensor | Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        batch = self.as_batch(inputs)
        x = batch["x"]
        if x.shape[0] == 0:
            raise ValueError(f"modality {self.name!r} ({self.kind}): empty batch (batch size 0)")
        tokens, mask = self.embed(batch)
        return tokens, mask

    # ---- shared checks --------------------------------------------------------------------
    def check_rank(self, x: Tensor, rank: int, layout: str) -> None:
        if x.dim() != rank:
            raise ValueError(
                f"modality {self.name!r} ({self.kind}): expected a {rank}-d tensor {layout}, "
                f"got shape {tuple(x.shape)}"
            )

    def check_size(self, x: Tensor, axis: int, expected: int, what: str) -> None:
        if x.shape[axis] != expected:
            raise ValueError(
                f"modality {self.name!r} ({self.kind}): expected {expected} {what} (axis {axis}), "
                f"got {x.shape[axis]} in shape {tuple(x.shape)}"
            )

    def check_float(self, x: Tensor) -> None:
        if not torch.is_floating_point(x):
            raise TypeError(
                f"modality {self.name!r} ({self.kind}): expected a floating-point tensor, got {x.dtype}"
            )

    def check_finite(self, x: Tensor, where: Tensor | None = None) -> None:
        """Raise if ``x`` holds NaN or inf (optionally only where ``where`` is True)."""
        bad = ~torch.isfinite(x)
        if where is not None:
            bad = bad & where
        if bool(bad.any()):
            n = int(bad.sum())
            raise ValueError(
                f"modality {self.name!r} ({self.kind}): input holds {n} NaN/inf value(s); "
                "mark missing values with the batch's mask/observed entries instead"
            )


# ---- helpers shared by embedders ---------------------------------------------------------------
def sinusoidal_positions(n: int, dim: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fixed 1-d sinusoidal table [n, dim] (works for any length, no max length)."""
    pos = torch.arange(n, device=device, dtype=torch.float32).unsqueeze(1)
    half = dim // 2
    div = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * (-math.log(10000.0) / max(half, 1)))
    table = torch.zeros(n, dim, device=device, dtype=torch.float32)
    table[:, 0 : 2 * half : 2] = torch.sin(pos * div)
    table[:, 1 : 2 * half : 2] = torch.cos(pos * div)
    return table.to(dtype)
