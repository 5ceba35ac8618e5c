"""HighMMT's three-stage heterogeneity-aware parameter sharing (§2.2, App. B.6) against its controls.

    python -m experiments.heterogeneity --protocol staged --k 3 --random-draws 5 --seeds 0,1,2

The groups are the clustered heterogeneity groups (measured by the same command, or read from an
earlier measurement's ``sharing_k<k>.json`` with ``--groups-from DIR``). For every training seed,
each stage is one ``train.py`` run (no second training loop):

1. **share-all** (homogeneous training): one encoder for every modality and one fusion block for
   every modality pair, ``--stage1-steps`` steps in one epoch, so that the saved weights are those
   after exactly that many steps.
2. **copy into groups**: a model with the clustered groups whose every encoder group (fusion
   group) starts as a bit-identical copy of the share-all encoder (fusion block); embedders and
   heads are loaded as they are. This is ``train.py --init-from <stage 1>``:
   ``transference.finetune.load_pretrained`` copies a group the checkpoint lacks from the group its
   members used there (here: ``shared``). :func:`stage2_model` builds the same model before
   stage 3 and the protocol stops if any encoder or fusion tensor would start new.
3. **multitask fine-tuning** of the grouped model, every parameter trainable
   (``train.finetune=full``), ``--stage3-steps`` steps in one epoch.

Controls, each from the same stage-1 weights of the same seed, with the same stage-3 steps, batches
and optimizer restart, so that the grouping is the only difference:

- ``random_k<k>_d<i>``: random groups with the clustered groups' sizes, each a different partition
  from the clustered one in every part that admits one (``random_groups_unlike``); draw i is the
  same partition for every seed.
- ``share_all_same_steps``: share-all continued for the stage-3 steps (stage 3 with
  ``sharing = all``): stage-1 steps + stage-3 steps in all, exactly the grouped model's total.

Every model is scored on the test split (at most ``--limit`` rows per task). Writes into
``<output-dir>/staged/``: ``staged.json`` (every run, metrics, parameter counts, steps, sharing) and
``staged.md`` (the table; ``--write-doc FILE`` also puts it between the ``staged-table`` markers of
FILE); run folders under ``staged/s<seed>/``, a finished run with the same command is not retrained.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import compare, format_seeds, hardware_line, machine_info, markdown_table, mean_sd, write_json
from experiments.common import data_flags, doc_markers, loop_seconds, train_unless_done, write_doc_section
from highmmt import HighMMT
from highmmt.config import HighMMTConfig, SharingConfig
from highmmt.metrics import HIGHER_IS_BETTER
from tasks.cache import load_task
from tasks.loader import predict, score
from transference.finetune import TransferReport, load_pretrained
from transference.heterogeneity import can_regroup, partition, random_groups_unlike, restrict_groups, sharing_config

SHARE_ALL = sharing_config("all", "all")
STAGE1 = "stage1_share_all"
SAME_STEPS = "share_all_same_steps"
DOC_BEGIN, DOC_END = doc_markers("staged-table")
SHARED_PARTS = ("encoders.", "fusion.")


# ---- the arms --------------------------------------------------------------------------------------
def restrict_sharing(sharing: Mapping[str, Any], modalities: Sequence[str], pairs: Sequence[str]) -> dict[str, Any]:
    """Groups measured on a larger suite, kept to the trained tasks' modalities and pairs."""
    enc, fus = sharing["encoder"], sharing["fusion"]
    enc = restrict_groups(enc, modalities) if isinstance(enc, dict) else enc
    if isinstance(fus, dict):  # no pairs left: no fusion groups to form
        fus = restrict_groups(fus, pairs) if pairs else "all"
    return sharing_config(enc, fus)


def random_sharing(sharing: Mapping[str, Any], *, seed: int) -> dict[str, Any]:
    """Random groups of the same sizes as ``sharing``'s encoder and fusion groups, a different partition
    in every part that admits one (a part with singleton groups only, or one group, stays as it is).

    Raises ValueError when neither part can be regrouped: there is no random control to run.
    """
    out = {}
    for what, prefix, offset in (("encoder", "r", 0), ("fusion", "q", 1)):
        groups = sharing[what]
        out[what] = random_groups_unlike(groups, seed=2 * seed + offset, prefix=prefix) if isinstance(groups, dict) and can_regroup(groups) else groups
    if out == dict(sharing):
        raise ValueError(f"random control: the groups {dict(sharing)} admit no other partition of the same sizes (every "
                         "group of one member, or a single group); choose another k")
    return sharing_config(out["encoder"], out["fusion"])


def arms(grouped: Mapping[int, Mapping[str, Any]], draws: int) -> dict[str, dict[str, Any]]:
    """Stage-3 run name -> sharing: the share-all continuation, and per k the clustered groups and ``draws`` random ones."""
    out = {SAME_STEPS: dict(SHARE_ALL)}
    for k, sharing in grouped.items():
        out[f"grouped_k{k}"] = dict(sharing)
        for i in range(draws):
            out[f"random_k{k}_d{i}"] = random_sharing(sharing, seed=1000 * k + i)
    return out


# ---- stage 2: copy the share-all weights into the groups ------------------------------------------------
def stage2_model(stage1: Path, sharing: Mapping[str, Any]) -> tuple[HighMMT, TransferReport]:
    """The stage-1 model rebuilt with ``sharing`` and loaded from the stage-1 run by the function that
    ``train.py --init-from`` uses, so every new group starts as a copy of the share-all group."""
    raw = json.loads((stage1 / "config.json").read_text())
    cfg = HighMMTConfig.from_dict(raw["model"])
    cfg = dataclasses.replace(cfg, sharing=SharingConfig(encoder=sharing["encoder"], fusion=sharing["fusion"]))
    model = HighMMT(cfg)
    return model, load_pretrained(model, stage1)


def check_stage2(report: TransferReport | Mapping[str, Any], name: str) -> None:
    """Every tensor of the shared part (encoders, fusion) must come from the checkpoint, else the
    "grouped" model would partly train from scratch."""
    new = report.new if isinstance(report, TransferReport) else report["new"]
    fresh = sorted(k for k in new if k.startswith(SHARED_PARTS))
    if fresh:
        raise RuntimeError(f"stage 2 of {name}: {len(fresh)} encoder/fusion tensors would start new instead of copied "
                           f"from the share-all model (first: {fresh[:3]})")


# ---- one train.py run ------------------------------------------------------------------------------------
def stage_argv(args: argparse.Namespace, tasks: Sequence[str], seed: int, sharing: Mapping[str, Any], steps: int,
               init_from: Path | None, *, pairwise: bool) -> list[str]:
    """train.py's arguments for one stage: one epoch of ``steps`` steps, the sharing, the user's overrides last.

    ``pairwise``: every stage uses pairwise fusion (fusion groups are groups of modality pairs)."""
    argv = ["--preset", args.preset, "--tasks", ",".join(tasks), "--seed", str(seed), "--quiet",
            *data_flags(args),
            *(["--cpu"] if args.cpu else []), *(["--init-from", str(init_from.resolve())] if init_from else []),
            "--set", "train.epochs=1", "--set", f"train.steps_per_epoch={steps}", "--set", "train.threads=1",
            "--set", "model.sharing.encoder=" + json.dumps(sharing["encoder"], separators=(",", ":")),
            "--set", "model.sharing.fusion=" + json.dumps(sharing["fusion"], separators=(",", ":"))]
    if pairwise:
        argv += ["--set", "model.fusion.kind=pairwise"]
    return argv + [a for o in args.overrides for a in ("--set", o)]


def run_stage(folder: Path, argv: list[str], jobs: int) -> float:
    """Train unless this exact command finished in ``folder`` (another command there: start over)."""
    stamp = folder / "staged_cmd.json"
    if folder.exists() and not (stamp.is_file() and json.loads(stamp.read_text()) == argv):
        shutil.rmtree(folder)
    seconds = train_unless_done(folder, argv, log=folder.parent / f"{folder.name}.log" if jobs > 1 else None,
                                threads=1 if jobs > 1 else None)
    stamp.write_text(json.dumps(argv))
    return seconds


def steps_of(folder: Path) -> int:
    """Training steps behind the run's saved weights (``best.json``; one epoch: the last step)."""
    return int(json.loads((folder / "best.json").read_text())["step"])


def evaluate(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Test metrics (at most ``args.limit`` rows per task) and parameter counts of a run's saved model."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model = HighMMT.from_pretrained(folder).to(device)
    cfg = json.loads((folder / "config.json").read_text())
    metrics, names = {}, {}
    for task, arg in cfg["task_args"].items():
        lt = load_task(arg, data_root=args.data_root, cache_dir=args.cache_dir, options=cfg["train"]["task_options"].get(task), quiet=True)
        outputs, targets = predict(model, lt.splits["test"], lt.spec, limit=args.limit, device=device)
        metrics[task], names[task] = float(score(lt.spec, outputs, targets)[lt.spec.metric]), lt.spec.metric
    counts = model.parameter_counts()
    return {"metrics": metrics, "metric_names": names, "parameters_total": counts["total"], "parameters_shared": counts["shared"],
            "encoder_groups": len(counts["encoders"]),
            "fusion_groups": len(model.fusion.blocks) if hasattr(model.fusion, "blocks") else None}


def signed_mean(metrics: Mapping[str, float], names: Mapping[str, str]) -> float:
    """Mean over tasks, lower-is-better metrics (mse, mae) sign-flipped."""
    return float(np.mean([v if HIGHER_IS_BETTER[names[t]] else -v for t, v in metrics.items()]))


# ---- the protocol ------------------------------------------------------------------------------------------
def staged_protocol(args: argparse.Namespace, tasks: Sequence[str], grouped: Mapping[int, Mapping[str, Any]], out: Path,
                    log: Any = print) -> dict[str, Any]:
    """Stages 1-3 for the clustered groups of every k, the random draws and the share-all continuation, for every seed.

    Args:
        args: the study's arguments (preset, overrides, seeds, stage1_steps, stage3_steps, random_draws,
            limit, jobs, cpu, data_root, cache_dir, write_doc).
        tasks: the trained tasks. grouped: k -> clustered sharing (``{"encoder": ..., "fusion": ...}``).
        out: the folder of ``staged.json`` / ``staged.md`` and the run folders.
    Returns:
        the summary written to ``staged.json``.
    """
    wall = time.time()
    plan = arms(grouped, args.random_draws)
    n1, n3 = args.stage1_steps, args.stage3_steps
    pairwise = any(isinstance(s["fusion"], dict) for s in grouped.values())
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        base = out / f"s{seed}"
        stage1 = base / STAGE1
        log(f"[staged] seed {seed}: stage 1, share-all for {n1} steps")
        run_stage(stage1, stage_argv(args, tasks, seed, SHARE_ALL, n1, None, pairwise=pairwise), args.jobs)
        for name, sharing in plan.items():  # stage 2, checked before any stage-3 training
            check_stage2(stage2_model(stage1, sharing)[1], name)
        log(f"[staged] seed {seed}: stages 2-3 for {len(plan)} models, {n3} steps each")
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            done = {name: pool.submit(run_stage, base / name, stage_argv(args, tasks, seed, sharing, n3, stage1, pairwise=pairwise), args.jobs)
                    for name, sharing in plan.items()}
            for f in done.values():
                f.result()
        s1 = steps_of(stage1)
        for name, sharing in [(STAGE1, SHARE_ALL), *plan.items()]:
            folder = base / name
            report = json.loads((folder / "config.json").read_text()).get("init_from")
            if report is not None:
                check_stage2(report, name)
            steps = {"stage1": s1, "stage3": 0 if name == STAGE1 else steps_of(folder)}
            expected = {"stage1": n1, "stage3": 0 if name == STAGE1 else n3}
            if steps != expected:
                raise RuntimeError(f"{folder}: trained {steps} steps, expected {expected}")
            runs.append({"run": name, "seed": seed, "sharing": sharing, "steps": steps, "steps_total": sum(steps.values()),
                         "copied": (report or {}).get("copied", {}), "train_s": loop_seconds(folder), **evaluate(folder, args)})
            log(f"[staged] seed {seed} {name}: mean {signed_mean(runs[-1]['metrics'], runs[-1]['metric_names']):.3f}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    machine = machine_info(device)
    summary = {"tasks": list(runs[0]["metrics"]), "metric_names": runs[0]["metric_names"], "preset": args.preset,
               "overrides": list(args.overrides), "seeds": list(args.seeds), "ks": sorted(grouped), "random_draws": args.random_draws,
               "stage1_steps": n1, "stage3_steps": n3, "limit": args.limit, "grouped": {str(k): v for k, v in grouped.items()},
               "runs": runs, "table": table(runs, sorted(grouped), args.random_draws),
               "machine": machine, "hardware_line": hardware_line(machine), "wall_s": time.time() - wall}
    write_json(out / "staged.json", summary)
    md = markdown(summary)
    (out / "staged.md").write_text(md)
    if args.write_doc:
        write_doc_block(Path(args.write_doc), md)
    log(md)
    return summary


# ---- statistics and the table ----------------------------------------------------------------------------------
def _row(label: str, runs: Sequence[Mapping[str, Any]], values: Mapping[str, list[float]], means: list[float], over: str) -> dict[str, Any]:
    first = runs[0]
    return {"label": label, "over": over, "n": len(means), "steps_total": first["steps_total"],
            "encoder_groups": first["encoder_groups"], "fusion_groups": first["fusion_groups"],
            "parameters_total": first["parameters_total"], "parameters_shared": first["parameters_shared"],
            "metrics": {t: mean_sd(v)._asdict() for t, v in values.items()}, "mean": mean_sd(means)._asdict(), "mean_values": means}


def table(runs: Sequence[Mapping[str, Any]], ks: Sequence[int], draws: int) -> list[dict[str, Any]]:
    """Rows: share-all after stage 1, share-all for the same total steps, and per k the grouped model
    (mean ± sample SD over seeds) and the random groupings (each draw's mean over seeds, then mean ±
    SD over the draws); the grouped model compared with both controls (``benchmarks.common.compare``)."""
    by = lambda name: [r for r in runs if r["run"] == name]  # noqa: E731
    tasks = list(runs[0]["metrics"])

    def over_seeds(label: str, name: str) -> dict[str, Any]:
        rs = by(name)
        return _row(label, rs, {t: [r["metrics"][t] for r in rs] for t in tasks}, [signed_mean(r["metrics"], r["metric_names"]) for r in rs], "seeds")

    rows = [over_seeds("share-all, stage 1 only", STAGE1), over_seeds("share-all, same total steps", SAME_STEPS)]
    for k in ks:
        grouped = over_seeds(f"grouped k={k} (clustered)", f"grouped_k{k}")
        draws_runs = [by(f"random_k{k}_d{i}") for i in range(draws)]
        rand = _row(f"random k={k} ({draws} draws)", [rs[0] for rs in draws_runs],
                    {t: [float(np.mean([r["metrics"][t] for r in rs])) for rs in draws_runs] for t in tasks},
                    [float(np.mean([signed_mean(r["metrics"], r["metric_names"]) for r in rs])) for rs in draws_runs], "draws")
        rand["distinct_partitions"] = len({(partition(rs[0]["sharing"]["encoder"]) if isinstance(rs[0]["sharing"]["encoder"], dict) else None,
                                            partition(rs[0]["sharing"]["fusion"]) if isinstance(rs[0]["sharing"]["fusion"], dict) else None)
                                           for rs in draws_runs})
        grouped["vs_share_all_same_steps"] = compare(grouped["mean_values"], rows[1]["mean_values"])._asdict()
        grouped["vs_random"] = compare(grouped["mean_values"], rand["mean_values"])._asdict()
        rows += [grouped, rand]
    return rows


def _cell(stat: Mapping[str, Any]) -> str:
    if stat["n"] == 0 or stat["mean"] != stat["mean"]:
        return "-"
    return f"{stat['mean']:.3f}" + ("" if stat["sd"] is None else f" ± {stat['sd']:.3f}")


def markdown(summary: Mapping[str, Any]) -> str:
    """The table, with the settings, seeds, hardware and time it came from."""
    tasks, names = summary["tasks"], summary["metric_names"]
    versus = lambda r, key: f"{r[key]['difference']:+.3f} ({r[key]['verdict']})" if key in r else "-"  # noqa: E731
    body = [[r["label"], f"{r['encoder_groups']}, {r['fusion_groups'] if r['fusion_groups'] is not None else '-'}", r["steps_total"],
             f"{r['parameters_total']:,}", f"{r['parameters_shared']:,}", *[_cell(r["metrics"][t]) for t in tasks], _cell(r["mean"]),
             versus(r, "vs_share_all_same_steps"), versus(r, "vs_random")] for r in summary["table"]]
    headers = ["model", "groups (enc, fusion)", "steps", "params total", "params shared", *tasks, "mean",
               "grouped - share-all same steps", "grouped - random"]
    n1, n3 = summary["stage1_steps"], summary["stage3_steps"]
    seeds = summary["seeds"]
    train_s = sum(r.get("train_s", float("nan")) for r in summary["runs"])
    lines = [f"Staged sharing protocol; {summary['hardware_line']}; this call {summary['wall_s'] / 60:.1f} min wall "
             f"(finished runs are reused); the {len(summary['runs'])} runs' training loops {train_s / 60:.1f} min in total.", "",
             f"Preset `{summary['preset']}`{' with ' + ', '.join(f'`{o}`' for o in summary['overrides']) if summary['overrides'] else ''}; "
             f"stage 1 (share-all) {n1} steps, stage 3 (multitask fine-tuning after the copy into groups) {n3} steps, so "
             f"{n1 + n3} steps in all for the grouped, random and share-all-same-steps models; {format_seeds(seeds)}; "
             f"test split, at most {summary['limit']} rows per task; metrics: " + ", ".join(f"{t} {names[t]}" for t in tasks)
             + "; 'mean' over tasks with mse/mae sign-flipped. Grouped and share-all rows: mean ± sample SD (ddof = 1) over seeds. "
             f"Random rows: each of the {summary['random_draws']} draws averaged over the seeds, then mean ± SD over the draws "
             "(the same draws for every seed, each a different partition from the clustered groups with the same group sizes). "
             "Differences: 'no difference' when not larger than the larger of the two SDs (benchmarks.common.compare). "
             "'params shared' = encoders + fusion.", "", markdown_table(headers, body), ""]
    for k, sharing in summary["grouped"].items():
        lines.append(f"- clustered k={k}: encoder {_groups(sharing['encoder'])}; fusion {_groups(sharing['fusion'])}")
    return "\n".join(lines) + "\n"


def _groups(spec: Any) -> str:
    return spec if isinstance(spec, str) else "; ".join(f"{g}: {', '.join(ms)}" for g, ms in spec.items())


def write_doc_block(path: Path, md: str) -> None:
    """Replace the text between the ``staged-table`` markers of ``path`` with ``md``."""
    write_doc_section(path, DOC_BEGIN, DOC_END, md, append=False)


__all__ = ["arms", "check_stage2", "random_sharing", "restrict_sharing", "stage2_model", "stage_argv", "staged_protocol", "table"]
