"""Simple baselines (tasks/features.py, tasks/baselines.py, baseline.py) and evaluate.py's margin."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

import baseline
import evaluate
import train
from tasks import baselines as bl
from tasks.base import TaskSpec
from tasks.cache import LoadedTask, load_task
from tasks.features import STAT_NAMES, featurize, fit_params, mfcc, resample_series, series_stats

FAST = ["--quiet", "--models", "lr,rf", "--rf-trees", "30"]
WORDS = "the a of film plot actor scene story music and it was very quite rather".split()


# ----------------------------------------------------------------------------------------------
# tiny tasks in the real formats


def _text_rows(n: int, rng: np.random.Generator, *, shuffled: bool = False) -> dict[str, list]:
    y = rng.integers(0, 2, n)
    cue = {0: ["awful", "boring", "dull"], 1: ["great", "wonderful", "moving"]}
    text = [" ".join([*rng.choice(WORDS, 6), rng.choice(cue[int(c)]), *rng.choice(WORDS, 4)]) for c in y]
    return {"review": text, "label": (rng.permutation(y) if shuffled else y).tolist()}


def _series_rows(n: int, rng: np.random.Generator) -> dict[str, list]:
    y = rng.integers(0, 3, n)
    return {"imu": [(rng.standard_normal((int(rng.integers(8, 15)), 2)) + c).astype(np.float32) for c in y], "label": y.tolist()}


def _tabular_rows(n: int, rng: np.random.Generator) -> dict[str, list]:
    y = rng.integers(0, 2, n)
    rows = []
    for c in y:
        numeric = [float(rng.normal(2.0 * c - 1.0, 0.5)), float(rng.normal()), float("nan") if rng.random() < 0.3 else float(rng.normal())]
        rows.append({"numeric": numeric, "categorical": [int(rng.integers(-1, 3))]})
    return {"patient": rows, "label": y.tolist()}


def _write_task(folder: Path, name: str, make, kind: str, column: str, *, sizes=(160, 40, 120), num_classes: int = 2,
                **rows_kw) -> Path:
    rng = np.random.default_rng(0)
    parts = {split: datasets.Dataset.from_dict(make(n, rng, **rows_kw)) for split, n in zip(("train", "validation", "test"), sizes)}
    datasets.DatasetDict(parts).save_to_disk(str(folder / name))
    spec = {"name": name, "path": name, "modalities": {column: kind}, "target": "label", "task_type": "classification",
            "num_classes": num_classes, "metric": "accuracy"}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _loaded(name: str, columns: dict, kinds: dict[str, str], *, task_type: str = "classification", num_classes: int = 2,
            metric: str = "accuracy", sizes=(60, 20, 40)) -> LoadedTask:
    """An in-memory task: ``columns`` maps a column to ``fn(n, rng) -> list``; ``label`` is the target."""
    rng = np.random.default_rng(1)
    parts = {}
    for split, n in zip(("train", "validation", "test"), sizes):
        parts[split] = datasets.Dataset.from_dict({c: fn(n, rng) for c, fn in columns.items()})
    spec = TaskSpec(name=name, modalities=kinds, task_type=task_type, num_classes=num_classes, metric=metric)
    return LoadedTask(spec=spec, splits=datasets.DatasetDict(parts), source="spec")


# ----------------------------------------------------------------------------------------------
# features


def test_series_features_have_fixed_sizes_and_known_values():
    x = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    stats = series_stats(x).reshape(-1)
    per = stats[:-1].reshape(2, len(STAT_NAMES))
    named = dict(zip(STAT_NAMES, per[0]))
    assert named["mean"] == 1.5 and named["min"] == 0 and named["max"] == 3 and named["last_minus_first"] == 3
    assert named["slope"] == pytest.approx(3.0) and named["mean_abs_step"] == 1.0 and per[1, 1] == 0.0  # std of a constant
    assert stats[-1] == pytest.approx(np.log1p(4))
    np.testing.assert_allclose(resample_series(x, 7)[:, 0], np.linspace(0, 3, 7))
    assert np.isnan(series_stats(np.zeros((0, 2)))[:-1]).all()
    samples = [np.random.default_rng(i).standard_normal((t, 3)).astype(np.float32) for i, t in enumerate((5, 9, 30))]
    params = fit_params("timeseries", samples)
    assert params["steps"] == 9  # the median length (at most 20)
    blocks = featurize("timeseries", samples, params)
    assert blocks["stats"].shape == (3, 3 * len(STAT_NAMES) + 1) and blocks["resampled"].shape == (3, 9 * 3)


def test_every_kind_featurizes_to_fixed_width():
    rng = np.random.default_rng(0)
    samples = {
        "pose": [rng.random((t, 4, 3), dtype=np.float32) for t in (3, 6)],
        "audio": [rng.uniform(-1, 1, s).astype(np.float32) for s in (800, 2400)],
        "video": [rng.integers(0, 255, (t, 20, 24, 1), dtype=np.uint8) for t in (2, 5)],
        "set": [rng.random((n, 2), dtype=np.float32) for n in (1, 7)],
        "image": [rng.integers(0, 255, (h, 40, c), dtype=np.uint8) for h, c in ((64, 1), (60, 3))],
        "irregular_timeseries": [{"values": np.array([[1.0, 0.0], [3.0, 2.0]], np.float32),
                                  "observed": np.array([[True, False], [True, True]]),
                                  "times": np.array([0.5, 40.0], np.float32)}] * 2,
        "tabular": [{"numeric": np.array([1.0, 0.0], np.float32), "numeric_observed": np.array([True, False]),
                     "categorical": np.array([2])}] * 2,
        "text": ["a b", "c"],
    }
    for kind, s in samples.items():
        params = fit_params(kind, s, {"sample_rate": 8000} if kind == "audio" else None)
        blocks = featurize(kind, s, params)
        for name, b in blocks.items():
            assert len(b) == 2, (kind, name)
            if kind != "text" and name != "categorical":
                assert b.dtype == np.float32 and b.ndim == 2, (kind, name)
    assert fit_params("image", samples["image"]) == {"size": (32, 21), "channels": 1}  # longest side 32, aspect kept
    assert mfcc(np.sin(np.arange(8000) / 5.0), 8000).shape == (98, 13)  # 1 s: 25 ms frames every 10 ms
    irr = featurize("irregular_timeseries", samples["irregular_timeseries"], {"horizon": 48.0})
    stats = irr["stats"][0]
    assert stats[0] == 2 and stats[1] == 2.0 and stats[8] == 1 and stats[9] == 2.0  # channel 0: count, mean; channel 1
    tab = featurize("tabular", samples["tabular"], fit_params("tabular", samples["tabular"]))
    assert np.isnan(tab["numeric"][0, 1]) and tab["categorical"].tolist() == [[2], [2]]


# ----------------------------------------------------------------------------------------------
# the command, end to end on spec files


def test_baseline_command_text_series_tabular_end_to_end(tmp_path):
    specs = [
        _write_task(tmp_path, "reviews", _text_rows, "text", "review"),
        _write_task(tmp_path, "imu", _series_rows, "timeseries", "imu", num_classes=3),
        _write_task(tmp_path, "patients", _tabular_rows, "tabular", "patient"),
    ]
    out = tmp_path / "bl"
    entries = baseline.main(["--tasks", ",".join(map(str, specs)), "--output-dir", str(out), *FAST])
    saved = json.loads((out / "baselines.json").read_text())["tasks"]
    assert set(saved) == set(entries) == {"reviews", "imu", "patients"}
    assert set(saved["reviews"]["baselines"]) == {"tfidf_lr"}  # no forests on TF-IDF
    assert "tfidf_rf" in saved["reviews"]["skipped"]
    assert set(saved["imu"]["baselines"]) == {f"{s}_{m}" for s in ("stats", "resampled", "stats+resampled") for m in ("lr", "rf")}
    assert set(saved["patients"]["baselines"]) == {"raw_lr", "raw_rf"}
    for task, e in saved.items():
        assert e["protocol"] == {"kind": "split"} and e["rows"]["test"] == 120
        for b in e["baselines"].values():
            assert b["metric"] == "accuracy" and 0 <= b["value"] <= 1 and b["fit_seconds"] >= 0 and "validation" in b
        assert e["best"]["value"] >= 0.9, (task, e["best"])  # learnable: well above chance (1/2, 1/3)
    assert saved["reviews"]["baselines"]["tfidf_lr"]["params"]["C"] in bl.TEXT_LR_GRID
    table = (out / "baselines.md").read_text()
    assert "| reviews | split | tfidf_lr | accuracy |" in table and "raw_rf" in table


def test_shuffled_labels_stay_near_chance(tmp_path):
    spec = _write_task(tmp_path, "noise", _text_rows, "text", "review", sizes=(300, 60, 300), shuffled=True)
    entry = baseline.main(["--tasks", str(spec), "--output-dir", str(tmp_path / "bl"), *FAST])["noise"]
    assert abs(entry["baselines"]["tfidf_lr"]["value"] - 0.5) < 0.1


def test_kfold_gives_folds_times_repeats_scores(tmp_path):
    spec = _write_task(tmp_path, "tiny", _series_rows, "timeseries", "imu", sizes=(40, 10, 20), num_classes=3)
    entry = baseline.main(["--tasks", str(spec), "--output-dir", str(tmp_path / "bl"), "--cv-repeats", "2",
                           "--feature-sets", "all", *FAST])["tiny"]
    assert entry["protocol"] == {"kind": "cv", "folds": 5, "repeats": 2, "pooled_rows": 70}  # test 20 < 100 rows
    b = entry["baselines"]["stats+resampled_lr"]
    assert len(b["scores"]) == 10 and len(b["params"]["C"]) == 10
    assert b["value"] == pytest.approx(np.mean(b["scores"])) and b["std"] == pytest.approx(np.std(b["scores"], ddof=1))
    assert b["value"] > 0.8
    # --cv none keeps the task's own split whatever its size
    again = baseline.main(["--tasks", str(spec), "--output-dir", str(tmp_path / "bl"), "--cv", "none", "--feature-sets", "all", *FAST])
    assert again["tiny"]["protocol"] == {"kind": "split"}
    # --no-cv-refit: each fold's model stays as fitted on the inner 80% (the rows a neural model trains on): other
    # scores; plans fit on exactly those rows; the default settings' cache key does not move
    inner = baseline.main(["--tasks", str(spec), "--output-dir", str(tmp_path / "bl_inner"), "--cv-repeats", "2",
                           "--feature-sets", "all", "--no-cv-refit", *FAST])["tiny"]
    assert inner["settings"]["cv_refit"] is False and entry["settings"]["cv_refit"] is True
    vals = inner["baselines"]["stats+resampled_lr"]
    assert len(vals["scores"]) == 10 and vals["scores"] != b["scores"] and vals["value"] > 0.7
    assert bl.BaselineSettings().key() != bl.BaselineSettings(cv_refit=False).key()
    assert bl.BaselineSettings().key() == bl.BaselineSettings(jobs=4).key()
    lt = load_task(str(spec), cache_dir=tmp_path / "cache", quiet=True)
    feats = bl.extract_features(lt)
    refit_plans = bl.plans(feats, {"kind": "cv", "folds": 5, "repeats": 1}, bl.BaselineSettings())
    inner_plans = bl.plans(feats, {"kind": "cv", "folds": 5, "repeats": 1}, bl.BaselineSettings(cv_refit=False))
    for a, c in zip(refit_plans, inner_plans):
        assert c.inner is None and np.array_equal(c.fit, a.inner) and np.array_equal(c.val, a.val) and np.array_equal(c.test, a.test)


def test_cv_folds_are_stratified_and_capped_by_the_rarest_class():
    spec = TaskSpec(name="t", modalities={"x": "timeseries"}, task_type="classification", num_classes=3, metric="accuracy")
    y = np.array([0] * 20 + [1] * 9 + [2] * 3)  # like robot failures LP3: 3 rows of the rarest class
    folds, k = bl.cv_folds(y, spec, 5, 4, seed=0)
    assert k == 3 and len(folds) == 12
    for r in range(4):
        tested = np.concatenate([te for _, te in folds[3 * r: 3 * r + 3]])
        assert sorted(tested) == list(range(len(y)))  # each row tested once per repeat
    assert all((y[te] == 2).sum() == 1 for _, te in folds)
    assert not np.array_equal(folds[0][1], folds[3][1])  # repeats reshuffle


def test_a_one_class_training_part_predicts_that_class():
    spec = TaskSpec(name="t", modalities={"x": "timeseries"}, task_type="classification", num_classes=3, metric="accuracy")
    fitted, chosen, val = bl.fit_select("lr", spec, bl.BaselineSettings(), np.zeros((4, 2)), np.full(4, 2), np.zeros((3, 2)),
                                        np.array([2, 1, 2]), text=False)
    assert chosen == {"one_class": True} and val == pytest.approx(2 / 3)
    assert bl.model_outputs(fitted, np.zeros((2, 2)), spec).argmax(1).tolist() == [2, 2]


def test_regression_multilabel_and_multimodal_tasks():
    rng = np.random.default_rng(3)
    xs = {}

    def series(n, r):
        xs[n] = r.standard_normal((n, 6, 2)).astype(np.float32)
        return list(xs[n])

    reg = _loaded("reg", {"s": series, "label": lambda n, r: (xs[n][:, :, 0].mean(1) * 3).tolist()}, {"s": "timeseries"},
                  task_type="regression", num_classes=1, metric="mse")
    e = bl.run_task(reg, bl.BaselineSettings(models=("lr", "gb"), feature_sets="all", cv="none"))
    assert e["baselines"]["stats+resampled_lr"]["value"] < 0.05 and e["higher_is_better"] is False
    assert e["best"]["name"] == "stats+resampled_lr"
    tags = lambda n, r: (r.random((n, 3)) < 0.5).astype(int).tolist()  # noqa: E731
    multi = _loaded("multi", {"s": series, "label": tags}, {"s": "timeseries"}, task_type="multilabel", num_classes=3,
                    metric="auroc")
    e = bl.run_task(multi, bl.BaselineSettings(models=("lr", "rf", "gb"), feature_sets="all", cv="none", rf_trees=10))
    assert set(e["baselines"]) == {"stats+resampled_lr", "stats+resampled_rf"} and "stats+resampled_gb" in e["skipped"]
    both = _loaded("both", {"s": series, "t": lambda n, r: [f"w{int(v > 0)}" for v in xs[n][:, 0, 0]],
                            "label": lambda n, r: (xs[n][:, 0, 0] > 0).astype(int).tolist()},
                   {"s": "timeseries", "t": "text"})
    e = bl.run_task(both, bl.BaselineSettings(models=("lr", "rf"), cv="none", per_modality=True, rf_trees=10))
    assert set(e["feature_sets"]) == {"concat", "late_fusion", "s", "t"} and {"concat_rf", "late_fusion_rf"} <= set(e["skipped"])
    assert e["baselines"]["t_lr"]["value"] == 1.0 and e["baselines"]["concat_lr"]["value"] >= 0.9
    assert bl.margin(0.8, 0.7, "accuracy") == pytest.approx(0.1) and bl.margin(0.8, 0.7, "mse") == pytest.approx(-0.1)


def test_late_fusion_averages_the_modalities_own_models():
    """Two noisy views of one label: ``late_fusion_lr`` is the mean of the log-probabilities of one logistic
    regression per modality (each with its own C), and it beats each view alone."""
    rng = np.random.default_rng(5)
    labels = {}

    def view(n, r):
        if n not in labels:
            labels[n] = r.integers(0, 2, n)
        sign = (2 * labels[n] - 1)[:, None, None] * np.array([0.4, 0.0])
        return list((sign + r.standard_normal((n, 6, 2))).astype(np.float32))

    task = _loaded("views", {"s": view, "u": view, "label": lambda n, r: labels[n].tolist()},
                   {"s": "timeseries", "u": "timeseries"}, sizes=(200, 100, 200))
    settings = bl.BaselineSettings(models=("lr",), cv="none", per_modality=True)
    e = bl.run_task(task, settings)
    assert set(e["baselines"]["late_fusion_lr"]["params"]) == {"s", "u"}
    feats = bl.extract_features(task)
    plan, = bl.plans(feats, {"kind": "split"}, settings)
    outputs = []
    for m in ("s", "u"):
        design = bl.Design(feats, bl.feature_sets(task.spec, settings)[m]).fit(plan.fit)
        X = {part: design.transform(rows) for part, rows in (("fit", plan.fit), ("val", plan.val), ("test", plan.test))}
        fitted, _, _ = bl.fit_plan("lr", task.spec, settings, X, feats.targets, plan, text=False)
        outputs.append(bl.model_outputs(fitted, X["test"], task.spec))
    expected = np.mean(np.argmax(np.mean(outputs, axis=0), axis=1) == feats.targets[plan.test])
    value = e["baselines"]["late_fusion_lr"]["value"]
    assert value == pytest.approx(expected)
    assert value > max(e["baselines"]["s_lr"]["value"], e["baselines"]["u_lr"]["value"]), e["baselines"]


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"subset of \['lr', 'rf', 'gb'\], got \['svm'\]"):
        baseline.main(["--tasks", "synthetic_single", "--output-dir", str(tmp_path), "--models", "svm", "--quiet"])
    with pytest.raises(ValueError, match="cv must be 'auto', 'none' or a fold count"):
        bl.BaselineSettings(cv="1")
    with pytest.raises(FileNotFoundError, match="baselines.json"):
        bl.load_results(tmp_path / "nothing")


# ----------------------------------------------------------------------------------------------
# evaluate.py: the margin


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "run"
    train.main(["--preset", "tiny", "--tasks", "synthetic_single", "--output-dir", str(out), "--cache-dir", str(tmp / "cache"),
                "--quiet", "--set", "train.steps_per_epoch=3", "--set", "train.epochs=1"])
    return out, tmp / "cache"


def test_evaluate_reports_the_margin_over_cached_baselines(trained, tmp_path, monkeypatch):
    out, cache = trained
    args = ["--checkpoint", str(out), "--cache-dir", str(cache), "--no-robustness", "--quiet"]
    m = evaluate.main([*args, "--output-dir", str(tmp_path / "e1")])["synthetic_single"]
    assert m["baseline_name"] in {"stats+resampled_lr", "stats+resampled_rf"}
    assert m["margin"] == pytest.approx(m["accuracy"] - m["baseline_best"]) and m["baseline_best"] > 0.8
    used = json.loads((tmp_path / "e1" / "baselines.json").read_text())["tasks"]["synthetic_single"]
    assert used["protocol"] == {"kind": "split"} and used["settings"]["rf_trees"] == 100
    assert "## Margin over the best simple baseline" in (tmp_path / "e1" / "results.md").read_text()
    assert list((cache / "baselines").glob("synthetic_single-*.json"))

    def no_recompute(*a, **k):
        raise AssertionError("the cached baselines should have been reused")

    monkeypatch.setattr(bl, "run_task", no_recompute)
    again = evaluate.main([*args, "--output-dir", str(tmp_path / "e2")])["synthetic_single"]
    assert again["baseline_best"] == m["baseline_best"]
    off = evaluate.main([*args, "--output-dir", str(tmp_path / "e3"), "--no-baselines"])["synthetic_single"]
    assert not set(evaluate.BASELINE_KEYS) & set(off) and not (tmp_path / "e3" / "baselines.json").exists()


def test_evaluate_reads_baseline_py_results(trained, tmp_path):
    out, cache = trained
    entries = baseline.main(["--tasks", "synthetic_single", "--output-dir", str(tmp_path / "bl"), "--cache-dir", str(cache),
                             "--cv", "none", *FAST])
    best = entries["synthetic_single"]["best"]
    args = ["--checkpoint", str(out), "--cache-dir", str(cache), "--no-robustness", "--quiet", "--baselines", str(tmp_path / "bl")]
    m = evaluate.main([*args, "--output-dir", str(tmp_path / "e")])["synthetic_single"]
    assert (m["baseline_name"], m["baseline_best"]) == (best["name"], best["value"])
    lt = load_task("synthetic_single", cache_dir=cache, quiet=True)
    assert entries["synthetic_single"]["fingerprint"] == bl.fingerprint(lt) == lt.path.name
    stale = json.loads((tmp_path / "bl" / "baselines.json").read_text())
    stale["tasks"]["synthetic_single"]["fingerprint"] = "synthetic_single-0000"
    (tmp_path / "bl" / "baselines.json").write_text(json.dumps(stale))
    with pytest.warns(UserWarning, match="computed on other data"):
        m = evaluate.main([*args, "--output-dir", str(tmp_path / "e2")])["synthetic_single"]
    assert "margin" not in m
