"""How to train: multitask sampling strategies (and later fine-tuning, self/co-training)."""

from highmmt.strategies.multitask import MultitaskSchedule, make_schedule

__all__ = ["MultitaskSchedule", "make_schedule"]
