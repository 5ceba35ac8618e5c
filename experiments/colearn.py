"""Co-learning study: does a second modality seen only in training help? (``train.colearn``)

    HIGHMMT_DATA=../shared/data python -m experiments.colearn                 # one seed, ~5 CPU-minutes
    HIGHMMT_DATA=../shared/data python -m experiments.colearn --seeds 0,1     # the README's table
    python -m experiments.colearn --studies missing --epochs 40 --steps 200    # bigger (GPU)

Two studies, each a set of ordinary ``train.py`` runs (in this process, one torch thread) on
suite data, evaluated on the test split:

``missing`` (UTD-MHAD, or AV-MNIST with ``--missing-task avmnist``: image primary, audio secondary;
translation, Pham et al. 2019): trained with depth video + wrist IMU (``inertial``), tested on the
IMU alone. Runs: the IMU alone; plain depth + IMU training (tested
with the depth slot zeroed); modality dropout (the head also learns the IMU-only path); translation
IMU -> depth latents (the head also reads [IMU, translated depth], the test-time path); the same
with the cyclic back-translation. The two-modality and one-modality tasks are bring-your-own
specs over the parsed utd_mhad cache (skeleton left out).

``label_transfer`` (AV-MNIST; coordinated representations, CLIP / ALIGN): image and audio pooled
latents aligned by a symmetric InfoNCE loss while only the image path is supervised (audio labels
never used); FSDD test clips are then classified through class prototypes of labeled MNIST training
images (cosine nearest prototype). This is cross-modal label transfer, not zero-shot learning: every
class is seen in training, through the image labels. Against: chance, the same run without the
alignment loss (weight 0), and an audio-only model supervised with audio labels. Each test clip is
counted once. (The study was called ``zeroshot`` before; that name is an error that says so.)

Figures over seeds: mean ± sample standard deviation (ddof = 1), and each run against its baseline
(the IMU alone; no alignment) with the verdict of ``benchmarks.common.compare``.

Writes ``results.json`` and ``results.md`` (trainable parameters, accuracy, training wall time)
into ``--output-dir`` (default ``experiments/results/colearn``); finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import compare, format_mean_sd, hardware_line, machine_info, markdown_table, run_cli, stats_note, write_json
from experiments.common import data_flags, publish, train_unless_done
from highmmt import HighMMT
from tasks.cache import LoadedTask, load_task
from tasks.loader import collate_rows, move_to, predict, score
from transference.colearn import class_prototypes, load_predictor, nearest_prototype, trainable_parameters

ROOT = Path(__file__).resolve().parents[1]

STUDIES = ("missing", "label_transfer")
RENAMED_STUDIES = {"zeroshot": "label_transfer"}  # every class is seen in training: label transfer, not zero-shot
# ``missing`` study per task: the primary (kept at test) and secondary (training only) modalities, their short names,
# and the task names of the two spec files (both modalities; the primary alone).
MISSING = {
    "utd_mhad": {"primary": "inertial", "secondary": "depth", "names": ("IMU", "depth"), "specs": ("utd_depth_inertial", "utd_inertial"),
                 "what": "UTD-MHAD (27 actions, cross-subject test split, 430 sequences)"},
    "avmnist": {"primary": "mnist_image", "secondary": "fsdd_audio", "names": ("image", "audio"),
                "specs": ("avmnist_fsdd_audio_mnist_image", "avmnist_mnist_image"),
                "what": "AV-MNIST (10 digits; the image degraded to ~25% PCA energy, test speakers unheard)"},
}
AV = {"primary": "mnist_image", "secondary": "fsdd_audio"}


def subset_spec(lt: LoadedTask, modalities: Sequence[str], name: str, folder: Path) -> Path:
    """A bring-your-own spec over a parsed suite task's cache that reads only ``modalities``."""
    spec = lt.spec
    unknown = [m for m in modalities if m not in spec.modalities]
    if unknown:
        raise ValueError(f"task {spec.name!r} has no modality {unknown}; it has {list(spec.modalities)}")
    raw = {
        "name": name,
        "path": str(lt.path),
        "modalities": {m: spec.modalities[m] for m in modalities},
        "modality_options": {m: dict(spec.modality_options.get(m, {})) for m in modalities},
        "target": spec.target,
        "task_type": spec.task_type,
        "num_classes": spec.num_classes,
        "metric": spec.metric,
        "description": f"{spec.name} read through {', '.join(modalities)} only",
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(raw, indent=2))
    return path


def train_run(out: Path, task: str, common: list[str], colearn: dict[str, Any] | None) -> dict[str, Any]:
    """Train one run folder (reused when finished); return its training wall time."""
    timing = out / "timing.json"
    if (out / "DONE").exists() and timing.exists():
        return json.loads(timing.read_text())
    sets = [f"train.colearn.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in (colearn or {}).items()]
    argv = ["--tasks", task, *common, *[a for s in sets for a in ("--set", s)]]
    info = {"train_wall_s": train_unless_done(out, argv), "argv": argv}
    write_json(timing, info)
    return info


def accuracy(model: torch.nn.Module, lt: LoadedTask, modalities: Sequence[str] | None, limit: int) -> float:
    spec = lt.spec
    out, y = predict(model, lt.splits["test"], spec, limit=limit, modalities=modalities)
    return score(spec, out, y)[spec.metric]


# ---- study 1: a modality missing at test time ---------------------------------------------------
def missing_study(args: argparse.Namespace, common: list[str], out: Path, seed: int) -> list[dict[str, Any]]:
    cfg = MISSING[args.missing_task]
    lt_full = load_task(args.missing_task, data_root=args.data_root, cache_dir=args.cache_dir, quiet=True)
    p, s = cfg["primary"], cfg["secondary"]
    pn, sn = cfg["names"]
    both_name, alone_name = cfg["specs"]  # the task names of the bring-your-own specs (two modalities, the primary alone)
    both = subset_spec(lt_full, [s, p], both_name, out.parent.parent / "specs")
    alone = subset_spec(lt_full, [p], alone_name, out.parent.parent / "specs")
    tr = {"method": "translation", "primary": p, "secondary": s}
    arms = [
        (f"{pn} alone", alone, None),
        (f"plain {sn} + {pn}", both, None),
        (f"modality dropout ({pn} path also supervised)", both, {**tr, "weight": 0.0, "missing_slot": "zero"}),
        (f"translation {pn} -> {sn}", both, {**tr, "weight": args.weight}),
        ("translation, cyclic", both, {**tr, "weight": args.weight, "cyclic": True}),
    ]
    rows = []
    for label, spec_path, colearn in arms:
        folder = out / _slug(label)
        timing = train_run(folder, str(spec_path), common, colearn)
        lt = load_task(spec_path, quiet=True)
        model = HighMMT.from_pretrained(folder)
        if colearn is not None:
            predictor = load_predictor(folder)
            primary_only = accuracy(predictor, lt, [p], args.limit)
            params = trainable_parameters(predictor)
        else:
            primary_only = accuracy(model, lt, [p], args.limit)
            params = trainable_parameters(model)
        full = accuracy(model, lt, None, args.limit) if s in lt.spec.modalities else float("nan")
        rows.append({"study": "missing", "seed": seed, "run": label, "task": lt.spec.name, "source_task": args.missing_task,
                     "trainable_parameters": params, "test_primary_only": primary_only, "test_both": full, **timing, "folder": str(folder)})
        print(f"[missing seed {seed}] {label}: {pn}-only test accuracy {primary_only:.3f} (both: {full:.3f}), {timing['train_wall_s']:.0f} s", flush=True)
    return rows


# ---- study 2: cross-modal label transfer through a coordinated representation ----------------------
@torch.no_grad()
def embed(model: HighMMT, projection: torch.nn.Module, modality: str, lt: LoadedTask, split: str, rows: np.ndarray, batch_size: int = 256) -> tuple[torch.Tensor, np.ndarray]:
    """Projected pooled latents of one modality for ``rows`` of a split: ([n, p], labels [n])."""
    model.eval()
    embs, labels = [], []
    for start in range(0, len(rows), batch_size):
        batch = collate_rows(lt.splits[split], rows[start : start + batch_size], lt.spec, modalities=[modality])
        z = model.encode_modality(modality, move_to(batch["inputs"][modality], torch.device("cpu")))
        embs.append(projection(z.mean(dim=1)))
        labels.append(batch["target"].numpy())
    return torch.cat(embs), np.concatenate(labels)


def unique_clip_rows(dataset: Any) -> np.ndarray:
    """The first row of each distinct audio clip (AV-MNIST pairs each clip with several images)."""
    clips = dataset["clip"]
    first: dict[Any, int] = {}
    for i, c in enumerate(clips):
        first.setdefault(c, i)
    return np.array(sorted(first.values()))


def label_transfer_study(args: argparse.Namespace, common: list[str], out: Path, seed: int) -> list[dict[str, Any]]:
    av = load_task("avmnist", data_root=args.data_root, cache_dir=args.cache_dir, quiet=True)
    p, s = AV["primary"], AV["secondary"]
    audio_alone = subset_spec(av, [s], "avmnist_audio", out.parent.parent / "specs")
    con = {"method": "contrastive", "primary": p, "secondary": s, "supervise_secondary": False,
           "temperature": args.temperature}
    test_rows = unique_clip_rows(av.splits["test"])
    proto_rows = np.sort(np.random.default_rng(0).choice(len(av.splits["train"]), size=min(args.prototype_images, len(av.splits["train"])), replace=False))
    rows = []
    for label, colearn in (("contrastive alignment", {**con, "weight": args.weight}), ("no alignment (weight 0)", {**con, "weight": 0.0})):
        folder = out / _slug(label)
        timing = train_run(folder, "avmnist", common, colearn)
        predictor = load_predictor(folder)
        proj = predictor.colearn["project"]
        img, img_y = embed(predictor.model, proj["primary"], p, av, "train", proto_rows)
        protos = class_prototypes(img, torch.from_numpy(img_y), av.spec.num_classes)
        aud, aud_y = embed(predictor.model, proj["secondary"], s, av, "test", test_rows)
        transferred = float((nearest_prototype(aud, protos).numpy() == aud_y).mean())
        image_acc = accuracy(predictor, av, [p], args.limit)
        rows.append({"study": "label_transfer", "seed": seed, "run": label, "task": "avmnist", "trainable_parameters": trainable_parameters(predictor),
                     "test_audio_accuracy": transferred, "audio_labels_used": False, "test_image_accuracy": image_acc,
                     "test_clips": len(test_rows), "prototype_images": len(proto_rows), **timing, "folder": str(folder)})
        print(f"[label_transfer seed {seed}] {label}: audio through image prototypes {transferred:.3f}, image head {image_acc:.3f}, "
              f"{timing['train_wall_s']:.0f} s", flush=True)
    folder = out / "audio_supervised"
    timing = train_run(folder, str(audio_alone), common, None)
    lt = load_task(audio_alone, quiet=True)
    model = HighMMT.from_pretrained(folder)
    o, y = predict(model, lt.splits["test"].select(test_rows), lt.spec)
    rows.append({"study": "label_transfer", "seed": seed, "run": "audio alone, supervised", "task": lt.spec.name, "trainable_parameters": trainable_parameters(model),
                 "test_audio_accuracy": score(lt.spec, o, y)["accuracy"], "audio_labels_used": True, "test_image_accuracy": float("nan"),
                 "test_clips": len(test_rows), **timing, "folder": str(folder)})
    counts = np.bincount(np.asarray(av.splits["test"].select(test_rows)[av.spec.target]), minlength=av.spec.num_classes)
    rows.append({"study": "label_transfer", "seed": seed, "run": "chance (majority class)", "task": "avmnist", "trainable_parameters": 0,
                 "test_audio_accuracy": float(counts.max() / counts.sum()), "audio_labels_used": False,
                 "test_image_accuracy": float("nan"), "test_clips": len(test_rows), "train_wall_s": 0.0})
    print(f"[label_transfer seed {seed}] audio supervised: {rows[-2]['test_audio_accuracy']:.3f}; chance {rows[-1]['test_audio_accuracy']:.3f}", flush=True)
    return rows


def _slug(label: str) -> str:
    """``"translation IMU -> depth"`` -> ``"translation_imu_depth"`` (a run folder name)."""
    return "_".join("".join(c if c.isalnum() else " " for c in label.lower()).split())


def _mean(rows: list[dict[str, Any]], key: str) -> str:
    """Mean ± sample sd over seeds, with each seed's value: ``0.781 ± 0.004 (0.784, 0.778)``; ``-`` if not measured."""
    return format_mean_sd((r[key] for r in rows), per_seed=True)


def _versus(rows: list[dict[str, Any]], base: list[dict[str, Any]] | None, key: str) -> str:
    """Difference of the means from the baseline's, with its verdict; ``-`` for the baseline itself."""
    if base is None or rows is base:
        return "-"
    return compare([r[key] for r in rows], [r[key] for r in base]).format()


def _by_run(rows: list[dict[str, Any]], study: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["study"] == study:
            out.setdefault(r["run"], []).append(r)
    return out


def markdown(results: dict[str, Any]) -> str:
    seeds = results["seeds"]
    lines = [f"Hardware: {hardware_line(results['machine'])}. Settings: {results['settings']}. "
             f"This call {results['wall_s'] / 60:.1f} min wall (finished runs are reused); the runs' training loops "
             f"{sum(r['train_wall_s'] for r in results['rows']) / 60:.1f} min in total. "
             + stats_note(seeds) + (" Each seed's value in brackets; train time: mean per run." if len(seeds) > 1 else ""), ""]
    miss = _by_run(results["rows"], "missing")
    if miss:
        cfg = MISSING[next(iter(miss.values()))[0].get("source_task", "utd_mhad")]
        pn, sn = cfg["names"]
        lines += [f"{cfg['what']}: trained with {sn} + {pn}, tested on the {pn} alone.", ""]
        lines.append(markdown_table(
            ["run", "trainable params", f"test acc, {pn} only", f"{pn} only vs {pn} alone", f"test acc, {sn} + {pn}", "train time (s)"],
            [[k, f"{rs[0]['trainable_parameters']:,}", _mean(rs, "test_primary_only"), _versus(rs, miss.get(f"{pn} alone"), "test_primary_only"),
              _mean(rs, "test_both"), round(sum(r["train_wall_s"] for r in rs) / len(rs))] for k, rs in miss.items()]))
        lines.append("")
    lt = _by_run(results["rows"], "label_transfer")
    if lt:
        clips = next(iter(lt.values()))[0]["test_clips"]
        lines += [f"AV-MNIST cross-modal label transfer: FSDD test clips ({clips} distinct, held-out speakers) classified "
                  "through MNIST image prototypes; the co-learning runs never use an audio label, but every digit is seen in "
                  "training through the image labels (not zero-shot).", ""]
        base = lt.get("no alignment (weight 0)")
        lines.append(markdown_table(
            ["run", "trainable params", "audio labels used", "test acc, audio", "audio vs no alignment", "test acc, image head",
             "train time (s)"],
            [[k, f"{rs[0]['trainable_parameters']:,}", "yes" if rs[0]["audio_labels_used"] else "no", _mean(rs, "test_audio_accuracy"),
              _versus(rs, base, "test_audio_accuracy"), _mean(rs, "test_image_accuracy"),
              round(sum(r["train_wall_s"] for r in rs) / len(rs))] for k, rs in lt.items()]))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", default=",".join(STUDIES), help=f"comma-separated, of {STUDIES}")
    p.add_argument("--missing-task", default="utd_mhad", choices=sorted(MISSING),
                   help="task of the missing study (its primary and secondary modalities: see MISSING)")
    p.add_argument("--preset", default="short", help="the preset of every run (default: short, the default preset when the study was run)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--steps", type=int, default=100, help="steps per epoch")
    p.add_argument("--weight", type=float, default=1.0, help="train.colearn.weight of the co-learning runs")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--prototype-images", type=int, default=2000, help="labeled MNIST training images behind the prototypes")
    p.add_argument("--limit", type=int, default=0, help="test rows per evaluation (0 = all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each run is repeated per seed")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra override for every run")
    p.add_argument("--output-dir", default=str(ROOT / "experiments" / "results" / "colearn"))
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--doc", default="", help="also put the tables between the --doc-section markers of this markdown file ('' = none)")
    p.add_argument("--doc-section", default="colearn", help="the markers' name: <!-- NAME:begin --> ... <!-- NAME:end --> (default colearn)")
    args = p.parse_args(argv)
    studies = args.studies.split(",")
    renamed = [s for s in studies if s in RENAMED_STUDIES]
    if renamed:
        raise ValueError(f"--studies: {renamed[0]!r} is now called {RENAMED_STUDIES[renamed[0]]!r}: every class is seen in "
                         "training (through the other modality's labels), so it is cross-modal label transfer, not zero-shot")
    bad = [s for s in studies if s not in STUDIES]
    if bad:
        raise ValueError(f"--studies: unknown {bad}; known: {list(STUDIES)}")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    out = Path(args.output_dir)
    seeds = [int(x) for x in args.seeds.split(",")]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        common = ["--preset", args.preset, "--seed", str(seed), "--quiet", "--cpu",
                  "--set", f"train.epochs={args.epochs}", "--set", f"train.steps_per_epoch={args.steps}",
                  "--set", f"train.threads={args.threads}", *[a for o in args.overrides for a in ("--set", o)]]
        common += data_flags(args)
        if "missing" in studies:
            rows += missing_study(args, common, out / f"seed{seed}" / "missing", seed)
        if "label_transfer" in studies:
            rows += label_transfer_study(args, common, out / f"seed{seed}" / "label_transfer", seed)
    results = {
        "settings": f"preset {args.preset}, {args.epochs} epochs x {args.steps} steps, colearn weight {args.weight}, "
                    f"temperature {args.temperature}, fp32, {args.threads} thread(s)",
        "seeds": seeds,
        "machine": machine_info(torch.device("cpu")),
        "rows": rows,
        "wall_s": time.perf_counter() - started,
    }
    write_json(out / "results.json", results)
    table = markdown(results)
    (out / "results.md").write_text(table)
    publish(table, args.doc, args.doc_section)
    return results


if __name__ == "__main__":
    run_cli(main)
