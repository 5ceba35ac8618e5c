"""Video embedder: tubelets (a few frames x a spatial patch) -> one token each.

One sample: array [t, h, w, c], uint8 (0-255, scaled by 1/255) or float; t varies, h, w, c must agree
within a batch (resize in the task's transform otherwise).

Batch (from ``collate``): ``x`` [b, t, h, w, c] uint8 or float32, ``mask`` [b, t] bool (True = real frame).

Tokens: frames are uniformly resampled down to at most ``max_frames`` per sample (in ``collate`` when it
is given the option, else in ``embed``; the same rule either way); frames whose longest side exceeds
``max_size`` are resized down (area averaging); then tubelets of ``tubelet`` frames x p x p pixels
(zero-padded to multiples), ordered (time, row, column), each ``Linear(tubelet * p * p * c -> d)`` +
fixed sinusoidal positions (time: half the width, rows and columns: a quarter each). A tubelet is
real if any of its frames is. Defaults on 120 x 160 depth video: 32 frames -> 16 steps x 5 x 6
patches (frames resized to 36 x 48) = 480 tokens.

``motion_map=S`` (0 = off) adds (S / p)^2 tokens of the sample's *motion map*: the sum over time of
|frame t - frame t-1| (consecutive real frames, after the resize), cropped to the bounding box of its
non-zero pixels, resized (bilinear) to S x S and divided by its maximum, then cut into p x p patches,
each ``Linear(p * p * c -> d)`` + fixed row / column positions + a learned "motion map" embedding. On
depth video this is the front-view depth motion map of Yang et al. (2012) that the UTD-MHAD literature
and the data README's references read; the crop makes it independent of where and how large the actor
stands in the frame.

``crop_to_content=True`` crops every clip, before tokenizing, to the bounding box of its non-zero pixels
over all its real frames, widened (centred) to the frame's aspect ratio and resized (bilinear) back to
the frame's size: for video whose background is already zero (segmented depth, as UTD-MHAD's) the actor
then fills the frame wherever and however large they stand. A clip without a non-zero pixel is left as is. The
box is that of *exactly* non-zero pixels: a background that is not exactly zero (sensor noise, or the Gaussian
noise of ``evaluate.py``'s robustness sweep) widens it toward the whole frame, and a crop-trained model then sees
uncropped frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from highmmt.embedder import Batch, Embedder
from highmmt.registry import EMBEDDERS
from modalities._common import (
    batch_mask,
    check_axes,
    finish,
    nonempty,
    pad_axis,
    pad_stack,
    pixel_arrays,
    pixels_to_float,
    positive_int,
    resample,
    sample_array,
    sincos_grid,
    uniform_indices,
    zero_invalid,
)

LAYOUT = "[t, h, w, c]"


@EMBEDDERS.register("video")
class VideoEmbedder(Embedder):
    """Tubelet embedding of videos.

    Args:
        name: the modality's name.
        dim: token width d.
        channels: c.
        patch_size: p, pixels per spatial patch side.
        tubelet: frames per token.
        max_frames: frames kept per sample (uniformly resampled when longer).
        max_size: longest frame side (pixels) above which frames are resized down.
        motion_map: side S of the motion-map tokens' map (a multiple of ``patch_size``; 0 = none).
        crop_to_content: crop each clip to the bounding box of its non-zero pixels (see the module docstring).
    """

    kind = "video"

    def __init__(
        self,
        *,
        name: str,
        dim: int,
        channels: int = 1,
        patch_size: int = 8,
        tubelet: int = 2,
        max_frames: int = 32,
        max_size: int = 48,
        motion_map: int = 0,
        crop_to_content: bool = False,
    ) -> None:
        super().__init__(name=name, dim=dim)
        self.channels = positive_int(self.kind, "channels", channels)
        self.patch_size = positive_int(self.kind, "patch_size", patch_size)
        self.tubelet = positive_int(self.kind, "tubelet", tubelet)
        self.max_frames = positive_int(self.kind, "max_frames", max_frames)
        self.max_size = positive_int(self.kind, "max_size", max_size)
        self.to_tokens = nn.Linear(self.tubelet * self.patch_size**2 * self.channels, dim)
        if isinstance(motion_map, bool) or not isinstance(motion_map, int) or motion_map < 0 or motion_map % self.patch_size:
            raise ValueError(f"{self.kind}: motion_map must be 0 (off) or a positive multiple of patch_size "
                             f"({self.patch_size}), got {motion_map!r}")
        self.motion_map = motion_map
        if not isinstance(crop_to_content, bool):
            raise ValueError(f"{self.kind}: crop_to_content must be true or false, got {crop_to_content!r}")
        self.crop_to_content = crop_to_content
        if motion_map:
            self.to_motion = nn.Linear(self.patch_size**2 * self.channels, dim)
            self.motion_embedding = nn.Parameter(torch.randn(dim) * 0.02)

    @classmethod
    def collate(cls, samples: Sequence[Any], **options: Any) -> Batch:
        """samples: arrays [t_i, h, w, c] -> ``x`` [b, t, h, w, c], ``mask`` [b, t].

        ``options`` are the embedder's options: ``max_frames`` resamples here (less to move), ``channels``
        is checked.
        """
        nonempty(cls.kind, samples)
        arrays = [sample_array(cls.kind, i, s, rank=4, layout=LAYOUT) for i, s in enumerate(samples)]
        axes = {1: ("pixels of height", None), 2: ("pixels of width", None), 3: ("channels", options.get("channels"))}
        check_axes(cls.kind, arrays, axes, LAYOUT)
        max_frames = options.get("max_frames")
        if max_frames is not None:
            arrays = [a[uniform_indices(a.shape[0], positive_int(cls.kind, "max_frames", max_frames))] for a in arrays]
        arrays, dtype = pixel_arrays(cls.kind, arrays)
        x, mask = pad_stack(cls.kind, arrays, dtype=dtype)
        return {"x": x, "mask": mask}

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``x`` [b, t, h, w, c] (+ ``mask`` [b, t]) -> tokens [b, n, d], mask [b, n]."""
        x = batch["x"]
        self.check_rank(x, 5, "[b, t, h, w, c]")
        self.check_size(x, 4, self.channels, "channels")
        b, t, h, w, _ = x.shape
        mask = batch_mask(self, batch, (b, t))
        mask, (x,) = resample(mask, self.max_frames, x)  # before the float conversion: less to convert
        x = pixels_to_float(self, x, self.to_tokens.weight.dtype, where=mask[:, :, None, None, None])
        if self.crop_to_content:
            x = crop_to_content(zero_invalid(x, mask))

        if max(h, w) > self.max_size:
            scale = self.max_size / max(h, w)
            size = (max(1, math.floor(h * scale)), max(1, math.floor(w * scale)))
            frames = F.interpolate(rearrange(x, "b t h w c -> (b t) c h w"), size=size, mode="area")
            x = rearrange(frames, "(b t) c h w -> b t h w c", b=b)
        x = zero_invalid(x, mask)  # after the resize (frame by frame, so it commutes): fewer pixels

        p, k = self.patch_size, self.tubelet
        x = pad_axis(pad_axis(pad_axis(x, 1, k), 2, p), 3, p)
        mask = pad_axis(mask, 1, k)
        steps, rows, cols = x.shape[1] // k, x.shape[2] // p, x.shape[3] // p
        patches = rearrange(x, "b (t k) (h p1) (w p2) c -> b (t h w) (k p1 p2 c)", k=k, p1=p, p2=p)
        step_mask = rearrange(mask, "b (t k) -> b t k", k=k).any(dim=-1)  # [b, steps]
        token_mask = step_mask.repeat_interleave(rows * cols, dim=1)  # (t h w) order: time outermost
        tokens = self.to_tokens(patches)
        tokens = tokens + sincos_grid((steps, rows, cols), dim=self.dim, device=x.device, dtype=tokens.dtype)
        if self.motion_map:
            maps = motion_maps(x, mask, self.motion_map)  # [b, S, S, c]
            side = self.motion_map // p
            motion = self.to_motion(rearrange(maps, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=p, p2=p))
            motion = motion + sincos_grid((1, side, side), dim=self.dim, device=x.device, dtype=motion.dtype) + self.motion_embedding
            tokens = torch.cat([tokens, motion], dim=1)
            token_mask = torch.cat([token_mask, mask.any(dim=1, keepdim=True).expand(b, side * side)], dim=1)
        return finish(tokens, token_mask)


def motion_maps(x: Tensor, mask: Tensor, size: int) -> Tensor:
    """Motion maps of videos: x [b, t, h, w, c] (padded frames zero), mask [b, t] -> [b, size, size, c].

    Sum over consecutive real frame pairs of |frame t - frame t-1|, cropped to the bounding box of its
    non-zero pixels (all channels), resized (bilinear) to size x size and divided by its maximum (per
    sample and channel); a sample without motion gives zeros.
    """
    pairs = (mask[:, 1:] & mask[:, :-1]).to(x.dtype)[:, :, None, None, None]
    energy = ((x[:, 1:] - x[:, :-1]).abs() * pairs).sum(dim=1)  # [b, h, w, c]
    out = []
    for e in energy:
        moving = (e > 0).any(dim=-1)
        if not bool(moving.any()):
            out.append(e.new_zeros(size, size, e.shape[-1]))
            continue
        rows, cols = moving.any(dim=1).nonzero().squeeze(1), moving.any(dim=0).nonzero().squeeze(1)
        crop = e[int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]
        crop = F.interpolate(rearrange(crop, "h w c -> 1 c h w"), size=(size, size), mode="bilinear", align_corners=False)
        peak = crop.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(crop.dtype).tiny)
        out.append(rearrange(crop / peak, "1 c h w -> h w c"))
    return torch.stack(out)


def crop_to_content(x: Tensor) -> Tensor:
    """Videos x [b, t, h, w, c] (padded frames zero) -> the same shape, each clip cropped to the bounding box of
    its non-zero pixels over all frames and channels, widened around its centre to the frame's aspect ratio
    h : w (zeros where the widened box leaves the frame) and resized (bilinear) back to h x w. A clip without a
    non-zero pixel is kept."""
    b, t, h, w, _ = x.shape
    out = []
    for clip in x:
        content = (clip != 0).any(dim=0).any(dim=-1)  # [h, w]
        if not bool(content.any()):
            out.append(clip)
            continue
        rows, cols = content.any(dim=1).nonzero().squeeze(1), content.any(dim=0).nonzero().squeeze(1)
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        if (r1 - r0) * w > (c1 - c0) * h:  # taller than the frame's aspect: widen the columns
            c0, c1 = _widen(c0, c1, math.ceil((r1 - r0) * w / h))
        else:
            r0, r1 = _widen(r0, r1, math.ceil((c1 - c0) * h / w))
        crop = rearrange(clip[:, max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)], "t h w c -> t c h w")
        crop = F.pad(crop, (max(-c0, 0), max(c1 - w, 0), max(-r0, 0), max(r1 - h, 0)))  # outside the frame: zeros
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        out.append(rearrange(crop, "t c h w -> t h w c"))
    return torch.stack(out)


def _widen(lo: int, hi: int, size: int) -> tuple[int, int]:
    """[lo, hi) widened to ``size`` around its centre (it may leave the frame)."""
    lo -= (size - (hi - lo)) // 2
    return lo, lo + size
