"""experiments/robot_cv.py: the fold data sets the model trains on are the baselines' folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import robot_cv
from tasks.baselines import BaselineSettings, extract_features, plans, protocol
from tasks.cache import load_task
from tasks.robot_failures import CLASS_NAMES

ROOT = Path(__file__).resolve().parents[1]


def write_lp(root: Path, lp: int, counts: list[int]) -> None:
    """A tiny synthetic ``lp<lp>.data`` in the publisher's format (label line, 15 rows of 6 integers)."""
    rng = np.random.default_rng(lp)
    order = [name for name, n in zip(CLASS_NAMES[lp], counts) for _ in range(n)]
    rng.shuffle(order)
    text = []
    for name in order:
        text += [name] + ["\t" + "\t".join(str(v) for v in row) for row in rng.integers(-3000, 3000, size=(15, 6))] + ["", ""]
    (root / "robot_failures").mkdir(parents=True, exist_ok=True)
    (root / f"robot_failures/lp{lp}.data").write_text("\n".join(text))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    tmp = tmp_path_factory.mktemp("robot_cv")
    write_lp(tmp / "data", 1, [12, 9, 7, 6])
    write_lp(tmp / "data", 3, [3, 10, 8, 6])  # 3 rows of the rarest class: 3 folds, as LP3
    args = ["--tasks", "robot_failures_lp1,robot_failures_lp3", "--data-root", str(tmp / "data"),
            "--cache-dir", str(tmp / "cache"), "--output-dir", str(tmp / "out"), "--no-train", "--quiet"]
    robot_cv.main(args)
    robot_cv.main(args)  # a second call keeps the folds written by the first
    loaded = {t: load_task(t, data_root=tmp / "data", cache_dir=tmp / "cache", quiet=True)
              for t in ("robot_failures_lp1", "robot_failures_lp3")}
    return tmp / "out", json.loads((tmp / "out" / "folds.json").read_text()), loaded


def test_folds_are_the_baselines_folds_and_partition_each_repeat(study: tuple[Path, dict, dict]) -> None:
    out, record, loaded = study
    settings = BaselineSettings()
    for task, lt in loaded.items():
        feats = extract_features(lt)  # the baselines' own pooling of the rows
        proto = protocol(len(lt.splits["test"]), settings)
        expected = plans(feats, proto, settings)
        rec = record[task]
        k = rec["folds"]
        assert k == (3 if task.endswith("lp3") else 5) and rec["repeats"] == 3 and len(rec["plans"]) == 3 * k
        y = feats.targets
        for i, (plan, want) in enumerate(zip(rec["plans"], expected)):
            assert (plan["repeat"], plan["fold"]) == divmod(i, k)
            assert plan["test"] == want.test.tolist() and plan["validation"] == want.val.tolist()
            assert plan["train"] == want.inner.tolist()
            tr, va, te = (set(plan[s]) for s in ("train", "validation", "test"))
            assert not (tr & va or tr & te or va & te), "a row in two parts of one fold"
            assert tr | va | te == set(range(len(y)))
            # class proportions: each part within one row of its class share
            counts = np.bincount(y, minlength=lt.spec.num_classes)
            fold_test = np.bincount(y[plan["test"]], minlength=len(counts))
            assert np.all(np.abs(fold_test - counts / k) <= 1), (task, i, fold_test, counts)
            rest = np.bincount(y[plan["train"] + plan["validation"]], minlength=len(counts))
            val = np.bincount(y[plan["validation"]], minlength=len(counts))
            assert np.all(np.abs(val - 0.2 * rest) <= 1), (task, i, val, rest)
        for r in range(3):
            tests = np.concatenate([p["test"] for p in rec["plans"] if p["repeat"] == r])
            assert sorted(tests.tolist()) == list(range(len(y))), "every row in exactly one test fold per repeat"
        assert rec["plans"][0]["test"] != rec["plans"][k]["test"], "repeats reshuffle"


def test_fold_specs_load_with_the_builtin_tasks_rows_and_options(study: tuple[Path, dict, dict]) -> None:
    out, record, loaded = study
    for task, lt in loaded.items():
        pool = np.concatenate([np.asarray(lt.splits[s].with_format("numpy")["force_torque"]) for s in ("train", "validation", "test")])
        labels = np.concatenate([np.asarray(lt.splits[s].with_format("numpy")["label"]) for s in ("train", "validation", "test")])
        for plan in record[task]["plans"]:
            spec_file = out / "folds" / f"r{plan['repeat']}_f{plan['fold']}" / f"{task}.json"
            fold = load_task(spec_file, quiet=True)
            assert fold.spec.name == task and dict(fold.spec.modalities) == dict(lt.spec.modalities)
            assert fold.spec.modality_options["force_torque"]["channels"] == 6
            assert fold.spec.num_classes == lt.spec.num_classes and list(fold.spec.class_names) == list(lt.spec.class_names)
            for split in ("train", "validation", "test"):
                ds = fold.splits[split].with_format("numpy")
                np.testing.assert_array_equal(np.asarray(ds["force_torque"]), pool[plan[split]])  # signed_log values
                np.testing.assert_array_equal(np.asarray(ds["label"]), labels[plan[split]])
    lp3_runs = sorted(p.name for p in (out / "folds").iterdir() if (p / "robot_failures_lp3.json").is_file())
    assert lp3_runs == [f"r{r}_f{f}" for r in range(3) for f in range(3)]  # LP3 sits out folds 3 and 4


def test_summary_pairs_each_run_with_the_reference_on_its_fold() -> None:
    results = {"tasks": ["t"], "runs": {
        "r0_f0": {"tasks": ["t"], "repeat": 0, "fold": 0, "metrics": {"t": {"accuracy": 0.9}}},
        "r0_f1": {"tasks": ["t"], "repeat": 0, "fold": 1, "metrics": {"t": {"accuracy": 0.7}}}}}
    refs = {"t": {"metric": "accuracy", "protocol": {"folds": 2}, "best": {"name": "stats_rf"},
                  "baselines": {"stats_rf": {"scores": [0.8, 0.6, 0.5, 0.5]}}}}
    t = robot_cv.summarise(results, refs)["t"]
    assert t["reference_scores"] == [0.8, 0.6] and t["model_scores"] == [0.9, 0.7]
    assert t["compare"]["difference"] == pytest.approx(0.1) and t["compare"]["verdict"] == "no difference"
    assert t["paired_difference"]["mean"] == pytest.approx(0.1)
