"""Name -> class registries (timm-style ``register_model``).

``EMBEDDERS`` maps a modality *kind* (``"image"``, ``"audio"``...) to its embedder class,
``TASKS`` maps a built-in task name to its module-level builder, ``STRATEGIES`` maps a
multitask sampling strategy name to its class. An unknown name lists the known ones.

Registries may name a package to import lazily on first lookup so that ``highmmt`` never imports
``modalities``/``tasks`` at import time (imports run one way: tasks -> modalities -> highmmt).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any


class Registry:
    """A dictionary of named objects with helpful errors.

    Args:
        what: what the registry holds, for error messages ("embedder kind", "task").
        populate: module to import on first lookup (it registers its members).
    """

    def __init__(self, what: str, populate: str | None = None) -> None:
        self.what = what
        self._populate = populate
        self._items: dict[str, Any] = {}

    def _ensure_populated(self) -> None:
        if self._populate is not None:
            module, self._populate = self._populate, None
            importlib.import_module(module)

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.what} {name!r} is already registered to {self._items[name]!r}")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        self._ensure_populated()
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ValueError(f"unknown {self.what} {name!r}; known: {known}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        self._ensure_populated()
        return name in self._items

    def names(self) -> list[str]:
        self._ensure_populated()
        return sorted(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


EMBEDDERS = Registry("modality kind", populate="modalities")
TASKS = Registry("task", populate="tasks")
STRATEGIES = Registry("multitask strategy")
