"""What every analysis writes: ``<name>.json``, ``<name>.md`` (tables) and ``<name>.png`` (heatmaps)."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from highmmt.checkpoint import atomic_write_bytes, atomic_write_json
from highmmt.plotting import pyplot, save_figure


def hardware() -> str:
    """The machine in words, for the cost line of every report."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, CPU, fp32, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; NaN for one value)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else float("nan")


def fmt(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_mean_sd(mean: float | None, sd: float | None, digits: int = 3, signed: bool = False) -> str:
    if mean is None or math.isnan(mean):
        return "-"
    return fmt(mean, digits, signed) + ("" if sd is None or math.isnan(sd) else f" ± {sd:.{digits}f}")


def short(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters, keeping its end (robot_failures_lp1 -> robot_fa…es_lp1)."""
    if len(name) <= width:
        return name
    tail = width // 2
    return name[: width - tail - 1] + "…" + name[-tail:]


def matrix_table(title: str, names: Sequence[str], cell: Any, corner: str = "") -> list[str]:
    """A markdown table, rows and columns ``names``; ``cell(row, col)`` gives the text."""
    lines = [f"### {title}", "", f"| {corner} | " + " | ".join(short(n, 18) for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in names:
        lines.append(f"| {short(r, 18)} | " + " | ".join(cell(r, c) for c in names) + " |")
    return lines + [""]


def heatmaps(panels: Mapping[str, np.ndarray], names: Sequence[str], path: Path, *, title: str, vmin: float, vmax: float,
             cmap: str = "RdBu_r", row_names: Sequence[str] | None = None) -> None:
    """One heatmap per panel (task x task matrices; NaN cells left blank) side by side, one colour bar."""
    plt = pyplot()
    n = len(panels)
    rows = row_names or names
    size = max(3.0, 0.45 * len(names) + 1.5)
    fig, axes = plt.subplots(1, n + 1, figsize=(size * n + 1, size * max(0.5, len(rows) / len(names))),
                             gridspec_kw={"width_ratios": [1.0] * n + [0.05]}, squeeze=False)
    image = None
    for ax, (panel, m) in zip(axes[0, :n], panels.items()):
        image = ax.imshow(np.ma.masked_invalid(m), vmin=vmin, vmax=vmax, cmap=cmap)
        ax.set_title(panel, fontsize=9)
        ax.set_xticks(range(len(names)), [short(s, 16) for s in names], rotation=90, fontsize=7)
        ax.set_yticks(range(len(rows)), [short(s, 16) for s in rows], fontsize=7)
        for (i, j), v in np.ndenumerate(m):
            if not np.isnan(v) and m.size <= 144:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
    if image is not None:
        fig.colorbar(image, cax=axes[0, n])
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def write(out: Path, name: str, result: Mapping[str, Any], markdown: str) -> dict[str, str]:
    """Write ``name``.json and ``name``.md into ``out`` (atomically); the PNG is drawn by the caller."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{name}.json", _finite(result))
    atomic_write_bytes(out / f"{name}.md", markdown.encode())
    return {"json": str(out / f"{name}.json"), "markdown": str(out / f"{name}.md"), "heatmap": str(out / f"{name}.png")}


def _finite(obj: Any) -> Any:
    """NaN / inf -> None, so the JSON is standard (a pair of tasks that share nothing has no cosine)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
