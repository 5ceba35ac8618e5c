"""experiments/stats_mlp.py: trees and an MLP on baseline.py's own features, per modality and fused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.interference import shuffle_train_labels
from experiments import stats_mlp
from tasks.baselines import BaselineSettings
from tasks.cache import load_task

FAST = BaselineSettings(rf_trees=30)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_each_family_learns_the_planted_offset_and_not_shuffled_labels(cache):
    lt = load_task("synthetic_offset", cache_dir=cache, quiet=True)  # 3 classes told apart by a series' offset
    res = stats_mlp.run_task(lt, blocks=["stats"], seeds=[0, 1], alphas=[1.0], hidden=32, settings=FAST)
    entry = res["modalities"]["offset_x"]
    assert set(entry) >= {"rf", "gb", "mlp", "n_features"} and len(entry["mlp"]["test"]) == 2
    assert all(v >= 0.8 for fam in ("rf", "gb", "mlp") for v in entry[fam]["test"]), entry
    assert "late_fusion" not in res  # one modality
    noise = stats_mlp.run_task(shuffle_train_labels(lt, seed=3), blocks=["stats"], seeds=[0], alphas=[1.0], hidden=32,
                               families=["mlp"], settings=FAST)
    assert max(noise["modalities"]["offset_x"]["mlp"]["test"]) < 0.6, noise  # chance is 1/3


def test_a_multimodal_task_gets_each_familys_late_fusion_and_the_cli_writes_json(cache, tmp_path):
    out = tmp_path / "pair.json"
    results = stats_mlp.main(["--tasks", "synthetic_pair", "--seeds", "0", "--alphas", "1.0", "--hidden", "16", "--rf-trees", "30",
                              "--cache-dir", str(cache), "--output", str(out)])
    (res,) = results
    assert set(res["modalities"]) == {"syn_a", "syn_b"}
    assert set(res["late_fusion"]) == {"rf", "gb", "mlp"}
    assert json.loads(out.read_text())["results"][0]["task"] == "synthetic_pair"
    assert "| synthetic_pair | late fusion |" in stats_mlp.markdown(results)
    with pytest.raises(ValueError, match="classifiers"):
        stats_mlp.run_task(type("LT", (), {"spec": type("S", (), {"task_type": "regression", "name": "r"})()})(),
                           blocks=["stats"], seeds=[0], alphas=[1.0], hidden=8)
