"""Helpers shared by the benchmark scripts: timing, memory, machine description, JSON and tables.

Timings are wall-clock medians over repeats after warm-up; where two measurements are compared
(a model against a plain matmul, fp32 against bf16) their repeats are interleaved, so both see the
same background load on a shared machine. The load average is recorded with every result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

PRECISIONS = ("auto", "fp32", "bf16")


# ---- device, precision, threads -----------------------------------------------------------------
def pick_device(cpu: bool = False) -> torch.device:
    """CUDA when present (unless ``cpu``), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on a GPU that supports it, fp32 otherwise (train.py's rule)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What to call before reading the clock: waits for queued GPU work; nothing on the CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (None: leave the setting alone), then restore it."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- timing -------------------------------------------------------------------------------------
def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    warmup: int,
    repeats: int,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions taking turns (a, b, a, b, ...).

    Each function runs ``warmup`` times first (not timed), then ``repeats`` timed calls.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def time_call(fn: Callable[[], Any], *, warmup: int, repeats: int, sync: Callable[[], None] = lambda: None) -> list[float]:
    """Seconds per call of ``fn`` (see :func:`time_interleaved`)."""
    return time_interleaved({"fn": fn}, warmup=warmup, repeats=repeats, sync=sync)["fn"]


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median and minimum of a list of seconds, in milliseconds."""
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "repeats": len(times)}


# ---- memory -------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak resident set size so far (MiB; Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """This process's resident set size now (MiB)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return float("nan")


# ---- machine --------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from ``lscpu`` (or /proc/cpuinfo, or the platform string)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> dict[str, bool]:
    """The CPU features that decide whether bf16 can be fast (AVX-512 bf16, AMX)."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}


def load_average() -> list[float]:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return []


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where and when a benchmark ran: hardware, threads, library versions, load average."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_flags(),
        "device": str(device),
        "load_average": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_capability"] = list(torch.cuda.get_device_capability(device))
        info["cuda_version"] = torch.version.cuda
    return info


def hardware_line(info: Mapping[str, Any]) -> str:
    """One line naming the hardware, for the top of a results table."""
    where = info.get("gpu") or info["cpu_model"]
    line = (
        f"{where}; {info['logical_cpus']} logical CPUs, torch {info['torch_version']} using "
        f"{info['torch_threads']} thread(s); {info['date']}; load average {info['load_average']}"
    )
    if "load_average_end" in info:
        line += f" -> {info['load_average_end']} at the end"
    return line


def contention_warning(machine: Mapping[str, Any], device: torch.device) -> str | None:
    """A warning when other work shares the CPUs: several intra-op threads then stall at every op's
    barrier whenever one of them is descheduled (measured on a shared 2-CPU machine: 2-thread training steps 25-75x slower than 1-thread)."""
    load = (machine.get("load_average") or [0.0])[0]
    if device.type != "cpu" or machine["torch_threads"] < 2 or load < 1.0:
        return None
    return (f"the machine is busy (1-min load average {load} on {machine['logical_cpus']} CPUs) and torch uses "
            f"{machine['torch_threads']} threads: multi-threaded timings can be many times slower than on a quiet "
            "machine; rerun when it is idle or with --threads 1")


# ---- output ----------------------------------------------------------------------------------------
def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON (parent folders created; replaced atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats get 3 significant digits."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # NaN
                return "-"
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def run_cli(main: Callable[[], Any]) -> None:
    """Run a study's ``main()``; a user error (bad flag value, missing file) prints one line and exits 2."""
    try:
        main()
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
