"""Linear probes of a trained run: where does each task's information get lost (issue 15's diagnosis)?

    python -m experiments.probes --checkpoint results/suite/seed0/multitask --doc docs/probes.md --doc-section probes-seed0

For every task of the run, features of its train / validation / test rows are read at three places of
the model (the weights each task is scored with: its own epoch where the run keeps one, as
``evaluate.py``):

* ``tokens``: each modality's embedder tokens, what the shared encoder reads, mean- and max-pooled
  over the real tokens (modalities side by side);
* ``latents``: each modality's encoder latents, mean-pooled (side by side);
* ``fused``: the fusion's output, the task head's input.

A logistic regression (features standardised on train; C picked on validation from ``C_GRID``) is
fitted at each place and scored on test with the task's metric, beside the model's own head and the
best simple baseline (``baseline.py``'s models on the raw features, as ``evaluate.py`` reports them).
Reading a row: a probe on the tokens far below the baseline says the embedder drops information the
baseline uses; tokens >= latents >= fused says the encoder or fusion loses it; probes at or above the
head say the head (or the training that made it) is what falls short, e.g. by over-fitting.
Training rows are capped at ``--max-train-rows`` (a seeded subset) so the fits stay seconds.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import evaluate
from benchmarks.common import markdown_table, run_cli
from experiments.common import publish
from highmmt import HighMMT
from highmmt.checkpoint import task_weight_epochs
from highmmt.metrics import HIGHER_IS_BETTER
from tasks import baselines
from tasks.cache import resolve_cache_dir
from tasks.loader import collate_rows, eval_batches, score

PLACES = ("tokens", "latents", "fused")
C_GRID = (0.01, 0.1, 1.0)


@torch.no_grad()
def features(model: HighMMT, dataset: Any, spec: Any, rows: np.ndarray, batch_size: int = 256) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``rows`` of a split -> ({place: [n, f]}, the head's outputs [n, c], targets [n])."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {p: [] for p in PLACES}
    heads, targets = [], []
    for idx in eval_batches(len(rows), batch_size):
        batch = collate_rows(dataset, rows[idx], spec)
        inputs = batch["inputs"]
        pooled = []
        for m in spec.modalities:
            tokens, mask = model.embed(m, inputs[m])
            w = mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)
            peak = tokens.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
            pooled += [mean, torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))]
        out["tokens"].append(torch.cat(pooled, dim=1).float().numpy())
        latents = model.latents(inputs, spec.name)
        out["latents"].append(torch.cat([latents[m].mean(1) for m in spec.modalities if m in latents], dim=1).float().numpy())
        fused = model.fusion(latents, model.config.tasks[spec.name].modalities, spec.name.replace(".", "_"))
        out["fused"].append(fused.float().numpy())
        heads.append(model.head(spec.name, fused, inputs).float().numpy())
        targets.append(batch["target"].numpy())
    return {p: np.concatenate(v) for p, v in out.items()}, np.concatenate(heads), np.concatenate(targets)


def probe(spec: Any, train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray],
          test: tuple[np.ndarray, np.ndarray], seed: int) -> dict[str, Any]:
    """Logistic regression on standardised features, C chosen on validation; the test metric."""
    scaler = StandardScaler().fit(train[0])
    xs = {k: scaler.transform(v[0]) for k, v in (("train", train), ("validation", validation), ("test", test))}
    higher = HIGHER_IS_BETTER[spec.metric]
    best: tuple[float, float, Any] | None = None
    for c in C_GRID:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=c, max_iter=300, random_state=seed).fit(xs["train"], train[1])
        value = score(spec, full_log_proba(model, xs["validation"], spec), validation[1])[spec.metric]
        if best is None or (value > best[0] if higher else value < best[0]):
            best = (value, c, model)
    assert best is not None
    return {"test": score(spec, full_log_proba(best[2], xs["test"], spec), test[1])[spec.metric],
            "validation": best[0], "C": best[1], "features": int(train[0].shape[1])}


def full_log_proba(model: LogisticRegression, x: np.ndarray, spec: Any) -> np.ndarray:
    """Log-probabilities over all of the task's classes (a class absent from the probe's training rows gets -inf)."""
    out = np.full((len(x), spec.num_classes), -np.inf, dtype=np.float64)
    with np.errstate(divide="ignore"):  # a probability of exactly 0 is -inf, as for an absent class
        out[:, model.classes_] = np.log(model.predict_proba(x))
    return out


def run_probes(ckpt: Path, *, tasks: Sequence[str] | None, max_train_rows: int, seed: int, data_root: str | None,
               cache_dir: str | None) -> dict[str, Any]:
    run_cfg = evaluate.read_run_config(ckpt)
    model = HighMMT.from_pretrained(ckpt).eval()
    args = argparse.Namespace(data_root=data_root, cache_dir=cache_dir)
    per_task = task_weight_epochs(ckpt, "auto", rows_of=lambda t: evaluate.validation_rows(run_cfg, t, args))
    mean_state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(seed)
    results: dict[str, Any] = {}
    for name in tasks or list(run_cfg["tasks"]):
        started = time.time()
        lt = evaluate.load_run_task(run_cfg, name, data_root=data_root, cache_dir=cache_dir, quiet=True)
        spec = lt.spec
        if spec.task_type != "classification":
            continue
        weights = evaluate.use_task_weights(model, ckpt, name, per_task, mean_state)
        split_rows = {s: np.arange(len(lt.splits[s])) for s in ("train", "validation", "test")}
        if len(split_rows["train"]) > max_train_rows:
            split_rows["train"] = np.sort(rng.choice(len(split_rows["train"]), max_train_rows, replace=False))
        feats = {s: features(model, lt.splits[s], spec, rows) for s, rows in split_rows.items()}
        entry_out = {"metric": spec.metric, "weights": weights, "rows": {s: int(len(r)) for s, r in split_rows.items()},
                     "head": score(spec, feats["test"][1], feats["test"][2])[spec.metric]}
        for place in PLACES:
            entry_out[place] = probe(spec, *[(feats[s][0][place], feats[s][2]) for s in ("train", "validation", "test")], seed=seed)
        base = baselines.cached_run(lt, baselines.EVALUATE_SETTINGS, resolve_cache_dir(cache_dir), quiet=True)
        best = baselines.best_baseline(base, "test")
        entry_out["baseline"] = None if best is None else {"name": best[0], "value": best[1]}
        entry_out["seconds"] = time.time() - started
        results[name] = entry_out
    return {"checkpoint": str(ckpt), "max_train_rows": max_train_rows, "seed": seed, "tasks": results}


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for name, r in results["tasks"].items():
        base = r["baseline"]
        rows.append([name, r["metric"], f"{r['head']:.3f}", *(f"{r[p]['test']:.3f}" for p in PLACES),
                     "-" if base is None else f"{base['value']:.3f} {base['name']}", r["weights"],
                     f"{r['rows']['train']} / {r['rows']['validation']} / {r['rows']['test']}"])
    head = (f"Run `{results['checkpoint']}`; test split. Probes: logistic regression on standardised features, C in "
            f"{list(C_GRID)} chosen on validation, at most {results['max_train_rows']} training rows (seed {results['seed']}).")
    return head + "\n\n" + markdown_table(["task", "metric", "model's head", "probe: embedder tokens", "probe: encoder latents",
                                           "probe: fused (head input)", "best simple baseline", "weights", "rows (train / val / test)"],
                                          rows) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a train.py run folder")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the run's tasks")
    p.add_argument("--max-train-rows", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON out (default CHECKPOINT/probes.json)")
    p.add_argument("--doc", default="", help="also write the table into this page, between its --doc-section markers")
    p.add_argument("--doc-section", default="probes", help="the page's section (<!-- SECTION:begin --> ... end)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint)
    results = run_probes(ckpt, tasks=args.tasks.split(",") if args.tasks else None, max_train_rows=args.max_train_rows,
                         seed=args.seed, data_root=args.data_root, cache_dir=args.cache_dir)
    out = Path(args.output) if args.output else ckpt / "probes.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    publish(table, args.doc, args.doc_section)
    return results


if __name__ == "__main__":
    run_cli(main)
