"""python -m tasks.check: a spec checked against its data without training."""

from __future__ import annotations

import datasets
import numpy as np
import yaml

from tasks import check


def _task(tmp_path, series):
    n = len(series)
    ds = datasets.Dataset.from_dict({"imu": series, "label": [i % 2 for i in range(n)]})
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "hf"))
    spec = {"name": "imu_task", "path": "hf", "modalities": {"imu": "timeseries"}, "target": "label", "num_classes": 2}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "spec.yaml"


def test_check_prints_what_it_inferred_and_names_each_bad_row(tmp_path, capsys):
    rng = np.random.default_rng(0)
    series = [rng.standard_normal((5 + i % 3, 2)).tolist() for i in range(40)]
    series[7][2][1] = float("nan")
    spec = _task(tmp_path, series)
    assert check.main([str(spec), "--cache-dir", str(tmp_path / "c")]) == 1
    out = capsys.readouterr().out
    assert "modality 'imu': timeseries {'channels': 2}" in out and "classes 0: " in out
    assert "bad row: split 'train', row 7, column 'imu': holds NaN or infinity" in out


def test_check_passes_a_clean_task_and_reports_a_bad_spec(tmp_path, capsys):
    series = [np.ones((4, 2)).tolist() for _ in range(20)]
    spec = _task(tmp_path, series)
    assert check.main([str(spec), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "every row reads" in capsys.readouterr().out
    spec.write_text(spec.read_text().replace("target: label", "target: nope"))
    assert check.main([str(spec), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "nope" in capsys.readouterr().err


def test_training_finds_bad_rows_up_front_and_can_drop_them(tmp_path):
    import pytest

    import train
    from tasks.cache import find_bad_rows, load_task

    rng = np.random.default_rng(0)
    series = [rng.standard_normal((5, 2)).tolist() for _ in range(40)]
    series[7][2][1] = float("inf")
    series[12][0][0] = float("nan")
    spec = _task(tmp_path, series)
    lt = load_task(spec, cache_dir=tmp_path / "c", quiet=True)
    assert find_bad_rows(lt.splits["test"], lt.spec)["imu"].tolist() == [7, 12]
    base = ["--preset", "tiny", "--tasks", str(spec), "--cache-dir", str(tmp_path / "c"), "--quiet", "--cpu",
            "--set", "train.epochs=1", "--set", "train.steps_per_epoch=2"]
    with pytest.raises(ValueError, match=r"task 'imu_task', split 'train': \d row\(s\) hold a missing value, NaN or infinity \(column 'imu'"):
        train.main([*base, "--output-dir", str(tmp_path / "a")])
    out = train.main([*base, "--output-dir", str(tmp_path / "b"), "--set", "train.bad_rows=drop"])
    assert (out / "DONE").exists()
