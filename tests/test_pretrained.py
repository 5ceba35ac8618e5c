"""Pretrained backbones as embedders, embedders + heads over a frozen encoder, representation tuning (MAG)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import evaluate
import modalities  # noqa: F401  (registers the embedders)
import train
from highmmt import EMBEDDERS, HighMMT, HighMMTConfig, ModalityConfig, TaskConfig
from highmmt.config import RepresentationTuningConfig
from highmmt.pretrained import MultimodalAdaptationGate, RepresentationTuning, build_backbone, load_backbone_weights
from modalities.pretrained import PretrainedEmbedder, modality_config
from transference.finetune import apply_policy

SYN = "synthetic_pair,synthetic_single"
RESNET = {"backbone": "timm:test_resnet", "channels": 1, "image_size": 32}


def resnet_embedder(**options) -> PretrainedEmbedder:
    return PretrainedEmbedder(name="photo", dim=16, **{**RESNET, **options})


def image_model(**options) -> HighMMT:
    cfg = HighMMTConfig(
        dim=16,
        modalities={"photo": ModalityConfig("pretrained", {**RESNET, **options}), "imu": ModalityConfig("timeseries", {"channels": 3})},
        tasks={"digits": TaskConfig(["photo", "imu"], "classification", 3)},
    )
    cfg.encoder.num_latents, cfg.encoder.dim_head, cfg.fusion.dim_head = 4, 8, 8
    return HighMMT(cfg)


def timm_weights(path: Path, **kwargs) -> dict[str, torch.Tensor]:
    """A test_resnet with a 5-class classifier, as a downloaded timm checkpoint would hold it."""
    torch.manual_seed(1)
    state = timm.create_model("test_resnet", pretrained=False, in_chans=1, num_classes=5, **kwargs).state_dict()
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return state


# ---- the embedder ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, tokens",
    [
        ({}, 1),  # test_resnet: stride 32, 32 x 32 -> 1 x 1
        ({"image_size": 64}, 4),  # 2 x 2 grid
        ({"backbone": "timm:test_vit", "image_size": 0, "backbone_options": {"img_size": 28, "patch_size": 7}}, 17),  # 16 patches + cls
        ({"backbone": "timm:test_vit", "image_size": 0, "tokens": "pooled", "backbone_options": {"img_size": 28, "patch_size": 7}}, 1),
    ],
)
def test_timm_backbone_gives_tokens_of_width_d(options, tokens):
    torch.manual_seed(0)
    emb = resnet_embedder(**options)
    x = torch.randint(0, 256, (2, 28, 28, 1), dtype=torch.uint8)
    out, mask = emb({"x": x, "mask": torch.ones(2, 28, 28, dtype=torch.bool)})
    assert out.shape == (2, tokens, 16) and mask.shape == (2, tokens) and mask.all()
    assert torch.isfinite(out).all()


def test_padding_only_regions_give_padding_tokens():
    emb = resnet_embedder(image_size=0)
    x = torch.rand(2, 64, 64, 1)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    mask[0] = True
    mask[1, :32, :32] = True  # sample 1 is a 32 x 32 image padded to 64 x 64: one of its 4 tokens is real
    _, token_mask = emb({"x": x, "mask": mask})
    assert token_mask.tolist() == [[True] * 4, [True, False, False, False]]


def test_model_with_a_timm_embedder_trains():
    torch.manual_seed(0)
    model = image_model()
    inputs = {"photo": torch.rand(8, 28, 28, 1), "imu": torch.randn(8, 10, 3)}
    y = torch.randint(0, 3, (8,))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = {k: v.clone() for k, v in model.embedders["photo"].backbone.state_dict().items()}
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(model(inputs, "digits"), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    after = model.embedders["photo"].backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_load_from_a_local_file_and_the_classifier_is_ignored(tmp_path, suffix):
    path = tmp_path / f"resnet{suffix}"
    state = timm_weights(path)
    emb = resnet_embedder(weights=str(path))
    own = emb.backbone.state_dict()
    assert "fc.weight" in state and "fc.weight" not in own
    assert all(torch.equal(own[k], state[k]) for k in own)


def test_missing_weights_file_and_wrong_keys_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"modality 'photo'.*nope\.safetensors.*does not exist"):
        resnet_embedder(weights=str(tmp_path / "nope.safetensors"))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(ValueError, match=r"modality 'photo'.*missing.*unexpected \(e\.g\. \['encoder\.weight'\]"):
        resnet_embedder(weights=str(wrong))
    shaped = tmp_path / "rgb.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False, in_chans=3, num_classes=0).state_dict(), str(shaped))
    with pytest.raises(ValueError, match="shape mismatch"):
        resnet_embedder(weights=str(shaped))  # a 3-channel stem into a 1-channel backbone
    with pytest.raises(ValueError, match="weights_prefix 'nothing.'"):
        resnet_embedder(weights=str(shaped), weights_prefix="nothing.")
    text = tmp_path / "weights.txt"
    text.write_text("hi")
    with pytest.raises(ValueError, match="should end in one of"):
        resnet_embedder(weights=str(text))


def test_freeze_leaves_backbone_grads_none_and_batchnorm_fixed():
    torch.manual_seed(0)
    model = image_model(freeze=True)
    emb = model.embedders["photo"]
    model.train()
    assert not emb.backbone.training and emb.to_tokens.training
    stats = {k: v.clone() for k, v in emb.backbone.state_dict().items() if "running" in k}
    model({"photo": torch.rand(4, 28, 28, 1), "imu": torch.randn(4, 10, 3)}, "digits").sum().backward()
    assert all(p.grad is None for p in emb.backbone.parameters())
    assert emb.to_tokens.weight.grad is not None and emb.to_tokens.weight.grad.abs().sum() > 0
    assert all(torch.equal(v, emb.backbone.state_dict()[k]) for k, v in stats.items())
    # every fine-tuning policy leaves a frozen backbone frozen
    counts = apply_policy(model, "full")
    assert not any(p.requires_grad for p in emb.backbone.parameters())
    assert counts["trainable"] == counts["total"] - sum(p.numel() for p in emb.backbone.parameters())


def test_any_nn_module_is_a_backbone():
    emb = PretrainedEmbedder(name="imu", dim=8, backbone="module:torch.nn:Linear", input_kind="timeseries",
                             channels=3, backbone_options={"in_features": 3, "out_features": 5})
    batch = EMBEDDERS.get("timeseries").collate([torch.randn(4, 3).numpy(), torch.randn(6, 3).numpy()])
    tokens, mask = emb(batch)
    assert tokens.shape == (2, 6, 8) and mask.tolist() == [[True] * 4 + [False] * 2, [True] * 6]
    assert tokens[0, 4:].abs().sum() == 0  # padding tokens are zero
    with pytest.raises(ValueError, match="give option feature_dim"):
        PretrainedEmbedder(name="imu", dim=8, backbone="module:torch.nn:Identity", input_kind="timeseries")
    emb = PretrainedEmbedder(name="imu", dim=8, backbone="module:torch.nn:Identity", input_kind="timeseries", feature_dim=3)
    assert emb(torch.randn(2, 7, 3))[0].shape == (2, 7, 8)
    with pytest.raises(ValueError, match="backbone features have width 3, expected feature_dim=4"):
        PretrainedEmbedder(name="imu", dim=8, backbone="module:torch.nn:Identity", input_kind="timeseries", feature_dim=4)(torch.randn(2, 7, 3))


@pytest.mark.parametrize(
    "backbone, error",
    [
        ("resnet18", "must look like"),
        ("hub:resnet18", "unknown backbone source 'hub'"),
        ("timm:no_such_model_xyz", "timm has no model 'no_such_model_xyz'"),
        ("module:no_such_package_xyz:Net", "cannot import module 'no_such_package_xyz'"),
        ("module:torch.nn:NoSuchLayer", "has no attribute 'NoSuchLayer'"),
        ("module:math:pi", "is not callable"),
        ("module:torch:zeros", "expected an nn.Module|rejected backbone_options"),
    ],
)
def test_bad_backbone_names_are_clear_errors(backbone, error):
    with pytest.raises((ValueError, TypeError), match=error):
        build_backbone(backbone, {}, what="modality 'x'")


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\]"):
        resnet_embedder(colour=3)
    with pytest.raises(ValueError, match="'tokens' must be one of"):
        resnet_embedder(tokens="all")
    with pytest.raises(ValueError, match="may not set 'num_classes'"):
        resnet_embedder(backbone_options={"num_classes": 10})
    with pytest.raises(ValueError, match="expected 1 channels"):
        resnet_embedder()(torch.rand(2, 28, 28, 3))


def test_video_frames_go_through_the_backbone_one_by_one():
    emb = PretrainedEmbedder(name="depth", dim=16, backbone="timm:test_resnet", input_kind="video", channels=1,
                             tokens="pooled", max_frames=4)
    batch = PretrainedEmbedder.collate([torch.randint(0, 255, (6, 20, 20, 1), dtype=torch.uint8).numpy(),
                                        torch.randint(0, 255, (2, 20, 20, 1), dtype=torch.uint8).numpy()],
                                       input_kind="video", channels=1, max_frames=4, backbone="timm:test_resnet")
    assert batch["x"].shape == (2, 4, 20, 20, 1)  # the video collate capped the frames
    tokens, mask = emb(batch)
    assert tokens.shape == (2, 4, 16) and mask.tolist() == [[True] * 4, [True, True, False, False]]


def test_a_backbone_option_in_a_spec_switches_the_kind():
    mc = modality_config("image", {"channels": 1, "backbone": "timm:test_resnet"})
    assert mc.kind == "pretrained" and mc.options["input_kind"] == "image"
    assert modality_config("image", {"channels": 1}) == ModalityConfig("image", {"channels": 1})
    with pytest.raises(ValueError, match="contradicts the kind"):
        modality_config("image", {"backbone": "timm:test_resnet", "input_kind": "video"})


# ---- representation tuning (MAG) -----------------------------------------------------------------
def test_mag_untrained_gate_is_the_identity_and_keeps_the_shape():
    torch.manual_seed(0)
    mag = MultimodalAdaptationGate(dim=8, num_context=2)
    h = torch.randn(3, 5, 8)
    out = mag(h, [torch.randn(3, 8), torch.randn(3, 8)])
    assert out.shape == h.shape and torch.equal(out, h)
    # gates at zero (relu of a negative pre-activation) also give the identity, whatever the projections
    for gate, shift in zip(mag.to_gate, mag.to_shift):
        torch.nn.init.normal_(shift.weight)
        torch.nn.init.zeros_(gate.weight)
        torch.nn.init.constant_(gate.bias, -1.0)
    assert torch.equal(mag(h, [torch.randn(3, 8), None]), h)


def test_mag_alpha_caps_the_shift_at_beta_times_the_norm():
    torch.manual_seed(0)
    mag = MultimodalAdaptationGate(dim=8, num_context=1, beta=0.5)
    h = torch.randn(2, 4, 8)
    v = torch.randn(2, 8)
    with torch.no_grad():
        mag.to_gate[0].weight.zero_()
        mag.to_gate[0].bias.fill_(1.0)  # gate = 1
        mag.to_shift[0].weight.copy_(torch.eye(8) * 1000.0)  # a huge H: alpha = beta * ||h|| / ||H|| < 1
    shift = mag(h, [v]) - h
    assert torch.allclose(shift.norm(dim=-1), 0.5 * h.norm(dim=-1), rtol=1e-4)
    with torch.no_grad():
        mag.to_shift[0].weight.copy_(torch.eye(8) * 1e-3)  # a tiny H: alpha = 1, the whole shift applies
    shift = mag(h, [v]) - h
    assert torch.allclose(shift, (1e-3 * v).unsqueeze(1).expand_as(h), atol=1e-6)


def test_representation_tuning_config_is_checked_and_skips_absent_context():
    def cfg(**rt):
        return HighMMTConfig(dim=16, modalities={"a": ModalityConfig("timeseries", {"channels": 2}),
                                                 "b": ModalityConfig("timeseries", {"channels": 2})},
                             tasks={"t": TaskConfig(["a", "b"], "classification", 2)},
                             representation_tuning=RepresentationTuningConfig(**rt))

    assert RepresentationTuning.from_config(cfg()) is None
    assert RepresentationTuning.from_config(cfg(primary="a")).context == ["b"]
    with pytest.raises(ValueError, match="primary 'c' is not a modality"):
        RepresentationTuning.from_config(cfg(primary="c"))
    with pytest.raises(ValueError, match="context names 'a'"):
        RepresentationTuning.from_config(cfg(primary="a", context=["a"]))
    with pytest.raises(ValueError, match="beta must be > 0"):
        RepresentationTuningConfig(primary="a", beta=0.0)
    rt = RepresentationTuning(dim=4, primary="a", context=["b"])
    torch.nn.init.normal_(rt.gate.to_shift[0].weight)
    z = {"a": torch.randn(2, 3, 4)}
    assert torch.equal(rt(z)["a"], z["a"])  # no context present: unchanged
    assert not torch.equal(rt({**z, "b": torch.randn(2, 3, 4)})["a"], z["a"])


# ---- MAG inside the encoder (model.representation_tuning.position) ---------------------------------------
def pair_model(seed: int = 0, **rt) -> HighMMT:
    """Two timeseries modalities a (3 channels), b (2), encoder depth 2; MAG options ``rt`` (primary a)."""
    torch.manual_seed(seed)
    cfg = HighMMTConfig(dim=16, modalities={"a": ModalityConfig("timeseries", {"channels": 3}),
                                            "b": ModalityConfig("timeseries", {"channels": 2})},
                        tasks={"t": TaskConfig(["a", "b"], "classification", 2)},
                        representation_tuning=RepresentationTuningConfig(**rt))
    cfg.encoder.depth, cfg.encoder.num_latents, cfg.encoder.dim_head, cfg.fusion.dim_head = 2, 4, 8, 8
    return HighMMT(cfg).eval()


def random_gate(model: HighMMT, seed: int = 1) -> None:
    """A trained-looking gate: projections no longer zero."""
    torch.manual_seed(seed)
    for proj in model.representation_tuning.gate.to_shift:
        torch.nn.init.normal_(proj.weight, std=0.5)


PAIR = {"a": torch.randn(3, 7, 3), "b": torch.randn(3, 5, 2)}


def test_mag_inside_the_encoder_is_the_identity_untrained_and_shifts_only_the_primary_through_the_gate():
    plain = pair_model()
    inside = pair_model(primary="a", position="inside_encoder", layer=2)
    missing, unexpected = inside.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("representation_tuning.gate.") for k in missing)
    after = pair_model(primary="a")
    assert set(after.state_dict()) == set(inside.state_dict())  # the same gate under the same names: checkpoints load either way
    with torch.no_grad():
        z0, z = plain.latents(PAIR, "t"), inside.latents(PAIR, "t")
        assert list(z) == ["a", "b"] and all(torch.equal(z[m], z0[m]) for m in z)  # projections at zero: the identity
        random_gate(inside)
        z = inside.latents(PAIR, "t")
        assert torch.equal(z["b"], z0["b"]) and not torch.allclose(z["a"], z0["a"], atol=1e-3)
        # by hand: the primary's encoder, its latents shifted by the gate right after layer 2's cross-attention
        enc, gate = inside.encoders["shared"], inside.representation_tuning.gate
        tokens, mask = inside.embed("a", PAIR["a"])
        h = enc.latents.expand(3, -1, -1)
        for j, layer in enumerate(enc.layers, start=1):
            h = h + layer.cross(h, tokens, mask)
            h = h + layer.cross_ff(h)
            if j == 2:
                h = gate(h, [z0["b"].mean(dim=1)])
            for attn, ff in layer.self_blocks:
                h = h + attn(h)
                h = h + ff(h)
        torch.testing.assert_close(z["a"], enc.norm(h))
        after.load_state_dict(inside.state_dict())  # the same weights, the shift after the encoder instead
        za = after.latents(PAIR, "t")
        torch.testing.assert_close(za["a"], gate(z0["a"], [z0["b"].mean(dim=1)]))
        assert not torch.allclose(za["a"], z["a"], atol=1e-3)


def test_mag_inside_the_encoder_reads_the_context_modality():
    model = pair_model(primary="a", position="inside_encoder")
    plain = pair_model()
    random_gate(model)
    other = {**PAIR, "b": torch.randn(3, 5, 2)}
    with torch.no_grad():
        assert not torch.allclose(model.latents(PAIR, "t")["a"], model.latents(other, "t")["a"], atol=1e-3)
        assert torch.equal(plain.latents(PAIR, "t")["a"], plain.latents(other, "t")["a"])  # without MAG it cannot
        alone = {"a": PAIR["a"]}  # no context present: the primary passes unshifted
        assert torch.equal(model.latents(alone, "t")["a"], pair_model().latents(alone, "t")["a"])
    with pytest.raises(ValueError, match="inside its encoder pass"):
        model.representation_tuning(model.latents(PAIR, "t"))  # finished latents: the shift would be skipped silently


def test_mag_inside_the_encoder_trains_the_gate_under_gradient_checkpointing_too():
    grads = []
    for checkpointing in (False, True):
        model = pair_model(primary="a", position="inside_encoder", layer=2).train()
        model.config.gradient_checkpointing = checkpointing
        for enc in model.encoders.values():
            enc.gradient_checkpointing = checkpointing
        random_gate(model)
        model(PAIR, "t").sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.representation_tuning.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("policy", ["full", "head", "embedders_head", "lora", "prefix"])
def test_finetune_policies_treat_the_gate_alike_in_both_positions(policy):
    """transference/finetune.py counts representation tuning as fusion; a gate new to the checkpoint trains."""
    trainable = {}
    for position in ("after_encoder", "inside_encoder"):
        for fresh in (False, True):
            model = pair_model(primary="a", position=position)
            new = [n for n, _ in model.named_parameters() if n.startswith("representation_tuning.")]
            apply_policy(model, policy, new=new if fresh else ())
            trainable[position, fresh] = {n for n, p in model.named_parameters() if p.requires_grad}
    for fresh in (False, True):
        assert trainable["after_encoder", fresh] == trainable["inside_encoder", fresh]
    assert all(n in trainable["inside_encoder", True] for n in new)


def test_mag_position_options_are_checked():
    with pytest.raises(ValueError, match="position must be one of"):
        RepresentationTuningConfig(primary="a", position="middle")
    with pytest.raises(ValueError, match="layer must be an integer >= 1"):
        RepresentationTuningConfig(primary="a", position="inside_encoder", layer=0)
    with pytest.raises(ValueError, match="needs position='inside_encoder'"):
        RepresentationTuningConfig(primary="a", layer=2)
    with pytest.raises(ValueError, match=r"layer=3: the encoder has layers 1..2"):
        pair_model(primary="a", position="inside_encoder", layer=3)
    with pytest.raises(ValueError, match="position must be one of"):
        HighMMTConfig.from_dict({"representation_tuning": {"primary": "a", "position": "inside"}})
    old = pair_model(primary="a").config.to_dict()  # a config saved before the option existed
    for key in ("position", "layer"):
        del old["representation_tuning"][key]
    assert HighMMTConfig.from_dict(old).representation_tuning.position == "after_encoder"


def test_mag_learns_a_planted_interaction_at_either_position():
    """experiments.pretrained.synthetic_mag: over a frozen random model without fusion, the label is the XOR of a
    bit in each modality; the head alone cannot read it, a MAG gate on a from b can, after or inside the encoder."""
    import sys

    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from experiments.pretrained import synthetic_mag

    acc = synthetic_mag(seeds=(0, 1, 2))
    head = sum(acc["head_only"]) / 3
    assert head <= 0.6, acc  # measured 0.490 (0.505, 0.458, 0.506): chance is 0.5
    for position in ("after_encoder", "inside_encoder"):
        assert min(acc[position]) >= head + 0.3, acc  # measured after 0.931 (0.948, 0.904, 0.941), inside 0.933 (0.960, 0.898, 0.940)


def test_save_load_round_trip_without_the_backbone_file(tmp_path):
    path = tmp_path / "resnet.safetensors"
    timm_weights(path)
    torch.manual_seed(0)
    cfg = HighMMTConfig(
        dim=16,
        modalities={"photo": ModalityConfig("pretrained", {**RESNET, "weights": str(path), "freeze": True}),
                    "imu": ModalityConfig("timeseries", {"channels": 3})},
        tasks={"digits": TaskConfig(["photo", "imu"], "classification", 3)},
        representation_tuning=RepresentationTuningConfig(primary="imu", beta=2.0),
    )
    model = HighMMT(cfg).eval()
    torch.nn.init.normal_(model.representation_tuning.gate.to_shift[0].weight)
    model.save_pretrained(tmp_path / "saved")
    path.unlink()  # the checkpoint holds the backbone: its original file is no longer needed
    loaded = HighMMT.from_pretrained(tmp_path / "saved").eval()
    assert loaded.config == model.config
    inputs = {"photo": torch.rand(2, 28, 28, 1), "imu": torch.randn(2, 6, 3)}
    assert torch.equal(model(inputs, "digits"), loaded(inputs, "digits"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HighMMT(cfg)  # building afresh does need the file


# ---- through train.py: modality_options, embedders_head, MAG ----------------------------------------------
def run_train(tmp_path: Path, name: str, tasks: str, *extra: str) -> Path:
    out = tmp_path / name
    train.main(["--preset", "tiny", "--tasks", tasks, "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
                "--quiet", "--set", "train.steps_per_epoch=4", "--set", "train.epochs=2", "--set", "train.threads=1", *extra])
    return out


def test_embedders_head_trains_only_embedders_and_heads(tmp_path):
    base = run_train(tmp_path, "base", "synthetic_pair")
    backbone = {"backbone": "module:torch.nn:Linear", "backbone_options": {"in_features": 3, "out_features": 6}}
    out = run_train(tmp_path, "embedders_head", "synthetic_single", "--init-from", str(base), "--finetune", "embedders_head",
                    "--set", "train.modality_options=" + json.dumps({"syn_a": backbone}))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["modalities"]["syn_a"]["kind"] == "pretrained"
    counts = cfg["trainable_parameters"]
    assert counts["encoders"] == 0 and counts["fusion"] == 0 and counts["embedders"] > 0 and counts["heads"] > 0
    before, after = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    shared = [k for k in after if k.startswith(("encoders.", "fusion."))]
    assert shared and all(torch.equal(before[k], after[k]) for k in shared if k in before)
    assert not torch.equal(before["modality_embedding.syn_a"], after["modality_embedding.syn_a"])
    metrics = evaluate.main(["--checkpoint", str(out), "--no-robustness", "--quiet", "--cache-dir", str(tmp_path / "cache")])
    assert 0.0 <= metrics["synthetic_single"]["accuracy"] <= 1.0


@pytest.mark.parametrize("position", ["after_encoder", "inside_encoder"])
def test_mag_with_the_head_policy_trains_only_the_gate_and_the_heads(tmp_path, position):
    base = run_train(tmp_path, "base", "synthetic_pair")
    out = run_train(tmp_path, "mag", "synthetic_pair", "--init-from", str(base), "--finetune", "head",
                    "--set", "model.representation_tuning.primary=syn_a", "--set", f"model.representation_tuning.position={position}")
    counts = json.loads((out / "config.json").read_text())["trainable_parameters"]
    model = HighMMT.from_pretrained(out)
    assert model.representation_tuning.position == position
    gate = sum(p.numel() for p in model.representation_tuning.parameters())
    heads = sum(p.numel() for p in model.heads.parameters())
    assert counts["trainable"] == gate + heads
    before, after = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("heads."))
    assert after["representation_tuning.gate.to_shift.0.weight"].abs().sum() > 0
    metrics = evaluate.main(["--checkpoint", str(out), "--no-robustness", "--quiet", "--cache-dir", str(tmp_path / "cache")])
    assert 0.0 <= metrics["synthetic_pair"]["accuracy"] <= 1.0


def test_unknown_modality_in_modality_options_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"train.modality_options names modality\(ies\) \['photo'\]"):
        run_train(tmp_path, "bad", SYN, "--set", 'train.modality_options={"photo": {"channels": 1}}')


def test_backbone_weights_from_a_highmmt_checkpoint(tmp_path):
    """Self-pretraining: a backbone trained inside one run is loaded into the next by weights_prefix."""
    emb = resnet_embedder()
    save_file({f"embedders.photo.backbone.{k}": v for k, v in emb.backbone.state_dict().items()}, str(tmp_path / "m.safetensors"))
    other = timm.create_model("test_resnet", pretrained=False, in_chans=1, num_classes=0)
    n = load_backbone_weights(other, tmp_path / "m.safetensors", prefix="embedders.photo.backbone.")
    assert n == len(other.state_dict())
    assert all(torch.equal(v, emb.backbone.state_dict()[k]) for k, v in other.state_dict().items())


def test_the_study_runs_are_valid_train_py_arguments(tmp_path):
    """experiments/pretrained.py: every run's flags parse and its overrides are known, typed keys."""
    import argparse
    import sys

    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from experiments import pretrained as study
    from highmmt.config import apply_overrides

    args = argparse.Namespace(steps=500, source_steps=800, avmnist_fraction=0.1, seed=0, utd_seeds="0,1")
    runs = study.runs(tmp_path, args)
    names = [r["name"] for r in runs]
    assert names[0] == "source" and len(set(names)) == len(names)
    for r in runs:
        for flag in r["args"]:
            if flag.startswith(str(tmp_path)):  # --init-from a run made earlier in the study
                assert flag[len(str(tmp_path)) + 1:] in names[: names.index(r["name"])]
        parsed = train.parse_args(["--tasks", ",".join(r["tasks"]), *r["args"]])
        run = apply_overrides(train.load_preset("default")[0], parsed.overrides)
        for name, options in run.train.modality_options.items():
            assert modality_config("image", options).kind == "pretrained", name
