"""Fixtures shared by the test files: a tiny model config and tiny seeded training runs on the
synthetic tasks. Runs are forced to fp32, so that no test depends on whether this machine's CPU
would pick bf16 (``train.precision=auto``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

# Under ``pytest -n N`` each worker gets cores / N threads (torch and the BLAS numpy, scipy and scikit-learn use):
# two workers with two threads each on two cores spin against each other (a 784 x 784 eigh 50x slower). The
# variables reach the libraries loaded later; threadpool_limits those already loaded.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
_THREADS = max(1, len(os.sched_getaffinity(0)) // _WORKERS) if _WORKERS else 0
if _THREADS:
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_THREADS))

import pytest  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from highmmt import HighMMTConfig, ModalityConfig, TaskConfig
from highmmt.config import EncoderConfig, FusionConfig

if _THREADS:
    torch.set_num_threads(_THREADS)
    threadpool_limits(_THREADS)

SYNTHETIC_TASKS = "synthetic_pair,synthetic_single"
TINY_RUN_FLAGS = ("--preset", "tiny", "--quiet", "--set", "train.precision=fp32", "--set", "train.steps_per_epoch=4",
                  "--set", "train.epochs=3")


@pytest.fixture
def tiny_run(tmp_path: Path) -> Callable[..., Path]:
    """``tiny_run(name, *flags)`` -> the run folder ``tmp_path/name`` of a tiny fp32 ``train.py`` run on
    the two synthetic tasks (3 epochs of 4 steps; ``flags`` come last and win), cache in ``tmp_path``."""
    import train

    def run(name: str, *flags: str) -> Path:
        out = tmp_path / name
        train.main([*TINY_RUN_FLAGS, "--tasks", SYNTHETIC_TASKS, "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
                    *flags])
        return out

    return run


@pytest.fixture
def tiny_model_config() -> HighMMTConfig:
    """Two tasks over two time-series modalities (``pair`` reads a and b, ``single`` reads a), width 16."""
    return HighMMTConfig(
        dim=16,
        modalities={"a": ModalityConfig("timeseries", {"channels": 3}), "b": ModalityConfig("timeseries", {"channels": 2})},
        tasks={"pair": TaskConfig(["a", "b"], "classification", 3), "single": TaskConfig(["a"], "classification", 2)},
        encoder=EncoderConfig(num_latents=4, heads=2, dim_head=8),
        fusion=FusionConfig(heads=2, dim_head=8),
    )
