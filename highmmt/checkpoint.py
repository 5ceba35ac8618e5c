"""Atomic writes and ``config.json`` + ``model.safetensors`` save/load.

Every file is written to a temporary name in the same folder, flushed to disk (fsync) and then
``os.replace``-d into place with the mode the umask gives, so a crash never leaves a half-written
file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TASK_WEIGHTS_DIR = "task_weights"  # train.select=task: <task>.safetensors, each task's own best epoch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _finish(tmp: str, path: Path) -> None:
    """Give the temporary file the mode a plain ``open`` would (mkstemp makes it 0600), flush it to
    disk, then rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _finish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_torch(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        _finish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        _finish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path}")
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for every kind of damage
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); the file is damaged or "
                         "was not written by save_pretrained / train.py") from e
    return with_wide_priors(state)


def with_wide_priors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights written before the heads' wide read-outs had a prior (``heads.<t>.wide.<m>.prior``, a buffer)
    hold only their weight: their prior is zero."""
    for key in [k for k in state if k.startswith("heads.") and ".wide." in k and k.endswith(".weight")]:
        state.setdefault(key[: -len("weight")] + "prior", torch.zeros_like(state[key]))
    return state


def check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise a ValueError listing missing keys, unexpected keys and shape mismatches."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: config expects {tuple(expected[k].shape)}, weights have {tuple(found[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if expected[k].shape != found[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise ValueError(f"{where}: the config does not match the weights: " + "; ".join(parts))


def task_weight_epochs(ckpt: str | Path, choice: str, rows_of: Any = None) -> dict[str, dict[str, Any]]:
    """``task_weights/best.json`` of a ``train.select=task`` run when ``--weights`` asks for it ({} for
    ``mean``, or ``auto`` on a run without one): task -> epoch, step, metric, value, ``validation_rows``
    and ``use``. ``use`` is True where the task's validation split had at least the run's
    ``train.select_min_rows`` rows (``rows_of(task)`` counts them for an entry that does not say);
    the other tasks keep ``model.safetensors``."""
    path = Path(ckpt) / TASK_WEIGHTS_DIR / "best.json"
    if choice == "mean" or (choice == "auto" and not path.is_file()):
        return {}
    if not path.is_file():
        raise FileNotFoundError(f"--weights task: {path} does not exist; only a run trained with "
                                "--set train.select=task keeps each task's own weights")
    config = Path(ckpt) / CONFIG_NAME
    train = json.loads(config.read_text()).get("train", {}) if config.is_file() else {}
    min_rows = int(train.get("select_min_rows", 500))
    entries = json.loads(path.read_text())
    for task, entry in entries.items():
        if "validation_rows" not in entry and rows_of is not None:
            entry["validation_rows"] = int(rows_of(task))
        entry["min_rows"] = min_rows
        entry["use"] = entry.get("validation_rows", min_rows) >= min_rows
    return entries
