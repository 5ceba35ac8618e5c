"""Image embedder: non-overlapping patches -> one token each.

One sample: array [h, w, c], uint8 (0-255, scaled by 1/255) or float. Sizes may differ within a batch:
``collate`` pads to the largest and returns a pixel mask. With ``image_size`` [h, w] (the size of the
training images; a spec-file task records it when they all share one), ``collate`` first resizes any
image of another size to it (bilinear, antialiased), so a model sees images as it was trained on them.

Batch (from ``collate``): ``x`` [b, h, w, c] uint8 or float32, ``mask`` [b, h, w] bool (True = real pixel).

Tokens: a batch whose longest side exceeds ``max_size`` is first resized down (area averaging) so that
side is ``max_size``; then [h / p, w / p] patches of p x p pixels (zero-padded to a multiple of p),
row-major, each ``Linear(p * p * c -> d)`` + fixed 2-d sinusoidal position (rows: half the width,
columns: the other half). A patch is real if any of its pixels is. 28 x 28 with p = 4 -> 49 tokens;
at most (max_size / p)^2 = 256 tokens with the defaults. ``stem="conv"`` replaces the linear patch
projection with a small convolutional stem (``ConvStem``: 3 x 3 stride-2 convolutions down to the patch
grid, after Xiao et al. 2021, "Early convolutions help transformers see better"); same token grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from highmmt.embedder import Batch, Embedder
from highmmt.registry import EMBEDDERS
from modalities._common import (
    ChannelNorm,
    batch_mask,
    check_axes,
    check_stem,
    finish,
    nonempty,
    pad_axis,
    pixel_arrays,
    pixels_to_float,
    positive_int,
    sample_array,
    sincos_grid,
    zero_invalid,
)

LAYOUT = "[h, w, c]"


class ConvStem(nn.Module):
    """Pixels [b, c, h, w] -> tokens [b, d, h / p, w / p] by 3 x 3 stride-2 convolutions (one per
    factor 2 of p; any odd remainder r of p by an r x r stride-r convolution), each followed by
    a per-pixel LayerNorm over channels (``ChannelNorm``) and GELU, widths doubling from d / 2^k up to d, then a 1 x 1 projection to d.
    """

    def __init__(self, channels: int, dim: int, patch: int) -> None:
        super().__init__()
        halvings, rest = 0, patch
        while rest % 2 == 0:
            halvings, rest = halvings + 1, rest // 2
        steps = [(3, 2, 1)] * halvings + ([(rest, rest, 0)] if rest > 1 else [])
        widths = [max(8, dim >> (len(steps) - 1 - i)) for i in range(len(steps))]
        layers: list[nn.Module] = []
        c = channels
        for (kernel, stride, pad), width in zip(steps, widths):
            layers += [nn.Conv2d(c, width, kernel, stride, pad), ChannelNorm(width), nn.GELU()]
            c = width
        layers.append(nn.Conv2d(c, dim, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def image_size_option(value: Any) -> tuple[int, int] | None:
    """``image_size`` option: None, one int (square) or [h, w] -> (h, w) or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"image embedder: option 'image_size' must be [h, w] or one integer, got {value!r}")
        return positive_int("image", "image_size", value[0]), positive_int("image", "image_size", value[1])
    side = positive_int("image", "image_size", value)
    return side, side


def resize_image(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w, c] uint8 or float -> [size[0], size[1], c], same dtype (bilinear, antialiased when shrinking)."""
    x = rearrange(torch.from_numpy(np.ascontiguousarray(a)).float(), "h w c -> 1 c h w")
    x = rearrange(F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False), "1 c h w -> h w c")
    if a.dtype == np.uint8:
        return x.round().clamp(0, 255).to(torch.uint8).numpy()
    return x.numpy().astype(a.dtype, copy=False)


@EMBEDDERS.register("image")
class ImageEmbedder(Embedder):
    """Patch embedding of images.

    Args:
        name: the modality's name.
        dim: token width d.
        channels: c.
        patch_size: p, pixels per patch side.
        max_size: longest side (pixels) above which a batch is resized down before patching.
        image_size: [h, w] (or one int for square images) every image is resized to in ``collate``;
            None (default) keeps each image's own size.
        stem: ``"linear"`` (one linear map per patch) or ``"conv"`` (``ConvStem``).
    """

    kind = "image"

    def __init__(
        self,
        *,
        name: str,
        dim: int,
        channels: int = 1,
        patch_size: int = 4,
        max_size: int = 64,
        image_size: int | Sequence[int] | None = None,
        stem: str = "conv",
    ) -> None:
        super().__init__(name=name, dim=dim)
        self.channels = positive_int(self.kind, "channels", channels)
        self.patch_size = positive_int(self.kind, "patch_size", patch_size)
        self.max_size = positive_int(self.kind, "max_size", max_size)
        self.image_size = image_size_option(image_size)
        self.stem = check_stem(self.kind, stem)
        if stem == "linear":
            self.to_tokens = nn.Linear(self.patch_size * self.patch_size * self.channels, dim)
        else:
            self.to_tokens = ConvStem(self.channels, dim, self.patch_size)

    @classmethod
    def collate(cls, samples: Sequence[Any], **options: Any) -> Batch:
        """samples: arrays [h_i, w_i, c] -> ``x`` [b, h, w, c], ``mask`` [b, h, w] (padded bottom/right).

        ``options`` are the embedder's options; ``channels``, when given, is checked; ``image_size``
        resizes images of another size.
        """
        nonempty(cls.kind, samples)
        arrays = [sample_array(cls.kind, i, s, rank=3, layout=LAYOUT) for i, s in enumerate(samples)]
        check_axes(cls.kind, arrays, {2: ("channels", options.get("channels"))}, LAYOUT)
        size = image_size_option(options.get("image_size"))
        if size is not None:
            arrays = [a if a.shape[:2] == size else resize_image(a, size) for a in arrays]
        arrays, dtype = pixel_arrays(cls.kind, arrays)
        h = max(1, max(a.shape[0] for a in arrays))
        w = max(1, max(a.shape[1] for a in arrays))
        x = np.zeros((len(arrays), h, w, arrays[0].shape[2]), dtype=dtype)
        mask = np.zeros((len(arrays), h, w), dtype=bool)
        for i, a in enumerate(arrays):
            x[i, : a.shape[0], : a.shape[1]] = a
            mask[i, : a.shape[0], : a.shape[1]] = True
        return {"x": torch.from_numpy(x), "mask": torch.from_numpy(mask)}

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``x`` [b, h, w, c] (+ ``mask`` [b, h, w]) -> tokens [b, n, d], mask [b, n]."""
        x = batch["x"]
        self.check_rank(x, 4, "[b, h, w, c]")
        self.check_size(x, 3, self.channels, "channels")
        b, h, w, _ = x.shape
        mask = batch_mask(self, batch, (b, h, w))
        dtype = next(self.to_tokens.parameters()).dtype
        x = zero_invalid(pixels_to_float(self, x, dtype, where=mask.unsqueeze(-1)), mask)

        if max(h, w) > self.max_size:
            scale = self.max_size / max(h, w)
            size = (max(1, math.floor(h * scale)), max(1, math.floor(w * scale)))
            x = rearrange(x, "b h w c -> b c h w")
            x = rearrange(F.interpolate(x, size=size, mode="area"), "b c h w -> b h w c")
            mask = F.interpolate(mask[:, None].to(x.dtype), size=size, mode="nearest")[:, 0] > 0.5

        p = self.patch_size
        x = pad_axis(pad_axis(x, 1, p), 2, p)
        mask = pad_axis(pad_axis(mask, 1, p), 2, p)
        rows, cols = x.shape[1] // p, x.shape[2] // p
        token_mask = rearrange(mask, "b (h p1) (w p2) -> b (h w) (p1 p2)", p1=p, p2=p).any(dim=-1)
        if self.stem == "linear":
            tokens = self.to_tokens(rearrange(x, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=p, p2=p))
        else:
            tokens = rearrange(self.to_tokens(rearrange(x, "b h w c -> b c h w")), "b d h w -> b (h w) d")
        tokens = tokens + sincos_grid((rows, cols), dim=self.dim, device=x.device, dtype=tokens.dtype)
        return finish(tokens, token_mask)
