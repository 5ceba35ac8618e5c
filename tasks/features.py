"""Fixed-length feature blocks for the simple baselines (``tasks/baselines.py``), one recipe per kind.

A modality's canonical samples (``tasks/base.py``) become one or more *blocks*, each a matrix [n, f]
(or, for text, the n strings): what a scikit-learn model reads. Legend: n rows, t steps, c channels.

==========================  ===================================================================
kind                        blocks
==========================  ===================================================================
timeseries [t, c]           ``stats``: per channel mean, std, min, max, quartiles, last - first,
                            least-squares slope, mean |step| (10 c) + log(1 + t);
                            ``resampled``: linearly resampled to L steps, flattened (L c)
pose [t, j, k]              as timeseries over the j k coordinates
audio [s]                   as timeseries over 13 MFCCs per 25 ms frame (10 ms hop)
video [t, h, w, ch]         as timeseries over each frame area-pooled to a g x g grid (g g ch)
set [n, c]                  ``stats`` only (the order of elements means nothing)
irregular_timeseries        ``stats``: per channel count, mean, std, min, max, first, last,
                            slope over hours (NaN when never observed) + steps and last time;
                            ``bins``: mean per channel in B equal time bins (NaN when empty)
tabular                     ``numeric`` (NaN when unobserved) and ``categorical`` (codes, -1 missing)
image [h, w, ch]            ``pixels``: resized to at most 32 x 32 (area), in [0, 1] for uint8
text                        ``text``: the strings (TF-IDF is fitted later, on training rows only)
==========================  ===================================================================

Shapes that must agree across rows (L, image size and channels, time horizon) are fitted once on
training rows by :func:`fit_params`. Missing values stay NaN here; the baselines impute them with
training medians and add missing-value indicators.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

# the longest fixed length a series is resampled to (shorter training medians win: robot failures' 15)
MAX_STEPS = 20
IMAGE_MAX_SIDE = 32
VIDEO_GRID = 8
TIME_BINS = 8
N_MFCC, N_MELS = 13, 40
DEFAULT_SAMPLE_RATE = 16000  # audio without a ``sample_rate`` option
SERIES_KINDS = ("timeseries", "pose", "audio", "video")
STAT_NAMES = ("mean", "std", "min", "max", "q25", "median", "q75", "last_minus_first", "slope", "mean_abs_step")
SET_STAT_NAMES = ("mean", "std", "min", "max", "q25", "median", "q75")
IRREGULAR_STAT_NAMES = ("count", "mean", "std", "min", "max", "first", "last", "slope")

# kind -> (block name, block type); types: "dense" (numbers, NaN = missing), "categorical" (codes), "text"
BLOCKS: dict[str, tuple[tuple[str, str], ...]] = {
    "timeseries": (("stats", "dense"), ("resampled", "dense")),
    "pose": (("stats", "dense"), ("resampled", "dense")),
    "audio": (("stats", "dense"), ("resampled", "dense")),
    "video": (("stats", "dense"), ("resampled", "dense")),
    "set": (("stats", "dense"),),
    "irregular_timeseries": (("stats", "dense"), ("bins", "dense")),
    "tabular": (("numeric", "dense"), ("categorical", "categorical")),
    "image": (("pixels", "dense"),),
    "text": (("text", "text"),),
}


def blocks_of(kind: str) -> tuple[tuple[str, str], ...]:
    """(block name, block type) of a kind; an unknown kind lists the known ones."""
    if kind not in BLOCKS:
        raise ValueError(f"no baseline features for modality kind {kind!r}; known: {', '.join(BLOCKS)}")
    return BLOCKS[kind]


# ----------------------------------------------------------------------------------------------
# fitting shapes on training rows


def fit_params(kind: str, samples: Sequence[Any], options: Mapping[str, Any] | None = None, *, where: str = "") -> dict[str, Any]:
    """What must agree across rows, from (a sample of) the training rows of one modality.

    Args:
        kind: the modality kind. samples: canonical training samples.
        options: the modality's options (audio reads ``sample_rate``, else 16 kHz).
        where: names the task and modality in errors.
    """
    if not samples:
        raise ValueError(f"{where}: no training rows to fit baseline features on")
    if kind in SERIES_KINDS:
        params = {"sample_rate": int((options or {}).get("sample_rate", DEFAULT_SAMPLE_RATE))} if kind == "audio" else {}
        lengths = [len(series_of(kind, s, params)) for s in samples]
        return {**params, "steps": int(max(1, min(MAX_STEPS, np.median(lengths))))}
    if kind == "irregular_timeseries":
        last = [float(s["times"].max()) if len(s["times"]) else 0.0 for s in samples]
        return {"horizon": float(max(np.percentile(last, 95), 1e-6))}
    if kind == "image":
        hs, ws = zip(*(s.shape[:2] for s in samples))
        h, w = float(np.median(hs)), float(np.median(ws))
        scale = min(1.0, IMAGE_MAX_SIDE / max(h, w))
        channels = np.bincount([s.shape[2] for s in samples]).argmax()
        return {"size": (max(1, round(h * scale)), max(1, round(w * scale))), "channels": int(channels)}
    if kind == "tabular":
        return {"numeric": len(samples[0]["numeric"]), "categorical": len(samples[0]["categorical"])}
    blocks_of(kind)
    return {}


# ----------------------------------------------------------------------------------------------
# samples -> blocks


def featurize(kind: str, samples: Sequence[Any], params: Mapping[str, Any], *, where: str = "") -> dict[str, np.ndarray]:
    """Canonical samples of one modality -> {block name: [n, f] float32 (text: [n] object)}."""
    n = len(samples)
    if kind == "text":
        return {"text": np.asarray(list(samples), dtype=object)}
    if kind == "tabular":
        numeric = np.full((n, params["numeric"]), np.nan, np.float32)
        categorical = np.full((n, params["categorical"]), -1, np.int64)
        for i, s in enumerate(samples):
            if len(s["numeric"]) != params["numeric"] or len(s["categorical"]) != params["categorical"]:
                raise ValueError(f"{where}: row {i} has {len(s['numeric'])} numeric and {len(s['categorical'])} "
                                 f"categorical values; training rows have {params['numeric']} and {params['categorical']}")
            numeric[i] = np.where(s["numeric_observed"], s["numeric"], np.nan)
            categorical[i] = s["categorical"]
        return {"numeric": numeric, "categorical": categorical}
    if kind == "image":
        return {"pixels": np.stack([image_pixels(s, params) for s in samples]) if n else np.zeros((0, 0), np.float32)}
    if kind == "irregular_timeseries":
        stats, bins = zip(*(irregular_features(s, params) for s in samples)) if n else ((), ())
        return {"stats": _stack(stats), "bins": _stack(bins)}
    if kind == "set":
        return {"stats": _stack([set_stats(np.asarray(s, np.float64)) for s in samples])}
    if kind in SERIES_KINDS:
        series = [series_of(kind, s, params) for s in samples]
        channels = {x.shape[1] for x in series}
        if len(channels) > 1:
            raise ValueError(f"{where}: samples have different channel counts {sorted(channels)}; a baseline needs one")
        return {"stats": _stack([series_stats(x) for x in series]),
                "resampled": _stack([resample_series(x, params["steps"]).reshape(-1) for x in series])}
    blocks_of(kind)
    raise AssertionError(kind)


def _stack(rows: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack(rows).astype(np.float32) if len(rows) else np.zeros((0, 0), np.float32)


def series_of(kind: str, sample: Any, params: Mapping[str, Any]) -> np.ndarray:
    """One sample of a series kind -> float64 [t, c]."""
    x = np.asarray(sample)
    if kind == "timeseries":
        return x.astype(np.float64)
    if kind == "pose":
        return x.reshape(len(x), -1).astype(np.float64)  # [t, j, k] -> [t, j k]
    if kind == "audio":
        return mfcc(x.astype(np.float64), int(params["sample_rate"]))
    if kind == "video":
        frames = _to_float_pixels(x)
        if not len(frames):
            return np.zeros((0, VIDEO_GRID * VIDEO_GRID * x.shape[-1]))
        return np.stack([area_resize(f, VIDEO_GRID, VIDEO_GRID).reshape(-1) for f in frames])  # [t, g g ch]
    raise AssertionError(kind)


def series_stats(x: np.ndarray) -> np.ndarray:
    """[t, c] -> per channel :data:`STAT_NAMES` (channel-major) + log(1 + t); NaN when t = 0."""
    t, c = x.shape
    if t == 0:
        return np.concatenate([np.full(len(STAT_NAMES) * c, np.nan), [0.0]])
    q25, med, q75 = np.percentile(x, [25, 50, 75], axis=0)
    if t > 1:
        u = np.linspace(0.0, 1.0, t)
        slope = ((u - u.mean()) @ (x - x.mean(0))) / ((u - u.mean()) ** 2).sum()
        step = np.abs(np.diff(x, axis=0)).mean(0)
    else:
        slope = step = np.zeros(c)
    parts = [x.mean(0), x.std(0), x.min(0), x.max(0), q25, med, q75, x[-1] - x[0], slope, step]
    return np.concatenate([np.stack(parts, axis=1).reshape(-1), [math.log1p(t)]])


def set_stats(x: np.ndarray) -> np.ndarray:
    """[n, c] (unordered) -> per channel :data:`SET_STAT_NAMES` + log(1 + n)."""
    if x.ndim == 1:
        x = x[:, None]
    n, c = x.shape
    if n == 0:
        return np.concatenate([np.full(len(SET_STAT_NAMES) * c, np.nan), [0.0]])
    q25, med, q75 = np.percentile(x, [25, 50, 75], axis=0)
    return np.concatenate([np.stack([x.mean(0), x.std(0), x.min(0), x.max(0), q25, med, q75], 1).reshape(-1), [math.log1p(n)]])


def resample_series(x: np.ndarray, steps: int) -> np.ndarray:
    """[t, c] -> [steps, c] by linear interpolation at evenly spaced positions (t = 0: NaN)."""
    t, c = x.shape
    if t == 0:
        return np.full((steps, c), np.nan)
    if t == 1:
        return np.repeat(x, steps, axis=0)
    pos = np.linspace(0.0, t - 1, steps)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, t - 1)
    frac = (pos - lo)[:, None]
    return x[lo] * (1 - frac) + x[hi] * frac


def irregular_features(sample: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """{values [t, c], observed [t, c], times [t]} -> (stats [8 c + 2], bins [B c]); NaN where unobserved."""
    values = np.asarray(sample["values"], np.float64)
    observed = np.asarray(sample["observed"], bool)
    times = np.asarray(sample["times"], np.float64)
    t, c = values.shape
    v = np.where(observed, values, np.nan)
    count = observed.sum(0)
    seen = count > 0
    stats = np.full((c, len(IRREGULAR_STAT_NAMES)), np.nan)
    stats[:, 0] = count
    if seen.any():
        vs, obs = v[:, seen], observed[:, seen]
        stats[seen, 1] = np.nanmean(vs, 0)
        stats[seen, 2] = np.nanstd(vs, 0)
        stats[seen, 3] = np.nanmin(vs, 0)
        stats[seen, 4] = np.nanmax(vs, 0)
        first, last = obs.argmax(0), t - 1 - obs[::-1].argmax(0)
        cols = np.arange(vs.shape[1])
        stats[seen, 5] = vs[first, cols]
        stats[seen, 6] = vs[last, cols]
        tt = np.where(obs, times[:, None], np.nan)
        dt = tt - np.nanmean(tt, 0)
        dv = vs - stats[seen, 1]
        denom = np.nansum(dt**2, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats[seen, 7] = np.where(denom > 0, np.nansum(dt * dv, 0) / denom, 0.0)
    extra = [math.log1p(t), float(times.max()) if t else 0.0]
    horizon = float(params["horizon"])
    which = np.clip((times / horizon * TIME_BINS).astype(int), 0, TIME_BINS - 1) if t else np.zeros(0, int)
    sums, counts = np.zeros((TIME_BINS, c)), np.zeros((TIME_BINS, c))
    np.add.at(sums, which, np.where(observed, values, 0.0))
    np.add.at(counts, which, observed)
    with np.errstate(invalid="ignore", divide="ignore"):
        bins = np.where(counts > 0, sums / counts, np.nan)
    return np.concatenate([stats.reshape(-1), extra]), bins.reshape(-1)


def _to_float_pixels(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


def area_resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """[H, W, c] -> [h, w, c] by area averaging (each output pixel is the mean of the input pixels it
    covers, fractionally), which both shrinks and enlarges."""
    H, W = img.shape[:2]
    if (H, W) == (h, w):
        return img.astype(np.float32)
    rows, cols = _area_weights(H, h), _area_weights(W, w)
    out = np.einsum("ih,hwc,jw->ijc", rows, img.astype(np.float64), cols)
    return out.astype(np.float32)


@lru_cache(maxsize=64)
def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in]: the share of input cell k inside output cell i, rows normalised to sum to 1."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    k = np.arange(n_in)
    overlap = np.clip(np.minimum(edges[1:, None], k + 1) - np.maximum(edges[:-1, None], k), 0.0, None)
    return overlap / overlap.sum(1, keepdims=True)


def image_pixels(sample: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """[h, w, ch] -> flattened pixels at the fitted size and channel count."""
    x = _to_float_pixels(np.asarray(sample))
    want = params["channels"]
    if x.shape[2] != want:
        x = x.mean(2, keepdims=True) if want == 1 or x.shape[2] != 1 else x
        x = np.repeat(x, want, axis=2) if x.shape[2] == 1 else x[..., :want]
    return area_resize(x, *params["size"]).reshape(-1)


@lru_cache(maxsize=8)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters evenly spaced on the mel scale over 0..sr/2."""
    mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(0.0), mel(sample_rate / 2), n_mels + 2))
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0.0, None)


def mfcc(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Waveform [s] -> MFCCs [frames, 13]: peak-normalised, pre-emphasis 0.97, 25 ms Hamming frames
    every 10 ms, 40 mel bands, log, orthonormal DCT-II (the FSDD README's recipe)."""
    from scipy.fft import dct

    win = max(2, round(0.025 * sample_rate))
    hop = max(1, round(0.010 * sample_rate))
    n_fft = 1 << (win - 1).bit_length()
    x = wave / max(float(np.abs(wave).max(initial=0.0)), 1e-8)
    x = np.append(x[:1], x[1:] - 0.97 * x[:-1]) if len(x) else x
    if len(x) < win:
        x = np.pad(x, (0, win - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop] * np.hamming(win)
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2
    logmel = np.log(power @ _mel_filterbank(sample_rate, n_fft, N_MELS).T + 1e-10)
    return dct(logmel, type=2, norm="ortho", axis=1)[:, :N_MFCC]
