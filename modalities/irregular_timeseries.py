"""Irregularly sampled time-series embedder: one token per time step, with its observed mask and time.

One sample: ``{"values": float32 [t, c] (anything where unobserved), "observed": bool [t, c],
"times": float32 [t] (hours)}``; t varies.

Batch (from ``collate``): ``x`` [b, t, c] float32 (0 where unobserved), ``observed`` [b, t, c] bool,
``times`` [b, t] float32 hours, ``mask`` [b, t] bool (True = real step). ``observed`` defaults to all
True and ``times`` to the step index when absent (e.g. for a bare tensor).

Tokens: one per step, ``Linear([values * observed, observed, time features] -> d)``; the time features
(sin and cos of 2 pi time / period for ``time_bands`` periods spaced geometrically between
``min_period`` and ``max_period`` hours) are the positional encoding, continuous in time. Sequences
longer than ``max_len`` steps are uniformly resampled down to ``max_len`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from highmmt.embedder import Batch, Embedder
from highmmt.registry import EMBEDDERS
from modalities._common import (
    SummaryToken,
    append_token,
    batch_mask,
    check_axes,
    finish,
    nonempty,
    pad_stack,
    positive_float,
    positive_int,
    resample,
    sample_array,
    uniform_indices,
    who,
    zero_invalid,
)

LAYOUT = '{"values": [t, c], "observed": [t, c], "times": [t]}'


def time_features(times: Tensor, periods: Tensor) -> Tensor:
    """times [b, t] hours, periods [k] hours -> [b, t, 2k] (sin, cos)."""
    angles = times.unsqueeze(-1) * (2 * math.pi / periods)  # [b, t, k]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


@EMBEDDERS.register("irregular_timeseries")
class IrregularTimeseriesEmbedder(Embedder):
    """Per-step embedding of irregular, partially observed series.

    Args:
        name: the modality's name.
        dim: token width d.
        channels: c, variables per step.
        max_len: steps kept per sample (uniformly resampled when longer).
        time_bands: periods of the time features.
        min_period, max_period: shortest and longest period (hours).
        summary: add one token of per-channel statistics over the observed values (count, mean, std,
            min, max, first, last): what missingness-aware tabular baselines read.
        summary_segments: also those statistics over this many consecutive parts of the observations.
        summary_steps: also each channel's mean absolute change between consecutive values, in that token.
        summary_norm: standardise the token's statistics by the training rows' mean and std first.
    """

    kind = "irregular_timeseries"

    def __init__(
        self,
        *,
        name: str,
        dim: int,
        channels: int = 1,
        max_len: int = 256,
        time_bands: int = 8,
        min_period: float = 0.5,
        max_period: float = 100.0,
        summary: bool = True,
        summary_segments: int = 0,
        summary_steps: bool = False,
        summary_norm: bool = False,
    ) -> None:
        super().__init__(name=name, dim=dim)
        self.channels = positive_int(self.kind, "channels", channels)
        self.max_len = positive_int(self.kind, "max_len", max_len)
        self.time_bands = positive_int(self.kind, "time_bands", time_bands)
        lo = positive_float(self.kind, "min_period", min_period)
        hi = positive_float(self.kind, "max_period", max_period)
        if hi < lo:
            raise ValueError(f"{self.kind} embedder: max_period ({hi}) must be >= min_period ({lo})")
        periods = torch.tensor(np.geomspace(lo, hi, self.time_bands), dtype=torch.float32)
        self.register_buffer("periods", periods, persistent=False)
        self.to_tokens = nn.Linear(2 * self.channels + 2 * self.time_bands, dim)
        self.summary = SummaryToken(self.channels, dim, summary_segments, summary_steps, summary_norm) if summary else None
        self.summary_size = self.summary.features if summary else 0

    @classmethod
    def collate(cls, samples: Sequence[Any], **options: Any) -> Batch:
        """samples: dicts of values [t_i, c], observed [t_i, c], times [t_i] -> padded batch (see module doc).

        ``options`` are the embedder's options: ``max_len`` resamples here, ``channels`` is checked.
        """
        nonempty(cls.kind, samples)
        values, observed, times = [], [], []
        for i, s in enumerate(samples):
            if not isinstance(s, Mapping) or not {"values", "observed", "times"} <= set(s):
                got = sorted(s) if isinstance(s, Mapping) else type(s).__name__
                raise ValueError(f"{cls.kind} sample {i}: expected a dict {LAYOUT}, got {got}")
            v = sample_array(cls.kind, i, s["values"], rank=2, layout="[t, c]", key="values")
            o = sample_array(cls.kind, i, s["observed"], rank=2, layout="[t, c]", key="observed")
            tm = sample_array(cls.kind, i, s["times"], rank=1, layout="[t]", key="times")
            if o.shape != v.shape or tm.shape[0] != v.shape[0]:
                raise ValueError(
                    f"{cls.kind} sample {i}: values {v.shape}, observed {o.shape} and times {tm.shape} "
                    "must agree on t (and c)"
                )
            values.append(v.astype(np.float32))
            observed.append(o.astype(bool))
            times.append(tm.astype(np.float32))
        check_axes(cls.kind, values, {1: ("channels", options.get("channels"))}, "values [t, c]")
        max_len = options.get("max_len")
        if max_len is not None:
            idx = [uniform_indices(v.shape[0], positive_int(cls.kind, "max_len", max_len)) for v in values]
            values, observed, times = ([a[j] for a, j in zip(arrs, idx)] for arrs in (values, observed, times))
        # unobserved values may hold anything (NaN included): zero them so the batch is clean
        values = [np.where(o, v, 0.0).astype(np.float32) for v, o in zip(values, observed)]
        x, mask = pad_stack(cls.kind, values, dtype=np.float32)
        obs, _ = pad_stack(cls.kind, observed, dtype=bool)
        tms, _ = pad_stack(cls.kind, times, dtype=np.float32)
        return {"x": x, "observed": obs, "times": tms, "mask": mask}

    def summary_statistics(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        """The summary token's statistics of a batch [b, summary_size] (see :class:`SummaryToken`)."""
        x, observed, _, _ = self._steps(self.as_batch(inputs))
        return self.summary.statistics(x, observed)

    def _steps(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A checked batch -> its kept steps: x [b, t', c] (0 where unobserved), observed [b, t', c],
        times [b, t'] float32 hours, mask [b, t']."""
        x = batch["x"]
        self.check_rank(x, 3, "[b, t, c]")
        self.check_size(x, 2, self.channels, "channels")
        self.check_float(x)
        b, t, c = x.shape
        mask = batch_mask(self, batch, (b, t))
        observed = batch_mask(self, batch, (b, t, c), key="observed") & mask.unsqueeze(-1)
        times = batch.get("times")
        if times is None:
            times = torch.arange(t, device=x.device, dtype=torch.float32).expand(b, t)
        elif tuple(times.shape) != (b, t):
            raise ValueError(f"{who(self)}: batch['times'] should have shape {(b, t)}, got {tuple(times.shape)}")
        self.check_float(times)
        self.check_finite(x, where=observed)
        self.check_finite(times, where=mask)
        x = zero_invalid(x, observed).to(self.to_tokens.weight.dtype)
        times = zero_invalid(times.float(), mask)  # float32: hours need the precision bf16 lacks
        mask, (x, observed, times) = resample(mask, self.max_len, x, observed, times)
        return x, observed, times, mask

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``x`` [b, t, c] (+ ``observed`` [b, t, c], ``times`` [b, t], ``mask`` [b, t]) -> tokens [b, t, d], mask."""
        x, observed, times, mask = self._steps(batch)
        dtype = x.dtype
        summary = None if self.summary is None else self.summary(x, observed)
        feats = torch.cat([x, observed.to(dtype), time_features(times, self.periods.float()).to(dtype)], dim=-1)
        tokens, mask = finish(self.to_tokens(feats), mask)
        return (tokens, mask) if summary is None else append_token(tokens, mask, summary)
