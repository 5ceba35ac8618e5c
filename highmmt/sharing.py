"""Parameter sharing as configuration.

Unimodal encoders are shared by *groups of modalities*; pairwise fusion blocks by *groups of
unordered modality pairs* (written ``"a|b"``, names sorted). ``"all"`` is one group (HighMMT's
default), ``"none"`` one group per modality / pair, a dict names the groups explicitly and must
cover every modality / pair exactly once. Groups are shared modules indexed by group name; no full
model copies are made (unlike the original code's ``max(num_groups)`` copies).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations


def pair_key(a: str, b: str) -> str:
    """Unordered pair name ``"a|b"`` with the names sorted."""
    x, y = sorted((a, b))
    return f"{x}|{y}"


def task_pairs(task_modalities: Iterable[Sequence[str]]) -> list[str]:
    """All unordered modality pairs that occur inside one task, sorted."""
    pairs = {pair_key(a, b) for mods in task_modalities for a, b in combinations(mods, 2)}
    return sorted(pairs)


def _resolve(spec: str | Mapping[str, Sequence[str]], items: Sequence[str], what: str, single: str) -> dict[str, str]:
    if isinstance(spec, str):
        if spec == "all":
            return {item: single for item in items}
        if spec == "none":
            return {item: item.replace(".", "_") for item in items}
        raise ValueError(f"sharing.{what} must be 'all', 'none' or a dict of groups, got {spec!r}")
    mapping: dict[str, str] = {}
    for group, members in spec.items():
        for m in members:
            if what == "fusion" and "|" in m:
                a, b = m.split("|", 1)
                m = pair_key(a, b)
            if m not in items:
                raise ValueError(
                    f"sharing.{what} group {group!r} names {m!r}, which is not one of the model's "
                    f"{'pairs' if what == 'fusion' else 'modalities'}: {list(items)}"
                )
            if m in mapping:
                raise ValueError(f"sharing.{what}: {m!r} is in two groups ({mapping[m]!r} and {group!r})")
            mapping[m] = group.replace(".", "_")
    missing = [i for i in items if i not in mapping]
    if missing:
        raise ValueError(f"sharing.{what} groups leave out {missing}; every one must be in exactly one group")
    return mapping


def encoder_groups(spec: str | Mapping[str, Sequence[str]], modalities: Sequence[str]) -> dict[str, str]:
    """Modality -> encoder group name."""
    return _resolve(spec, list(modalities), "encoder", "shared")


def fusion_groups(spec: str | Mapping[str, Sequence[str]], pairs: Sequence[str]) -> dict[str, str]:
    """Unordered pair ``"a|b"`` -> fusion group name."""
    return _resolve(spec, list(pairs), "fusion", "shared")
