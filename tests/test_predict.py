"""predict.py: predictions for new rows from a run folder, with or without a target column."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

import evaluate
import predict
import train
from tasks.cache import load_task


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    out = train.main(["--preset", "tiny", "--tasks", "synthetic_pair", "--output-dir", str(tmp / "run"), "--cache-dir",
                      str(tmp / "cache"), "--quiet", "--cpu", "--set", "train.precision=fp32", "--set", "train.threads=1",
                      "--set", "train.epochs=3", "--set", "train.steps_per_epoch=15"])
    return out, tmp


def test_predictions_for_rows_without_a_target_match_evaluate(run, tmp_path):
    out, tmp = run
    test = load_task("synthetic_pair", cache_dir=tmp / "cache", quiet=True).splits["test"]
    test.remove_columns("label").to_parquet(str(tmp_path / "rows.parquet"))
    path = predict.main(["--checkpoint", str(out), "--input", str(tmp_path / "rows.parquet"), "--output",
                         str(tmp_path / "pred.csv"), "--quiet", "--cpu"])
    table = datasets.Dataset.from_csv(str(path))
    assert len(table) == len(test) and table["row"] == list(range(len(test)))
    probs = np.array([table[f"probability_{c}"] for c in ("0", "1", "2")]).T
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert table["prediction"] == probs.argmax(axis=1).tolist()
    evaluate.main(["--checkpoint", str(out), "--quiet", "--no-robustness", "--no-baselines", "--cache-dir", str(tmp / "cache")])
    accuracy = json.loads((out / "eval" / "metrics.json").read_text())["synthetic_pair"]["accuracy"]
    assert abs(np.mean(np.array(table["prediction"]) == np.array(test["label"])) - accuracy) < 1e-9


def test_parquet_output_and_clear_errors(run, tmp_path):
    out, tmp = run
    test = load_task("synthetic_pair", cache_dir=tmp / "cache", quiet=True).splits["test"]
    datasets.DatasetDict({"test": test}).save_to_disk(str(tmp_path / "dd"))
    path = predict.main(["--checkpoint", str(out), "--input", str(tmp_path / "dd"), "--output", str(tmp_path / "p.parquet"), "--quiet"])
    assert len(datasets.Dataset.from_parquet(str(path))) == len(test)
    test.remove_columns("syn_b").to_parquet(str(tmp_path / "short.parquet"))
    with pytest.raises(ValueError, match=r"lacks the modality column\(s\) \['syn_b'\]"):
        predict.main(["--checkpoint", str(out), "--input", str(tmp_path / "short.parquet"), "--output", str(tmp_path / "x.csv")])
    with pytest.raises(ValueError, match=r"--output .*\.csv or \.parquet"):
        predict.main(["--checkpoint", str(out), "--input", str(tmp_path / "short.parquet"), "--output", str(tmp_path / "x.txt")])
    with pytest.raises(ValueError, match="--task 'nope'"):
        predict.main(["--checkpoint", str(out), "--input", str(tmp_path / "dd"), "--output", str(tmp_path / "x.csv"), "--task", "nope"])
    with pytest.raises(ValueError, match="no split 'train'"):
        predict.main(["--checkpoint", str(out), "--input", str(tmp_path / "dd"), "--output", str(tmp_path / "x.csv"), "--split", "train"])


def test_evaluate_writes_a_model_card(run):
    out, tmp = run
    evaluate.main(["--checkpoint", str(out), "--quiet", "--no-robustness", "--cache-dir", str(tmp / "cache")])
    card = (out / "README.md").read_text()
    metrics = json.loads((out / "eval" / "metrics.json").read_text())["synthetic_pair"]
    assert "Training: finished 3 epochs" in card
    assert "| synthetic_pair | classification | 3 |" in card and "python train.py --preset tiny --tasks synthetic_pair --seed 0" in card
    assert f"| synthetic_pair | accuracy | {metrics['accuracy']:.4f} | {metrics['baseline_best']:.4f}" in card


def test_the_python_api_returns_what_the_command_writes(run, tmp_path):
    from highmmt import HighMMT

    out, tmp = run
    test = load_task("synthetic_pair", cache_dir=tmp / "cache", quiet=True).splits["test"]
    table = predict.predict_rows(HighMMT.from_pretrained(out), test.remove_columns("label"), predict.checkpoint_task(out, None))
    test.save_to_disk(str(tmp_path / "in"))
    path = predict.main(["--checkpoint", str(out), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "p.parquet"), "--quiet"])
    written = datasets.Dataset.from_parquet(str(path))
    assert written["prediction"] == table["prediction"]
    np.testing.assert_allclose(written["probability_0"], table["probability_0"], atol=1e-6)


def test_several_checkpoints_predict_with_the_mean_of_their_probabilities(run, tmp_path):
    out, tmp = run
    other = train.main(["--preset", "tiny", "--tasks", "synthetic_pair", "--output-dir", str(tmp_path / "run1"), "--cache-dir",
                        str(tmp / "cache"), "--quiet", "--cpu", "--seed", "1", "--set", "train.precision=fp32", "--set",
                        "train.threads=1", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=5"])
    test = load_task("synthetic_pair", cache_dir=tmp / "cache", quiet=True).splits["test"]
    test.save_to_disk(str(tmp_path / "in"))
    read = lambda ckpt, name: datasets.Dataset.from_parquet(str(predict.main([  # noqa: E731
        "--checkpoint", ckpt, "--input", str(tmp_path / "in"), "--output", str(tmp_path / name), "--quiet"])))
    alone = [read(str(c), f"p{i}.parquet") for i, c in enumerate((out, other))]
    both = read(f"{out},{other}", "both.parquet")
    probs = lambda t: np.array([t[f"probability_{c}"] for c in ("0", "1", "2")]).T  # noqa: E731
    np.testing.assert_allclose(probs(both), (probs(alone[0]) + probs(alone[1])) / 2, atol=1e-5)
    assert not np.allclose(probs(alone[0]), probs(alone[1]), atol=1e-3)  # two different members, not one twice
    assert both["prediction"] == probs(both).argmax(axis=1).tolist()
    with pytest.raises(ValueError, match="listed twice"):
        read(f"{out},{out}", "x.parquet")
