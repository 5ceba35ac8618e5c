"""The sharing analyses (``analyze.py``, ``analysis/``) find what is planted in small synthetic tasks.

``synthetic_factor_slope`` and ``synthetic_factor_slope_b`` read the shared modality ``factors_x``
and need the same feature of it (the slope); ``synthetic_factor_offset`` reads the same modality
but needs another feature (the offset). Runs: tiny preset, fp32, one thread, fixed seeds; the
measured values are noted beside each assertion.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState

import analyze
import train
from _helpers import fast_isolated_training, fit  # noqa: F401  (a fixture, used through pytestmark)
from analysis.interference import InterferenceHook, restrict_override, shuffle_train_labels, train_command
from highmmt import HighMMT
from tasks.cache import load_task
from transference.finetune import part_of
from transference.hooks import TrainContext

SLOPE, SLOPE_B, OFFSET = "synthetic_factor_slope", "synthetic_factor_slope_b", "synthetic_factor_offset"
pytestmark = pytest.mark.usefixtures("fast_isolated_training")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def factor_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    AcceleratorState._reset_state(reset_partial_state=True)
    return fit(tmp_path_factory.mktemp("factor") / "run", cache, f"{SLOPE},{SLOPE_B},{OFFSET}", seed=0, epochs=3, steps=15)


def analyse(kind: str, run: Path, cache: Path, *extra: str) -> dict:
    result = analyze.main([kind, "--run", str(run), "--cache-dir", str(cache), "--quiet", *extra])
    out = run / "analysis"
    assert json.loads((out / f"{kind}.json").read_text())["tasks"] == result["tasks"]
    assert (out / f"{kind}.md").read_text().count("Cost:") == 1 and (out / f"{kind}.png").stat().st_size > 0
    return result


def test_tasks_needing_the_same_feature_overlap_in_involvement_beyond_chance(factor_run, cache):
    enc = analyse("involvement", factor_run, cache)["parts"]["encoders"]
    shares = enc["share_by_tasks"]
    assert len(shares) == 3 and abs(sum(shares) - 100.0) < 1e-6, shares
    # Chance: each task's involved neurons placed at random within each layer, same counts.
    assert enc["overlap"][SLOPE][SLOPE_B] >= enc["overlap_chance"][SLOPE][SLOPE_B] + 0.1, enc  # measured 0.85 vs 0.71 (0.80 vs 0.61 with linear stems, no summary)


def test_gradients_align_for_the_same_feature_and_oppose_for_another_one(factor_run, cache):
    """Same feature (slope, slope_b): positive cosine on the shared parameters. The offset task needs
    another feature of the same input, which the slope tasks must ignore and it must read: negative."""
    cos = analyse("conflict", factor_run, cache, "--batches", "16")["groups"]["all"]["mean"]
    assert cos[SLOPE][SLOPE_B] >= 0.1, cos  # measured +0.41
    assert cos[SLOPE][OFFSET] < -0.1 and cos[SLOPE_B][OFFSET] < -0.1, cos  # measured -0.54, -0.38 (-0.37, -0.43 with linear stems, no summary)
    from analysis import summary

    table = summary.main([f"shared={factor_run / 'analysis'}", "--groups", str(factor_run)])
    assert "| shared | encoders | 1 | 3 |" in table and "Gradient conflict" in table, table


# The offset class is the series' mean, which the summary token hands the head directly, and the
# convolutional stem lets each embedder solve more of its task alone: with linear patch embedders and no
# summary the tasks have to use the shared encoder, which is what this test is about.
_PLAIN = '{"summary": false, "stem": "linear"}'
NO_SUMMARY = f'train.modality_options={{"syn_a": {_PLAIN}, "syn_b": {_PLAIN}, "offset_x": {_PLAIN}}}'


def test_shuffled_labels_hurt_the_other_task_only_through_shared_parameters(tmp_path, cache):
    """synthetic_pair and synthetic_offset read different modalities: they share the encoder under
    sharing 'all' and nothing under 'none'. Without gradient clipping (a global norm would couple
    them) a task that shares nothing must be exactly unaffected."""
    opts = json.dumps({"synthetic_pair": {"size": 384, "noise": 0.5}, "synthetic_offset": {"size": 512}})
    change = {}
    for sharing, seeds in (("all", "0,1"), ("none", "0")):
        run = fit(tmp_path / sharing, cache, "synthetic_pair,synthetic_offset", "--set", f"train.task_options={opts}",
                  "--set", "train.grad_clip=0", "--set", NO_SUMMARY, "--set", f"model.sharing.encoder={sharing}", "--set", f"model.sharing.fusion={sharing}",
                  seed=0, epochs=1, steps=1)
        res = analyse("interference", run, cache, "--shuffle", "synthetic_offset", "--epochs", "3", "--steps-per-epoch", "15",
                      "--seeds", seeds)
        change[sharing] = res["change"]["synthetic_offset"]
    assert change["all"]["synthetic_offset"]["mean"] < -0.2, change  # the shuffled task itself: measured -0.34
    shared = change["all"]["synthetic_pair"]["per_seed"]
    assert max(shared) < 0 and np.mean(shared) <= -0.015, change  # measured -0.031, -0.021
    assert change["none"]["synthetic_pair"]["per_seed"] == [0.0], change


def test_shuffled_labels_are_a_permutation_and_train_only_freezes_the_other_parts(cache):
    lt = load_task("synthetic_pair", cache_dir=cache, quiet=True)
    shuffled = shuffle_train_labels(lt, seed=3)
    before, after = lt.splits["train"]["label"], shuffled.splits["train"]["label"]
    assert sorted(before) == sorted(after) and before != after
    assert np.array_equal(np.asarray(lt.splits["train"]["syn_a"][0]), np.asarray(shuffled.splits["train"]["syn_a"][0]))
    assert shuffled.splits["test"]["label"] == lt.splits["test"]["label"]
    run = train.load_preset("tiny")[0]
    model = HighMMT(train.model_config(run.model, [lt.spec]))
    ctx = TrainContext(model=model, loaded={"synthetic_pair": lt}, run=run, device=torch.device("cpu"), seed=0, out=Path("."),
                       log=lambda msg: None)
    InterferenceHook("synthetic_pair", "fusion").setup(ctx, None)
    trainable = {part_of(n) for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fusion", "heads"}, trainable
    assert ctx.loaded["synthetic_pair"].splits["train"]["label"] == shuffle_train_labels(lt, seed=0).splits["train"]["label"]
    with pytest.raises(ValueError, match="not being trained"):
        InterferenceHook("nope", "").setup(ctx, None)


def test_a_task_subset_keeps_the_runs_overrides_restricted_to_its_tasks():
    cfg = {"tasks": {"a": {"modalities": {"x": "image", "y": "audio"}}, "b": {"modalities": {"z": "text"}},
                     "c": {"modalities": {"w": "set", "v": "set"}}}}
    enc = restrict_override('model.sharing.encoder={"g1": ["x", "w"], "g2": ["v"], "g3": ["y", "z"]}', cfg, ["a", "b"])
    assert json.loads(enc.split("=", 1)[1]) == {"g1": ["x"], "g3": ["y", "z"]}
    fus = restrict_override('model.sharing.fusion={"f1": ["y|x"], "f2": ["v|w"]}', cfg, ["a", "b"])
    assert json.loads(fus.split("=", 1)[1]) == {"f1": ["y|x"]}
    assert json.loads(restrict_override('train.loss_weights={"a": 2, "c": 3}', cfg, ["a"]).split("=", 1)[1]) == {"a": 2}
    for key in ("train.task_min_fraction", "train.task_augment_time"):  # every per-task dict of the training config
        assert json.loads(restrict_override(f'{key}={{"a": 0.5, "c": 0.2}}', cfg, ["c"]).split("=", 1)[1]) == {"c": 0.2}
    from experiments.suite_results import for_tasks  # a suite call's overrides, fitted to each single-task run

    assert for_tasks(["--set", 'train.task_augment_time={"a": 0.2}', "--set", "train.epochs=5"], ["b"]) == [
        "--set", "train.task_augment_time={}", "--set", "train.epochs=5"]
    # given each task's modalities, a modality dict keeps the single-task run's modalities (else that run fails)
    mods = {"a": ["x", "y"], "b": ["z"]}
    argv = ["--set", 'train.modality_options={"x": {"motion_map": 32}, "z": {"channels": 2}}',
            "--set", 'model.sharing.encoder={"g1": ["x", "z"], "g2": ["y"]}']
    assert for_tasks(argv, ["b"], mods) == ["--set", 'train.modality_options={"z": {"channels": 2}}',
                                             "--set", 'model.sharing.encoder={"g1": ["z"]}']
    assert for_tasks(argv, ["b"]) == argv  # without the modalities: unchanged
    pairs = ["--set", 'model.sharing.fusion={"f": ["y|x"], "g": ["z|w"]}']
    assert for_tasks(pairs, ["a"], mods) == ["--set", 'model.sharing.fusion={"f": ["y|x"]}']  # task a's one pair
    from experiments.suite_results import names_modalities

    assert names_modalities(argv[1:2]) and not names_modalities(["model.sharing.encoder=none", "train.epochs=5"])
    assert restrict_override("train.epochs=5", cfg, ["a"]) == "train.epochs=5"
    # The runs rebuild the analysed run's model (sizes, embedder options), whatever the preset and defaults are today.
    cfg["model"] = {"modalities": {m: {"kind": "set", "options": {"channels": 2}} for m in "xyzwv"}, "dim": 48,
                    "encoder": {"cross_heads": 2, "gone_field": 1}, "removed": 3}
    argv = train_command({**cfg, "overrides": []}, Path("run"), ["a"], epochs=1, steps=2, train_only="", from_run=False,
                         data_root=None, cache_dir=None)
    pinned = next(a for a in argv if a.startswith("train.modality_options="))
    assert json.loads(pinned.split("=", 1)[1]) == {"x": {"channels": 2}, "y": {"channels": 2}}
    assert [a for a in argv if a.startswith("model.")] == ["model.dim=48", "model.encoder.cross_heads=2"], argv  # sizes pinned too
