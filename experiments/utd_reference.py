"""Where UTD-MHAD's reference forests get their 0.94-0.95 from (docs/experiments.md, session 12).

The data README's references (``<data_root>/utd_mhad/baselines.py``) train on all four training
subjects (431 rows) and fuse per-modality models late (mean log-probability). The suite holds subject 7
out for validation (323 training rows) and ``baseline.py`` concatenates the modalities. This script
measures, with the README's features and models (inertial and skeleton; depth is left out, the
references' best fusions need only these two):

- ``source``: features from the raw ``.mat`` files (the README's recipe) or from the suite task's arrays
  (``tasks.utd_mhad`` defaults: skeleton 32 frames, inertial 64 steps), to see what the task's
  resampling keeps;
- ``train subjects``: 1,3,5,7 (the README) or 1,3,5 (the suite's training split);
- per-modality logistic regression / random forest, their late fusion, and the concatenation;
- validation accuracy on subject 7 where it is not trained on;
- a random forest on the depth frames' front-view motion map (sum of |frame differences|, 24 x 24,
  max-normalised), uncropped and cropped to its non-zero bounding box, from the task's arrays (16 frames
  of 48 x 64): what the video option ``motion_map`` hands the depth path.

    python -m experiments.utd_reference --data-root ../shared/data --output results/utd_reference.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import scipy.io as sio
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tasks.cache import load_task


def resample(x: np.ndarray, n: int) -> np.ndarray:
    t, tn = np.linspace(0, 1, len(x)), np.linspace(0, 1, n)
    return np.stack([np.interp(tn, t, x[:, c]) for c in range(x.shape[1])], 1)


def stats(x: np.ndarray) -> np.ndarray:
    f = []
    for seg in [x] + np.array_split(x, 3):
        f += [seg.mean(0), seg.std(0), seg.min(0), seg.max(0)]
    return np.concatenate(f)


def inertial_features(x: np.ndarray) -> np.ndarray:
    """x: [T, 6] in g and deg/s / 100."""
    return np.concatenate([stats(x), resample(x, 20).ravel()])


def skeleton_features(s: np.ndarray) -> np.ndarray:
    """s: [T, 20, 3], already relative to the first frame's hip centre in torso lengths."""
    x = s.reshape(len(s), -1)
    return np.concatenate([resample(x, 20).ravel(), stats(x), np.abs(np.diff(x, axis=0)).mean(0)])


def raw_rows(root: Path) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rows = list(csv.DictReader(open(root / "sequences.csv")))
    inertial, skeleton = [], []
    for r in rows:
        x = sio.loadmat(root / "Inertial" / f"{r['seq_id']}_inertial.mat")["d_iner"] / np.array([1, 1, 1, 100, 100, 100.0])
        inertial.append(inertial_features(x))
        s = sio.loadmat(root / "Skeleton" / f"{r['seq_id']}_skeleton.mat")["d_skel"].transpose(2, 0, 1)
        s = s - s[:1, 3:4, :]
        s = s / np.linalg.norm(s[0, 1] - s[0, 3])
        skeleton.append(skeleton_features(s))
    ids = [r["seq_id"] for r in rows]
    y = np.array([int(r["action"]) - 1 for r in rows])
    subject = np.array([int(r["subject"]) for r in rows])
    return ids, y, subject, {"inertial": np.array(inertial), "skeleton": np.array(skeleton)}


def task_rows(data_root: Path) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    loaded = load_task("utd_mhad", data_root=data_root, quiet=True)
    ids, y, subject, inertial, skeleton = [], [], [], [], []
    for split in ("train", "validation", "test"):
        ds = loaded.splits[split].with_format("numpy")
        for row in ds:
            ids.append(str(row["id"]))
            y.append(int(row["label"]))
            subject.append(int(row["subject"]))
            inertial.append(inertial_features(np.asarray(row["inertial"], dtype=np.float64)))
            skeleton.append(skeleton_features(np.asarray(row["skeleton"], dtype=np.float64)))
    return ids, np.array(y), np.array(subject), {"inertial": np.array(inertial), "skeleton": np.array(skeleton)}


def motion_map_features(video: np.ndarray, crop: bool) -> np.ndarray:
    """video [t, h, w, 1] -> the 24 x 24 (cropped) or 24 x 32 (whole frame) motion map, max-normalised, flat."""
    from scipy.ndimage import zoom

    energy = np.abs(np.diff(video[..., 0].astype(np.float32), axis=0)).sum(0)
    if crop:
        rows, cols = np.nonzero(energy > 0)
        if len(rows):
            energy = energy[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        energy = zoom(energy, (24 / energy.shape[0], 24 / energy.shape[1]), order=1)
    else:
        energy = zoom(energy, (24 / energy.shape[0], 32 / energy.shape[1]), order=1)
    return (energy / (energy.max() + 1e-6)).ravel()


def depth_motion(data_root: Path) -> dict[str, dict[str, float]]:
    """Random forests on the task's depth motion maps (train split; validation, test)."""
    loaded = load_task("utd_mhad", data_root=data_root, quiet=True)
    data = {}
    for split in ("train", "validation", "test"):
        depth = loaded.splits[split].with_format("numpy", columns=["depth"])["depth"]
        y = np.asarray(loaded.splits[split]["label"])
        data[split] = ({crop: np.array([motion_map_features(np.asarray(v), crop) for v in depth]) for crop in (False, True)}, y)
    out = {}
    for crop in (False, True):
        rf = RandomForestClassifier(n_estimators=500, random_state=0, n_jobs=-1).fit(data["train"][0][crop], data["train"][1])
        out[f"depth motion map{' cropped' if crop else ''} rf"] = {
            split: float(np.mean(rf.predict(data[split][0][crop]) == data[split][1])) for split in ("validation", "test")}
    return out


def evaluate(y: np.ndarray, subject: np.ndarray, feats: dict[str, np.ndarray], train_subjects: tuple[int, ...]) -> dict:
    train = np.isin(subject, train_subjects)
    test = np.isin(subject, (2, 4, 6, 8))
    held = ~train & ~test  # subject 7 when it is not trained on
    probs: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    out: dict[str, dict[str, float]] = {}
    inputs = dict(feats, concat=np.concatenate([feats["inertial"], feats["skeleton"]], 1))
    for name, x in inputs.items():
        for model_name in ("lr", "rf"):
            model = (make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)) if model_name == "lr"
                     else RandomForestClassifier(n_estimators=500, random_state=0, n_jobs=-1))
            model.fit(x[train], y[train])
            probs[name, model_name] = {"test": model.predict_proba(x[test])}
            if held.any():
                probs[name, model_name]["validation"] = model.predict_proba(x[held])
    for model_name in ("lr", "rf"):
        probs["late fusion", model_name] = {
            part: np.mean([np.log(probs[m, model_name][part] + 1e-4) for m in ("inertial", "skeleton")], 0)
            for part in probs["inertial", model_name]}
    for (name, model_name), parts in probs.items():
        out[f"{name} {model_name}"] = {
            "test": float(np.mean(parts["test"].argmax(1) == y[test])),
            **({"validation": float(np.mean(parts["validation"].argmax(1) == y[held]))} if "validation" in parts else {}),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    results = {}
    for source, reader in (("raw files", lambda: raw_rows(args.data_root / "utd_mhad")),
                           ("task arrays", lambda: task_rows(args.data_root))):
        start = time.time()
        _, y, subject, feats = reader()
        for train_subjects in ((1, 3, 5, 7), (1, 3, 5)):
            key = f"{source}, train subjects {','.join(map(str, train_subjects))}"
            results[key] = evaluate(y, subject, feats, train_subjects)
            print(f"## {key} ({time.time() - start:.0f} s)")
            for name, v in results[key].items():
                print(f"| {name} | {v.get('validation', float('nan')):.3f} | {v['test']:.3f} |", flush=True)
    start = time.time()
    results["task arrays, depth, train subjects 1,3,5"] = motion = depth_motion(args.data_root)
    print(f"## task arrays, depth motion maps, train subjects 1,3,5 ({time.time() - start:.0f} s)")
    for name, v in motion.items():
        print(f"| {name} | {v['validation']:.3f} | {v['test']:.3f} |", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
