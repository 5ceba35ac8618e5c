"""The data layer (cache keys, atomic builds, errors, rows_to_samples) and bring-your-own specs."""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

import tasks  # noqa: F401 - registers the built-in tasks
from tasks import cache
from tasks.base import BuiltinTask, TaskSpec, register_task
from tasks.byo import load_byo_spec
from tasks.cache import LoadedTask, cache_key, load_task, resolve_data_root, rows_to_samples

# ----------------------------------------------------------------------------------------------
# a tiny fake built-in task


def _fake_task(calls: list[int], *, fail: Exception | None = None) -> BuiltinTask:
    """A task reading ``fake/values.txt`` (one int per line) and ``fake/extra/``; counts build calls."""
    name = f"fake_{uuid.uuid4().hex[:8]}"
    spec = TaskSpec(name=name, modalities={"series": "timeseries"}, task_type="classification", num_classes=2,
                    metric="accuracy")

    def build(data_root: Path, *, scale: int = 1, quiet: bool = False) -> datasets.DatasetDict:
        calls.append(1)
        if fail is not None:
            raise fail
        values = [int(v) for v in (data_root / "fake" / "values.txt").read_text().split()]

        def part(vs):
            return datasets.Dataset.from_dict({
                "series": [np.full((3, 2), v * scale, np.float32) for v in vs],
                "label": [v % 2 for v in vs],
            })

        return datasets.DatasetDict({"train": part(values[:4]), "validation": part(values[4:5]), "test": part(values[5:])})

    return register_task(BuiltinTask(spec=spec, source_files=("fake/values.txt", "fake/extra"), build=build,
                                     options={"scale": 1}, how_to_get="Get the fake files from the test."))


@pytest.fixture
def fake_root(tmp_path):
    d = tmp_path / "data" / "fake"
    (d / "extra").mkdir(parents=True)
    (d / "values.txt").write_text("1 2 3 4 5 6 7\n")
    (d / "extra" / "notes.txt").write_text("a")
    return tmp_path / "data"


def test_cache_key_changes_with_options_and_files(fake_root):
    task = _fake_task([])
    k0 = cache_key(task, fake_root, {"scale": 1})
    assert cache_key(task, fake_root, {"scale": 1}) == k0
    assert cache_key(task, fake_root, {"scale": 2}) != k0
    (fake_root / "fake" / "extra" / "notes.txt").write_text("ab")  # a file inside a source folder
    k1 = cache_key(task, fake_root, {"scale": 1})
    assert k1 != k0
    values = fake_root / "fake" / "values.txt"
    st = values.stat()
    os.utime(values, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, same key
    assert cache_key(task, fake_root, {"scale": 1}) == k1
    text = values.read_bytes()
    values.write_bytes(text[::-1] if text[::-1] != text else text.upper())  # same size, other bytes...
    os.utime(values, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and the old mtime (cp -p, rsync -t)
    assert values.stat().st_size == st.st_size and cache_key(task, fake_root, {"scale": 1}) != k1


def test_a_cache_file_changed_on_disk_is_detected_and_rebuilt(fake_root, tmp_path):
    calls: list[int] = []
    task = _fake_task(calls)
    first = load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", quiet=True)
    arrow = sorted(first.path.rglob("*.arrow"))[0]
    data = bytearray(arrow.read_bytes())
    data[-100] ^= 0xFF  # same size, one byte flipped
    arrow.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="changed since the cache was written"):
        again = load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", quiet=True)
    assert again.source == "built" and len(calls) == 2
    assert load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", quiet=True).source == "cache"


def test_second_load_is_served_from_cache(fake_root, tmp_path):
    calls: list[int] = []
    task = _fake_task(calls)
    first = load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", quiet=True)
    assert isinstance(first, LoadedTask) and first.source == "built" and len(calls) == 1
    second = load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", quiet=True)
    assert second.source == "cache" and len(calls) == 1 and second.path == first.path
    assert second.path.name.startswith(f"{task.spec.name}-") and second.options == {"scale": 1}
    assert [len(second.splits[s]) for s in ("train", "validation", "test")] == [4, 1, 2]
    third = load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", options={"scale": 3}, quiet=True)
    assert third.source == "built" and len(calls) == 2 and third.path != first.path
    samples, labels = rows_to_samples(third.splits["test"], [1], third.spec)
    np.testing.assert_array_equal(samples["series"][0], np.full((3, 2), 21, np.float32))
    assert labels.tolist() == [1]


def test_env_vars_pick_data_root_and_cache(fake_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HIGHMMT_DATA", str(fake_root))
    monkeypatch.setenv("HIGHMMT_CACHE", str(tmp_path / "envcache"))
    assert resolve_data_root(None) == fake_root and resolve_data_root("x") == Path("x")
    monkeypatch.delenv("HIGHMMT_DATA")
    assert resolve_data_root(None) == Path("data")
    monkeypatch.setenv("HIGHMMT_DATA", str(fake_root))
    task = _fake_task([])
    lt = load_task(task.spec.name, quiet=True)
    assert lt.path.parent == tmp_path / "envcache"


def test_failed_build_leaves_no_cache_and_next_load_rebuilds(fake_root, tmp_path):
    calls: list[int] = []
    task = _fake_task(calls, fail=RuntimeError("killed mid-build"))
    with pytest.raises(RuntimeError, match="killed mid-build"):
        load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", quiet=True)
    assert list((tmp_path / "c").iterdir()) == []  # neither a final nor a temporary folder


def test_crash_while_saving_leaves_no_cache(fake_root, tmp_path, monkeypatch):
    calls: list[int] = []
    task = _fake_task(calls)
    real_save = datasets.DatasetDict.save_to_disk

    def crashing_save(self, path, **kw):
        real_save(datasets.DatasetDict({"train": self["train"]}), path, **kw)  # part of the cache written...
        raise OSError("disk full")  # ...then the process "dies"

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", quiet=True)
    assert list((tmp_path / "c").iterdir()) == []
    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", real_save)
    lt = load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", quiet=True)
    assert lt.source == "built" and len(calls) == 2 and len(lt.splits["test"]) == 2


def test_corrupt_cache_is_rebuilt_with_a_warning(fake_root, tmp_path):
    calls: list[int] = []
    task = _fake_task(calls)
    first = load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", quiet=True)
    for arrow in first.path.rglob("*.arrow"):
        arrow.write_bytes(b"not arrow")
    with pytest.warns(UserWarning, match="unreadable"):
        again = load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", quiet=True)
    assert again.source == "built" and len(calls) == 2 and len(again.splits["train"]) == 4


def test_unknown_option_lists_known(fake_root, tmp_path):
    task = _fake_task([])
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['scael'\]; known: scale"):
        load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", options={"scael": 2})


def test_missing_files_error_says_what_and_where(tmp_path):
    task = _fake_task([])
    with pytest.raises(FileNotFoundError) as err:
        load_task(task.spec.name, data_root=tmp_path / "nowhere", cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "fake/values.txt" in msg and "fake/extra" in msg and str(tmp_path / "nowhere") in msg
    assert "HIGHMMT_DATA" in msg and "Get the fake files from the test." in msg
    with pytest.raises(FileNotFoundError, match="physionet2012/set-a.tar.gz"):
        load_task("physionet_mortality", data_root=tmp_path / "nowhere", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        load_task("nope")


def test_quiet_restores_progress_bar_state(fake_root, tmp_path):
    task = _fake_task([])
    datasets.enable_progress_bars()
    load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", quiet=True)
    assert datasets.is_progress_bar_enabled()


# ----------------------------------------------------------------------------------------------
# rows_to_samples on every kind


def test_rows_to_samples_canonical_formats():
    rng = np.random.default_rng(0)
    n = 5
    ds = datasets.Dataset.from_dict({
        "img": [rng.integers(0, 255, (4, 6), dtype=np.uint8) for _ in range(n)],  # grayscale -> [h, w, 1]
        "vid": [rng.random((i + 1, 4, 6, 3)) for i in range(n)],  # float64 -> float32
        "wave": [rng.random(10 + i) for i in range(n)],
        "ts": [rng.random(3 + i) for i in range(n)],  # 1-d -> [t, 1]
        "pose": [rng.random((2 + i, 5, 3)) for i in range(n)],
        "set": [rng.random((i + 1, 2)) for i in range(n)],
        "text": [f"row {i}" for i in range(n)],
        "tab": [{"numeric": [1.0, np.nan], "categorical": [i]} for i in range(n)],
        "irr": [{"values": [[1.0, np.nan]] * (i + 1), "times": list(range(i + 1))} for i in range(n)],
        "label": list(range(n)),
    })
    kinds = {"img": "image", "vid": "video", "wave": "audio", "ts": "timeseries", "pose": "pose", "set": "set",
             "text": "text", "tab": "tabular", "irr": "irregular_timeseries"}
    spec = TaskSpec(name="all_kinds", modalities=kinds, task_type="classification", num_classes=n, metric="accuracy")
    samples, labels = rows_to_samples(ds, np.array([3, 1]), spec)
    assert labels.tolist() == [3, 1] and labels.dtype == np.int64
    assert samples["img"][0].shape == (4, 6, 1) and samples["img"][0].dtype == np.uint8
    np.testing.assert_array_equal(samples["img"][0][..., 0], np.asarray(ds[3]["img"]))
    assert samples["vid"][0].shape == (4, 4, 6, 3) and samples["vid"][0].dtype == np.float32
    assert samples["wave"][1].shape == (11,) and samples["ts"][0].shape == (6, 1)
    assert samples["pose"][1].shape == (3, 5, 3) and samples["set"][0].shape == (4, 2)
    np.testing.assert_allclose(samples["pose"][1], np.asarray(ds[1]["pose"]), rtol=1e-6)
    assert samples["text"] == ["row 3", "row 1"]
    tab = samples["tab"][0]
    assert tab["numeric"].tolist() == [1.0, 0.0] and tab["numeric_observed"].tolist() == [True, False]
    assert tab["categorical"].tolist() == [3] and tab["categorical"].dtype == np.int64
    irr = samples["irr"][1]
    assert irr["values"].shape == (2, 2) and irr["observed"][:, 1].tolist() == [False, False]
    assert irr["times"].tolist() == [0.0, 1.0] and irr["values"][0, 1] == 0
    for mod in ("vid", "pose", "ts"):
        samples[mod][0][...] = 0  # writable, and not shared with the next sample
        assert samples[mod][1].any()


@pytest.mark.parametrize("chunks", [1, 3, 40])
def test_rows_to_samples_same_rows_whatever_the_chunking(chunks):
    """Array-typed columns over 1, a few and many Arrow chunks (three gather paths): rows come back
    in the order asked for, repeats included."""
    rng = np.random.default_rng(0)
    features = datasets.Features({"img": datasets.Array3D((3, 4, 1), "uint8"), "ts": datasets.Array2D((5, 2), "float32"),
                                  "label": datasets.Value("int64")})
    n = 80
    columns = {"img": rng.integers(0, 255, (n, 3, 4, 1), dtype=np.uint8), "ts": rng.random((n, 5, 2), dtype=np.float32),
               "label": np.arange(n)}
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    ds = datasets.concatenate_datasets([
        datasets.Dataset.from_dict({k: v[a:b] for k, v in columns.items()}, features=features)
        for a, b in zip(bounds[:-1], bounds[1:])
    ])
    assert ds.data.table.column(0).num_chunks == chunks
    spec = TaskSpec(name="chunked", modalities={"img": "image", "ts": "timeseries"}, task_type="classification",
                    num_classes=n, metric="accuracy")
    rows = [77, 3, 41, 3, 0, 79, 40, 39]
    samples, labels = rows_to_samples(ds, rows, spec)
    assert labels.tolist() == rows
    for r, img, ts in zip(rows, samples["img"], samples["ts"]):
        np.testing.assert_array_equal(img, columns["img"][r])
        np.testing.assert_array_equal(ts, columns["ts"][r])
    assert samples["img"][1] is not samples["img"][3], "repeated rows must be separate arrays"
    picked = ds.select([5, 60, 2, 79, 41])  # an index mapping over the table
    samples, labels = rows_to_samples(picked, [3, 0, 4, 4, -1], spec)
    assert labels.tolist() == [79, 5, 41, 41, 41]
    np.testing.assert_array_equal(samples["ts"][0], columns["ts"][79])
    with pytest.raises(IndexError, match=r"row indices must be in \[0, 5\)"):
        rows_to_samples(picked, [5], spec)
    assert rows_to_samples(picked, [], spec)[1].tolist() == []


def test_rows_to_samples_rejects_ragged_and_wrong_rank():
    ds = datasets.Dataset.from_dict({"ts": [[[1.0, 2.0], [3.0]]], "label": [0]})
    spec = TaskSpec(name="ragged", modalities={"ts": "timeseries"}, task_type="classification", num_classes=1,
                    metric="accuracy")
    with pytest.raises(ValueError, match="modality 'ts'.*ragged"):
        rows_to_samples(ds, [0], spec)
    ds = datasets.Dataset.from_dict({"ts": [[[[1.0]]]], "label": [0]})
    with pytest.raises(ValueError, match=r"modality 'ts' \(kind 'timeseries'\), row 0: expected a rank-2"):
        rows_to_samples(ds, [0], spec)


# ----------------------------------------------------------------------------------------------
# bring-your-own specs


def _byo_splits(n_train: int = 40, n_test: int = 12, *, with_val: bool = False) -> datasets.DatasetDict:
    rng = np.random.default_rng(0)

    def part(n: int, offset: int) -> datasets.Dataset:
        t = rng.integers(5, 9, size=n)
        return datasets.Dataset.from_dict({
            "accelerometer": [rng.standard_normal((k, 3)).astype(np.float32) for k in t],
            "gyroscope": [rng.standard_normal((k, 3)).astype(np.float32) for k in t],
            "label": [(offset + i) % 4 for i in range(n)],
        })

    parts = {"train": part(n_train, 0), "test": part(n_test, 1)}
    if with_val:
        parts["val"] = part(8, 2)
    return datasets.DatasetDict(parts)


SPEC = {
    "name": "my_task",
    "path": "hf",
    "modalities": {"accelerometer": "timeseries", "gyroscope": "timeseries"},
    "target": "label",
    "task_type": "classification",
    "num_classes": 4,
    "metric": "accuracy",
    "class_names": ["a", "b", "c", "d"],
    "description": "two IMU streams",
    "modality_options": {"accelerometer": {"channels": 3}},
}


def _write_spec(folder: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(json.dumps(spec) if name.endswith(".json") else yaml.safe_dump(spec))
    return path


def test_byo_save_to_disk_yaml(tmp_path):
    _byo_splits().save_to_disk(str(tmp_path / "hf"))
    before = sorted(p.name for p in (tmp_path / "hf").rglob("*"))
    lt = load_task(_write_spec(tmp_path, SPEC), quiet=True)
    assert lt.source == "spec" and lt.path == tmp_path / "hf"
    # gyroscope's channels come from the data (tests/test_spec_inference.py covers every inferred option)
    assert lt.spec.name == "my_task" and lt.spec.modality_options == {"accelerometer": {"channels": 3}, "gyroscope": {"channels": 3}}
    assert list(lt.spec.class_names) == ["a", "b", "c", "d"] and lt.spec.description == "two IMU streams"
    sp = lt.splits
    assert (len(sp["train"]), len(sp["validation"]), len(sp["test"])) == (36, 4, 12)  # 10% of train held out
    assert sorted(list(sp["validation"]["label"])) == [0, 1, 2, 3]  # stratified
    samples, labels = rows_to_samples(sp["validation"], [0, 1, 2], lt.spec)
    assert samples["gyroscope"][0].shape[1] == 3 and samples["gyroscope"][0].dtype == np.float32
    assert labels.shape == (3,)
    assert sorted(p.name for p in (tmp_path / "hf").rglob("*")) == before  # nothing written beside the data


def test_byo_parquet_json_and_split_mapping(tmp_path):
    dd = _byo_splits(with_val=True)
    (tmp_path / "pq").mkdir()
    dd["train"].to_parquet(str(tmp_path / "pq" / "train.parquet"))
    dd["test"].to_parquet(str(tmp_path / "pq" / "test.parquet"))
    dd["val"].to_parquet(str(tmp_path / "pq" / "held_out.parquet"))
    spec = {**SPEC, "path": "pq", "splits": {"train": "train", "validation": "held_out.parquet", "test": "test"}}
    spec_path = _write_spec(tmp_path, spec, "spec.json")
    s, splits = load_byo_spec(spec_path)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (40, 8, 12)
    samples, _ = rows_to_samples(splits["test"], [2], s)
    np.testing.assert_allclose(samples["accelerometer"][0], np.asarray(dd["test"][2]["accelerometer"]), rtol=1e-6)
    # format inferred, no mapping: validation carved from train
    spec = {k: v for k, v in SPEC.items() if k not in ("class_names", "task_type", "metric")}
    (tmp_path / "pq" / "held_out.parquet").unlink()
    s, splits = load_byo_spec(_write_spec(tmp_path, {**spec, "path": "pq"}, "spec2.yml"))
    assert s.metric == "accuracy" and s.task_type == "classification"
    assert (len(splits["train"]), len(splits["validation"])) == (36, 4)


def test_byo_classlabel_gives_num_classes_and_names(tmp_path):
    dd = _byo_splits().cast_column("label", datasets.ClassLabel(names=["w", "x", "y", "z"]))
    dd.save_to_disk(str(tmp_path / "hf"))
    spec = {k: v for k, v in SPEC.items() if k not in ("num_classes", "class_names")}
    s, _ = load_byo_spec(_write_spec(tmp_path, spec))
    assert s.num_classes == 4 and list(s.class_names) == ["w", "x", "y", "z"]


@pytest.mark.parametrize(
    ("change", "key", "match"),
    [
        ({"colour": "red"}, "colour", "unknown key"),
        ({"name": None}, "name", "required key is missing"),
        ({"num_classes": None}, "num_classes", "required for task_type 'classification'"),
        ({"modalities": {"accelerometer": "timeseries", "magnetometer": "timeseries"}}, "modalities.magnetometer",
         "no column 'magnetometer'"),
        ({"modalities": {"accelerometer": "imu"}}, "modalities.accelerometer", "unknown kind 'imu'"),
        ({"modalities": {"accelerometer": "pose"}}, "modalities.accelerometer", "kind 'pose' needs"),
        ({"num_classes": 3, "class_names": None}, "num_classes", r"labels 0..3, outside \[0, 3\)"),
        ({"target": "y"}, "target", "no column 'y'"),
        ({"splits": {"train": "train", "test": "testing"}}, "splits.test", "no split 'testing'"),
        ({"splits": {"train": "train", "holdout": "test"}}, "splits.holdout", "unknown split"),
        ({"format": "csv"}, "format", "expected one of"),
        ({"metric": "bleu"}, "metric", "unknown metric 'bleu'"),
    ],
)
def test_byo_bad_specs_name_file_and_key(tmp_path, change, key, match):
    _byo_splits().save_to_disk(str(tmp_path / "hf"))
    spec = {k: v for k, v in {**SPEC, **change}.items() if v is not None}
    path = _write_spec(tmp_path, spec)
    with pytest.raises(ValueError, match=match) as err:
        load_task(path, quiet=True)
    assert str(path) in str(err.value) and key in str(err.value)


def test_byo_missing_train_or_test_split(tmp_path):
    dd = _byo_splits()
    datasets.DatasetDict({"train": dd["train"], "eval": dd["test"]}).save_to_disk(str(tmp_path / "hf"))
    path = _write_spec(tmp_path, SPEC)
    with pytest.raises(ValueError, match=r"key 'splits': no 'test' split .*\['eval', 'train'\]") as err:
        load_task(path)
    assert str(path) in str(err.value)
    (tmp_path / "pq").mkdir()
    dd["test"].to_parquet(str(tmp_path / "pq" / "test.parquet"))
    with pytest.raises(ValueError, match="no 'train' split"):
        load_byo_spec(_write_spec(tmp_path, {**SPEC, "path": "pq"}))
    with pytest.raises(ValueError, match=r"key 'path': .*does not exist"):
        load_byo_spec(_write_spec(tmp_path, {**SPEC, "path": "nothing_here"}))


def test_byo_regression_and_multilabel_targets(tmp_path):
    dd = _byo_splits()
    n_tr, n_te = len(dd["train"]), len(dd["test"])
    reg = dd.map(lambda r: {"y": float(r["label"]) / 2}).remove_columns("label")
    reg.save_to_disk(str(tmp_path / "reg"))
    spec = {k: v for k, v in SPEC.items() if k not in ("num_classes", "class_names", "metric")}
    s, splits = load_byo_spec(_write_spec(tmp_path, {**spec, "path": "reg", "target": "y", "task_type": "regression"}))
    assert s.num_classes == 1 and s.metric == "mse"
    _, labels = rows_to_samples(splits["test"], [0, 1], s)
    assert labels.dtype == np.float32 and labels.tolist() == [0.5, 1.0]
    multi = datasets.DatasetDict({
        "train": dd["train"].add_column("tags", [[1, 0, 1]] * n_tr),
        "test": dd["test"].add_column("tags", [[0, 2, 1]] * n_te),
    })
    multi.save_to_disk(str(tmp_path / "multi"))
    bad = {**spec, "path": "multi", "target": "tags", "task_type": "multilabel", "num_classes": 3}
    with pytest.raises(ValueError, match="multilabel targets must be 0/1"):
        load_byo_spec(_write_spec(tmp_path, bad))
    with pytest.raises(ValueError, match=r"key 'num_classes'.*expected num_classes = 4"):
        load_byo_spec(_write_spec(tmp_path, {**bad, "num_classes": 4}))


def test_options_are_refused_for_specs(tmp_path):
    _byo_splits().save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="only for built-in tasks"):
        load_task(_write_spec(tmp_path, SPEC), options={"max_steps": 3})


def test_cache_module_has_no_warnings_on_clean_load(fake_root, tmp_path):
    task = _fake_task([])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", quiet=True)
        load_task(task.spec.name, data_root=fake_root, cache_dir=tmp_path / "c", quiet=True)
    assert cache.CACHE_FORMAT >= 1


def test_rows_to_samples_fast_path_matches_index_mapped_path(tmp_path):
    import datasets as hf

    from tasks.base import TaskSpec
    from tasks.cache import rows_to_samples

    rows = {"ts": [np.full((i + 1, 2), i, np.float32) for i in range(6)], "label": [0, 1, 0, 1, 0, 1]}
    ds = hf.Dataset.from_dict(rows)
    spec = TaskSpec(name="t", modalities={"ts": "timeseries"}, task_type="classification", num_classes=2, metric="accuracy")
    fast, y_fast = rows_to_samples(ds, [4, 1], spec)
    picked = ds.select([1, 4])  # a non-contiguous selection has an index mapping
    mapped, y_mapped = rows_to_samples(picked, [1, 0], spec)
    assert ds._indices is None and picked._indices is not None
    assert np.array_equal(y_fast, y_mapped) and list(y_fast) == [0, 1]
    for a, b in zip(fast["ts"], mapped["ts"]):
        assert np.array_equal(a, b)
    assert fast["ts"][0].shape == (5, 2)


@pytest.mark.parametrize("feature", [datasets.Array2D((5, 2), "float32"), datasets.Array3D((3, 4, 1), "float16"),
                                     datasets.Array4D((2, 3, 2, 2), "uint8")])
def test_array_columns_built_in_arrow_equal_from_dict(feature):
    from tasks._io import array_column, make_dataset

    rng = np.random.default_rng(0)
    x = (rng.random((7, *feature.shape)) * 100).astype(feature.dtype)
    features = datasets.Features({"a": feature, "label": datasets.Value("int64")})
    fast = make_dataset({"a": x, "label": np.arange(7)}, features)
    slow = datasets.Dataset.from_dict({"a": x, "label": np.arange(7)}, features=features)
    assert fast.data.table.equals(slow.data.table)
    np.testing.assert_array_equal(fast.with_format("numpy")["a"], x)
    with pytest.raises(ValueError, match=r"expected rows of shape \(5, 2\)"):
        array_column(np.zeros((2, 5, 3), np.float32), datasets.Array2D((5, 2), "float32"))


def test_byo_empty_split_is_an_error_naming_the_task_and_split(tmp_path):
    dd = _byo_splits()
    (tmp_path / "pq").mkdir()
    dd["train"].to_parquet(str(tmp_path / "pq" / "train.parquet"))
    dd["test"].select([]).to_parquet(str(tmp_path / "pq" / "test.parquet"))
    path = _write_spec(tmp_path, {**SPEC, "path": "pq"})
    with pytest.raises(ValueError, match=r"split 'test' of task '\w+' has no rows") as err:
        load_task(path)
    assert str(path) in str(err.value)


def test_carved_validation_never_takes_a_class_out_of_training(monkeypatch):
    from tasks import byo

    train = datasets.Dataset.from_dict({"x": list(range(10)), "label": [0, 0, 0, 0, 1, 1, 1, 1, 1, 2]})
    spec = TaskSpec(name="t", modalities={"x": "tabular"}, task_type="classification", num_classes=3, metric="accuracy")
    monkeypatch.setattr(byo, "stratified_holdout", lambda y, f, seed=0: (np.arange(8), np.array([8, 9])))  # class 2 held out
    with pytest.warns(UserWarning, match="class 2 has 1 training row"):
        out = byo._carve_validation({"train": train}, spec)
    assert 2 in out["train"]["label"] and out["validation"]["x"] == [8]
    monkeypatch.setattr(byo, "stratified_holdout", lambda y, f, seed=0: (np.arange(9), np.array([9])))  # nothing else to hold
    with pytest.warns(UserWarning, match="class 2 .* never trained on"):
        out = byo._carve_validation({"train": train}, spec)
    assert out["validation"]["x"] == [9]


def test_cache_list_and_prune_keep_the_current_folder(fake_root, tmp_path, capsys):
    from tasks import caches

    task = _fake_task([])
    cache = tmp_path / "c"
    current = load_task(task.spec.name, data_root=fake_root, cache_dir=cache, quiet=True).path
    other = load_task(task.spec.name, data_root=fake_root, cache_dir=cache, options={"scale": 5}, quiet=True).path
    args = ["--cache-dir", str(cache), "--data-root", str(fake_root)]
    assert caches.main(["list", *args]) == 0
    listing = capsys.readouterr().out
    assert f"{current.name}" in listing and "current" in listing and "old" in listing
    caches.main(["prune", *args, "--dry-run"])
    assert other.exists() and "would remove" in capsys.readouterr().out
    caches.main(["prune", *args])
    assert current.exists() and not other.exists()


def test_byo_empty_saved_split_is_named(tmp_path):
    dd = _byo_splits()
    datasets.DatasetDict({"train": dd["train"], "test": dd["test"].select([])}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match=r"split\(s\) \['test'\] of .* have no rows"):
        load_task(_write_spec(tmp_path, SPEC))
