"""Tables over seeds and sharing configurations from the analyses' JSON files (docs/sharing-analysis.md).

    python -m analysis.summary all=runs/a/seed0/analysis all=runs/a/seed1/analysis none=runs/n/seed0/analysis \\
        --groups runs/hetero/seed0 --out summary.md

Each ``LABEL=FOLDER`` is an output folder of ``analyze.py`` (``involvement.json``, ``conflict.json``,
``interference*.json``, whichever it holds); a label given several times is one configuration over
several seeds (mean ± sample SD, ddof = 1). ``--groups RUN`` reads that run's encoder groups
(``model.sharing.encoder``): a pair of tasks is *kept together* when a modality of one shares an
encoder group with a modality of the other, *separated* otherwise, and the conflict and
interference tables are split by it, for every configuration (in a share-all run, every pair shares
the encoder, so it shows what the groups would keep apart).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis.conflict import GROUPS
from analysis.involvement import PAPER
from analysis.report import fmt_mean_sd, mean_sd
from highmmt.checkpoint import atomic_write_bytes


def together(run_dir: Path) -> dict[frozenset[str], bool]:
    """Pair of tasks -> whether the run's encoder groups let them share an encoder."""
    cfg = json.loads((run_dir / "config.json").read_text())["model"]
    spec = cfg["sharing"]["encoder"]
    tasks = {t: tc["modalities"] for t, tc in cfg["tasks"].items()}
    group = ({m: "shared" for ms in tasks.values() for m in ms} if spec == "all" else
             {m: m for ms in tasks.values() for m in ms} if spec == "none" else
             {m: g for g, members in spec.items() for m in members})
    return {frozenset((a, b)): bool({group[m] for m in tasks[a]} & {group[m] for m in tasks[b]})
            for a, b in itertools.combinations(tasks, 2)}


def _load(folders: Sequence[Path], name: str) -> list[dict[str, Any]]:
    return [json.loads((f / name).read_text()) for f in folders if (f / name).is_file()]


def involvement_rows(label: str, results: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    n = len(results[0]["tasks"])
    for part in results[0]["parts"]:
        rs = [r["parts"][part] for r in results if part in r["parts"]]
        involved = [100 * r["involved_in_any"] / r["neurons"] for r in rs]
        shares = [fmt_mean_sd(*mean_sd([r["share_by_tasks"][j] or 0.0 for r in rs]), 1) for j in range(n)]
        lines.append(f"| {label} | {part} | {len(rs)} | {fmt_mean_sd(*mean_sd(involved), 1)} | " + " | ".join(shares) + " |")
    return lines


def pair_means(matrix: Mapping[str, Mapping[str, Any]], tasks: Sequence[str], keep: Any) -> list[float]:
    """The matrix's values over task pairs that ``keep(a, b)`` selects (missing / null values skipped)."""
    out = []
    for a, b in itertools.combinations(tasks, 2):
        v = matrix.get(a, {}).get(b)
        if v is not None and not np.isnan(v) and keep(a, b):
            out.append(float(v))
    return out


def extreme_pairs(results: Sequence[Mapping[str, Any]], k: int = 3) -> str:
    """The ``k`` pairs with the highest and the lowest mean cosine on all shared parameters."""
    tasks = results[0]["tasks"]
    means = {}
    for a, b in itertools.combinations(tasks, 2):
        vals = [r["groups"]["all"]["mean"][a].get(b) for r in results]
        vals = [v for v in vals if v is not None and not np.isnan(v)]
        if vals:
            means[(a, b)] = float(np.mean(vals))
    ranked = sorted(means.items(), key=lambda kv: kv[1])
    show = lambda items: ", ".join(f"{a} / {b} {v:+.2f}" for (a, b), v in items)  # noqa: E731
    return f"highest {show(ranked[::-1][:k])}; lowest {show(ranked[:k])}"


def summarize(entries: Sequence[tuple[str, Path]], groups: Path | None) -> str:
    labels: dict[str, list[Path]] = {}
    for label, folder in entries:
        labels.setdefault(label, []).append(folder)
    split = together(groups) if groups else None
    lines = ["# Sharing analyses over seeds and configurations", ""]

    inv = {label: _load(folders, "involvement.json") for label, folders in labels.items()}
    inv = {k: v for k, v in inv.items() if v}
    if inv:
        n = max(len(v[0]["tasks"]) for v in inv.values())
        lines += ["## Parameter involvement (eps = 0.2): share of involved neurons by number of tasks, %", "",
                  "| config | part | seeds | neurons involved in >= 1 task, % | " + " | ".join(str(j) for j in range(1, n + 1)) + " |",
                  "|---" * (n + 4) + "|"]
        for label, results in inv.items():
            lines += involvement_rows(label, results)
        lines += ["", "HighMMT Table 6 (4 tasks): " + "; ".join(f"{r['label']} {' / '.join(map(str, r['shares']))}"
                                                              for r in PAPER.values()) + " (% in 1 / 2 / 3 / 4 tasks).", ""]

    con = {label: _load(folders, "conflict.json") for label, folders in labels.items()}
    con = {k: v for k, v in con.items() if v}
    if con:
        head = "| config | part | seeds | pairs sharing | mean cosine over pairs | pairs with a negative mean |"
        if split:
            head += " pairs kept together by the groups: mean cosine | pairs separated: mean cosine |"
        lines += ["## Gradient conflict: cosine of per-task gradients on shared parameters", "", head,
                  "|---" * (head.count("|") - 1) + "|"]
        for label, results in con.items():
            for g in GROUPS:
                rs = [r["groups"][g] for r in results]
                if not any(r["pairs_sharing"] for r in rs):
                    continue
                row = (f"| {label} | {g} | {len(rs)} | {fmt_mean_sd(*mean_sd([r['pairs_sharing'] for r in rs]), 0)} | "
                       f"{fmt_mean_sd(*mean_sd([r['mean_over_pairs'] for r in rs]), 3, True)} | "
                       f"{fmt_mean_sd(*mean_sd([r['negative_pairs'] for r in rs]), 1)} |")
                if split:
                    for want in (True, False):
                        per_seed = [np.mean(v) for r, res in zip(rs, results)
                                    if (v := pair_means(r["mean"], res["tasks"], lambda a, b: split.get(frozenset((a, b))) is want))]
                        row += f" {fmt_mean_sd(*mean_sd(per_seed), 3, True)} |"
                lines.append(row)
        lines += ["", "Most aligned and most opposed pairs (all shared parameters; mean over seeds of the mean over batches):", ""]
        for label, results in con.items():
            lines.append(f"- {label}: " + extreme_pairs(results))
        lines.append("")

    rows = []
    for label, folders in labels.items():
        for f in folders:
            for path in sorted(f.glob("interference*.json")):
                rows.append(interference_row(label, json.loads(path.read_text()), split))
    if rows:
        head = ("| config | trainable | seeds | tasks | shuffled task itself: mean change | other tasks: mean change over pairs |"
                + (" pairs kept together: mean change (pairs) | pairs separated: mean change (pairs) |" if split else ""))
        lines += ["## Task interference: change of the test metric when one task's labels are shuffled", "",
                  "Mean over ordered pairs (shuffled, measured) of the change (negative: worse); ± is the SD over those pairs.", "",
                  head, "|---" * (head.count("|") - 1) + "|", *rows, ""]
    return "\n".join(lines) + "\n"


def interference_row(label: str, r: Mapping[str, Any], split: Mapping[frozenset[str], bool] | None) -> str:
    tasks, shuffled = r["tasks"], r["shuffled"]
    off = [r["change"][a][b]["mean"] for a in shuffled for b in tasks if a != b]
    diag = [r["change"][a][a]["mean"] for a in shuffled]
    row = (f"| {label} | {r['train_only']} | {', '.join(map(str, r['seeds']))} | {len(tasks)} | "
           f"{fmt_mean_sd(*mean_sd(diag), 3, True)} | {fmt_mean_sd(*mean_sd(off), 3, True)} |")
    if split:
        for want in (True, False):
            vals = [r["change"][a][b]["mean"] for a in shuffled for b in tasks if a != b and split.get(frozenset((a, b))) is want]
            row += f" {fmt_mean_sd(*mean_sd(vals), 3, True)} ({len(vals)}) |"
    return row


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("entries", nargs="+", metavar="LABEL=FOLDER")
    p.add_argument("--groups", default=None, help="a run whose encoder groups split the pairs (kept together / separated)")
    p.add_argument("--out", default=None, help="markdown file (default: print)")
    args = p.parse_args(argv)
    entries = []
    for e in args.entries:
        if "=" not in e:
            raise ValueError(f"{e!r}: expected LABEL=FOLDER")
        label, folder = e.split("=", 1)
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: no such analysis folder")
        entries.append((label, Path(folder)))
    text = summarize(entries, Path(args.groups) if args.groups else None)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    else:
        print(text)
    return text


if __name__ == "__main__":
    from highmmt.cli import run_cli

    run_cli(main)
