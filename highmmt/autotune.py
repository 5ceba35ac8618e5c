"""Speed choices: the faster precision for this device (measured, not assumed), and the fused AdamW.

bf16 autocast is ~1.5x faster than fp32 on a CPU with AMX units, slower on CPUs that only emulate
bf16, and faster on most GPUs; which one a machine has is a measurement away. ``train.py`` calls
:func:`pick_precision` when ``train.precision=auto``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from highmmt.config import HighMMTConfig
from highmmt.encoder import PerceiverEncoder

# bf16 must be at least this much faster to be picked: it keeps 8 significant bits, not 24.
BF16_MIN_SPEEDUP = 1.1


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs at all here (CUDA: the card says so; CPU: torch always emulates it)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def time_precisions(
    cfg: HighMMTConfig, device: torch.device, *, batch: int = 32, tokens: int = 128, repeats: int = 5
) -> dict[str, float]:
    """Median ms of one forward + backward of the shared encoder at ``cfg``'s sizes on random tokens
    [batch, tokens, dim], in fp32 and (where supported) bf16 autocast, timed turn by turn.

    Uses its own random generator (the global RNG state is restored), so calling it does not change
    a seeded run.
    """
    rng_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    try:
        torch.manual_seed(0)
        encoder = PerceiverEncoder(dim=cfg.dim, cfg=cfg.encoder).to(device).train()
        x = torch.randn(batch, tokens, cfg.dim, device=device, requires_grad=True)
        mask = torch.ones(batch, tokens, dtype=torch.bool, device=device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        precisions = ["fp32", "bf16"] if bf16_supported(device) else ["fp32"]

        def step(precision: str) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = encoder(x, mask)
            out.float().sum().backward()

        times: dict[str, list[float]] = {p: [] for p in precisions}
        for i in range(repeats + 1):  # the first round warms up
            for p in precisions:
                sync()
                start = time.perf_counter()
                step(p)
                sync()
                if i:
                    times[p].append(1000 * (time.perf_counter() - start))
        return {p: statistics.median(t) for p, t in times.items()}
    finally:
        torch.set_rng_state(rng_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)


def adamw(params: Any, **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, fused into one kernel per step where every parameter is a float tensor
    on the CPU or a GPU (4.2x faster than the per-tensor loop for the default suite model's 128
    tensors on 2 CPU cores, ``benchmarks/speed.py`` options section); otherwise the default one."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(groups, fused=fused or None, **kwargs)


def pick_precision(cfg: HighMMTConfig, device: torch.device, **kwargs: Any) -> tuple[str, dict[str, float]]:
    """``("bf16" | "fp32", timings)``: bf16 when it is at least :data:`BF16_MIN_SPEEDUP` times faster."""
    times = time_precisions(cfg, device, **kwargs)
    if "bf16" in times and times["fp32"] >= BF16_MIN_SPEEDUP * times["bf16"]:
        return "bf16", times
    return "fp32", times


__all__ = ["BF16_MIN_SPEEDUP", "adamw", "bf16_supported", "pick_precision", "time_precisions"]
