"""experiments.ensemble: the members' probabilities averaged, each member scored as evaluate.py scores it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit, softmax

from experiments.ensemble import member_folders
from tasks.loader import average_outputs, score
from tasks.base import TaskSpec


def test_average_outputs_means_the_probabilities_not_the_logits() -> None:
    a = np.array([[4.0, 0.0], [0.0, 1.0]])
    b = np.array([[-1.0, 0.0], [0.0, 3.0]])
    got = softmax(average_outputs([a, b], "classification"), axis=1)
    np.testing.assert_allclose(got, (softmax(a, axis=1) + softmax(b, axis=1)) / 2, atol=1e-9)
    # row 0: logits average to (1.5, 0) -> class 0 either way, but the probabilities are not the logits' softmax
    assert not np.allclose(got[0], softmax((a[0] + b[0]) / 2))
    np.testing.assert_allclose(expit(average_outputs([a, b], "multilabel")), (expit(a) + expit(b)) / 2, atol=1e-6)
    np.testing.assert_allclose(average_outputs([a, b], "regression"), (a + b) / 2)


def test_an_ensemble_of_one_prediction_repeated_scores_as_that_prediction() -> None:
    rng = np.random.default_rng(0)
    out, target = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    spec = TaskSpec(name="t", modalities={"a": "timeseries"}, target="y", task_type="classification", num_classes=3,
                    metric="accuracy", extra_metrics=("f1",))
    assert score(spec, average_outputs([out, out, out], "classification"), target) == pytest.approx(score(spec, out, target))


def test_two_members_that_err_on_different_rows_are_right_together() -> None:
    # each member is confidently right on its half and mildly wrong on the other: the mean is right everywhere
    target = np.array([0, 0, 1, 1])
    a = np.array([[5.0, 0.0], [5.0, 0.0], [0.5, 0.0], [0.5, 0.0]])  # right, right, wrong, wrong
    b = np.array([[0.0, 0.5], [0.0, 0.5], [0.0, 5.0], [0.0, 5.0]])  # wrong, wrong, right, right
    pred = average_outputs([a, b], "classification").argmax(axis=1)
    assert (a.argmax(1) == target).mean() == 0.5 and (b.argmax(1) == target).mean() == 0.5
    assert (pred == target).all()


def test_average_outputs_refuses_members_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        average_outputs([np.zeros((3, 2)), np.zeros((3, 4))], "classification")
    with pytest.raises(ValueError, match="unknown task type"):
        average_outputs([np.zeros((3, 2))], "ranking")


def test_member_folders_from_a_list_or_a_seed_pattern(tmp_path: Path) -> None:
    assert member_folders("a,b", "") == [Path("a"), Path("b")]
    assert member_folders("r/seed{seed}/m", "0,2") == [Path("r/seed0/m"), Path("r/seed2/m")]
    with pytest.raises(ValueError, match="--seeds"):
        member_folders("r/seed{seed}", "")
    with pytest.raises(ValueError, match="pattern"):
        member_folders("a,b", "0,1")


def test_ensemble_of_trained_runs_rescores_each_member_as_evaluate_does(tiny_run, tmp_path: Path) -> None:
    import datasets

    import evaluate
    import predict
    from experiments import compare_runs, ensemble
    from tasks.cache import load_task

    flags = ("--set", "train.epochs=2", "--set", "train.steps_per_epoch=3", "--set", "train.select=task",
             "--set", "train.select_min_rows=1", "--set", "train.threads=1")
    runs = [tiny_run(f"s{seed}", "--seed", str(seed), *flags) for seed in (0, 1)]
    for run in runs:
        evaluate.main(["--checkpoint", str(run), "--no-robustness", "--no-baselines", "--quiet", "--cache-dir",
                       str(tmp_path / "cache")])
    out = tmp_path / "ens"
    result = ensemble.main(["--members", ",".join(map(str, runs)), "--output-dir", str(out), "--cache-dir",
                            str(tmp_path / "cache")])
    assert set(result["tasks"]) == {"synthetic_pair", "synthetic_single"}
    for entry in result["tasks"].values():
        assert [m["matches_evaluate"] for m in entry["members"]] == [True, True]  # same weights, same rows, same score
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["synthetic_single"]["accuracy"] == result["tasks"]["synthetic_single"]["ensemble"]["accuracy"]
    # the same ensemble by another path: predict.py's averaged predictions on the test rows
    test = load_task("synthetic_single", cache_dir=tmp_path / "cache", quiet=True).splits["test"]
    test.save_to_disk(str(tmp_path / "rows"))
    pred = predict.main(["--checkpoint", ",".join(map(str, runs)), "--task", "synthetic_single", "--input",
                         str(tmp_path / "rows"), "--output", str(tmp_path / "p.csv"), "--quiet"])
    predicted = np.array(datasets.Dataset.from_csv(str(pred))["prediction"])
    assert np.mean(predicted == np.array(test["label"])) == pytest.approx(metrics["synthetic_single"]["accuracy"])
    # scored once: a second call reads it back; a member trained again is scored again
    (out / "eval" / "metrics.json").unlink()
    ensemble.main(["--members", ",".join(map(str, runs)), "--output-dir", str(out)])
    assert not (out / "eval" / "metrics.json").exists()
    (runs[1] / "DONE").write_text((runs[1] / "DONE").read_text() + " again")
    ensemble.main(["--members", ",".join(map(str, runs)), "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert (out / "eval" / "metrics.json").is_file()
    # an ensemble folder reads like an evaluated run
    (tmp_path / "e0").symlink_to(out)
    rows = compare_runs.main(["--tasks", "synthetic_single", "--seeds", "0", "--a", str(tmp_path / "e{seed}"),
                              "--b", str(runs[0])])
    assert rows and rows[0][0] == "synthetic_single"
    with pytest.raises(ValueError, match="listed twice"):
        ensemble.main(["--members", f"{runs[0]},{runs[0]}", "--output-dir", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="two or more"):
        ensemble.main(["--members", str(runs[0]), "--output-dir", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="no task"):
        ensemble.main(["--members", ",".join(map(str, runs)), "--tasks", "nope", "--output-dir", str(tmp_path / "x")])


def test_groups_and_the_table_judge_ensembles_against_their_members_alone(tmp_path: Path) -> None:
    from experiments.ensemble import groups, table

    members = [tmp_path / f"seed{s}" for s in range(4)]
    assert groups(members, 2) == [members[:2], members[2:]] and groups(members, 0) == [members]
    with pytest.raises(ValueError, match="evenly"):
        groups(members, 3)

    def result(ens: float, alone: tuple[float, float]) -> dict:
        return {"tasks": {"utd_mhad": {"metric": "accuracy", "ensemble": {"accuracy": ens},
                                       "members": [{"metrics": {"accuracy": a}} for a in alone]}}}

    text = table([result(0.95, (0.90, 0.91)), result(0.96, (0.92, 0.90))], groups(members, 2))
    row = next(line for line in text.splitlines() if line.startswith("| utd_mhad"))
    assert "0.955 ± 0.007 (0.950, 0.960)" in row and "0.907 ± 0.010" in row and "+0.047 (gain)" in row
    assert row.endswith("| 0.960 | no (-0.005) |")  # the goal for UTD-MHAD
    assert "| **mean (1)** |" in text and "2 ensemble(s) of 2 members" in text
    lower = {"tasks": {"r": {"metric": "mse", "ensemble": {"mse": 1.0}, "members": [{"metrics": {"mse": 2.0}}] * 2}}}
    text = table([lower, lower], groups(members, 2))
    assert "-1.000 (gain)" in text and "**mean" not in text  # lower is better; no mean over a lower-is-better metric
