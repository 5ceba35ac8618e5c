"""Prefix tuning (Frozen, Tsimpoukelli et al. 2021; ``train.finetune=prefix``): the model's prefix
extension point, the config rewiring, what trains, save/load, errors, and that a frozen model adapts
to a new modality through k prefix tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import fast_isolated_training, fit, killed_after_epoch  # noqa: F401  (a fixture, used through pytestmark)
from safetensors.torch import load_file
from test_transfer import inputs, tiny_config, trainable_names

import modalities  # noqa: F401  (registers the embedders)
import train
from highmmt import HighMMT, ModalityConfig
from highmmt.config import from_dict
from predict import checkpoint_task, predict_rows
from tasks.cache import load_task
from tasks.loader import predict, score
from transference import finetune
from transference.config import PrefixConfig, TrainConfig

pytestmark = pytest.mark.usefixtures("fast_isolated_training")
SEEDS = (0, 1, 2)


def prefixed(tokens: int = 3):
    """A tiny model whose modality c is read as ``tokens`` prefix tokens of host a; task single reads a."""
    cfg = tiny_config({"single": ["a"], "other": ["b"]})
    cfg.modalities["c"] = ModalityConfig("timeseries", {"channels": 4, "prefix": {"host": "a", "tokens": tokens}})
    return cfg


# ---- the model's extension point ----------------------------------------------------------------------
def test_the_encoder_reads_prefix_tokens_in_front_of_the_host_tokens():
    torch.manual_seed(0)
    model = HighMMT(prefixed(tokens=3)).eval()
    x = inputs("a", "c")
    with torch.no_grad():
        prefix = model.prefix_tokens("a", x)
        assert prefix.shape == (4, 3, 16)
        tokens, mask = model.embed("a", x["a"])
        expected = model.encoders["shared"](torch.cat([prefix, tokens], dim=1), torch.cat([torch.ones(4, 3, dtype=torch.bool), mask], dim=1))
        torch.testing.assert_close(model.encode_modality("a", x["a"], prefix=prefix), expected)
        # No host input: the k prefix tokens are the host's whole sequence.
        torch.testing.assert_close(model.encode_modality("a", None, prefix=prefix), model.encoders["shared"](prefix, torch.ones(4, 3, dtype=torch.bool)))
        # The prefix is read: the output moves with the prefix modality's input, and it alone is enough.
        host_only = model({"a": x["a"]}, "single")
        with_prefix = model(x, "single")
        other_prefix = model({"a": x["a"], "c": inputs("c", seed=5)["c"]}, "single")
        assert not torch.allclose(host_only, with_prefix) and not torch.allclose(with_prefix, other_prefix)
        assert model({"c": x["c"]}, "single").shape == (4, 3)
    assert "c" not in model.encoder_group and set(model.prefixes) == {"c"}
    assert model.parameter_counts()["embedders"]["c"] == sum(p.numel() for n, p in model.named_parameters() if n.split(".")[1] == "c")
    with pytest.raises(ValueError, match="task 'other' does not read modality 'c'"):
        model({"b": inputs("b")["b"], "c": x["c"]}, "other")


@pytest.mark.parametrize(
    "prefix, match",
    [
        ({"host": "z", "tokens": 2}, "prefix host 'z' must be another modality"),
        ({"host": "c", "tokens": 2}, "prefix host 'c' must be another modality"),
        ({"host": "a", "tokens": 0}, "prefix tokens must be an integer >= 1"),
        ({"host": "a"}, "option 'prefix' must be"),
    ],
)
def test_bad_prefix_options_in_the_model_config(prefix, match):
    cfg = prefixed()
    cfg.modalities["c"].options["prefix"] = prefix
    with pytest.raises(ValueError, match=match):
        HighMMT(cfg)


def test_a_task_may_not_list_a_prefix_modality():
    cfg = prefixed()
    cfg.tasks["single"].modalities = ["a", "c"]
    with pytest.raises(ValueError, match="lists prefix modality 'c'.*list 'a' instead"):
        HighMMT(cfg)


def test_a_prefixed_model_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = HighMMT(prefixed()).eval()
    model.save_pretrained(tmp_path)
    loaded = HighMMT.from_pretrained(tmp_path).eval()
    x = inputs("a", "c", seed=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, "single"), model(x, "single"), rtol=0, atol=0)


# ---- the config rewiring and what trains ----------------------------------------------------------------
def prefix_tuned(tmp_path: Path, pc: PrefixConfig, tasks: dict[str, list[str]] | None = None):
    """A checkpoint of task ``single`` (modality a), and a model for ``tasks`` prefix-tuned from it."""
    torch.manual_seed(0)
    pre = HighMMT(tiny_config({"single": ["a"]}))
    pre.save_pretrained(tmp_path / "ckpt")
    cfg, plan = finetune.prefix_model_config(tiny_config(tasks or {"new": ["a", "c"]}), pre.config, pc)
    model = HighMMT(cfg)
    report = finetune.load_for_prefix(model, tmp_path / "ckpt", plan)
    counts = finetune.apply_policy(model, "prefix", new=report.new)
    return pre, model, plan, counts


@pytest.mark.parametrize("new_head", [False, True])
def test_only_the_prefix_parts_and_a_new_head_train(tmp_path, new_head):
    pre, model, plan, counts = prefix_tuned(tmp_path, PrefixConfig(host="a", tokens=2, new_head=new_head))
    assert model.config.tasks["new"].modalities == ["a"] and plan.modality == "c" and plan.new_modality
    assert plan.head_from == ({} if new_head else {"new": "single"})
    prefix_parts = {n for n, _ in model.named_parameters() if n.startswith(("embedders.c.", "modality_embedding.c", "prefixes.c."))}
    heads = {n for n, _ in model.named_parameters() if n.startswith("heads.new.")}
    expected = prefix_parts | (heads if new_head else set())
    assert trainable_names(model) == expected
    assert counts["trainable"] == sum(p.numel() for n, p in model.named_parameters() if n in expected) < counts["total"]
    assert counts["encoders"] == counts["fusion"] == 0 and (counts["heads"] > 0) == new_head
    # Every checkpoint tensor is in the model unchanged (the reused head under the new task's name).
    state, old = model.state_dict(), pre.state_dict()
    for k, v in old.items():
        target = k.replace("heads.single.", "heads.new.")
        if not (new_head and target.startswith("heads.")):
            assert torch.equal(state[target], v), k
    # Gradients reach exactly the trainable parameters.
    model.train()
    torch.nn.functional.cross_entropy(model(inputs("a", "c"), "new"), torch.tensor([0, 1, 2, 0])).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == expected


def test_prefix_alone_when_the_new_task_has_no_host_input(tmp_path):
    _, model, plan, _ = prefix_tuned(tmp_path, PrefixConfig(host="a"), tasks={"new": ["c"]})
    assert model.config.tasks["new"].modalities == ["a"] and plan.head_from == {"new": "single"}
    assert model({"c": inputs("c")["c"]}, "new").shape == (4, 3)


@pytest.mark.parametrize(
    "pc, tasks, match",
    [
        (PrefixConfig(host="b"), None, "train.prefix.host='b' is not a modality of the checkpoint"),
        (PrefixConfig(host="a", modality="b"), None, "train.prefix.modality='b' is read by none of the trained tasks"),
        (PrefixConfig(host="a"), {"new": ["a", "b", "c"]}, "several modalities that could be the prefix.*train.prefix.modality"),
        (PrefixConfig(host="a"), {"new": ["a"]}, "no modality besides the host"),
        (PrefixConfig(host="a", head_from="nope"), None, "head_from='nope' is not a task of the checkpoint"),
        (PrefixConfig(host="a", modality="c"), {"new": ["c", "b"]}, r"reads \['a'\], but task 'new' with the prefix reads \['a', 'b'\]"),
    ],
)
def test_bad_prefix_settings_are_clear_errors(tmp_path, pc, tasks, match):
    with pytest.raises(ValueError, match=match):
        prefix_tuned(tmp_path, pc, tasks)


def test_a_head_of_other_classes_needs_new_head_and_stray_new_parts_are_errors(tmp_path):
    pre = HighMMT(tiny_config({"single": ["a"]}))
    pre.save_pretrained(tmp_path / "ckpt")
    cfg = tiny_config({"new": ["a", "c"]})
    cfg.tasks["new"].num_outputs = 5
    with pytest.raises(ValueError, match="has 3 classification outputs, task 'new' needs 5.*new_head=true"):
        finetune.prefix_model_config(cfg, pre.config, PrefixConfig(host="a"))
    cfg, plan = finetune.prefix_model_config(tiny_config({"new": ["a", "c"]}), pre.config, PrefixConfig(host="a"))
    cfg.modalities["a"].options["channels"] = 5  # the host declared otherwise: its embedder would be new
    with pytest.raises(ValueError, match=r"would stay random: \['embedders.a'\]"):
        finetune.load_for_prefix(HighMMT(cfg), tmp_path / "ckpt", plan)


@pytest.mark.parametrize(
    "train_cfg, match",
    [
        ({"finetune": "prefix"}, "train.finetune=prefix needs train.prefix.host"),
        ({"prefix": {"host": "a", "tokens": 0}}, "train.prefix.tokens must be >= 1"),
        ({"prefix": {"host": "a", "new_head": True, "head_from": "t"}}, "contradicts train.prefix.new_head=true"),
        ({"prefix": {"host": "a", "modality": "a"}}, "must differ"),
        ({"prefix": {"host": "a", "k": 4}}, r"unknown config key\(s\) \['train.prefix.k'\]"),
    ],
)
def test_bad_prefix_train_config(train_cfg, match):
    with pytest.raises(ValueError, match=match):
        from_dict(TrainConfig, train_cfg, prefix="train.")


# ---- train.py --init-from ... --finetune prefix, end to end --------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """A tiny model trained on synthetic_single (modality syn_a, 2 classes): validation accuracy 1.0."""
    return fit(tmp_path_factory.mktemp("pre") / "run", cache, "synthetic_single", seed=0, epochs=2, steps=15)


def prefix_run(out: Path, cache: Path, pre: Path, *extra: str, seed: int = 0) -> Path:
    return fit(out, cache, "synthetic_prefix", "--init-from", str(pre), "--finetune", "prefix", "--set", "train.prefix.host=syn_a",
               *extra, seed=seed, epochs=3, steps=20)


def test_a_prefix_run_keeps_the_checkpoint_frozen_and_reloads(tmp_path, cache, pretrained):
    out = prefix_run(tmp_path / "run", cache, pretrained, "--set", "train.prefix.tokens=4")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["tasks"]["synthetic_prefix"]["modalities"] == ["syn_a"]
    assert cfg["model"]["modalities"]["prefix_x"]["options"]["prefix"] == {"host": "syn_a", "tokens": 4}
    assert cfg["prefix"]["head_from"] == {"synthetic_prefix": "synthetic_single"}
    counts = cfg["trainable_parameters"]
    assert counts["trainable"] == counts["embedders"] > 0 and counts["heads"] == counts["encoders"] == counts["fusion"] == 0
    pre, state = load_file(str(pretrained / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for k, v in pre.items():  # bit-identical after training, the head under the new task's name
        assert torch.equal(state[k.replace("heads.synthetic_single.", "heads.synthetic_prefix.")], v), k
    assert {k for k in state if k not in pre and not k.startswith("heads.")} == {
        k for k in state if k.startswith(("embedders.prefix_x.", "modality_embedding.prefix_x", "prefixes.prefix_x."))}
    # The run folder reloads for evaluation and prediction.
    model = HighMMT.from_pretrained(out).eval()
    lt = load_task("synthetic_prefix", cache_dir=cache, quiet=True)
    table = predict_rows(model, lt.splits["test"], checkpoint_task(out, None), batch_size=32)
    assert len(next(iter(table.values()))) == len(lt.splits["test"])


def test_a_new_head_trains_and_an_unusable_setting_fails_before_training(tmp_path, cache, pretrained):
    out = prefix_run(tmp_path / "new_head", cache, pretrained, "--set", "train.prefix.new_head=true")
    counts = json.loads((out / "config.json").read_text())["trainable_parameters"]
    assert counts["heads"] > 0 and counts["trainable"] == counts["embedders"] + counts["heads"]
    base = ["--tasks", "synthetic_prefix", "--finetune", "prefix", "--output-dir", str(tmp_path / "bad"), "--cache-dir", str(cache),
            "--preset", "tiny", "--quiet"]
    with pytest.raises(ValueError, match="needs --init-from"):
        train.main([*base, "--set", "train.prefix.host=syn_a"])
    with pytest.raises(ValueError, match=r"train.prefix.host='nope' is not a modality of the checkpoint .*\['syn_a'\]"):
        train.main([*base, "--set", "train.prefix.host=nope", "--init-from", str(pretrained)])


def test_a_killed_prefix_run_resumes_to_the_same_weights(tmp_path, cache, pretrained, monkeypatch):
    extra = ["--set", "train.epochs=2", "--set", "train.steps_per_epoch=4"]
    full = prefix_run(tmp_path / "full", cache, pretrained, *extra)
    with killed_after_epoch(monkeypatch, 1):
        prefix_run(tmp_path / "killed", cache, pretrained, *extra)
    killed = prefix_run(tmp_path / "killed", cache, pretrained, *extra, "--resume")
    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_prefix_tuning_adapts_a_frozen_model_to_a_new_modality(tmp_path, cache, pretrained):
    """synthetic_prefix's label is only in prefix_x, a modality the synthetic_single model never saw;
    its host syn_a is noise. Through the frozen encoder, fusion and head, 2 prefix tokens learn it;
    without prefix_x the same model is at chance (0.5)."""
    lt = load_task("synthetic_prefix", cache_dir=cache, quiet=True)
    acc, host_only = [], []
    for seed in SEEDS:
        model = HighMMT.from_pretrained(prefix_run(tmp_path / f"s{seed}", cache, pretrained, seed=seed)).eval()
        acc.append(score(lt.spec, *predict(model, lt.splits["test"], lt.spec))["accuracy"])
        host_only.append(score(lt.spec, *predict(model, lt.splits["test"], lt.spec, modalities=["syn_a"]))["accuracy"])
    assert min(acc) >= 0.8, acc  # measured 0.89, 1.00, 1.00 (64 test rows, 3 x 20 steps)
    assert np.mean(host_only) <= 0.65, host_only  # measured 0.50, 0.50, 0.50


def test_a_prefix_modality_the_checkpoint_has_keeps_its_frozen_embedder(tmp_path):
    """Prefix modality c is in the checkpoint (task other): its embedder is loaded and stays frozen;
    only the projector to k tokens and the new head train."""
    torch.manual_seed(0)
    pre = HighMMT(tiny_config({"single": ["a"], "other": ["c"]}))
    pre.save_pretrained(tmp_path / "ckpt")
    cfg, plan = finetune.prefix_model_config(tiny_config({"new": ["c"]}), pre.config, PrefixConfig(host="a", new_head=True))
    assert plan.modality == "c" and not plan.new_modality and cfg.tasks["new"].modalities == ["a"]
    model = HighMMT(cfg)
    report = finetune.load_for_prefix(model, tmp_path / "ckpt", plan)
    finetune.apply_policy(model, "prefix", new=report.new)
    assert trainable_names(model) == {n for n, _ in model.named_parameters() if n.startswith(("prefixes.c.", "heads.new."))}
    assert torch.equal(model.state_dict()["embedders.c.to_tokens.layers.0.weight"], pre.state_dict()["embedders.c.to_tokens.layers.0.weight"])
