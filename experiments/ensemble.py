"""Score a seed ensemble: several trained runs with their predicted probabilities averaged (a deep ensemble,
Lakshminarayanan et al., 2017).

    python -m experiments.ensemble --members runs/a,runs/b,runs/c --output-dir runs/ensemble_abc
    python -m experiments.ensemble --members "results/x/seed{seed}/multitask" --seeds 0,1,2 --output-dir results/x/ens0
    python -m experiments.ensemble --members "results/x/seed{seed}/multitask" --seeds 0,1,2,3,4,5,6,7,8 --size 3 \
        --output-dir results/x/ens --doc docs/results.md     # three ensembles (seeds 0-2, 3-5, 6-8) and their table

Each member is a ``train.py`` run folder, scored as ``evaluate.py`` scores it (each task with its own best
weights where ``train.select=task`` applies, the part weights fitted on validation, the predictor a training
method puts in the model's place). Per task, the members' outputs on the split are combined:

- classification: the mean of the class probabilities (softmax);
- multilabel: the mean of each label's probability (sigmoid);
- regression: the mean of the outputs;

and scored with the task's metrics. Every member must have the task, with the same classes, and must read the
same rows in the same order (checked on the targets).

Writes ``OUTPUT/eval/metrics.json`` in ``evaluate.py``'s layout (task -> metrics and ``num_samples``; so
``experiments.compare_runs`` reads an ensemble like a run) and ``OUTPUT/ensemble.json``: the members, each
member's metrics as recomputed here (and whether its primary metric equals its own ``eval/metrics.json``,
where it has one), and the ensemble's. An ensemble folder that already holds the same members' ``ensemble.json``
for the split is read back, not scored again (a test split is read once per configuration).

``--size N`` groups ``--seeds``, in order, into ensembles of N members (``OUTPUT/e0``, ``e1``...), and ``--doc``
writes their table into a page between markers (``experiments.common.write_doc_section``): per task, the
ensembles' figure against the members' own (each member alone, as ``evaluate.py`` scored it), the difference
judged by the project's rule (``benchmarks.common.compare``), the goal (``experiments.suite_results.goal``), the
training time (the members' training loops, summed per ensemble) and the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import STATS_RULE, compare, format_mean_sd, markdown_table, mean_sd, run_cli
from evaluate import load_run_task, read_run_config, use_task_weights, validation_rows
from experiments.common import loop_seconds, publish
from highmmt import HighMMT
from highmmt.checkpoint import atomic_write_json, task_weight_epochs
from highmmt.metrics import HIGHER_IS_BETTER
from tasks.loader import average_outputs, predict, predicted, score
from transference.hooks import run_predictor


def member_outputs(ckpt: Path, run_cfg: Mapping[str, Any], names: Sequence[str], args: argparse.Namespace,
                   device: torch.device) -> dict[str, tuple[np.ndarray, np.ndarray, Any]]:
    """Task -> (outputs, targets, spec) of one run (its folder and config.json) on ``args.split``, with the weights
    evaluate.py scores it with."""
    model = HighMMT.from_pretrained(ckpt, map_location=device).eval()
    predictor = run_predictor(model, ckpt, run_cfg, device)
    per_task = task_weight_epochs(ckpt, "auto", rows_of=lambda t: validation_rows(run_cfg, t, args))
    mean_state = {k: v.clone() for k, v in model.state_dict().items()} if per_task else None
    found = {}
    for name in names:
        lt = load_run_task(run_cfg, name, data_root=args.data_root, cache_dir=args.cache_dir, quiet=True)
        if args.split not in lt.splits:
            raise ValueError(f"member {ckpt}, task {name!r}: no split {args.split!r} (it has {sorted(lt.splits)})")
        if mean_state is not None:
            use_task_weights(model, ckpt, name, per_task, mean_state)
        with torch.no_grad():
            out, target = predict(predictor, lt.splits[args.split], lt.spec, batch_size=args.batch_size, device=device)
        found[name] = (out, target, lt.spec)
    return found


def ensemble(members: Sequence[Path], names: Sequence[str] | None, args: argparse.Namespace) -> dict[str, Any]:
    """Score the ensemble of ``members`` on ``names`` (None: the first member's tasks); see the module docstring."""
    if len(members) < 2:
        raise ValueError(f"--members: an ensemble needs two or more runs, got {len(members)}")
    if len(set(members)) != len(members):
        raise ValueError(f"--members: a run is listed twice ({[str(m) for m in members]})")
    configs = [read_run_config(m) for m in members]
    names = list(names) if names else list(configs[0]["tasks"])
    for ckpt, cfg in zip(members, configs):
        missing = [n for n in names if n not in cfg["tasks"]]
        if missing:
            raise ValueError(f"member {ckpt}: no task(s) {missing}; it has {sorted(cfg['tasks'])}")
    for ckpt, cfg in zip(members[1:], configs[1:]):  # the same rows: each task loaded from the same source, same options
        bad = sorted(n for n in names if _task_data(cfg, n) != _task_data(configs[0], n))
        if bad:
            raise ValueError(f"member {ckpt}: its config.json gives task(s) {bad} another source, spec or task_options "
                             f"than the first member's ({members[0]}): the members must read the same rows")
    out_dir = Path(args.output_dir)
    done = out_dir / "ensemble.json"
    stamp = {"members": [str(m) for m in members], "trained": [_trained(m) for m in members], "split": args.split}
    if done.is_file():
        prior = json.loads(done.read_text())
        if {k: prior.get(k) for k in stamp} == stamp and list(prior.get("tasks", {})) == names:
            return prior  # scored already: a split is read once per configuration
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    start = time.perf_counter()
    per_member = [member_outputs(m, cfg, names, args, device) for m, cfg in zip(members, configs)]
    result: dict[str, Any] = {**stamp, "tasks": {}}
    metrics: dict[str, Any] = {}
    for name in names:
        outs, first_target, spec = [], None, None
        member_scores = []
        for ckpt, found in zip(members, per_member):
            out, target, this_spec = found[name]
            if spec is None:
                spec, first_target = this_spec, target
            elif predicted(this_spec) != predicted(spec):
                raise ValueError(f"member {ckpt}, task {name!r}: predicts {predicted(this_spec)} (kind, outputs, "
                                 f"classes), the first member ({members[0]}) {predicted(spec)}")
            elif target.shape != first_target.shape or not np.array_equal(target, first_target):
                raise ValueError(f"member {ckpt}, task {name!r}: its {args.split} rows' targets differ from the first "
                                 f"member's ({members[0]}): the members must read the same rows in the same order")
            own = score(this_spec, out, target)
            recorded = _recorded(ckpt, name, args.split, spec.metric)
            member_scores.append({"run": str(ckpt), "metrics": own, "evaluate_primary": recorded,
                                  "matches_evaluate": None if recorded is None else math.isclose(
                                      own[spec.metric], recorded, rel_tol=0, abs_tol=1e-6)})
            outs.append(out)
        combined = score(spec, average_outputs(outs, spec.task_type), first_target)
        metrics[name] = {**combined, "num_samples": float(len(first_target))}
        primaries = [m["metrics"][spec.metric] for m in member_scores]
        result["tasks"][name] = {"metric": spec.metric, "ensemble": combined, "members": member_scores,
                                 "members_mean": float(np.mean(primaries))}
    result["mismatches"] = [f"{m['run']} {name}" for name, entry in result["tasks"].items() for m in entry["members"]
                            if m["matches_evaluate"] is False]
    if result["mismatches"]:
        warnings.warn("recomputed here, these members' figures differ from their own eval/metrics.json (other weights "
                      f"or data than evaluate.py used?): {result['mismatches']}", stacklevel=2)
    result["seconds"] = round(time.perf_counter() - start, 1)
    metrics["_ensemble"] = {"members": [str(m) for m in members]}
    atomic_write_json(out_dir / "eval" / "metrics.json", metrics)
    atomic_write_json(out_dir / "ensemble.json", result)
    return result


def _task_data(cfg: Mapping[str, Any], name: str) -> tuple[Any, Any, Any]:
    """What in a run's config.json decides task ``name``'s rows: its source (suite name or spec file), its spec less
    the options inferred from the data, and its ``train.task_options``."""
    spec = cfg.get("tasks", {}).get(name)
    spec = {k: v for k, v in spec.items() if k not in ("modality_options", "description")} if isinstance(spec, dict) else spec
    return cfg.get("task_args", {}).get(name), spec, cfg.get("train", {}).get("task_options", {}).get(name)


def _trained(ckpt: Path) -> str:
    """Which training a member folder holds (its DONE line, else its weights' size and time), so that a member trained
    again is scored again."""
    done = ckpt / "DONE"
    if done.is_file():
        return done.read_text().strip()
    weights = ckpt / "model.safetensors"
    return f"{weights.stat().st_size} {weights.stat().st_mtime_ns}" if weights.is_file() else ""


def _recorded(ckpt: Path, name: str, split: str, metric: str) -> float | None:
    """The member's own ``evaluate.py`` value of ``metric`` on ``name`` (None where its folder has no such file)."""
    path = ckpt / "eval" / "metrics.json"
    if split != "test" or not path.is_file():
        return None
    value = json.loads(path.read_text()).get(name, {}).get(metric)
    return None if value is None else float(value)


def member_folders(pattern: str, seeds: str) -> list[Path]:
    """``--members`` as folders: a comma-separated list, or one pattern with ``{seed}`` and ``--seeds``."""
    if "{seed}" in pattern:
        if not seeds:
            raise ValueError("--members has {seed}: give the seeds with --seeds (e.g. 0,1,2)")
        return [Path(pattern.format(seed=s)) for s in seeds.split(",") if s]
    if seeds:
        raise ValueError("--seeds needs a --members pattern with {seed}")
    return [Path(m) for m in pattern.split(",") if m]


def groups(members: Sequence[Path], size: int) -> list[list[Path]]:
    """``members`` in consecutive groups of ``size`` (0: one group of all)."""
    if size == 0:
        return [list(members)]
    if size < 2 or len(members) % size:
        raise ValueError(f"--size {size}: an ensemble needs 2 or more members, and {size} must divide the "
                         f"{len(members)} members evenly")
    return [list(members[i:i + size]) for i in range(0, len(members), size)]


def training_seconds(members: Sequence[Path]) -> float:
    """The members' training loops, summed (``DONE``'s "... in Ns"; NaN where a member's is missing)."""
    return float(sum(loop_seconds(m) for m in members))


def hardware(member: Path) -> dict[str, Any]:
    """The machine a member was trained on, from the ``suite_results`` call above it (empty where there is none)."""
    path = member.parent / "results.json"
    return json.loads(path.read_text()).get("hardware", {}) if path.is_file() else {}


def table(results: Sequence[Mapping[str, Any]], parts: Sequence[Sequence[Path]]) -> str:
    """The ensembles against their members alone, task by task, and the mean over the tasks whose metric is higher
    when better (as the suite's table)."""
    from experiments.suite_results import goal

    names = list(results[0]["tasks"])
    for r, part in zip(results[1:], parts[1:]):
        if list(r["tasks"]) != names:
            raise ValueError(f"the ensemble of {[str(m) for m in part]} has tasks {list(r['tasks'])}, the first {names}: "
                             "a table needs the same tasks in every ensemble")
    rows, ens_by_task, alone_by_task = [], [], []
    for name in names:
        metric = results[0]["tasks"][name]["metric"]
        higher = HIGHER_IS_BETTER[metric]
        ens = [r["tasks"][name]["ensemble"][metric] for r in results]
        alone = [m["metrics"][metric] for r in results for m in r["tasks"][name]["members"]]
        if higher:
            ens_by_task.append(ens)
            alone_by_task.append(alone)
        c = compare(ens, alone, higher_is_better=higher)
        g = goal(name)
        gap = mean_sd(ens).mean - g if g is not None else None
        met = "-" if gap is None else ("yes" if (gap >= 0) == higher or gap == 0 else f"no ({gap:+.3f})")
        rows.append([name, metric, format_mean_sd(ens, per_seed=True), format_mean_sd(alone), c.format(),
                     "-" if g is None else f"{g:.3f}", met])
    if ens_by_task:
        per_ens = [float(np.mean(col)) for col in zip(*ens_by_task)]
        per_member = [float(np.mean(col)) for col in zip(*alone_by_task)]
        rows.append([f"**mean ({len(ens_by_task)})**", "", format_mean_sd(per_ens, per_seed=True),
                     format_mean_sd(per_member), compare(per_ens, per_member).format(), "", ""])
    members = [m for part in parts for m in part]
    size = len(parts[0])
    hw = hardware(members[0])
    minutes = ", ".join(f"{training_seconds(part) / 60:.0f} min" for part in parts)
    mismatches = [x for r in results for x in r.get("mismatches", [])]
    head = (f"{len(results)} ensemble(s) of {size} members (ensemble k: members {size}k to {size}k+{size - 1} of "
            f"{', '.join(str(m) for m in members)}); {results[0].get('split', 'test')} split; each member scored as `evaluate.py` "
            "scores it, the members' probabilities averaged (outputs for regression). \"members alone\": the "
            f"{len(members)} members each scored alone. Over the ensembles and over the members: {STATS_RULE} "
            f"Training per ensemble (its members' training loops, one after another): {minutes}"
            + (f"; machine: {hw.get('machine', '?')}, {hw.get('device', 'cpu')}, {hw.get('threads', '?')} threads, "
               f"torch {hw.get('torch', '?')}." if hw else ".")
            + (f" Members whose figure recomputed here differs from their own evaluation: {mismatches}." if mismatches else ""))
    columns = ["task", "metric", "ensembles", "members alone", "ensembles - members alone", "goal", "ensemble mean meets goal"]
    return head + "\n\n" + markdown_table(columns, rows) + "\n"


def markdown(result: Mapping[str, Any]) -> str:
    """One ensemble's figures against its members', task by task (printed by a call without --size)."""
    rows = ["| task | metric | ensemble | members (each) | members' mean | ensemble - members' mean |", "|---|---|---|---|---|---|"]
    for name, entry in result["tasks"].items():
        metric = entry["metric"]
        each = ", ".join(f"{m['metrics'][metric]:.3f}" for m in entry["members"])
        value = entry["ensemble"][metric]
        rows.append(f"| {name} | {metric} | {value:.3f} | {each} | {entry['members_mean']:.3f} | "
                    f"{value - entry['members_mean']:+.3f} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", required=True, help="comma-separated run folders, or one pattern with {seed}")
    p.add_argument("--seeds", default="", help="the seeds of a --members pattern, comma-separated")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--size", type=int, default=0, help="members per ensemble: --seeds in consecutive groups of this "
                   "many, one ensemble each into OUTPUT/e<k> (0: one ensemble of all members)")
    p.add_argument("--doc", default="", help="also write the ensembles' table into this markdown page, between the "
                   "--doc-section markers")
    p.add_argument("--doc-section", default="ensemble", help="the markers' name: <!-- NAME:begin --> ... <!-- NAME:end -->")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the members' tasks (default: the first's)")
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--cpu", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    members = member_folders(args.members, args.seeds)
    names = args.tasks.split(",") if args.tasks else None
    if not args.size:
        result = ensemble(members, names, args)
        print(markdown(result))
        print(f"{len(members)} members, {result['seconds']} s -> {args.output_dir}")
        if args.doc:
            publish(table([result], [members]), args.doc, args.doc_section)
        return result
    parts = groups(members, args.size)
    out = Path(args.output_dir)
    results = [ensemble(g, names, argparse.Namespace(**{**vars(args), "output_dir": str(out / f"e{k}")}))
               for k, g in enumerate(parts)]
    publish(table(results, parts), args.doc, args.doc_section)
    return {"ensembles": results}


if __name__ == "__main__":
    run_cli(main)
