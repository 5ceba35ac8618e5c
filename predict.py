"""Predict with a trained model on new rows.

    python predict.py --checkpoint runs/x --input new_rows.parquet --output predictions.csv [--task NAME]

``--input`` is a bring-your-own spec file (its ``--split``, default ``test``), a folder written by
``datasets.save_to_disk`` (a Dataset, or a DatasetDict and ``--split``), or a parquet file or a folder
of parquet files. The rows need the task's modality columns, in the formats the task was trained on;
the target column may be absent. The task's spec (modality kinds and the options the run inferred or
was given) comes from the checkpoint's ``config.json``, so the rows are read as in training.

``--checkpoint A,B,C`` (several run folders with the task, trained with different seeds, say) predicts with their
ensemble: each run predicts as it would alone, and the file gets the mean of their class probabilities (label
probabilities for multilabel, outputs for regression; ``tasks.loader.average_outputs``). The runs must give the task
the same kind, outputs and class names. ``experiments.ensemble`` scores such ensembles on a split.

``--output`` (``.csv`` or ``.parquet``) gets one row per input row, in input order: ``row``; for
classification ``prediction`` (class index), ``prediction_name`` and ``probability_<class name>`` per
class; for multilabel ``probability_<label>`` and ``prediction_<label>`` (0/1 at 0.5); for regression
``prediction`` (or ``prediction_<i>`` per output). Nothing in the checkpoint is unpickled. A run trained
with ``train.select=task`` (the default preset) predicts a task with that task's own best weights
when its validation split was large enough to choose on (``task_weights/``; ``--weights mean`` uses
``model.safetensors``), as ``evaluate.py`` scores it.
From Python: ``predict_rows(HighMMT.from_pretrained(run), rows, checkpoint_task(run, None))``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

import modalities  # noqa: F401  (registers the embedders)
import tasks as task_registry  # noqa: F401  (registers the built-in tasks)
import transference  # noqa: F401  (registers the training methods: a run may predict through one)
from highmmt import HighMMT
from highmmt.checkpoint import task_weight_epochs
from tasks.base import TaskSpec
from tasks.cache import SPEC_SUFFIXES, load_task
from tasks.loader import average_outputs, predict, predicted
from transference.hooks import run_predictor


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a train.py run folder (config.json + model.safetensors), or "
                   "several, comma-separated: their ensemble (the mean of their probabilities)")
    p.add_argument("--input", required=True, help="spec file, save_to_disk folder, parquet file or folder of parquet files")
    p.add_argument("--output", required=True, help="predictions file: .csv or .parquet")
    p.add_argument("--task", default=None, help="the checkpoint's task to predict (needed when it has several)")
    p.add_argument("--split", default="test", help="split of a spec file or DatasetDict (default: test)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--weights", default="auto", choices=["auto", "mean", "task"],
                   help="mean: model.safetensors; task: the task's own best weights (train.select=task; error if "
                   "the run has none); auto: task where the run has them")
    p.add_argument("--cpu", action="store_true", help="predict on the CPU even if a GPU is present")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def checkpoint_task(ckpt: Path, name: str | None) -> TaskSpec:
    """The spec of one of the checkpoint's tasks, as the run resolved it."""
    cfg_path = ckpt / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"--checkpoint {ckpt}: no config.json (is it a train.py run folder?)")
    saved = json.loads(cfg_path.read_text()).get("tasks", {})
    if not saved:
        raise ValueError(f"{cfg_path}: lists no tasks")
    if name is None:
        if len(saved) > 1:
            raise ValueError(f"--checkpoint {ckpt} has {len(saved)} tasks {sorted(saved)}: pick one with --task")
        name = next(iter(saved))
    if name not in saved:
        raise ValueError(f"--task {name!r}: the checkpoint {ckpt} has tasks {sorted(saved)}")
    return TaskSpec.from_dict(saved[name])


def read_rows(path: Path, split: str, args: argparse.Namespace) -> datasets.Dataset:
    """The input rows as one Dataset (see the module docstring for the accepted forms)."""
    if path.suffix.lower() in SPEC_SUFFIXES:
        lt = load_task(path, data_root=args.data_root, cache_dir=args.cache_dir, quiet=args.quiet)
        if split not in lt.splits:
            raise ValueError(f"--input {path}: no split {split!r} (it has {sorted(lt.splits)})")
        return lt.splits[split]
    if not path.exists():
        raise FileNotFoundError(f"--input {path} does not exist")
    parquet = [path] if path.suffix == ".parquet" else sorted(path.glob("*.parquet")) if path.is_dir() else []
    if parquet:
        return datasets.Dataset.from_parquet([str(p) for p in parquet])
    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"--input {path}: neither a spec file, a parquet file or folder, nor a save_to_disk folder ({e})") from e
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ValueError(f"--input {path}: no split {split!r} (it has {sorted(data)})")
        data = data[split]
    return data


def with_target(rows: datasets.Dataset, spec: TaskSpec, where: str) -> datasets.Dataset:
    """Check the modality columns; add a placeholder target when the rows have none."""
    missing = [m for m in spec.modalities if m not in rows.column_names]
    if missing:
        raise ValueError(f"{where}: lacks the modality column(s) {missing} of task {spec.name!r}; it has {rows.column_names}")
    if spec.target in rows.column_names:
        return rows
    if spec.task_type == "classification":
        return rows.add_column(spec.target, [0] * len(rows))
    width = spec.num_classes or 1
    value: Any = [0.0] * width if spec.task_type == "multilabel" or width > 1 else 0.0
    return rows.add_column(spec.target, [value] * len(rows))


def prediction_table(outputs: np.ndarray, spec: TaskSpec) -> dict[str, list[Any]]:
    """Columns of the predictions file from model outputs [n, c]."""
    n = len(outputs)
    table: dict[str, list[Any]] = {"row": list(range(n))}
    names = list(spec.class_names or []) or [str(i) for i in range(outputs.shape[1])]
    if spec.task_type == "classification":
        probs = torch.softmax(torch.from_numpy(outputs).float(), dim=-1).numpy()
        pred = probs.argmax(axis=1)
        table["prediction"] = pred.tolist()
        table["prediction_name"] = [names[i] for i in pred]
        for j, name in enumerate(names):
            table[f"probability_{name}"] = probs[:, j].tolist()
    elif spec.task_type == "multilabel":
        probs = torch.sigmoid(torch.from_numpy(outputs).float()).numpy()
        for j, name in enumerate(names):
            table[f"probability_{name}"] = probs[:, j].tolist()
            table[f"prediction_{name}"] = (probs[:, j] >= 0.5).astype(int).tolist()
    elif outputs.shape[1] == 1:
        table["prediction"] = outputs[:, 0].tolist()
    else:
        for j in range(outputs.shape[1]):
            table[f"prediction_{j}"] = outputs[:, j].tolist()
    return table


def predict_rows(model: HighMMT, rows: datasets.Dataset, spec: TaskSpec, *, batch_size: int = 128,
                 device: torch.device | str = "cpu") -> dict[str, list[Any]]:
    """The Python equivalent of the command: the columns of the predictions file for ``rows`` (a
    Dataset with the task's modality columns; the target may be absent) from a loaded model."""
    rows = with_target(rows, spec, "rows")
    if len(rows) == 0:
        raise ValueError("rows: no rows to predict")
    outputs, _ = predict(model, rows, spec, batch_size=batch_size, device=device)
    return prediction_table(outputs, spec)


def checkpoint_specs(ckpts: Sequence[Path], name: str | None) -> list[TaskSpec]:
    """The task's spec in each of ``ckpts``; an ensemble's runs must agree on what the task predicts."""
    if not ckpts:
        raise ValueError("--checkpoint: name a run folder")
    if len(set(ckpts)) != len(ckpts):
        raise ValueError(f"--checkpoint: a run is listed twice ({', '.join(map(str, ckpts))})")
    first = checkpoint_task(ckpts[0], name)
    specs = [first] + [checkpoint_task(c, first.name) for c in ckpts[1:]]
    for ckpt, spec in zip(ckpts[1:], specs[1:]):
        mine, theirs = predicted(spec), predicted(first)
        if mine != theirs:
            raise ValueError(f"--checkpoint {ckpt}: task {first.name!r} is {spec.task_type} with {spec.num_classes} outputs "
                             f"{mine[2] or ''}, in {ckpts[0]} {first.task_type} with {first.num_classes} {theirs[2] or ''}: "
                             "an ensemble's runs must predict the same classes")
    return specs


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    ckpts, out = [Path(c) for c in args.checkpoint.split(",") if c], Path(args.output)
    if out.suffix not in (".csv", ".parquet"):
        raise ValueError(f"--output {out}: name a .csv or .parquet file")
    specs = checkpoint_specs(ckpts, args.task)
    spec = specs[0]
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    rows = with_target(read_rows(Path(args.input), args.split, args), spec, f"--input {args.input}")
    if len(rows) == 0:
        raise ValueError(f"--input {args.input}: no rows to predict")
    outputs = []
    for ckpt, this in zip(ckpts, specs):  # each run reads the rows with the options it was trained with
        model = HighMMT.from_pretrained(ckpt, map_location=device).eval()
        if task_weight_epochs(ckpt, args.weights).get(spec.name, {}).get("use"):
            model.load_task_weights(ckpt, spec.name)
        predictor = run_predictor(model, ckpt, json.loads((ckpt / "config.json").read_text()), device)
        outputs.append(predict(predictor, rows, this, batch_size=args.batch_size, device=device)[0])
    combined = outputs[0] if len(outputs) == 1 else average_outputs(outputs, spec.task_type)
    table = datasets.Dataset.from_dict(prediction_table(combined, spec))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        table.to_csv(str(out), index=False)
    else:
        table.to_parquet(str(out))
    if not args.quiet:
        by = f" (an ensemble of {len(ckpts)} runs)" if len(ckpts) > 1 else ""
        print(f"{len(rows)} predictions of task {spec.name!r}{by} -> {out}")
    return out


if __name__ == "__main__":
    from highmmt.cli import run_cli

    run_cli(main)
