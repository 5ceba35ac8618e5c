"""UTD-MHAD: 27 actions from depth video, Kinect skeleton and a wrist/thigh inertial sensor.

Source files under ``<data_root>/utd_mhad/`` (see that folder's README): ``sequences.csv``,
``Skeleton/a{a}_s{s}_t{t}_skeleton.mat`` (``d_skel`` [20, 3, T], metres),
``Inertial/a{a}_s{s}_t{t}_inertial.mat`` (``d_iner`` [T, 6]: acceleration in g, angular velocity
in deg/s) and ``Depth_120x160_u8/a{a}_s{s}_t{t}_depth.npz`` (``depth`` uint8 [120, 160, T] in
``mm_per_unit`` = 16 mm steps, 0 = no measurement).

Split (publisher's cross-subject protocol): subjects 1, 3, 5, 7 train, 2, 4, 6, 8 test (430).
Validation is subject-held-out so that it measures cross-subject generalisation like the test split:
by default (option ``validation_subject=7``) every sequence of training subject 7 is validation
(108 sequences) and subjects 1, 3, 5 train (323). ``validation_subject=None`` keeps the older
seeded (``random_state=0``) stratified 20% of the 431 training sequences, taken in ``sequences.csv``
order -> 344 train / 87 validation (same subjects as train, so it overestimates test accuracy).

Preprocessing (each modality resampled on its own: they are not frame-aligned):

* ``depth`` (video, uint8 [depth_frames, h, w, 1], in 16 mm units, 0 = no data): ``depth_frames``
  frames picked uniformly (nearest frame), then an area resize to ``depth_size`` that ignores zero
  pixels: an output pixel is the mean of the non-zero input area it covers when at least half of
  that area is non-zero, else 0 (the rule the 120x160 derivative itself was made with).
* ``skeleton`` (pose, float32 [skeleton_frames, 20, 3]): minus the first frame's hip_center (joint 4),
  divided by the first frame's shoulder_center - hip_center distance (as the reference baselines).
* ``inertial`` (timeseries, float32 [inertial_steps, 6]): acceleration in g, angular velocity / 100.

Time resampling: area averaging (a box filter, so no aliasing) when shortening, linear interpolation
when lengthening. An option set to ``None`` keeps every frame / sample / the full 120x160 size.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from tasks.base import BuiltinTask, TaskSpec, register_task
from tasks.cache import array_feature, samples_to_dataset
from tasks.splits import stratified_holdout

CODE_VERSION = "2"
FOLDER = "utd_mhad"
DEPTH_DIR, SKELETON_DIR, INERTIAL_DIR = "Depth_120x160_u8", "Skeleton", "Inertial"
TRAIN_SUBJECTS = (1, 3, 5, 7)
TEST_SUBJECTS = (2, 4, 6, 8)
VALIDATION_FRACTION = 0.2
DEPTH_MM_PER_UNIT = 16
HIP_CENTER, SHOULDER_CENTER = 3, 1  # 0-based rows of d_skel
INERTIAL_SCALE = np.array([1, 1, 1, 100, 100, 100], dtype=np.float64)

ACTIONS = (
    "right arm swipe to the left", "right arm swipe to the right", "right hand wave", "two hand front clap",
    "right arm throw", "cross arms in the chest", "basketball shoot", "right hand draw x",
    "right hand draw circle (clockwise)", "right hand draw circle (counter clockwise)", "draw triangle",
    "bowling (right hand)", "front boxing", "baseball swing from right", "tennis right hand forehand swing",
    "arm curl (two arms)", "tennis serve", "two hand push", "right hand knock on door",
    "right hand catch an object", "right hand pick up and throw", "jogging in place", "walking in place",
    "sit to stand", "stand to sit", "forward lunge (left foot forward)", "squat (two arms stretch out)",
)

DEFAULT_OPTIONS: dict[str, Any] = {
    "depth_frames": 16,
    "depth_size": (48, 64),
    "skeleton_frames": 32,
    "inertial_steps": 64,
    "validation_subject": 7,
}

SPEC = TaskSpec(
    name="utd_mhad",
    modalities={"depth": "video", "skeleton": "pose", "inertial": "timeseries"},
    task_type="classification",
    num_classes=len(ACTIONS),
    metric="accuracy",
    modality_options={
        "depth": {"channels": 1, "max_size": 64},  # frames are already resized here, ignoring zero pixels
        "skeleton": {"joints": 20, "coords": 3},
        "inertial": {"channels": 6},
    },
    class_names=ACTIONS,
    description=(
        "UTD-MHAD, 27 actions, cross-subject (train subjects 1,3,5,7, subject 7 held out as validation "
        "by default; test 2,4,6,8). depth: uint8 video in 16 mm units (0 = no data); skeleton: 20 joints "
        "x (x, y, z) relative to the first frame's hip centre in torso lengths; inertial: accel (g) + gyro "
        "(deg/s / 100)."
    ),
)


def build(
    data_root: Path,
    *,
    depth_frames: int | None = 16,
    depth_size: Sequence[int] | None = (48, 64),
    skeleton_frames: int | None = 32,
    inertial_steps: int | None = 64,
    validation_subject: int | None = 7,
    quiet: bool = False,
) -> datasets.DatasetDict:
    """Parse every sequence listed in ``sequences.csv`` into train / validation / test."""
    for opt, v in (("depth_frames", depth_frames), ("skeleton_frames", skeleton_frames), ("inertial_steps", inertial_steps)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"task 'utd_mhad': option {opt} must be a positive int or None, got {v!r}")
    if depth_size is not None:
        if len(depth_size) != 2 or not all(isinstance(s, int) and s >= 1 for s in depth_size):
            raise ValueError(f"task 'utd_mhad': option depth_size must be (height, width) or None, got {depth_size!r}")
        depth_size = (int(depth_size[0]), int(depth_size[1]))
    if validation_subject is not None and validation_subject not in TRAIN_SUBJECTS:
        raise ValueError(f"task 'utd_mhad': option validation_subject must be one of the training subjects "
                         f"{TRAIN_SUBJECTS} or None, got {validation_subject!r}")
    root = Path(data_root) / FOLDER
    rows = read_sequences(root / "sequences.csv")
    missing = [p for r in rows for p in sequence_files(root, r["seq_id"]) if not p.exists()]
    if missing:
        listed = "\n".join(f"  {p}" for p in missing[:10]) + (f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(f"task 'utd_mhad': {len(missing)} file(s) listed in sequences.csv are missing:\n{listed}")

    examples = []
    for r in tqdm(rows, desc="utd_mhad: parsing sequences", disable=quiet):
        depth_path, skeleton_path, inertial_path = sequence_files(root, r["seq_id"])
        examples.append({
            "id": r["seq_id"],
            "subject": r["subject"],
            "depth": load_depth(depth_path, frames=depth_frames, size=depth_size),
            "skeleton": load_skeleton(skeleton_path, frames=skeleton_frames),
            "inertial": load_inertial(inertial_path, steps=inertial_steps),
            "label": r["action"] - 1,
        })

    h, w = depth_size if depth_size is not None else examples[0]["depth"].shape[1:3]
    features = datasets.Features({
        "id": datasets.Value("string"),
        "subject": datasets.Value("int32"),
        "depth": array_feature((h, w, 1), "uint8"),
        "skeleton": array_feature((20, 3), "float32"),
        "inertial": array_feature((6,), "float32"),
        "label": datasets.ClassLabel(names=list(ACTIONS)),
    })
    train_pool = [e for e in examples if e["subject"] in TRAIN_SUBJECTS]
    test = [e for e in examples if e["subject"] in TEST_SUBJECTS]
    if validation_subject is None:
        kept, held = stratified_holdout([e["label"] for e in train_pool], VALIDATION_FRACTION, seed=0)
    else:
        kept = [i for i, e in enumerate(train_pool) if e["subject"] != validation_subject]
        held = [i for i, e in enumerate(train_pool) if e["subject"] == validation_subject]

    return datasets.DatasetDict({
        "train": samples_to_dataset([train_pool[i] for i in kept], features),
        "validation": samples_to_dataset([train_pool[i] for i in held], features),
        "test": samples_to_dataset(test, features),
    })


def sequence_files(root: Path, seq_id: str) -> tuple[Path, Path, Path]:
    """The (depth, skeleton, inertial) files of one sequence."""
    return (root / DEPTH_DIR / f"{seq_id}_depth.npz", root / SKELETON_DIR / f"{seq_id}_skeleton.mat",
            root / INERTIAL_DIR / f"{seq_id}_inertial.mat")


def read_sequences(path: Path) -> list[dict[str, Any]]:
    """Rows of ``sequences.csv`` with ``seq_id`` (str) and int ``action``, ``subject``, ``trial``."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            needed = {"seq_id", "action", "subject", "trial"}
            if reader.fieldnames is None or not needed <= set(reader.fieldnames):
                raise ValueError(f"{path}: expected columns {sorted(needed)}, got {reader.fieldnames}")
            rows = [{"seq_id": r["seq_id"], "action": int(r["action"]), "subject": int(r["subject"]),
                     "trial": int(r["trial"])} for r in reader]
    except (csv.Error, KeyError, TypeError) as e:
        raise ValueError(f"{path}: cannot parse ({e})") from e
    for r in rows:
        if not 1 <= r["action"] <= len(ACTIONS) or r["subject"] not in TRAIN_SUBJECTS + TEST_SUBJECTS:
            raise ValueError(f"{path}: sequence {r['seq_id']!r} has action {r['action']} (expected 1-27) "
                             f"and subject {r['subject']} (expected 1-8)")
    if not rows:
        raise ValueError(f"{path}: lists no sequences")
    return rows


def load_skeleton(path: Path, *, frames: int | None) -> np.ndarray:
    """float32 [t, 20, 3]: centred on the first frame's hip_center, in first-frame torso lengths."""
    skel = _loadmat_key(path, "d_skel")
    if skel.ndim != 3 or skel.shape[:2] != (20, 3) or skel.shape[2] < 1:
        raise ValueError(f"{path}: expected d_skel of shape (20, 3, T), got {skel.shape}")
    s = np.moveaxis(skel.astype(np.float64), 2, 0)  # [T, 20, 3]
    s = s - s[0, HIP_CENTER]
    scale = np.linalg.norm(s[0, SHOULDER_CENTER])  # hip_center is the origin now
    if not np.isfinite(scale) or scale < 1e-6:
        raise ValueError(f"{path}: degenerate first frame (shoulder_center - hip_center distance {scale})")
    s = s / scale
    if frames is not None:
        s = resample_time(s, frames)
    return s.astype(np.float32)


def load_inertial(path: Path, *, steps: int | None) -> np.ndarray:
    """float32 [t, 6]: acceleration (g) and angular velocity (deg/s / 100)."""
    x = _loadmat_key(path, "d_iner")
    if x.ndim != 2 or x.shape[1] != 6 or x.shape[0] < 1:
        raise ValueError(f"{path}: expected d_iner of shape (T, 6), got {x.shape}")
    x = x.astype(np.float64) / INERTIAL_SCALE
    if steps is not None:
        x = resample_time(x, steps)
    return x.astype(np.float32)


def load_depth(path: Path, *, frames: int | None, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 [t, h, w, 1] in 16 mm units (0 = no measurement)."""
    try:
        with np.load(path) as z:
            depth, mm = z["depth"], int(z["mm_per_unit"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: cannot read the depth file ({type(e).__name__}: {e})") from e
    if depth.ndim != 3 or depth.shape[2] < 1:
        raise ValueError(f"{path}: expected depth of shape (H, W, T), got {depth.shape}")
    if frames is not None:
        depth = depth[:, :, np.linspace(0, depth.shape[2] - 1, frames).round().astype(np.int64)]
    video = np.ascontiguousarray(np.moveaxis(depth, 2, 0), dtype=np.float32) * (mm / DEPTH_MM_PER_UNIT)  # [t, H, W]
    if size is not None and size != video.shape[1:]:
        video = resize_ignoring_zeros(video, size)
    return np.clip(np.floor(video + 0.5), 0, 255).astype(np.uint8)[..., None]


def resize_ignoring_zeros(video: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area resize of [t, H, W] to [t, h, w] where zeros mean "no data".

    An output pixel is the mean of the non-zero input it covers, or 0 when under half its area is non-zero.
    """
    rh, rw = area_weights(size[0], video.shape[1]), area_weights(size[1], video.shape[2])
    mask = (video > 0).astype(np.float32)
    total = rh @ (video * mask) @ rw.T  # [h, H] @ [t, H, W] @ [W, w] -> [t, h, w]
    cover = rh @ mask @ rw.T
    return np.where(cover >= 0.5 - 1e-6, total / np.maximum(cover, 1e-12), 0.0)


def area_weights(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in] weights: output cell j is the mean of the input it covers (fractional overlaps)."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    k = np.arange(n_in)
    overlap = np.minimum(edges[1:, None], k[None] + 1) - np.maximum(edges[:-1, None], k[None])
    w = np.clip(overlap, 0.0, None)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resample_time(x: np.ndarray, n: int) -> np.ndarray:
    """Resample [T, ...] to [n, ...]: area averaging when shortening, linear interpolation when lengthening."""
    t = x.shape[0]
    if n == t:
        return x
    if n < t:
        return np.tensordot(area_weights(n, t).astype(np.float64), x, axes=(1, 0))
    pos = np.linspace(0.0, t - 1, n)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, max(t - 2, 0))
    frac = (pos - i0).reshape(-1, *([1] * (x.ndim - 1)))
    i1 = np.minimum(i0 + 1, t - 1)
    return x[i0] * (1 - frac) + x[i1] * frac


def _loadmat_key(path: Path, key: str) -> np.ndarray:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # noqa: BLE001 - scipy raises many types for a damaged .mat
        raise ValueError(f"{path}: cannot read the MATLAB file ({type(e).__name__}: {e})") from e
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: expected variable {key!r}, found {found}")
    return np.asarray(mat[key])


TASK = register_task(BuiltinTask(
    spec=SPEC,
    source_files=(f"{FOLDER}/sequences.csv", f"{FOLDER}/{SKELETON_DIR}", f"{FOLDER}/{INERTIAL_DIR}", f"{FOLDER}/{DEPTH_DIR}"),
    build=build,
    options=DEFAULT_OPTIONS,
    how_to_get=(
        "Place UTD-MHAD under <data_root>/utd_mhad/: sequences.csv, Skeleton/*_skeleton.mat and Inertial/*_inertial.mat "
        "(the publisher's files, https://www.utdallas.edu/~kehtar/UTD-MHAD.html) and Depth_120x160_u8/*_depth.npz "
        "(the 120x160 uint8 derivative made from the publisher's depth .mat files by make_depth.py, as in the "
        "project's shared data folder). These files are not downloaded automatically."
    ),
))
