"""UTD-MHAD and PhysioNet 2012 loaders: tiny files in the real formats, plus slow real-data checks."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import tasks  # noqa: F401 - registers the built-in tasks
from tasks import physionet, utd_mhad
from tasks.cache import load_task, rows_to_samples
from tasks.splits import stratified_holdout

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("HIGHMMT_DATA") or REPO.parent / "shared" / "data")

SMALL_UTD = {"depth_frames": 4, "depth_size": (12, 16), "skeleton_frames": 8, "inertial_steps": 10}


# ----------------------------------------------------------------------------------------------
# UTD-MHAD fixture: actions 1-3, subjects 1-8, trial 1 (24 sequences: 12 train pool, 12 test)


def _skeleton(rng: np.random.Generator, t: int) -> np.ndarray:
    """d_skel [20, 3, T] in metres: hip_center at (0.3, -0.2, 2.5), shoulder_center 0.5 m above it."""
    base = rng.normal(0, 0.3, size=(20, 3)) + np.array([0.3, -0.2, 2.5])
    base[3] = [0.3, -0.2, 2.5]
    base[1] = base[3] + [0.0, 0.5, 0.0]
    motion = np.cumsum(rng.normal(0, 0.01, size=(t, 20, 3)), axis=0)
    motion[0] = 0
    return np.moveaxis(base[None] + motion, 0, 2)


def _write_utd(root: Path, *, actions=(1, 2, 3), subjects=range(1, 9), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    d = root / "utd_mhad"
    for sub in ("Skeleton", "Inertial", "Depth_120x160_u8"):
        (d / sub).mkdir(parents=True)
    lines = ["seq_id,action,subject,trial,cross_subject_split,skeleton_frames,depth_frames,inertial_samples"]
    for a in actions:
        for s in subjects:
            sid, t, ti = f"a{a}_s{s}_t1", int(rng.integers(20, 30)), int(rng.integers(50, 70))
            scipy.io.savemat(d / "Skeleton" / f"{sid}_skeleton.mat", {"d_skel": _skeleton(rng, t)})
            iner = np.concatenate([rng.normal(0, 1, (ti, 3)), np.full((ti, 3), 100.0 * a)], axis=1)
            scipy.io.savemat(d / "Inertial" / f"{sid}_inertial.mat", {"d_iner": iner})
            depth = np.zeros((120, 160, t), np.uint8)
            depth[30:90, 40:100, :] = 150 + a
            np.savez_compressed(d / "Depth_120x160_u8" / f"{sid}_depth.npz", depth=depth, mm_per_unit=np.uint8(16))
            lines.append(f"{sid},{a},{s},1,{'train' if s % 2 else 'test'},{t},{t},{ti}")
    (d / "sequences.csv").write_text("\n".join(lines) + "\n")
    return root


def test_utd_mhad_shapes_splits_labels(tmp_path):
    root = _write_utd(tmp_path / "data")
    lt = load_task("utd_mhad", data_root=root, cache_dir=tmp_path / "cache", options=SMALL_UTD, quiet=True)
    sp = lt.splits
    assert (len(sp["train"]), len(sp["validation"]), len(sp["test"])) == (9, 3, 12)
    assert set(list(sp["train"]["subject"]) + list(sp["validation"]["subject"])) == {1, 3, 5, 7}
    assert set(list(sp["test"]["subject"])) == {2, 4, 6, 8}
    assert not set(list(sp["train"]["id"])) & set(list(sp["validation"]["id"]))
    # validation = every sequence of the held-out training subject 7 (subject-held-out, default)
    assert list(sp["validation"]["id"]) == [f"a{a}_s7_t1" for a in (1, 2, 3)]
    assert set(list(sp["train"]["subject"])) == {1, 3, 5} and set(list(sp["validation"]["subject"])) == {7}
    assert sorted(sp["validation"]["label"]) == [0, 1, 2]  # one per action
    for split in sp.values():
        for sid, label in zip(list(split["id"]), list(split["label"])):
            assert label == int(sid.split("_")[0][1:]) - 1
    assert lt.spec.num_classes == 27 and lt.spec.class_names[0] == "right arm swipe to the left"

    # validation_subject=None: the seeded stratified 20% of the train pool in sequences.csv order
    old = load_task("utd_mhad", data_root=root, cache_dir=tmp_path / "cache",
                    options={**SMALL_UTD, "validation_subject": None}, quiet=True).splits
    pool = [f"a{a}_s{s}_t1" for a in (1, 2, 3) for s in (1, 3, 5, 7)]
    _, held = stratified_holdout([int(p[1]) - 1 for p in pool], 0.2, seed=0)
    assert list(old["validation"]["id"]) == [pool[i] for i in held]
    assert set(list(old["validation"]["subject"])) != {7}
    with pytest.raises(ValueError, match="validation_subject"):
        load_task("utd_mhad", data_root=root, cache_dir=tmp_path / "cache",
                  options={**SMALL_UTD, "validation_subject": 2}, quiet=True)
    assert sp["train"].features["label"].names[26] == "squat (two arms stretch out)"

    samples, labels = rows_to_samples(sp["test"], [0, 5], lt.spec)
    assert labels.dtype == np.int64 and labels.tolist() == list(sp["test"].select([0, 5])["label"])
    depth, skel, iner = samples["depth"][0], samples["skeleton"][0], samples["inertial"][0]
    assert depth.shape == (4, 12, 16, 1) and depth.dtype == np.uint8
    assert skel.shape == (8, 20, 3) and skel.dtype == np.float32
    assert iner.shape == (10, 6) and iner.dtype == np.float32
    a = int(sp["test"][0]["id"].split("_")[0][1:])
    # the 60x60 block of value 150+a covers rows 30:90 -> 3:9 and columns 40:100 -> 4:10 exactly
    expected = np.zeros((12, 16), np.uint8)
    expected[3:9, 4:10] = 150 + a
    np.testing.assert_array_equal(depth[..., 0], np.broadcast_to(expected, (4, 12, 16)))
    np.testing.assert_allclose(iner[:, 3:], a, rtol=1e-6)  # gyro 100*a deg/s -> a


def test_utd_mhad_skeleton_normalisation(tmp_path):
    root = _write_utd(tmp_path / "data", actions=(1,), subjects=(1,))
    path = root / "utd_mhad" / "Skeleton" / "a1_s1_t1_skeleton.mat"
    raw = scipy.io.loadmat(path)["d_skel"]
    s = utd_mhad.load_skeleton(path, frames=None)
    assert s.shape == (raw.shape[2], 20, 3)
    np.testing.assert_allclose(s[0, 3], 0, atol=1e-6)  # first-frame hip_center at the origin
    np.testing.assert_allclose(np.linalg.norm(s[0, 1]), 1, rtol=1e-6)  # torso length 1
    np.testing.assert_allclose(s[-1], (raw[:, :, -1] - raw[3, :, 0]) / 0.5, rtol=1e-5, atol=1e-6)


def test_utd_mhad_resampling_rules():
    x = np.arange(6, dtype=np.float64)[:, None]
    np.testing.assert_allclose(utd_mhad.resample_time(x, 3)[:, 0], [0.5, 2.5, 4.5])  # area mean
    np.testing.assert_allclose(utd_mhad.resample_time(x, 11)[:, 0], np.linspace(0, 5, 11))  # linear
    # 2x2 blocks with >= 2 non-zero pixels get the mean of their non-zero pixels, else 0 (make_depth.py's rule)
    rng = np.random.default_rng(0)
    v = rng.integers(100, 200, size=(2, 8, 10)).astype(np.float32) * (rng.random((2, 8, 10)) < 0.5)
    got = utd_mhad.resize_ignoring_zeros(v, (4, 5))
    blocks = v.reshape(2, 4, 2, 5, 2).transpose(0, 1, 3, 2, 4).reshape(2, 4, 5, 4)
    nz = (blocks > 0).sum(-1)
    want = np.where(nz >= 2, blocks.sum(-1) / np.maximum(nz, 1), 0)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_utd_mhad_corrupt_and_missing_files(tmp_path):
    root = _write_utd(tmp_path / "data", actions=(1, 2), subjects=range(1, 9))
    bad = root / "utd_mhad" / "Inertial" / "a2_s3_t1_inertial.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file, this is not really one" + bytes(50))
    with pytest.raises(ValueError, match="a2_s3_t1_inertial.mat"):
        load_task("utd_mhad", data_root=root, cache_dir=tmp_path / "cache", options=SMALL_UTD, quiet=True)
    bad.unlink()
    with pytest.raises(FileNotFoundError, match="a2_s3_t1_inertial.mat"):
        load_task("utd_mhad", data_root=root, cache_dir=tmp_path / "cache", options=SMALL_UTD, quiet=True)
    with pytest.raises(ValueError, match="unknown option.*depth_frames"):
        load_task("utd_mhad", data_root=root, cache_dir=tmp_path / "cache", options={"frames": 3})


# ----------------------------------------------------------------------------------------------
# PhysioNet fixture


def _record(rid: int, *, age=60, gender=1, height=170.0, icu=2, weight=80.0, rows=()) -> str:
    lines = ["Time,Parameter,Value", f"00:00,RecordID,{rid}", f"00:00,Age,{age}", f"00:00,Gender,{gender}"]
    lines += [f"00:00,Height,{height}", f"00:00,ICUType,{icu}", f"00:00,Weight,{weight}"]
    lines += [f"{t},{p},{v}" for t, p, v in rows]
    return "\n".join(lines) + "\n"


def _write_archive(path: Path, set_name: str, records: dict[int, str], deaths: dict[int, int]) -> None:
    letter = set_name[-1]
    outcomes = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n" + "".join(
        f"{rid},10,5,7,-1,{deaths[rid]}\n" for rid in sorted(records))
    with tarfile.open(path, "w:gz") as tf:
        members = {f"{set_name}/{rid}.txt": text for rid, text in records.items()}
        members[f"Outcomes-{letter}.txt"] = outcomes
        for name, text in sorted(members.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _write_physionet(root: Path) -> Path:
    rng = np.random.default_rng(0)
    d = root / "physionet2012"
    d.mkdir(parents=True)
    a_records, a_deaths = {}, {}
    for k, rid in enumerate(range(132539, 132549)):
        rows = [("00:07", "HR", 80 + k), ("00:07", "Urine", 100 * (k + 1)), ("01:30", "HR", 90 + k),
                ("01:30", "HR", 100 + k), ("02:00", "MechVent", 1), ("02:00", "pH", 7.3 + 0.01 * k),
                ("47:59", "Weight", 70 + k)] + [(f"{3 + j:02d}:00", "Temp", 36 + rng.random()) for j in range(k)]
        a_records[rid] = _record(rid, age=50 + k, icu=1 + k % 4, rows=rows)
        a_deaths[rid] = int(k % 3 == 0)  # 4 deaths
    a_records[132539] = _record(132539, gender=-1, height=-1, weight=-1, icu=3)  # no time series rows
    _write_archive(d / "set-a.tar.gz", "set-a", a_records, a_deaths)
    b_records = {rid: _record(rid, rows=[("00:30", "HR", 75), ("05:15", "Glucose", 140)]) for rid in range(142000, 142005)}
    _write_archive(d / "set-b.tar.gz", "set-b", b_records, {rid: int(rid == 142001) for rid in b_records})
    return root


def test_physionet_splits_static_and_vitals(tmp_path):
    root = _write_physionet(tmp_path / "data")
    lt = load_task("physionet_mortality", data_root=root, cache_dir=tmp_path / "cache", quiet=True)
    sp, spec = lt.splits, lt.spec
    assert (len(sp["train"]), len(sp["validation"]), len(sp["test"])) == (8, 2, 5)
    assert sorted(list(sp["validation"]["label"])) == [0, 1]  # stratified
    assert list(sp["test"]["id"]) == list(range(142000, 142005)) and list(sp["test"]["label"]) == [0, 1, 0, 0, 0]
    assert spec.metric == "auroc" and list(spec.extra_metrics) == ["auprc"] and spec.num_classes == 2
    assert spec.modality_options["static"] == {"num_numeric": 4, "categorical_cardinalities": [4]}

    stats = json.loads(sp["train"].info.description)["normalisation"]
    by_id = {rid: i for split in ("train", "validation") for i, rid in enumerate(list(sp[split]["id"]))}
    split_of = {rid: s for s in ("train", "validation") for rid in list(sp[s]["id"])}

    def sample(rid):
        samples, _ = rows_to_samples(sp[split_of[rid]], [by_id[rid]], spec)
        return samples["static"][0], samples["vitals"][0]

    # the stay with no time series rows and -1 descriptors
    static, vitals = sample(132539)
    assert static["numeric_observed"].tolist() == [True, False, False, False]
    assert static["numeric"][1:].tolist() == [0, 0, 0] and static["categorical"].tolist() == [2]
    assert vitals["values"].shape == (1, 37) and not vitals["observed"].any() and vitals["times"].tolist() == [0]

    k = 3
    static, vitals = sample(132539 + k)
    age = stats["static"]["Age"]
    np.testing.assert_allclose(static["numeric"][0], (50 + k - age["mean"]) / age["std"], rtol=1e-5)
    assert static["categorical"].tolist() == [k % 4]
    n_rows = 4 + k  # 00:07, 01:30, 02:00, 47:59 and k Temp times
    assert vitals["values"].shape == (n_rows, 37)
    np.testing.assert_allclose(vitals["times"][:3], [7 / 60, 1.5, 2.0], rtol=1e-6)
    assert vitals["times"][-1] == pytest.approx(47 + 59 / 60)
    v = physionet.VARIABLES.index
    hr, urine, mv = stats["vitals"]["HR"], stats["vitals"]["Urine"], v("MechVent")
    # two HR values at 01:30 are averaged, then standardised
    np.testing.assert_allclose(vitals["values"][1, v("HR")], (95 + k - hr["mean"]) / hr["std"], rtol=1e-5)
    np.testing.assert_allclose(vitals["values"][0, v("Urine")], (np.log1p(100 * (k + 1)) - urine["mean"]) / urine["std"], rtol=1e-5)
    assert urine["log1p"] and not hr["log1p"]
    assert vitals["values"][2, mv] == 1 and vitals["observed"][2, mv]
    assert vitals["observed"].sum() == 2 + 1 + 2 + 1 + k  # HR+Urine, HR, MechVent+pH, Weight, Temps
    assert (vitals["values"][~vitals["observed"]] == 0).all() and np.abs(vitals["values"]).max() <= 5

    # statistics come from the training stays only: the HR values of the 7 training stays with rows
    train_hr = np.concatenate([[80 + j, 95 + j] for rid, j in ((r, r - 132539) for r in list(sp["train"]["id"])) if j > 0])
    lo, hi = np.percentile(train_hr, physionet.WINSOR_PERCENTILES)
    assert hr["mean"] == pytest.approx(np.clip(train_hr, lo, hi).mean())
    assert hr["std"] == pytest.approx(np.clip(train_hr, lo, hi).std())


def test_physionet_max_steps_keeps_last_rows(tmp_path):
    root = _write_physionet(tmp_path / "data")
    lt = load_task("physionet_mortality", data_root=root, cache_dir=tmp_path / "cache", options={"max_steps": 3}, quiet=True)
    for split in lt.splits.values():
        samples, _ = rows_to_samples(split, range(len(split)), lt.spec)
        assert max(len(s["times"]) for s in samples["vitals"]) <= 3
    samples, _ = rows_to_samples(lt.splits["test"], [0], lt.spec)
    assert samples["vitals"][0]["times"].tolist() == [0.5, 5.25]


def test_physionet_truncated_archive_names_file(tmp_path):
    root = _write_physionet(tmp_path / "data")
    path = root / "physionet2012" / "set-b.tar.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="set-b.tar.gz"):
        load_task("physionet_mortality", data_root=root, cache_dir=tmp_path / "cache", quiet=True)
    assert not any((tmp_path / "cache").iterdir())  # nothing half-written


def test_physionet_bad_record_names_member(tmp_path):
    root = _write_physionet(tmp_path / "data")
    _write_archive(root / "physionet2012" / "set-b.tar.gz", "set-b",
                   {142000: _record(142000, rows=[("01:00", "Heartbeat", 70)])}, {142000: 0})
    with pytest.raises(ValueError, match=r"set-b/142000.txt.*Heartbeat"):
        load_task("physionet_mortality", data_root=root, cache_dir=tmp_path / "cache", quiet=True)


# ----------------------------------------------------------------------------------------------
# real data (skipped when the data root is absent)


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("real_cache")


def _need(rel: str) -> None:
    if not (REAL_DATA / rel).exists():
        pytest.skip(f"real data {rel!r} not found under {REAL_DATA} (set HIGHMMT_DATA)")


def test_real_utd_mhad(real_cache):
    _need("utd_mhad/sequences.csv")
    lt = load_task("utd_mhad", data_root=REAL_DATA, cache_dir=real_cache, quiet=True)
    sp = lt.splits
    assert len(sp["train"]) + len(sp["validation"]) == 431 and len(sp["test"]) == 430
    assert (len(sp["train"]), len(sp["validation"])) == (323, 108)  # subject 7 held out
    assert set(list(sp["validation"]["subject"])) == {7}
    labels = list(sp["train"]["label"]) + list(sp["validation"]["label"]) + list(sp["test"]["label"])
    assert len(labels) == 861 and sorted(set(labels)) == list(range(27))
    assert set(list(sp["test"]["subject"])) == {2, 4, 6, 8}
    samples, _ = rows_to_samples(sp["test"], [0, 429], lt.spec)
    assert samples["depth"][1].shape == (16, 48, 64, 1) and samples["depth"][1].max() > 100
    assert samples["skeleton"][1].shape == (32, 20, 3) and samples["inertial"][1].shape == (64, 6)
    again = load_task("utd_mhad", data_root=REAL_DATA, cache_dir=real_cache, quiet=True)
    assert again.source == "cache" and again.path == lt.path


def test_real_physionet(real_cache):
    _need("physionet2012/set-b.tar.gz")
    lt = load_task("physionet_mortality", data_root=REAL_DATA, cache_dir=real_cache, quiet=True)
    sp = lt.splits
    assert (len(sp["train"]), len(sp["validation"]), len(sp["test"])) == (3200, 800, 4000)
    assert (sum(list(sp["train"]["label"])), sum(list(sp["validation"]["label"])), sum(list(sp["test"]["label"]))) == (443, 111, 568)
    assert list(sp["validation"]["id"])[:5] == [132539, 132543, 132551, 132554, 132592]
    samples, _ = rows_to_samples(sp["test"], range(64), lt.spec)
    assert all(s["values"].shape[1] == 37 for s in samples["vitals"])
    assert sum(s["observed"].sum() for s in samples["vitals"]) > 64 * 100
