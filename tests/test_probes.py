"""experiments/probes.py: linear probes at the embedder tokens, encoder latents and head input of a run."""

from __future__ import annotations

import json

import evaluate
from experiments import probes


def test_probes_read_the_features_the_head_reads_and_find_the_label(tmp_path, tiny_run):
    out = tiny_run("run")
    results = probes.main(["--checkpoint", str(out), "--cache-dir", str(tmp_path / "cache"), "--doc", str(tmp_path / "page.md")])
    evaluate.main(["--checkpoint", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet", "--no-robustness", "--no-baselines"])
    scored = json.loads((out / "eval" / "metrics.json").read_text())
    for task, r in results["tasks"].items():
        assert abs(r["head"] - scored[task]["accuracy"]) < 1e-9  # the probe's pass is the model's own
        assert r["fused"]["features"] > 0 and r["rows"]["test"] > 0
    pair = results["tasks"]["synthetic_pair"]  # 3 classes, readable from either modality
    assert pair["tokens"]["test"] > 0.6, pair
    assert "<!-- probes:begin -->" in (tmp_path / "page.md").read_text()
    assert json.loads((out / "probes.json").read_text())["tasks"].keys() == results["tasks"].keys()
