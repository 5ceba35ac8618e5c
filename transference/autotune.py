"""Speed choices: the precision for this device (from its capabilities), and the fused AdamW.

bf16 autocast is ~1.5x faster than fp32 on a CPU with AMX tile units, slower on CPUs that only
emulate it (0.70x on a Sapphire Rapids run without AMX kernels in use, 0.80-0.84x on an AMD EPYC with
AVX-512 bf16; ``benchmarks/speed.py``), and faster on GPUs that support it. ``train.py`` calls
:func:`pick_precision` when ``train.precision=auto``: the choice follows from what the device
reports, never from a timing at start-up, so it is the same on every rank and every run of one
machine. :func:`time_precisions` stays for the benchmarks.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from highmmt.config import HighMMTConfig
from highmmt.encoder import PerceiverEncoder

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


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tile units (torch's own check; False on a torch without it)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check()) if check is not None else False


def pick_precision(device: torch.device) -> tuple[str, str]:
    """``("bf16" | "fp32", why)`` from the device's capabilities: bf16 on a GPU that supports it and
    on a CPU with AMX tiles; fp32 elsewhere (bf16 would be emulated, hence slower)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name(device)} supports bf16"
        return "fp32", f"{torch.cuda.get_device_name(device)} lacks bf16"
    capability = torch.backends.cpu.get_cpu_capability()
    if device.type == "cpu" and cpu_has_amx():
        return "bf16", f"CPU with AMX tiles ({capability})"
    return "fp32", f"CPU without AMX tiles ({capability}): bf16 would be emulated"


__all__ = ["adamw", "bf16_supported", "cpu_has_amx", "pick_precision", "time_precisions"]
