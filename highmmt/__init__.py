"""highmmt: one shared model for many modalities and tasks (HighMMT, Liang et al., TMLR 2023)."""

from highmmt.config import (
    EncoderConfig,
    FusionConfig,
    HighMMTConfig,
    ModalityConfig,
    SharingConfig,
    TaskConfig,
    apply_overrides,
)
from highmmt.embedder import Embedder
from highmmt.model import HighMMT
from highmmt.registry import EMBEDDERS, STRATEGIES, TASKS

__version__ = "0.1.0"

__all__ = [
    "EMBEDDERS",
    "STRATEGIES",
    "TASKS",
    "Embedder",
    "EncoderConfig",
    "FusionConfig",
    "HighMMT",
    "HighMMTConfig",
    "ModalityConfig",
    "SharingConfig",
    "TaskConfig",
    "apply_overrides",
]
