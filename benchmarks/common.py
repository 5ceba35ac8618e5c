"""Helpers shared by the benchmark scripts: timing, memory, machine description, statistics over
seeds, JSON and tables.

Timings are wall-clock medians over repeats after warm-up; where two measurements are compared
(a model against a plain matmul, fp32 against bf16) their repeats are interleaved, so both see the
same background load on a shared machine. The load average is recorded with every result.

Results over seeds (every study script): :func:`mean_sd` gives the mean and the *sample* standard
deviation (ddof = 1) and :func:`compare` the verdict on a difference, by one rule (see there).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from highmmt.cli import run_cli  # noqa: F401  (the studies' entry point, re-exported)

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


# ---- statistics over seeds ------------------------------------------------------------------------
class MeanSD(NamedTuple):
    """One quantity over seeds: mean, sample standard deviation (ddof = 1; None with fewer than two
    values, where there is no spread) and the number of values."""

    mean: float
    sd: float | None
    n: int


def mean_sd(values: Iterable[float]) -> MeanSD:
    """Mean and sample standard deviation (``statistics.stdev``, ddof = 1) of per-seed values.

    No values: mean NaN, n 0. A NaN value (not measured) makes the mean and sd NaN.
    """
    vals = [float(v) for v in values]
    if not vals:
        return MeanSD(float("nan"), None, 0)
    if any(math.isnan(v) for v in vals):
        return MeanSD(float("nan"), float("nan") if len(vals) > 1 else None, len(vals))
    return MeanSD(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


def format_mean_sd(values: Iterable[float], digits: int = 3, *, per_seed: bool = False) -> str:
    """``0.650 ± 0.141`` (one value: ``0.650``; none or NaN: ``-``); ``per_seed`` appends each
    seed's value in brackets: ``0.650 ± 0.141 (0.550, 0.750)``."""
    vals = [float(v) for v in values]
    m = mean_sd(vals)
    if m.n == 0 or math.isnan(m.mean):
        return "-"
    text = f"{m.mean:.{digits}f}" + ("" if m.sd is None else f" ± {m.sd:.{digits}f}")
    if per_seed and m.n > 1:
        text += " (" + ", ".join(f"{v:.{digits}f}" for v in vals) + ")"
    return text


VERDICTS = ("gain", "loss", "no difference", "one seed")


class Comparison(NamedTuple):
    """A difference of two quantities over seeds and what it may be called (:func:`compare`)."""

    difference: float  # mean(a) - mean(b), in the metric's units
    spread: float | None  # the larger sample sd of the two (None: one seed on each side)
    verdict: str  # one of VERDICTS

    def format(self, digits: int = 3) -> str:
        """``+0.050 (no difference)``; ``-`` when the difference is NaN."""
        if math.isnan(self.difference):
            return "-"
        return f"{self.difference:+.{digits}f} ({self.verdict})"


def compare(a: Iterable[float], b: Iterable[float], *, higher_is_better: bool = True) -> Comparison:
    """Compare per-seed values ``a`` against a baseline's ``b``: difference of means and a verdict.

    The rule, the same in every study: the seed spread is the larger of the two sample standard
    deviations (ddof = 1; a side with a single value has none and does not count). A difference
    whose absolute value is not larger than that spread is ``"no difference"``; a larger one is
    ``"gain"`` when ``a`` is better (higher, or lower with ``higher_is_better=False``), else
    ``"loss"``. With a single seed on both sides there is no spread to judge by: ``"one seed"``.
    Seeds are not paired (the spread of each side, not of paired differences), and this is a plain
    rule, not a significance test.
    """
    ma, mb = mean_sd(a), mean_sd(b)
    diff = ma.mean - mb.mean
    sds = [x.sd for x in (ma, mb) if x.sd is not None and not math.isnan(x.sd)]
    spread = max(sds) if sds else None
    if spread is None or math.isnan(diff):
        verdict = "one seed"
    elif abs(diff) <= spread:
        verdict = "no difference"
    else:
        verdict = "gain" if (diff > 0) == higher_is_better else "loss"
    return Comparison(diff, spread, verdict)


def format_seeds(seeds: Iterable[Any]) -> str:
    """``seed 0`` / ``seeds 0, 1, 2``: the seeds a table's figures come from."""
    seeds = list(seeds)
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in seeds)


STATS_RULE = ("mean ± sample standard deviation (ddof = 1); a difference not larger than the larger of the two "
              "standard deviations is called 'no difference', and one between single runs is not judged ('one seed').")


def stats_note(seeds: Iterable[Any]) -> str:
    """The sentence under every study table that names its seeds and how figures over them were made."""
    seeds = list(seeds)
    if len(seeds) < 2:
        return (f"One run per configuration ({format_seeds(seeds)}): no standard deviation, and no difference "
                "is called a gain or a loss (verdict 'one seed').")
    return f"Over {format_seeds(seeds)}: {STATS_RULE}"


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


