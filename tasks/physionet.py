"""PhysioNet/CinC Challenge 2012: in-hospital mortality from the first 48 h of an ICU stay.

Source files under ``<data_root>/physionet2012/``: ``set-a.tar.gz`` and ``set-b.tar.gz``, each
holding ``set-x/<RecordID>.txt`` (CSV ``Time,Parameter,Value``; ``Time`` is ``HH:MM`` since
admission) and ``Outcomes-x.txt`` (``In-hospital_death`` is the label). Read with ``tarfile``,
never extracted.

Split: set-a train / validation via ``train_test_split(ids_sorted, test_size=0.2, stratify=y,
random_state=0)`` (3,200 / 800), set-b test (4,000). Rows are in ascending RecordID order.

Modalities:

* ``static`` (tabular): numeric ``Age, Gender, Height, Weight`` (the 00:00 descriptors; ``-1`` is
  missing) and categorical ``ICUType`` (1-4 -> codes 0-3, -1 missing).
* ``vitals`` (irregular_timeseries): one row per distinct observation time (hours), the 37
  variables of :data:`VARIABLES` as channels; several values of one variable at one time are
  averaged. A stay without observations gets one all-unobserved row at time 0. ``max_steps``
  (option) keeps the last ``max_steps`` rows of longer stays (``None`` keeps all; set-a stays have
  0-201 rows, median 69).

Normalisation (statistics from the 3,200 training stays only, stored as JSON in every split's
``info.description``): variables in :data:`LOG_VARIABLES` (heavy right tails: enzymes, bilirubin,
creatinine, lactate, urine...) are ``log1p``-transformed first; then every value is standardised
with the mean and standard deviation of the training observations winsorised to their
0.5-99.5 percentiles (so unit errors such as pH 735 do not inflate the scale) and clipped to
+-5 standard deviations. ``MechVent`` (always 1 when recorded) stays 1. The static numeric
values get the same treatment.
"""

from __future__ import annotations

import json
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from tasks.base import BuiltinTask, TaskSpec, register_task
from tasks.cache import array_feature, samples_to_dataset

CODE_VERSION = "1"
FOLDER = "physionet2012"
SETS = ("set-a", "set-b")
VARIABLES = (
    "ALP", "ALT", "AST", "Albumin", "BUN", "Bilirubin", "Cholesterol", "Creatinine", "DiasABP", "FiO2", "GCS",
    "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "MAP", "MechVent", "Mg", "NIDiasABP", "NIMAP", "NISysABP",
    "Na", "PaCO2", "PaO2", "Platelets", "RespRate", "SaO2", "SysABP", "Temp", "TroponinI", "TroponinT", "Urine",
    "WBC", "Weight", "pH",
)
LOG_VARIABLES = ("ALP", "ALT", "AST", "BUN", "Bilirubin", "Creatinine", "Glucose", "Lactate", "TroponinI",
                 "TroponinT", "Urine", "WBC")
RAW_VARIABLES = ("MechVent",)
STATIC_NUMERIC = ("Age", "Gender", "Height", "Weight")
ICU_TYPES = 4
DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType")  # + the first Weight at 00:00
CLIP_SD = 5.0
WINSOR_PERCENTILES = (0.5, 99.5)
VALIDATION_FRACTION = 0.2

_VAR_INDEX = {v: i for i, v in enumerate(VARIABLES)}
_LOG_MASK = np.array([v in LOG_VARIABLES for v in VARIABLES])
_RAW_MASK = np.array([v in RAW_VARIABLES for v in VARIABLES])

DEFAULT_OPTIONS: dict[str, Any] = {"max_steps": None}

SPEC = TaskSpec(
    name="physionet_mortality",
    modalities={"static": "tabular", "vitals": "irregular_timeseries"},
    task_type="classification",
    num_classes=2,
    metric="auroc",
    extra_metrics=("auprc",),
    modality_options={
        "static": {"num_numeric": len(STATIC_NUMERIC), "categorical_cardinalities": [ICU_TYPES]},
        "vitals": {"channels": len(VARIABLES)},
    },
    class_names=("survived", "died"),
    description=(
        "PhysioNet/CinC 2012 in-hospital mortality. static: Age, Gender, Height, initial Weight (standardised) + "
        "ICUType; vitals: 37 variables at each observation time over 48 h (hours), log1p for skewed lab values, "
        "standardised with set-a training statistics, clipped to +-5 sd. Train/val: set-a (stratified 20% val, "
        "seed 0); test: set-b."
    ),
)


class _Record:
    """One parsed stay: raw static values and raw observations."""

    __slots__ = ("record_id", "static", "icu_type", "times", "values", "observed")

    def __init__(self, record_id: int, static: np.ndarray, icu_type: int, times: np.ndarray,
                 values: np.ndarray, observed: np.ndarray) -> None:
        self.record_id = record_id
        self.static = static  # float64 [4], nan = missing
        self.icu_type = icu_type  # 0-3, -1 missing
        self.times = times  # float32 [t] hours
        self.values = values  # float64 [t, 37], raw (0 where unobserved)
        self.observed = observed  # bool [t, 37]


def build(data_root: Path, *, max_steps: int | None = None, quiet: bool = False) -> datasets.DatasetDict:
    """Parse both archives, split, normalise with training statistics."""
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"task 'physionet_mortality': option max_steps must be a positive int or None, got {max_steps!r}")
    from sklearn.model_selection import train_test_split

    root = Path(data_root) / FOLDER
    records: dict[str, list[_Record]] = {}
    labels: dict[str, dict[int, int]] = {}
    for name in SETS:
        records[name], labels[name] = read_archive(root / f"{name}.tar.gz", quiet=quiet)

    a = sorted(records["set-a"], key=lambda r: r.record_id)
    ids_sorted = np.array([r.record_id for r in a])
    y = np.array([labels["set-a"][i] for i in ids_sorted])
    _, val_ids = train_test_split(ids_sorted, test_size=VALIDATION_FRACTION, stratify=y, random_state=0)
    val_set = set(int(i) for i in val_ids)
    parts = {
        "train": [r for r in a if r.record_id not in val_set],
        "validation": [r for r in a if r.record_id in val_set],
        "test": sorted(records["set-b"], key=lambda r: r.record_id),
    }
    stats = fit_normalisation(parts["train"])
    info_text = json.dumps({"task": SPEC.name, "normalisation": stats})
    features = datasets.Features({
        "id": datasets.Value("int64"),
        "static": {
            "numeric": datasets.List(datasets.Value("float32")),
            "numeric_observed": datasets.List(datasets.Value("bool")),
            "categorical": datasets.List(datasets.Value("int64")),
        },
        "vitals": {
            "values": array_feature((len(VARIABLES),), "float32"),
            "observed": array_feature((len(VARIABLES),), "bool"),
            "times": datasets.List(datasets.Value("float32")),
        },
        "label": datasets.ClassLabel(names=list(SPEC.class_names or ())),
    })
    out = {}
    for split, recs in parts.items():
        set_labels = labels["set-b" if split == "test" else "set-a"]
        examples = [to_example(r, set_labels[r.record_id], stats, max_steps=max_steps) for r in recs]
        ds = samples_to_dataset(examples, features)
        ds.info.description = info_text
        out[split] = ds
    return datasets.DatasetDict(out)


def read_archive(path: Path, *, quiet: bool = False) -> tuple[list[_Record], dict[int, int]]:
    """Records and ``{RecordID: In-hospital_death}`` of one ``set-x.tar.gz``, streamed."""
    set_name = path.name.removesuffix(".tar.gz")
    records: list[_Record] = []
    outcomes: dict[int, int] | None = None
    try:
        with tarfile.open(path, "r:gz") as tf:
            for member in tqdm(_members(tf), desc=f"physionet: reading {path.name}", disable=quiet, unit=" files"):
                base = member.name.rsplit("/", 1)[-1]
                text = tf.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
                if base.startswith("Outcomes"):
                    outcomes = parse_outcomes(text, where=f"{path}:{member.name}")
                elif member.name.startswith(f"{set_name}/") and base.endswith(".txt"):
                    records.append(parse_record(text, where=f"{path}:{member.name}"))
    except (tarfile.TarError, EOFError, zlib.error, OSError, UnicodeDecodeError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read the archive ({type(e).__name__}: {e}); it may be truncated - "
                         f"copy it again") from e
    if outcomes is None:
        raise ValueError(f"{path}: holds no Outcomes-*.txt")
    if not records:
        raise ValueError(f"{path}: holds no {set_name}/<RecordID>.txt records")
    ids = {r.record_id for r in records}
    if len(ids) != len(records) or ids != set(outcomes):
        raise ValueError(f"{path}: RecordIDs of the {len(records)} records and the {len(outcomes)} outcome rows "
                         f"differ (e.g. {sorted(ids ^ set(outcomes))[:5]})")
    return records, outcomes


def _members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in tf:
        if member.isfile():
            yield member


def parse_outcomes(text: str, *, where: str) -> dict[int, int]:
    lines = text.strip().splitlines()
    header = lines[0].strip().split(",") if lines else []
    if "RecordID" not in header or "In-hospital_death" not in header:
        raise ValueError(f"{where}: expected a header with RecordID and In-hospital_death, got {header}")
    i_id, i_y = header.index("RecordID"), header.index("In-hospital_death")
    out = {}
    for n, line in enumerate(lines[1:], start=2):
        cells = line.strip().split(",")
        try:
            record_id, y = int(cells[i_id]), int(cells[i_y])
        except (ValueError, IndexError) as e:
            raise ValueError(f"{where}, line {n}: cannot parse {line!r}") from e
        if y not in (0, 1):
            raise ValueError(f"{where}, line {n}: In-hospital_death must be 0 or 1, got {y}")
        out[record_id] = y
    return out


def parse_record(text: str, *, where: str) -> _Record:
    """One ``Time,Parameter,Value`` file -> raw static descriptors and observations per distinct time."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "Time,Parameter,Value":
        raise ValueError(f"{where}: expected the header 'Time,Parameter,Value', got {lines[0] if lines else ''!r}")
    desc: dict[str, float] = {}
    times, chans, vals = [], [], []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            t, p, v = line.split(",")
            hh, mm = t.split(":")
            hours, value = int(hh) + int(mm) / 60.0, float(v)
        except ValueError as e:
            raise ValueError(f"{where}, line {n}: cannot parse {line!r} as HH:MM,Parameter,Value") from e
        if hours == 0 and (p in DESCRIPTORS or (p == "Weight" and "Weight" not in desc)):
            desc[p] = value
            continue
        if p not in _VAR_INDEX:
            raise ValueError(f"{where}, line {n}: unknown parameter {p!r}; expected one of the 37 variables "
                             f"{', '.join(VARIABLES)} or a 00:00 descriptor")
        times.append(hours)
        chans.append(_VAR_INDEX[p])
        vals.append(value)
    if "RecordID" not in desc:
        raise ValueError(f"{where}: no RecordID descriptor at 00:00")
    static = np.array([desc.get(k, -1.0) for k in STATIC_NUMERIC], dtype=np.float64)
    static[static == -1] = np.nan
    if np.isfinite(static[1]) and static[1] not in (0.0, 1.0):  # Gender is 0/1
        static[1] = np.nan
    icu = int(desc.get("ICUType", -1))
    icu_code = icu - 1 if 1 <= icu <= ICU_TYPES else -1

    t_arr = np.asarray(times, dtype=np.float64)
    uniq, row = np.unique(t_arr, return_inverse=True)
    sums = np.zeros((len(uniq), len(VARIABLES)))
    counts = np.zeros((len(uniq), len(VARIABLES)))
    np.add.at(sums, (row, chans), vals)
    np.add.at(counts, (row, chans), 1)
    observed = counts > 0
    values = np.where(observed, sums / np.maximum(counts, 1), 0.0)
    return _Record(int(desc["RecordID"]), static, icu_code, uniq.astype(np.float32), values, observed)


def _transform(values: np.ndarray) -> np.ndarray:
    """log1p of the skewed variables (last axis = the 37 variables)."""
    return np.where(_LOG_MASK, np.log1p(np.clip(values, 0, None)), values)


def _robust_stats(x: np.ndarray) -> tuple[float, float]:
    """Mean and std of ``x`` winsorised to its 0.5-99.5 percentiles (0, 1 when empty or constant)."""
    if len(x) == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(x, WINSOR_PERCENTILES)
    w = np.clip(x, lo, hi)
    std = float(w.std())
    return float(w.mean()), std if std > 1e-8 else 1.0


def fit_normalisation(train: list[_Record]) -> dict[str, Any]:
    """Per-variable (after log1p where listed) and per-static-field mean / std of the training stays."""
    values = np.concatenate([r.values for r in train]) if train else np.zeros((0, len(VARIABLES)))
    observed = np.concatenate([r.observed for r in train]) if train else np.zeros((0, len(VARIABLES)), bool)
    tv = _transform(values)
    vitals = {}
    for j, v in enumerate(VARIABLES):
        mean, std = (0.0, 1.0) if _RAW_MASK[j] else _robust_stats(tv[observed[:, j], j])
        vitals[v] = {"mean": mean, "std": std, "log1p": bool(_LOG_MASK[j]), "raw": bool(_RAW_MASK[j])}
    static_x = np.stack([r.static for r in train]) if train else np.zeros((0, len(STATIC_NUMERIC)))
    static = {}
    for j, k in enumerate(STATIC_NUMERIC):
        col = static_x[:, j]
        mean, std = _robust_stats(col[np.isfinite(col)])
        static[k] = {"mean": mean, "std": std}
    return {"vitals": vitals, "static": static, "clip_sd": CLIP_SD, "winsor_percentiles": list(WINSOR_PERCENTILES)}


def to_example(rec: _Record, label: int, stats: dict[str, Any], *, max_steps: int | None) -> dict[str, Any]:
    """A normalised row: static tabular dict, vitals irregular-timeseries dict, label."""
    mean = np.array([stats["vitals"][v]["mean"] for v in VARIABLES])
    std = np.array([stats["vitals"][v]["std"] for v in VARIABLES])
    z = np.clip((_transform(rec.values) - mean) / std, -CLIP_SD, CLIP_SD)
    z = np.where(_RAW_MASK, rec.values, z)
    values, observed, times = np.where(rec.observed, z, 0.0), rec.observed, rec.times
    if len(times) == 0:
        values, observed, times = np.zeros((1, len(VARIABLES))), np.zeros((1, len(VARIABLES)), bool), np.zeros(1)
    if max_steps is not None and len(times) > max_steps:
        values, observed, times = values[-max_steps:], observed[-max_steps:], times[-max_steps:]

    s_mean = np.array([stats["static"][k]["mean"] for k in STATIC_NUMERIC])
    s_std = np.array([stats["static"][k]["std"] for k in STATIC_NUMERIC])
    s_obs = np.isfinite(rec.static)
    s_val = np.where(s_obs, np.clip((np.nan_to_num(rec.static) - s_mean) / s_std, -CLIP_SD, CLIP_SD), 0.0)
    return {
        "id": rec.record_id,
        "static": {"numeric": s_val.astype(np.float32), "numeric_observed": s_obs,
                   "categorical": np.array([rec.icu_type], dtype=np.int64)},
        "vitals": {"values": values.astype(np.float32), "observed": observed.astype(bool),
                   "times": np.asarray(times, dtype=np.float32)},
        "label": int(label),
    }


TASK = register_task(BuiltinTask(
    spec=SPEC,
    source_files=(f"{FOLDER}/set-a.tar.gz", f"{FOLDER}/set-b.tar.gz"),
    build=build,
    options=DEFAULT_OPTIONS,
    how_to_get=(
        "Place set-a.tar.gz and set-b.tar.gz under <data_root>/physionet2012/: tar.gz archives of the PhysioNet/CinC "
        "Challenge 2012 files (https://physionet.org/content/challenge-2012/1.0.0/) holding set-a/<RecordID>.txt + "
        "Outcomes-a.txt and set-b/<RecordID>.txt + Outcomes-b.txt. They are not downloaded automatically."
    ),
))
