"""Co-learning hooks (transference/colearn.py): translation, contrastive alignment, label transfer through prototypes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import killed_after_epoch
from safetensors.torch import load_file

import evaluate
import modalities  # noqa: F401  (registers the embedders)
import train
from highmmt import HighMMT, HighMMTConfig, TaskConfig
from transference.colearn import (ColearnHook, ColearnPredictor, centered_mse, class_prototypes, info_nce, load_predictor, nearest_prototype,
                                  normalized_mse, target_tasks)
from transference.config import ColearnConfig, RunConfig, TrainConfig
from transference.hooks import TrainContext

SYN = "synthetic_pair,synthetic_single"
PAIR = ["--set", "train.colearn.primary=syn_a", "--set", "train.colearn.secondary=syn_b"]


def pair_batch(b: int = 12) -> dict:
    """``b`` is a noisy function of ``a``: a translation can learn it."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(b, 7, 3, generator=g)
    return {"inputs": {"a": a, "b": a[:, :, :2] * 2 + 0.1 * torch.randn(b, 7, 2, generator=g)}, "target": torch.arange(b) % 3}


@pytest.fixture
def hooked(tmp_path: Path, tiny_model_config: HighMMTConfig) -> Callable[..., tuple[HighMMT, ColearnHook, TrainContext]]:
    """``hooked(**colearn)`` -> a seeded tiny model (a -> b co-learning), its set-up hook and context."""

    def make(**colearn: Any) -> tuple[HighMMT, ColearnHook, TrainContext]:
        torch.manual_seed(0)
        model = HighMMT(tiny_model_config)
        cfg = ColearnConfig(primary="a", secondary="b", **colearn)
        ctx = TrainContext(model=model, loaded={}, run=RunConfig(train=TrainConfig(colearn=cfg, steps_per_epoch=1)),
                           device=torch.device("cpu"), seed=0, out=tmp_path, log=lambda msg: None)
        hook = ColearnHook(cfg)
        hook.setup(ctx, None)
        return model, hook, ctx

    return make


def fit(model: HighMMT, hook: ColearnHook, ctx: TrainContext, steps: int) -> list[dict]:
    """Train on one fixed batch through train.py's loss module; the hook's per-step loss parts."""
    batch = pair_batch()
    extra = torch.nn.ModuleDict(hook.modules())
    step_loss = train.TaskLoss(model, TrainConfig(), extra=extra, hooks=[hook], ctx=ctx)
    opt = torch.optim.AdamW(step_loss.parameters(), lr=3e-3)
    model.train()
    history = []
    for epoch in range(steps):
        opt.zero_grad()
        step_loss(batch, "pair").backward()
        opt.step()
        history.append({r["metric"]: r["value"] for r in hook.end_epoch(ctx, epoch)})
    return history


def test_translation_loss_decreases_and_the_cycle_is_there_only_when_cyclic(tmp_path, hooked):
    model, hook, ctx = hooked(method="translation", cyclic=True)
    assert set(hook.modules()) == {"to_secondary", "to_primary"}
    hist = fit(model, hook, ctx, 40)
    first, last = hist[0], hist[-1]
    assert set(first) == {"colearn_translation", "colearn_cycle", "colearn_head_translation"}
    assert last["colearn_translation"] < 0.5 * first["colearn_translation"]
    assert last["colearn_cycle"] < first["colearn_cycle"]
    model, hook, ctx = hooked(method="translation")
    assert set(hook.modules()) == {"to_secondary"}
    assert "colearn_cycle" not in fit(model, hook, ctx, 1)[0]


def test_centered_mse_scores_what_changes_from_sample_to_sample():
    """Targets [b, l, d] that are mostly a fixed per-position pattern: a prediction of the pattern
    alone (blind to the sample) gets a small normalized_mse but 1.0 of centered_mse."""
    g = torch.Generator().manual_seed(0)
    pattern = 5 * torch.randn(8, 16, generator=g)
    target = pattern + 0.3 * torch.randn(64, 8, 16, generator=g)
    blind = target.mean(dim=0).expand_as(target)
    assert normalized_mse(blind, target).item() < 0.01
    assert abs(centered_mse(blind, target).item() - 1.0) < 1e-4
    assert centered_mse(target, target).item() < 1e-6
    assert centered_mse(blind + 1.0, target).item() > 1.0  # a wrong batch mean costs too
    with pytest.raises(ValueError, match="same shape"):
        centered_mse(target, target[:, :4])


def test_the_translation_loss_option_picks_the_loss(hooked):
    batch = pair_batch()
    parts = {}
    for loss in ("normalized_mse", "centered_mse"):
        model, hook, ctx = hooked(method="translation", translation_loss=loss)
        with torch.no_grad():
            latents = {m: model.encode_modality(m, x) for m, x in batch["inputs"].items()}
            parts[loss] = hook._losses(model, "pair", latents, batch["target"])["translation"]
            translated = hook.modules()["to_secondary"](latents["a"])
        expect = {"normalized_mse": normalized_mse, "centered_mse": centered_mse}[loss](translated, latents["b"])
        torch.testing.assert_close(parts[loss], expect)
    assert parts["centered_mse"] > parts["normalized_mse"]  # an untrained decoder: near-blind to the sample


def test_the_supervised_forward_latents_are_reused_not_recomputed(tmp_path, hooked):
    model, hook, ctx = hooked(method="translation")
    calls = {"a": 0, "b": 0}
    for m in calls:
        model.embedders[m].register_forward_hook(lambda mod, args, out, m=m: calls.__setitem__(m, calls[m] + 1))
    fit(model, hook, ctx, 2)
    assert calls == {"a": 2, "b": 2}


def test_withheld_secondary_never_reaches_the_supervised_head(tmp_path, hooked):
    model, hook, ctx = hooked(method="contrastive", supervise_secondary=False)
    batch = pair_batch()
    model.train()
    inputs = hook.training_inputs("pair", batch["inputs"])
    assert set(inputs) == {"a"} and set(batch["inputs"]) == {"a", "b"}
    out, ctx.latents = model(inputs, "pair", return_latents=True)
    with torch.no_grad():
        torch.testing.assert_close(out, model({"a": batch["inputs"]["a"]}, "pair"))
    # ... but the secondary is encoded for the contrastive loss, and gets its gradient.
    hook.extra_loss(ctx, "pair", batch, out).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.embedders["b"].parameters())


def test_contrastive_loss_is_log_b_for_random_features_and_small_for_aligned_ones():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 64, generator=g), torch.randn(256, 64, generator=g)
    assert abs(info_nce(a, b, temperature=1.0).item() - math.log(256)) < 0.05
    aligned = info_nce(a, a + 0.01 * torch.randn(256, 64, generator=g), temperature=0.1).item()
    assert aligned < 0.05 * math.log(256)
    with pytest.raises(ValueError, match=r"\[b, p\]"):
        info_nce(a, b[:10], 0.1)
    with pytest.raises(ValueError, match="same shape"):
        normalized_mse(a, b[:, :3])
    assert abs(normalized_mse(torch.zeros(50, 64) + b[:50].mean(), b[:50]).item() - 1.0) < 0.05


def test_contrastive_training_aligns_the_two_modalities(tmp_path, hooked):
    model, hook, ctx = hooked(method="contrastive", supervise_secondary=False, temperature=0.2)
    hist = fit(model, hook, ctx, 30)
    assert hist[-1]["colearn_contrastive"] < 0.6 * hist[0]["colearn_contrastive"]
    assert abs(hist[0]["colearn_contrastive"] - math.log(12)) < 0.5


def test_label_transfer_picks_the_nearest_prototype():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 2.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    protos = class_prototypes(emb, labels, 3)
    assert protos.shape == (3, 2)
    torch.testing.assert_close(protos.norm(dim=-1), torch.ones(3))
    queries = torch.tensor([[5.0, 0.2], [0.3, 3.0], [-2.0, -0.1], [0.01, 0.02]])
    assert nearest_prototype(queries, protos).tolist() == [0, 1, 2, 1]
    with pytest.raises(ValueError, match=r"no example of class\(es\) \[3\]"):
        class_prototypes(emb, labels, 4)
    with pytest.raises(ValueError, match=r"\[n, p\] and \[c, p\]"):
        nearest_prototype(queries, protos[:, :1])


def test_predictor_fills_the_missing_slot_with_the_translation(tmp_path, hooked):
    model, hook, ctx = hooked(method="translation")
    predictor = hook.eval_model(ctx)
    assert isinstance(predictor, ColearnPredictor)
    model.eval()
    a = pair_batch()["inputs"]["a"]
    with torch.no_grad():
        out = predictor({"a": a}, "pair")
        z = model.encode_modality("a", a)
        expect = model.heads["pair"](model.fusion({"a": z, "b": hook.modules()["to_secondary"](z)}, ["a", "b"], "pair"))
        torch.testing.assert_close(out, expect)
        torch.testing.assert_close(predictor({"a": a, "b": pair_batch()["inputs"]["b"]}, "pair"), out)  # b is dropped
        torch.testing.assert_close(predictor({"a": a}, "single"), model({"a": a}, "single"))
    with pytest.raises(ValueError, match="needs the primary modality 'a'"):
        predictor({"b": pair_batch()["inputs"]["b"]}, "pair")


def run_colearn(tmp_path: Path, name: str, *extra: str) -> Path:
    out = tmp_path / name
    train.main(["--preset", "tiny", "--tasks", SYN, "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet",
                "--set", "train.steps_per_epoch=4", "--set", "train.epochs=3", "--set", "train.colearn.method=translation",
                "--set", "train.colearn.cyclic=true", *PAIR, *extra])
    return out


def test_hook_state_saves_and_resumes(tmp_path, monkeypatch):
    full = run_colearn(tmp_path, "full")
    st = torch.load(full / "trainer_state" / "state.pt", weights_only=True)
    assert st["hooks"]["colearn"]["config"]["method"] == "translation"
    assert any(k.startswith("colearn.to_primary.") for k in st["extra"])
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert {r["metric"] for r in rows if r["metric"].startswith("colearn_")} == {"colearn_translation", "colearn_cycle", "colearn_head_translation"}
    saved = load_file(str(full / "hooks.safetensors"))
    assert set(saved) == {k for k in st["extra"]}
    predictor = load_predictor(full)
    assert predictor.tasks == ["synthetic_pair"]
    metrics = evaluate.main(["--checkpoint", str(full), "--cache-dir", str(tmp_path / "cache"), "--no-robustness", "--quiet"])
    assert 0.0 <= metrics["synthetic_pair"]["accuracy_without_syn_b"] <= 1.0
    assert "accuracy_without_syn_b" not in metrics["synthetic_single"]

    with killed_after_epoch(monkeypatch, 1):
        run_colearn(tmp_path, "killed")
    with pytest.raises(ValueError, match="resume with the same co-learning settings"):
        run_colearn(tmp_path, "killed", "--resume", "--set", "train.colearn.cyclic=false")
    run_colearn(tmp_path, "killed", "--resume")
    resumed = torch.load(tmp_path / "killed" / "trainer_state" / "state.pt", weights_only=True)
    assert resumed["extra"].keys() == st["extra"].keys()
    for k in st["extra"]:
        torch.testing.assert_close(resumed["extra"][k], st["extra"][k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize(
    "sets, error, match",
    [
        (["train.colearn.method=translation", "train.colearn.primary=syn_a", "train.colearn.secondary=nope"], ValueError, "secondary='nope' is not a modality"),
        (["train.colearn.method=translation", "train.colearn.primary=syn_a", "train.colearn.secondary=syn_a"], ValueError, "must differ, both are 'syn_a'"),
        (["train.colearn.method=translation", "train.colearn.primary=syn_a", "train.colearn.secondary=syn_b",
          'train.colearn.tasks=["synthetic_single"]'], ValueError, "task 'synthetic_single' does not read the secondary modality 'syn_b'"),
        (["train.colearn.method=translation", "train.colearn.primary=syn_a", "train.colearn.secondary=syn_b",
          'train.colearn.tasks=["other"]'], ValueError, "names task 'other', which is not being trained"),
        (["train.colearn.method=translation"], ValueError, "needs train.colearn.primary and train.colearn.secondary"),
        (["train.colearn.method=mixup"], ValueError, "method must be one of"),
        (["train.colearn.translation_loss=huber"], ValueError, "translation_loss must be one of"),
        (["train.colearn.method=contrastive", "train.colearn.primary=syn_a", "train.colearn.secondary=syn_b",
          "train.colearn.missing_slot=translation"], ValueError, "needs method=translation"),
        (["train.colearn.method=contrastive", "train.colearn.primary=syn_a", "train.colearn.secondary=syn_b",
          "train.colearn.temperature=0"], ValueError, "temperature must be > 0"),
        (["train.colearn.cyclic=maybe"], TypeError, "expected true/false"),
    ],
)
def test_bad_colearn_config_is_a_clear_error(tmp_path, sets, error, match):
    argv = ["--preset", "tiny", "--tasks", SYN, "--output-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"), "--quiet"]
    with pytest.raises(error, match=match):
        train.main(argv + [a for s in sets for a in ("--set", s)])


def test_no_task_reading_both_modalities_is_an_error(tiny_model_config):
    cfg = tiny_model_config
    split = HighMMTConfig(dim=16, modalities=cfg.modalities, tasks={"x": TaskConfig(["a"]), "y": TaskConfig(["b"])})
    with pytest.raises(ValueError, match="no trained task reads both 'a' and 'b'"):
        target_tasks(ColearnConfig(method="translation", primary="a", secondary="b"), split)
    assert target_tasks(ColearnConfig(method="translation", primary="b", secondary="a"), cfg) == ["pair"]


def test_study_helpers_make_a_one_modality_spec_over_a_cached_task(tmp_path):
    from experiments.colearn import _slug, subset_spec
    from tasks.cache import load_task

    lt = load_task("synthetic_pair", cache_dir=tmp_path / "cache", quiet=True)
    spec_path = subset_spec(lt, ["syn_a"], "syn_a_only", tmp_path / "specs")
    alone = load_task(spec_path, quiet=True)
    assert list(alone.spec.modalities) == ["syn_a"] and alone.spec.num_classes == 3
    assert len(alone.splits["test"]) == len(lt.splits["test"])
    with pytest.raises(ValueError, match=r"has no modality \['nope'\]"):
        subset_spec(lt, ["nope"], "x", tmp_path / "specs")
    assert _slug("translation IMU -> depth") == "translation_imu_depth"
