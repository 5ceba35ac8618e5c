"""Transfer: loading a checkpoint into a new model, freezing policies, LoRA, layer-wise lr decay,
training fractions, train.py --init-from end to end and the transfer benchmark script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from _helpers import killed_after_epoch
from safetensors.torch import load_file

import modalities  # noqa: F401  (registers the embedders)
import train
from highmmt import HighMMT, HighMMTConfig, ModalityConfig, TaskConfig
from highmmt.checkpoint import atomic_save_safetensors, atomic_write_json
from highmmt.config import EncoderConfig, FusionConfig, SharingConfig
from tasks.cache import load_task
from transference import finetune
from transference.config import RunConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def tiny_config(tasks: dict[str, list[str]] | None = None, *, encoder_depth: int = 1, sharing: SharingConfig | None = None) -> HighMMTConfig:
    tasks = tasks or {"pair": ["a", "b"], "single": ["a"]}
    used = sorted({m for ms in tasks.values() for m in ms})
    channels = {"a": 3, "b": 2, "c": 4}
    return HighMMTConfig(
        dim=16,
        modalities={m: ModalityConfig("timeseries", {"channels": channels[m]}) for m in used},
        tasks={t: TaskConfig(ms, "classification", 3) for t, ms in tasks.items()},
        encoder=EncoderConfig(depth=encoder_depth, num_latents=4, heads=2, dim_head=8),
        fusion=FusionConfig(depth=1, heads=2, dim_head=8),
        sharing=sharing or SharingConfig(),
    )


def inputs(*mods: str, b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    channels = {"a": 3, "b": 2, "c": 4}
    return {m: torch.randn(b, 7, channels[m], generator=g) for m in mods}


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def by_part(model: torch.nn.Module, parts: set[str]) -> set[str]:
    return {n for n, _ in model.named_parameters() if finetune.part_of(n) in parts}


# ---- freezing policies ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "policy, parts",
    [
        ("full", {"embedders", "encoders", "fusion", "heads"}),
        ("head", {"heads"}),
        ("embedders_head", {"embedders", "heads"}),
    ],
)
def test_each_policy_trains_exactly_its_parts(policy, parts):
    torch.manual_seed(0)
    model = HighMMT(tiny_config())
    counts = finetune.apply_policy(model, policy)
    expected = by_part(model, parts)
    assert trainable_names(model) == expected
    assert counts["trainable"] == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert any(n.startswith("modality_embedding.") for n in expected) == ("embedders" in parts)
    if policy != "full":  # the shared transformer is frozen and gets no gradient
        model(inputs("a", "b"), "pair").sum().backward()
        assert all(p.grad is None for n, p in model.named_parameters() if finetune.part_of(n) in {"encoders", "fusion"})


def test_parameters_new_to_the_checkpoint_always_train_and_frozen_backbones_never():
    model = HighMMT(tiny_config())
    new = {n for n, _ in model.named_parameters() if n.startswith(("embedders.b.", "modality_embedding.b"))}
    first = next(model.embedders["a"].parameters())
    first.highmmt_frozen = True  # what a freeze=true pretrained backbone marks
    finetune.apply_policy(model, "head", new=new)
    assert trainable_names(model) == by_part(model, {"heads"}) | new
    finetune.apply_policy(model, "full")
    assert not first.requires_grad


def test_lora_trains_only_adapters_and_heads_and_saves_a_plain_model(tmp_path):
    torch.manual_seed(0)
    model = HighMMT(tiny_config())
    plain_keys = set(model.state_dict())
    linears = finetune.lora_targets(model)
    counts = finetune.apply_policy(model, "lora", lora_rank=2, lora_alpha=4.0)
    trainable = trainable_names(model)
    lora = {n for n in trainable if finetune.is_lora_name(n)}
    assert trainable == lora | by_part(model, {"heads"})
    assert {n.rsplit(".lora_", 1)[0] for n in lora} == set(linears)  # every encoder/fusion linear, nothing else
    assert counts["lora"] == sum(p.numel() for n, p in model.named_parameters() if n in lora) > 0
    assert counts["encoders"] == counts["fusion"] == counts["embedders"] == 0

    # A few optimizer steps so the adapters are not zero, then save the merged weights.
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs("a", "b"), "pair"), torch.tensor([0, 1, 2, 0])).backward()
        opt.step()
    model.eval()
    state = finetune.export_state_dict(model)
    assert set(state) == plain_keys
    atomic_save_safetensors(tmp_path / "model.safetensors", state)
    atomic_write_json(tmp_path / "config.json", model.config.to_dict())
    loaded = HighMMT.from_pretrained(tmp_path).eval()
    x = inputs("a", "b", seed=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, "pair"), model(x, "pair"), rtol=1e-5, atol=1e-5)
        # The adapters moved the merged weights away from the frozen base weights.
        base = model.encoders["shared"].layers[0].cross.to_q.base_layer.weight
        assert not torch.allclose(loaded.encoders["shared"].layers[0].cross.to_q.weight, base)


# ---- layer-wise learning-rate decay ----------------------------------------------------------------
def test_layer_decay_gives_each_depth_its_lr():
    model = HighMMT(tiny_config(encoder_depth=2))
    tc = TrainConfig(lr=1.0, layer_decay=0.5, weight_decay=0.1)
    optimizer = train.build_optimizer(model, tc, torch.nn.ModuleDict(), finetune.FinetuneHook(RunConfig(train=tc)).lr_scales(model))
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    expected = {  # heads lr; fusion one step down; encoder layers 1 and 0 (latents with 0); embedders last
        "heads.pair.to_logits.2.weight": 1.0,
        "fusion.blocks.shared.0.cross.to_q.weight": 0.5,
        "encoders.shared.norm.weight": 0.25,
        "encoders.shared.layers.1.cross.to_q.weight": 0.25,
        "encoders.shared.layers.0.cross.to_q.weight": 0.125,
        "encoders.shared.latents": 0.125,
        "embedders.a.to_tokens.layers.0.weight": 0.0625,
        "modality_embedding.b": 0.0625,
    }
    params = dict(model.named_parameters())
    for name, lr in expected.items():
        assert lr_of[id(params[name])] == pytest.approx(lr), name
    assert len(lr_of) == len(params)  # every parameter is in exactly one group
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(params["encoders.shared.latents"]) not in decayed and id(params["heads.pair.to_logits.2.weight"]) in decayed
    off = train.build_optimizer(model, TrainConfig(lr=1.0), torch.nn.ModuleDict())
    assert [g["lr"] for g in off.param_groups] == [1.0, 1.0]


# ---- bad values -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"finetune": "adapters"}, "train.finetune must be one of"),
        ({"layer_decay": 0.0}, r"train.layer_decay must be in \(0, 1\]"),
        ({"layer_decay": -0.5}, r"train.layer_decay must be in \(0, 1\]"),
        ({"layer_decay": 1.5}, r"train.layer_decay must be in \(0, 1\]"),
        ({"train_fraction": 0.0}, r"train.train_fraction must be in \(0, 1\]"),
        ({"lora_rank": 0}, "train.lora_rank must be >= 1"),
    ],
)
def test_bad_transfer_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_bad_policy_decay_and_fraction_in_the_functions():
    model = HighMMT(tiny_config())
    with pytest.raises(ValueError, match="unknown fine-tuning policy 'adapters'"):
        finetune.apply_policy(model, "adapters")
    with pytest.raises(ValueError, match="layer_decay"):
        finetune.layer_lr_scales(model, 0.0)


def test_prefix_is_a_policy_of_its_own(capsys):
    """``prefix`` is prefix tuning (tests/test_prefix.py), not the parts of ``embedders_head`` it once named."""
    assert finetune.TRAINABLE_PARTS["prefix"] == frozenset()  # only what the checkpoint lacks trains
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    assert "--finetune full|head|embedders_head|lora|prefix" in capsys.readouterr().out


def test_bad_command_lines(tmp_path):
    base = ["--preset", "tiny", "--tasks", "synthetic_pair", "--output-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"), "--quiet"]
    with pytest.raises(ValueError, match="train.finetune must be one of"):
        train.main([*base, "--finetune", "adapters"])
    with pytest.raises(ValueError, match="train.finetune=prefix needs train.prefix.host"):
        train.main([*base, "--finetune", "prefix"])
    with pytest.raises(ValueError, match="train_fraction"):
        train.main([*base, "--train-fraction", "0"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train.main([*base, "--init-from", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model.safetensors"):
        train.main([*base, "--init-from", str(tmp_path / "empty")])


# ---- training fractions --------------------------------------------------------------------------------
def test_train_fraction_subsamples_a_real_task_split(tmp_path):
    lt = load_task("synthetic_pair", cache_dir=tmp_path, quiet=True)
    small = train.subsample_train(lt, 0.05, seed=3)
    n = len(lt.splits["train"])
    assert len(small.splits["train"]) == max(round(0.05 * n), 3) < n
    assert set(small.splits["train"]["label"]) == set(lt.splits["train"]["label"])
    assert len(small.splits["validation"]) == len(lt.splits["validation"])


# ---- loading a checkpoint into a new model ----------------------------------------------------------------
def test_load_pretrained_handles_new_modality_new_task_and_changed_groups(tmp_path):
    torch.manual_seed(0)
    old = HighMMT(tiny_config({"pair": ["a", "b"], "single": ["a"]}))
    old.save_pretrained(tmp_path / "ckpt")
    # New: modality c never seen, task "triple" new, one encoder group per modality (was one shared).
    new_cfg = tiny_config({"triple": ["a", "b", "c"], "single": ["a"]}, sharing=SharingConfig(encoder={"ga": ["a"], "gbc": ["b", "c"]}))
    model = HighMMT(new_cfg)
    report = finetune.load_pretrained(model, tmp_path / "ckpt")
    old_state, new_state = old.state_dict(), model.state_dict()
    assert report.copied == {"encoders.ga": "encoders.shared", "encoders.gbc": "encoders.shared"}
    for g in ("ga", "gbc"):
        torch.testing.assert_close(new_state[f"encoders.{g}.layers.0.cross.to_q.weight"], old_state["encoders.shared.layers.0.cross.to_q.weight"])
    for key in ("embedders.a.to_tokens.layers.0.weight", "heads.single.to_logits.2.weight", "fusion.blocks.shared.0.ff.net.1.weight"):
        assert key in report.loaded
        torch.testing.assert_close(new_state[key], old_state[key])
    new_modules = report.to_dict()["new_modules"]
    assert new_modules == ["embedders.c", "heads.triple", "modality_embedding.c"]
    assert report.to_dict()["unused_modules"] == ["heads.pair"]
    assert "loaded" in report.summary() and "embedders.c" in report.summary()
    # A head whose number of classes changed is reported and left new.
    other = tiny_config({"single": ["a"]})
    other.tasks["single"].num_outputs = 5
    changed = finetune.load_pretrained(HighMMT(other), tmp_path / "ckpt")
    assert any(m.startswith("heads.single.to_logits.2.weight") for m in changed.mismatched)
    assert "heads.single.to_logits.2.weight" in changed.new


def test_init_from_trains_a_new_task_with_a_new_modality(tmp_path):
    """Pre-train on synthetic_single (modality syn_a), fine-tune on synthetic_pair (adds syn_b, a new head)."""
    common = ["--preset", "tiny", "--cache-dir", str(tmp_path / "cache"), "--quiet", "--set", "train.steps_per_epoch=3",
              "--set", "train.epochs=2", "--set", "train.threads=1"]
    pre = tmp_path / "pre"
    train.main([*common, "--tasks", "synthetic_single", "--output-dir", str(pre)])
    pre_state = load_file(str(pre / "model.safetensors"))

    head = tmp_path / "head"
    train.main([*common, "--tasks", "synthetic_pair", "--output-dir", str(head), "--init-from", str(pre), "--finetune", "head",
                "--train-fraction", "0.25"])
    cfg = json.loads((head / "config.json").read_text())
    assert cfg["train"]["finetune"] == "head" and cfg["train"]["train_fraction"] == 0.25
    assert cfg["init_from"]["new_modules"] == ["embedders.syn_b", "fusion.blocks.shared", "heads.synthetic_pair", "modality_embedding.syn_b"]
    assert cfg["init_from"]["unused_modules"] == ["heads.synthetic_single"]
    counts = cfg["trainable_parameters"]
    assert counts["encoders"] == 0 and counts["heads"] > 0 and counts["fusion"] > 0  # fusion is new: it trains
    state = load_file(str(head / "model.safetensors"))
    for k in pre_state:  # everything loaded stayed frozen
        if not k.startswith("heads."):
            assert torch.equal(state[k], pre_state[k]), k

    lora = tmp_path / "lora"
    train.main([*common, "--tasks", "synthetic_pair", "--output-dir", str(lora), "--init-from", str(pre), "--finetune", "lora",
                "--set", "train.lora_rank=2", "--set", "train.layer_decay=0.8"])
    model = HighMMT.from_pretrained(lora)  # merged: loads as a plain model
    state = model.state_dict()
    assert torch.equal(state["embedders.syn_a.to_tokens.layers.0.weight"], pre_state["embedders.syn_a.to_tokens.layers.0.weight"])
    assert not torch.equal(state["encoders.shared.layers.0.cross.to_q.weight"], pre_state["encoders.shared.layers.0.cross.to_q.weight"])
    assert json.loads((lora / "config.json").read_text())["trainable_parameters"]["lora"] > 0


def test_a_killed_lora_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    common = ["--preset", "tiny", "--cache-dir", str(tmp_path / "cache"), "--quiet", "--set", "train.steps_per_epoch=2",
              "--set", "train.epochs=2", "--set", "train.threads=1"]
    pre = train.main([*common, "--tasks", "synthetic_single", "--output-dir", str(tmp_path / "pre")])
    ft = [*common, "--tasks", "synthetic_pair", "--init-from", str(pre), "--finetune", "lora", "--set", "train.layer_decay=0.7"]
    full = train.main([*ft, "--output-dir", str(tmp_path / "full")])
    with killed_after_epoch(monkeypatch, 1):
        train.main([*ft, "--output-dir", str(tmp_path / "killed")])
    killed = train.main([*ft, "--output-dir", str(tmp_path / "killed"), "--resume"])

    def last(out):
        st = torch.load(out / "trainer_state" / "state.pt", weights_only=True)
        return load_file(str(out / "trainer_state" / st["weights"]))

    a, b = last(full), last(killed)
    assert any(finetune.is_lora_name(k) for k in a) and a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.slow
def test_transfer_script_runs_end_to_end(tmp_path):
    from experiments import transfer

    out = tmp_path / "study"
    results = transfer.main([
        "--target-tasks", "synthetic_pair", "--pretrain-tasks", "synthetic_single", "--fractions", "0.25,1.0",
        "--policies", "full,lora,prefix", "--prefix-host", "syn_a", "--seeds", "0", "--preset", "tiny", "--output-dir", str(out),
        "--cache-dir", str(tmp_path / "cache"), "--pretrain-set", "train.epochs=1", "--pretrain-set", "train.steps_per_epoch=3",
        "--finetune-set", "train.epochs=1", "--finetune-set", "train.steps_per_epoch=2",
    ])
    methods = ("scratch", "full", "lora", "prefix", "full_ld")
    assert {(r["fraction"], r["method"]) for r in results["runs"]} == {(f, m) for f in (0.25, 1.0) for m in methods}
    assert all(0.0 <= r["test"] <= 1.0 for r in results["runs"])
    assert {r["train_rows"] for r in results["runs"]} == {24, 96}
    saved = json.loads((out / "transfer.json").read_text())
    assert saved["targets"] == ["synthetic_pair"] and len(saved["runs"]) == 10
    ld = next(r for r in results["runs"] if r["method"] == "full_ld")
    assert json.loads((Path(ld["run"]) / "config.json").read_text())["train"]["layer_decay"] == 0.5
    # prefix: syn_b (new to the synthetic_single checkpoint) makes the prefix of syn_a; a new head for 3 classes.
    pre = json.loads((Path(next(r for r in results["runs"] if r["method"] == "prefix")["run"]) / "config.json").read_text())
    assert pre["prefix"]["modality"] == "syn_b" and pre["prefix"]["host"] == "syn_a" and pre["prefix"]["head_from"] == {}
    assert "front of the host modality (synthetic_pair: `syn_a`)" in (out / "transfer.md").read_text()
    md = (out / "transfer.md").read_text()
    assert "| fraction | train rows | scratch | full | lora | prefix | full_ld | best transfer - scratch |" in md
    counts = {r["method"]: r["trainable_parameters"] for r in results["runs"]}
    assert counts["prefix"] < counts["lora"] < counts["full"] == counts["scratch"]
    assert f"| trainable parameters |  | {counts['scratch']:,} (100.0%) |" in md
    # Reusing a checkpoint: finished runs are kept, nothing is pre-trained again.
    again = transfer.main(["--target-tasks", "synthetic_pair", "--init-from", str(out / "pretrain"), "--fractions", "1.0",
                           "--policies", "head", "--layer-decay", "1", "--seeds", "0", "--preset", "tiny", "--output-dir", str(out),
                           "--cache-dir", str(tmp_path / "cache"), "--finetune-set", "train.epochs=1", "--finetune-set", "train.steps_per_epoch=2"])
    assert again["pretrain_tasks"] == ["synthetic_single"] and again["methods"] == ["scratch", "head"]
    assert next(r for r in again["runs"] if r["method"] == "scratch")["wall_s"] == 0.0  # kept from the first study
    assert (out / "transfer.png").stat().st_size > 0
    with pytest.raises(ValueError, match="overlap"):
        transfer.main(["--target-tasks", "synthetic_pair", "--pretrain-tasks", "synthetic_pair", "--output-dir", str(out)])
    with pytest.raises(ValueError, match="--policies"):
        transfer.main(["--target-tasks", "synthetic_pair", "--pretrain-tasks", "synthetic_single", "--policies", "nope", "--output-dir", str(out)])
    assert transfer.prefix_host(["text", "force_torque"], "robot", ["force_torque"]) == "text"
    assert transfer.prefix_host(["text", "force_torque"], "subjectivity", ["text"]) == "force_torque"
    with pytest.raises(ValueError, match="reads only \\['syn_a'\\], nothing besides the host"):
        transfer.prefix_host(["syn_a"], "synthetic_single", ["syn_a"])
    with pytest.raises(ValueError, match="--policies prefix needs --prefix-host"):
        transfer.main(["--target-tasks", "synthetic_pair", "--pretrain-tasks", "synthetic_single", "--policies", "prefix", "--output-dir", str(out)])


def test_init_from_takes_the_checkpoint_architecture_over_the_preset(tmp_path):
    """A checkpoint trained at another width fine-tunes under the tiny preset: its sizes win, its
    weights load; a --set that contradicts them is an error that names it."""
    common = ["--preset", "tiny", "--cache-dir", str(tmp_path / "cache"), "--quiet", "--set", "train.steps_per_epoch=2",
              "--set", "train.epochs=1", "--set", "train.threads=1"]
    pre = train.main([*common, "--tasks", "synthetic_single", "--output-dir", str(tmp_path / "pre"), "--set", "model.dim=24"])
    ft = train.main([*common, "--tasks", "synthetic_pair", "--init-from", str(pre), "--output-dir", str(tmp_path / "ft")])
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["model"]["dim"] == 24
    assert "encoders.shared.latents" in cfg["init_from"]["loaded"] and not cfg["init_from"]["mismatched"]
    with pytest.raises(ValueError, match="model.dim contradicts the checkpoint"):
        train.main([*common, "--tasks", "synthetic_pair", "--init-from", str(pre), "--output-dir", str(tmp_path / "bad"),
                    "--set", "model.dim=32"])
