"""Helpers shared by the modality embedders (not a kind: the leading underscore keeps it unregistered).

Letters: b batch, t steps, n tokens, d width, c channels.

Sequence masks are prefix masks: a sample's real steps come first, padding after (what every
``collate`` here produces). Resampling and length arithmetic rely on that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from highmmt.embedder import Embedder, sinusoidal_positions
from highmmt.layers import RunningStandardize  # noqa: F401  (re-exported)


# ---- constructor options -----------------------------------------------------------------------
def positive_int(kind: str, option: str, value: Any) -> int:
    """Check a constructor option is a positive int (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{kind} embedder: option {option!r} must be a positive integer, got {value!r}")
    return int(value)


def positive_float(kind: str, option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
        raise ValueError(f"{kind} embedder: option {option!r} must be a positive number, got {value!r}")
    return float(value)


# ---- collate (CPU, numpy in) -------------------------------------------------------------------
def sample_array(kind: str, i: int, sample: Any, *, rank: int, layout: str, key: str | None = None) -> np.ndarray:
    """One raw sample (or one field of it) as a numeric numpy array of the expected rank."""
    what = f"{kind} sample {i}" + (f" field {key!r}" if key else "")
    try:
        a = np.asarray(sample)
    except (TypeError, ValueError) as e:  # ragged nested lists
        raise ValueError(f"{what}: expected an array {layout}, could not convert it: {e}") from e
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"{what}: expected a numeric array {layout}, got dtype {a.dtype}")
    if a.ndim != rank:
        raise ValueError(f"{what}: expected a {rank}-d array {layout}, got shape {a.shape}")
    return a


def check_axes(
    kind: str, arrays: Sequence[np.ndarray], axes: Mapping[int, tuple[str, int | None]], layout: str
) -> None:
    """Every array must agree on the given axes: {axis: (what, expected or None = the first sample's)}."""
    for axis, (what, expected) in axes.items():
        ref = arrays[0].shape[axis] if expected is None else expected
        for i, a in enumerate(arrays):
            if a.shape[axis] != ref:
                source = "the option" if expected is not None else "sample 0"
                raise ValueError(
                    f"{kind} sample {i}: expected {ref} {what} (axis {axis} of {layout}, as {source}), "
                    f"got shape {a.shape}"
                )


def nonempty(kind: str, samples: Sequence[Any]) -> None:
    if len(samples) == 0:
        raise ValueError(f"{kind}: cannot collate an empty list of samples (batch size 0)")


def uniform_indices(length: int, max_len: int) -> np.ndarray:
    """Indices of at most ``max_len`` steps spread uniformly over ``length`` (same rule as ``resample_steps``)."""
    m = min(length, max_len)
    k = np.arange(m, dtype=np.int64)
    return ((2 * k + 1) * length) // (2 * max(m, 1))


def pad_stack(kind: str, arrays: Sequence[np.ndarray], *, dtype: Any, pad_value: float = 0) -> tuple[Tensor, Tensor]:
    """Pad arrays [t_i, ...] along axis 0 -> [b, t_max, ...] and mask [b, t_max] (t_max >= 1)."""
    nonempty(kind, arrays)
    t_max = max(1, max(a.shape[0] for a in arrays))
    out = np.full((len(arrays), t_max, *arrays[0].shape[1:]), pad_value, dtype=dtype)
    mask = np.zeros((len(arrays), t_max), dtype=bool)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
        mask[i, : a.shape[0]] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def pixel_arrays(kind: str, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], Any]:
    """uint8 batches stay uint8 (4x less to move); anything else becomes float32 (uint8 scaled by 1/255)."""
    if all(a.dtype == np.uint8 for a in arrays):
        return arrays, np.uint8
    for i, a in enumerate(arrays):
        if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"{kind} sample {i}: expected uint8 (0-255) or float pixels, got dtype {a.dtype}")
    return [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32) for a in arrays], np.float32


# ---- embed (model side) -------------------------------------------------------------------------
def who(emb: Embedder) -> str:
    """Error-message prefix naming the modality and its kind."""
    return f"modality {emb.name!r} ({emb.kind})"


def batch_mask(emb: Embedder, batch: Mapping[str, Tensor], shape: Sequence[int], key: str = "mask") -> Tensor:
    """``batch[key]`` as a bool tensor of ``shape`` on x's device, or all True when absent."""
    x = batch["x"]
    m = batch.get(key)
    if m is None:
        return torch.ones(tuple(shape), dtype=torch.bool, device=x.device)
    if not isinstance(m, Tensor):
        raise TypeError(f"{who(emb)}: batch[{key!r}] must be a tensor, got {type(m).__name__}")
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"{who(emb)}: batch[{key!r}] should have shape {tuple(shape)}, got {tuple(m.shape)}")
    return m.to(device=x.device, dtype=torch.bool)


def pixels_to_float(emb: Embedder, x: Tensor, dtype: torch.dtype, where: Tensor) -> Tensor:
    """uint8 pixels -> [0, 1]; float pixels are checked finite where ``where`` (broadcastable) is True."""
    if x.dtype == torch.uint8:  # always finite: skip the check, the biggest tensor of the model's input
        return x.to(dtype) / 255.0
    if not torch.is_floating_point(x):
        raise TypeError(f"{who(emb)}: expected uint8 (0-255) or floating-point pixels, got {x.dtype}")
    emb.check_finite(x, where=where)
    return x.to(dtype)


def zero_invalid(x: Tensor, valid: Tensor) -> Tensor:
    """0 where ``valid`` (broadcast from the left) is False, so padding never leaks NaN into tokens."""
    while valid.dim() < x.dim():
        valid = valid.unsqueeze(-1)
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


def keep_one(mask: Tensor) -> Tensor:
    """mask [b, n] with token 0 marked real in rows that have none, so attention never sees an empty row."""
    first = mask[:, :1] | ~mask.any(dim=1, keepdim=True)
    return torch.cat([first, mask[:, 1:]], dim=1)


def finish(tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Zero the padded tokens [b, n, d] and guarantee one real token per row."""
    mask = keep_one(mask)
    return zero_invalid(tokens, mask), mask


def resample_steps(mask: Tensor, max_len: int) -> tuple[Tensor, Tensor] | None:
    """Uniformly pick at most ``max_len`` real steps per sample (vectorised over the batch).

    Args:
        mask: [b, t] prefix mask.
    Returns:
        None when t <= max_len (nothing to do); else index [b, m] into t and the new mask [b, m], m = max_len.
    """
    t = mask.shape[1]
    if t <= max_len:
        return None
    lengths = mask.sum(dim=1, keepdim=True)  # [b, 1]
    new_len = lengths.clamp(max=max_len)
    k = torch.arange(max_len, device=mask.device).unsqueeze(0)  # [1, m]
    # floor((k + 0.5) * L / m) as integer arithmetic: identical to ``uniform_indices`` and exact
    index = torch.div((2 * k + 1) * lengths, 2 * new_len.clamp(min=1), rounding_mode="floor")
    new_mask = k < new_len
    index = torch.where(new_mask, index, torch.zeros_like(index)).clamp(max=t - 1)
    return index, new_mask


def take_steps(x: Tensor, index: Tensor) -> Tensor:
    """x [b, t, ...] -> x [b, m, ...] at index [b, m]."""
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    return x[rows, index]


def resample(mask: Tensor, max_len: int, *xs: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Keep at most ``max_len`` uniformly spread real steps of mask [b, t] and of each x [b, t, ...].

    Returns the new mask [b, m] and the xs [b, m, ...], zero past each sample's end.
    """
    picked = resample_steps(mask, max_len)
    if picked is None:
        return mask, list(xs)
    index, mask = picked
    return mask, [zero_invalid(take_steps(x, index), mask) for x in xs]


def split_dim(dim: int, parts: int) -> list[int]:
    """Split a width over position axes: the first (time) axis gets half, the rest share the other half."""
    if parts == 1:
        return [dim]
    first = dim // 2
    rest = dim - first
    each = [rest // (parts - 1)] * (parts - 1)
    each[-1] += rest - sum(each)
    return [first, *each]


def sincos_grid(shape: Sequence[int], *, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fixed sinusoidal positions of a grid, one table per axis concatenated along the width.

    Returns:
        [prod(shape), dim], row-major over ``shape``; a position's code does not depend on the grid size,
        so a token at (row 1, col 2) looks the same in any batch.
    """
    dims = split_dim(dim, len(shape))
    tables = []
    for axis, (n, d) in enumerate(zip(shape, dims)):
        table = sinusoidal_positions(n, d, device=device, dtype=dtype)  # [n, d]
        view = [1] * len(shape)
        view[axis] = n
        tables.append(table.view(*view, d).expand(*shape, d))
    return torch.cat(tables, dim=-1).reshape(-1, dim)  # [prod(shape), dim]


def pad_axis(x: Tensor, axis: int, multiple: int) -> Tensor:
    """Zero-pad ``axis`` of x up to a multiple of ``multiple``."""
    extra = (-x.shape[axis]) % multiple
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[axis] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=axis)


def collate_float_sequences(
    kind: str,
    samples: Sequence[Any],
    *,
    rank: int,
    layout: str,
    axes: dict[int, tuple[str, Any]],
    cap: tuple[str, Any] | None = None,
) -> dict[str, Tensor]:
    """Shared collate of float arrays with a variable first axis (timeseries, pose, set).

    Checks each sample's rank and the fixed ``axes`` ({axis: (option name, expected)}), resamples
    the first axis down to ``cap = (option name, length)`` when given, pads, and returns
    ``{"x": float32 [b, t, ...], "mask": bool [b, t]}``.
    """
    nonempty(kind, samples)
    arrays = [sample_array(kind, i, s, rank=rank, layout=layout) for i, s in enumerate(samples)]
    check_axes(kind, arrays, axes, layout)
    if cap is not None and cap[1] is not None:
        n = positive_int(kind, cap[0], cap[1])
        arrays = [a[uniform_indices(a.shape[0], n)] for a in arrays]
    x, mask = pad_stack(kind, [a.astype(np.float32, copy=False) for a in arrays], dtype=np.float32)
    return {"x": x, "mask": mask}


SUMMARY_STATS = ("log_count", "mean", "std", "min", "max", "first", "last")
STEP_STAT = "mean_abs_step"


def masked_summary(x: Tensor, valid: Tensor, steps: bool = False) -> Tensor:
    """Per-channel statistics of a series over its valid steps.

    Args:
        x: [b, t, c] values (anything where not valid).
        valid: [b, t, c] bool, True where a value was observed (or the step is real).
        steps: also the mean absolute change between consecutive valid values (``STEP_STAT``: how far
            a pen or a joint moves per step, a channel's roughness); 0 with fewer than two.
    Returns:
        [b, c, 7] (8 with ``steps``) float32: log(1 + count), mean, std, min, max, first and last valid
        value (``SUMMARY_STATS``) [, mean |step|]; 0 for a channel with no valid value.
    """
    x = x.float()
    v = valid.float()
    count = v.sum(dim=1)  # [b, c]
    n = count.clamp(min=1)
    xz = torch.where(valid, x, torch.zeros((), device=x.device))
    mean = xz.sum(dim=1) / n
    var = (torch.where(valid, (x - mean.unsqueeze(1)) ** 2, torch.zeros((), device=x.device))).sum(dim=1) / n
    big = torch.finfo(torch.float32).max
    lo = torch.where(valid, x, torch.full((), big, device=x.device)).amin(dim=1)
    hi = torch.where(valid, x, torch.full((), -big, device=x.device)).amax(dim=1)
    t = x.shape[1]
    pos = torch.arange(t, device=x.device).view(1, t, 1)
    first_i = torch.where(valid, pos, t).amin(dim=1).clamp(max=t - 1)  # [b, c]
    last_i = torch.where(valid, pos, -1).amax(dim=1).clamp(min=0)
    first = xz.gather(1, first_i.unsqueeze(1)).squeeze(1)
    last = xz.gather(1, last_i.unsqueeze(1)).squeeze(1)
    seen = count > 0
    stats = [torch.log1p(count), mean, var.sqrt(), lo, hi, first, last]
    if steps:
        stats.append(mean_abs_step(xz, valid))
    stats = [torch.where(seen, s, torch.zeros((), device=x.device)) if i else s for i, s in enumerate(stats)]
    return torch.stack(stats, dim=-1)


def mean_abs_step(x: Tensor, valid: Tensor) -> Tensor:
    """x [b, t, c] (0 where not valid), valid [b, t, c] -> [b, c]: the mean of |x_i - x_j| over each valid
    value i and the valid value j before it in the same channel (gaps skipped); 0 with fewer than two."""
    t = x.shape[1]
    pos = torch.arange(t, device=x.device).view(1, t, 1).expand_as(x)
    last_seen = torch.where(valid, pos, -1).cummax(dim=1).values  # the latest valid index at or before i
    prev = torch.cat([torch.full_like(last_seen[:, :1], -1), last_seen[:, :-1]], dim=1)
    pair = valid & (prev >= 0)
    diff = (x - x.gather(1, prev.clamp(min=0))).abs()
    total = torch.where(pair, diff, torch.zeros((), device=x.device)).sum(dim=1)
    return total / pair.float().sum(dim=1).clamp(min=1)


class SummaryToken(nn.Module):
    """One extra token from a series' per-channel statistics (``masked_summary``).

    The statistics are squashed by ``asinh`` (linear near 0, logarithmic for large values, so no
    dataset statistics are needed) and projected to width d, plus a learned embedding that marks the
    token as the summary. It hands the shared encoder what a random forest on summary features sees,
    which a few hundred training series cannot teach the patch tokens to compute.

    With ``segments`` = k > 0 the same statistics are also taken over k consecutive parts of the
    series holding equal numbers of its real steps (a step is real when any channel is valid there),
    all in the one token: what the reference random forests read as segment statistics, the order
    of events that statistics over the whole series cannot tell apart. With ``steps`` each channel also
    has its mean absolute step (``mean_abs_step``). With ``norm`` the squashed statistics are standardised
    by the training rows' own mean and standard deviation (``RunningStandardize``) before the projection.
    """

    def __init__(self, channels: int, dim: int, segments: int = 0, steps: bool = False, norm: bool = False) -> None:
        super().__init__()
        if not isinstance(segments, int) or isinstance(segments, bool) or segments < 0:
            raise ValueError(f"summary_segments must be an integer >= 0, got {segments!r}")
        for option, value in (("summary_steps", steps), ("summary_norm", norm)):
            if not isinstance(value, bool):
                raise ValueError(f"{option} must be true or false, got {value!r}")
        self.segments = segments
        self.steps = steps
        self.features = features = (len(SUMMARY_STATS) + steps) * channels * (1 + segments)
        self.norm = RunningStandardize(features) if norm else None
        self.proj = nn.Linear(features, dim)
        self.marker = nn.Parameter(torch.randn(dim) * 0.02)

    def statistics(self, x: Tensor, valid: Tensor) -> Tensor:
        """x [b, t, c], valid [b, t, c] -> the squashed statistics [b, features] (before ``norm``)."""
        parts = [masked_summary(x, v, self.steps) for v in [valid, *segment_masks(valid, self.segments)]]
        return torch.asinh(torch.cat(parts, dim=-1)).flatten(1)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x [b, t, c], valid [b, t, c] -> token [b, 1, d]."""
        stats = self.statistics(x, valid)
        if self.norm is not None:
            stats = self.norm(stats)
        return (self.proj(stats.to(self.proj.weight.dtype)) + self.marker).unsqueeze(1)


def segment_masks(valid: Tensor, segments: int) -> list[Tensor]:
    """``valid`` [b, t, c] split into ``segments`` masks over consecutive runs of a sample's real steps
    (steps where any channel is valid), each holding the same number of real steps (+-1)."""
    real = valid.any(dim=-1)  # [b, t]
    length = real.sum(dim=1, keepdim=True).clamp(min=1)
    order = real.long().cumsum(dim=1) - 1  # each real step's index among the real steps
    part = torch.div(order * segments, length, rounding_mode="floor")
    return [valid & (real & (part == k)).unsqueeze(-1) for k in range(segments)]


def append_token(tokens: Tensor, mask: Tensor, token: Tensor) -> tuple[Tensor, Tensor]:
    """tokens [b, n, d] + mask [b, n] with one always-real token [b, 1, d] appended."""
    extra = torch.ones(mask.shape[0], 1, dtype=torch.bool, device=mask.device)
    return torch.cat([tokens, token.to(tokens.dtype)], dim=1), torch.cat([mask, extra], dim=1)



STEMS = ("linear", "conv")


def check_stem(kind: str, stem: str) -> str:
    if stem not in STEMS:
        raise ValueError(f"{kind} embedder: option 'stem' must be one of {STEMS}, got {stem!r}")
    return stem


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channel axis (1) of [b, c, ...], each position on its own (so padding
    never changes a real position's value, unlike GroupNorm or BatchNorm)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class ConvStem1d(nn.Module):
    """Steps [b, c, t] -> tokens [b, t / stride, d] (t a multiple of ``stride``).

    A convolutional stem instead of one linear map per patch: a 3-wide convolution over the steps
    (``ChannelNorm``, GELU), then a ``stride``-wide convolution of stride ``stride`` to width d, so a token
    sees its neighbours' steps as well as its own and a nonlinearity before the shared encoder.
    """

    def __init__(self, channels: int, dim: int, stride: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(channels, dim, 3, padding=1), ChannelNorm(dim), nn.GELU(), nn.Conv1d(dim, dim, stride, stride)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).transpose(1, 2)
