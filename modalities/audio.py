"""Audio embedder: log-mel spectrogram (computed inside the module, on the model's device) -> tokens.

One sample: float32 waveform [s] in [-1, 1] at ``sample_rate``; s varies.

Batch (from ``collate``): ``x`` [b, s] float32, ``mask`` [b, s] bool (True = real sample).

Tokens: ``torchaudio.transforms.MelSpectrogram`` (window ``win_ms``, hop ``hop_ms``, ``n_mels`` bands,
no centre padding, so a frame only sees its own sample's audio) -> log(power + 1e-6) -> groups of
``frames_per_token`` frames, each ``Linear(frames_per_token * n_mels -> d)`` + fixed sinusoidal
position (``stem="conv"``: a convolutional stem over the frames instead, ``modalities._common.ConvStem1d``).
A token is real when all its frames lie inside the sample's waveform. Longer waveforms are
cropped to ``max_tokens`` tokens. Defaults at 8 kHz: 25 ms window, 10 ms hop, 4 frames per token
-> 25 tokens per second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import Tensor, nn

from highmmt.embedder import Batch, Embedder, sinusoidal_positions
from highmmt.registry import EMBEDDERS
from modalities._common import (
    ConvStem1d,
    check_stem,
    batch_mask,
    finish,
    nonempty,
    pad_stack,
    positive_float,
    positive_int,
    sample_array,
    zero_invalid,
)

LOG_EPS = 1e-6


NORMALIZE = ("none", "utterance")


def warp_bands(spec: Tensor, max_warp: float) -> Tensor:
    """Vocal tract length perturbation, simplified (Jaitly & Hinton 2013 warp the filterbank's
    frequencies; this warps the mel axis of the log-mel spectrogram): each sample's band j reads
    source band ``j * alpha`` (linear interpolation, the top band repeated), alpha drawn uniformly
    from [1 - max_warp, 1 + max_warp] per sample. spec [b, m, f] -> [b, m, f]."""
    b, m, f = spec.shape
    alpha = 1 + max_warp * (2 * torch.rand(b, 1, device=spec.device) - 1)  # [b, 1]
    src = (torch.arange(m, device=spec.device) * alpha).clamp(max=m - 1)  # [b, m]
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=m - 1)
    w = (src - lo).unsqueeze(-1)  # [b, m, 1]
    band = lambda idx: spec.gather(1, idx.unsqueeze(-1).expand(b, m, f))  # noqa: E731
    return band(lo) * (1 - w) + band(hi) * w


def utterance_normalize(spec: Tensor, real_frames: Tensor, eps: float = 1e-5) -> Tensor:
    """Standardise each mel band over each sample's first ``real_frames`` frames.

    spec [b, m, f] log-mel; real_frames [b] -> [b, m, f], 0 on frames past the sample's end (and on
    every frame of a sample with none).
    """
    valid = (torch.arange(spec.shape[2], device=spec.device).unsqueeze(0) < real_frames.unsqueeze(1)).unsqueeze(1)  # [b, 1, f]
    count = valid.sum(dim=2, keepdim=True).clamp(min=1)
    mean = (spec * valid).sum(dim=2, keepdim=True) / count
    var = (((spec - mean) * valid) ** 2).sum(dim=2, keepdim=True) / count
    return torch.where(valid, (spec - mean) / (var + eps).sqrt(), torch.zeros_like(spec))


@EMBEDDERS.register("audio")
class AudioEmbedder(Embedder):
    """Log-mel patches of waveforms.

    Args:
        name: the modality's name.
        dim: token width d.
        sample_rate: Hz of the waveforms.
        n_mels: mel bands.
        win_ms: analysis window (ms).
        hop_ms: hop between frames (ms).
        n_fft: FFT size; default the next power of two >= the window.
        frames_per_token: spectrogram frames per token.
        max_tokens: tokens kept per sample (the waveform is cropped beyond).
        normalize: ``"none"`` keeps the log-mel values; ``"utterance"`` standardises each mel band
            over the sample's own real frames (cepstral mean and variance normalisation, per
            utterance), which removes a speaker's and a microphone's constant spectral colouring.
        stem: ``"linear"`` (one linear map per group of frames) or ``"conv"`` (``ConvStem1d``).
        warp: training-time augmentation for unheard voices: each sample's mel axis is stretched by
            a factor drawn from [1 - warp, 1 + warp] (:func:`warp_bands`); 0 (default) = off.
    """

    kind = "audio"

    def __init__(
        self,
        *,
        name: str,
        dim: int,
        sample_rate: int = 8000,
        n_mels: int = 40,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        n_fft: int | None = None,
        frames_per_token: int = 4,
        max_tokens: int = 512,
        normalize: str = "none",
        stem: str = "linear",
        warp: float = 0.0,
    ) -> None:
        super().__init__(name=name, dim=dim)
        self.sample_rate = positive_int(self.kind, "sample_rate", sample_rate)
        self.n_mels = positive_int(self.kind, "n_mels", n_mels)
        self.win_length = max(1, round(positive_float(self.kind, "win_ms", win_ms) * self.sample_rate / 1000))
        self.hop_length = max(1, round(positive_float(self.kind, "hop_ms", hop_ms) * self.sample_rate / 1000))
        if n_fft is None:
            n_fft = 1 << (self.win_length - 1).bit_length()
        self.n_fft = positive_int(self.kind, "n_fft", n_fft)
        if self.n_fft < self.win_length:
            raise ValueError(f"audio embedder: n_fft ({self.n_fft}) must be >= the window ({self.win_length} samples)")
        self.frames_per_token = positive_int(self.kind, "frames_per_token", frames_per_token)
        self.max_tokens = positive_int(self.kind, "max_tokens", max_tokens)
        if normalize not in NORMALIZE:
            raise ValueError(f"audio embedder: option 'normalize' must be one of {NORMALIZE}, got {normalize!r}")
        self.normalize = normalize
        if not (isinstance(warp, (int, float)) and 0.0 <= warp < 1.0):
            raise ValueError(f"audio embedder: option 'warp' must be a number in [0, 1), got {warp!r}")
        self.warp = float(warp)
        # Kept out of the module tree on purpose: the filterbank is derived from the options (nothing to
        # store in a checkpoint) and must stay float32 (stft) even when the model is cast to bf16.
        mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate,
            n_fft=self.n_fft,
            win_length=self.win_length,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            center=False,
            power=2.0,
        )
        object.__setattr__(self, "_mel", mel)
        self.stem = check_stem(self.kind, stem)
        if stem == "linear":
            self.to_tokens = nn.Linear(self.frames_per_token * self.n_mels, dim)
        else:
            self.to_tokens = ConvStem1d(self.n_mels, dim, self.frames_per_token)

    @classmethod
    def collate(cls, samples: Sequence[Any], **options: Any) -> Batch:
        """samples: waveforms [s_i] -> ``x`` [b, s] float32, ``mask`` [b, s]."""
        nonempty(cls.kind, samples)
        arrays = [sample_array(cls.kind, i, s, rank=1, layout="[s] (mono waveform)") for i, s in enumerate(samples)]
        x, mask = pad_stack(cls.kind, [a.astype(np.float32, copy=False) for a in arrays], dtype=np.float32)
        return {"x": x, "mask": mask}

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``x`` [b, s] (+ ``mask`` [b, s]) -> tokens [b, n, d], mask [b, n]."""
        x = batch["x"]
        self.check_rank(x, 2, "[b, s] (mono waveforms)")
        self.check_float(x)
        b, s = x.shape
        mask = batch_mask(self, batch, (b, s))
        self.check_finite(x, where=mask)
        x = zero_invalid(x, mask).float()
        lengths = mask.sum(dim=1)  # [b]

        k = self.frames_per_token
        max_samples = self.n_fft + (self.max_tokens * k - 1) * self.hop_length
        x = x[:, :max_samples]
        if x.shape[1] < self.n_fft:  # too short for one frame: pad so the spectrogram has one (masked) frame
            x = torch.cat([x, x.new_zeros(b, self.n_fft - x.shape[1])], dim=1)

        mel = self._mel.to(x.device)
        real_frames = torch.div(lengths - self.n_fft, self.hop_length, rounding_mode="floor") + 1  # [b]
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.log(mel(x) + LOG_EPS)  # [b, n_mels, frames]
            if self.training and self.warp > 0:
                spec = warp_bands(spec, self.warp)
            if self.normalize == "utterance":
                spec = utterance_normalize(spec, real_frames.clamp(min=0))
        # pad with the log of silence, what a frame of zeros gives, so padding looks the same in any batch
        silence = 0.0 if self.normalize == "utterance" else math.log(LOG_EPS)
        frame = torch.arange(spec.shape[2], device=x.device)
        spec = torch.where(frame < real_frames[:, None, None], spec, torch.full((), silence, device=x.device))
        spec = F.pad(spec, (0, (-spec.shape[2]) % k), value=silence)
        spec = spec.to(next(self.to_tokens.parameters()).dtype)
        n = spec.shape[2] // k

        real_tokens = torch.div(real_frames.clamp(min=0), k, rounding_mode="floor")  # [b]
        token_mask = torch.arange(n, device=x.device).unsqueeze(0) < real_tokens.unsqueeze(1)

        if self.stem == "linear":
            tokens = self.to_tokens(rearrange(spec, "b m (n k) -> b n (k m)", k=k))
        else:  # shifted so silence is 0, what the convolutions pad with: a batch's padding changes nothing
            tokens = self.to_tokens(spec - silence)
        tokens = tokens + sinusoidal_positions(n, self.dim, device=x.device, dtype=tokens.dtype)
        return finish(tokens, token_mask)
