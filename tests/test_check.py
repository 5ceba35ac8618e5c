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
