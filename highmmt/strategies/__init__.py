"""How to train: multitask sampling strategies (and later fine-tuning, self/co-training)."""

from highmmt.strategies.multitask import MultitaskSchedule, make_schedule, warmup_cosine

__all__ = ["MultitaskSchedule", "make_schedule", "warmup_cosine"]
