"""Core model: shapes, gradients, modality subsets, sharing, save/load, bad input."""

from __future__ import annotations

import copy
import itertools
import json
import math

import pytest
import torch
from torch import nn

from highmmt import EMBEDDERS, Embedder, HighMMT, HighMMTConfig, ModalityConfig, TaskConfig, apply_overrides
from highmmt.config import EncoderConfig, FusionConfig, SharingConfig


class _VectorEmbedder(Embedder):
    """Test-only embedder: [b, n, c] float -> [b, n, d]."""

    kind = "_test_vector"

    def __init__(self, *, name: str, dim: int, channels: int = 3) -> None:
        super().__init__(name=name, dim=dim)
        self.channels = channels
        self.proj = nn.Linear(channels, dim)

    def embed(self, batch):
        x = batch["x"]
        self.check_rank(x, 3, "[b, n, c]")
        self.check_size(x, 2, self.channels, "channels")
        self.check_float(x)
        self.check_finite(x)
        mask = batch.get("mask", torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))
        return self.proj(x), mask


if "_test_vector" not in EMBEDDERS:
    EMBEDDERS.register("_test_vector")(_VectorEmbedder)

MODS = ("a", "b", "c")


def make_config(fusion: str = "pairwise", encoder_sharing="all", fusion_sharing="all", **kw) -> HighMMTConfig:
    return HighMMTConfig(
        dim=16,
        modalities={m: ModalityConfig("_test_vector", {"channels": 3}) for m in MODS},
        tasks={
            "three": TaskConfig(list(MODS), "classification", 4),
            "one": TaskConfig(["a"], "regression", 2),
            "pair": TaskConfig(["b", "c"], "multilabel", 3),
        },
        encoder=EncoderConfig(depth=1, num_latents=4, heads=2, dim_head=8),
        fusion=FusionConfig(kind=fusion, heads=2, dim_head=8, num_tokens=3),
        sharing=SharingConfig(encoder=encoder_sharing, fusion=fusion_sharing),
        **kw,
    )


def inputs(b: int = 2, n: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {m: torch.randn(b, n + i, 3, generator=g) for i, m in enumerate(MODS)}


@pytest.mark.parametrize("fusion", ["pairwise", "bottleneck", "none"])
def test_every_parameter_gets_gradient_and_outputs_are_finite(fusion):
    torch.manual_seed(0)
    model = make_config(fusion)
    model = HighMMT(model)
    x = inputs()
    loss = model(x, "three").sum() + model({"a": x["a"]}, "one").sum() + model({m: x[m] for m in "bc"}, "pair").sum()
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("fusion", ["pairwise", "bottleneck", "none"])
def test_every_subset_of_modalities_works(fusion):
    torch.manual_seed(0)
    model = HighMMT(make_config(fusion)).eval()
    x = inputs()
    full = model(x, "three")
    for r in (1, 2, 3):
        for subset in itertools.combinations(MODS, r):
            out = model({m: x[m] for m in subset}, "three")
            assert out.shape == (2, 4) and torch.isfinite(out).all()
            if r < 3:
                assert not torch.allclose(out, full)


def test_padding_mask_is_respected():
    torch.manual_seed(0)
    model = HighMMT(make_config()).eval()
    x = inputs(b=1)
    a = x["a"]
    padded = torch.cat([a, torch.randn(1, 4, 3) * 100], dim=1)
    mask = torch.cat([torch.ones(1, a.shape[1]), torch.zeros(1, 4)], dim=1).bool()
    out1 = model({"a": a}, "one")
    out2 = model({"a": {"x": padded, "mask": mask}}, "one")
    torch.testing.assert_close(out1, out2, atol=1e-5, rtol=1e-5)


def _count(model: HighMMT, part: str) -> int:
    return sum(model.parameter_counts()[part].values()) if isinstance(model.parameter_counts()[part], dict) else model.parameter_counts()[part]


def test_sharing_modes_give_expected_parameter_counts():
    shared = HighMMT(make_config())
    one_encoder = next(iter(shared.parameter_counts()["encoders"].values()))
    assert len(shared.encoders) == 1
    none = HighMMT(make_config(encoder_sharing="none"))
    assert _count(none, "encoders") == 3 * one_encoder
    grouped = HighMMT(make_config(encoder_sharing={"g1": ["a", "b"], "g2": ["c"]}))
    assert _count(grouped, "encoders") == 2 * one_encoder
    # pairs inside tasks: a|b, a|c, b|c -> three fusion blocks when nothing is shared
    one_block = shared.parameter_counts()["fusion"]
    assert HighMMT(make_config(fusion_sharing="none")).parameter_counts()["fusion"] == 3 * one_block
    two = HighMMT(make_config(fusion_sharing={"x": ["a|b", "c|a"], "y": ["b|c"]}))
    assert two.parameter_counts()["fusion"] == 2 * one_block
    counts = shared.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in shared.parameters())
    assert counts["total"] == sum(counts["embedders"].values()) + counts["shared"] + sum(counts["heads"].values())


def test_bottleneck_fusion_parameters_do_not_grow_with_modalities():
    small = HighMMT(make_config("bottleneck")).parameter_counts()["fusion"]
    cfg = make_config("bottleneck")
    cfg.modalities["d"] = ModalityConfig("_test_vector", {"channels": 3})
    cfg.tasks["four"] = TaskConfig(["a", "b", "c", "d"], "classification", 2)
    assert HighMMT(cfg).parameter_counts()["fusion"] == small


@pytest.mark.parametrize(
    "sharing, match",
    [
        (dict(encoder_sharing={"g": ["a", "b"]}), "leave out"),
        (dict(encoder_sharing={"g": ["a", "b", "c"], "h": ["a"]}), "two groups"),
        (dict(encoder_sharing={"g": ["a", "b", "c", "zz"]}), "zz"),
        (dict(encoder_sharing="some"), "must be 'all', 'none'"),
        (dict(fusion_sharing={"g": ["a|b"]}), "leave out"),
    ],
)
def test_bad_sharing_config_is_a_clear_error(sharing, match):
    with pytest.raises(ValueError, match=match):
        HighMMT(make_config(**sharing))


def test_gradient_checkpointing_matches_plain_forward_and_backward():
    torch.manual_seed(0)
    plain = HighMMT(make_config())
    ckpt = HighMMT(make_config(gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x = inputs()
    out_a, out_b = plain(x, "three"), ckpt(x, "three")
    torch.testing.assert_close(out_a, out_b)
    out_a.sum().backward()
    out_b.sum().backward()
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = HighMMT(make_config("bottleneck")).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    again = HighMMT.from_pretrained(tmp_path / "m").eval()
    x = inputs()
    assert torch.equal(model(x, "three"), again(x, "three"))


def test_config_that_does_not_match_weights_is_a_clear_error(tmp_path):
    HighMMT(make_config()).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["dim"] = 32
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match the weights"):
        HighMMT.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        HighMMT.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, x: m(x, "nope"), ValueError, "unknown task 'nope'"),
        (lambda m, x: m({"zz": x["a"]}, "three"), ValueError, "unknown modality 'zz'"),
        (lambda m, x: m({"b": x["b"]}, "one"), ValueError, "does not read modality 'b'"),
        (lambda m, x: m({}, "three"), ValueError, "no modality given"),
        (lambda m, x: m([x["a"]], "three"), TypeError, "dict of modality"),
        (lambda m, x: m({"a": x["a"], "b": x["b"][:1]}, "three"), ValueError, "batch size"),
        (lambda m, x: m({"a": x["a"][:0]}, "one"), ValueError, "empty batch"),
        (lambda m, x: m({"a": x["a"][0]}, "one"), ValueError, r"modality 'a'.*3-d"),
        (lambda m, x: m({"a": x["a"][..., :2]}, "one"), ValueError, r"modality 'a'.*3 channels"),
        (lambda m, x: m({"a": x["a"].long()}, "one"), TypeError, r"modality 'a'.*floating"),
        (lambda m, x: m({"a": x["a"] * float("nan")}, "one"), ValueError, r"modality 'a'.*NaN"),
        (lambda m, x: m({"a": {"mask": x["a"]}}, "one"), ValueError, "needs key 'x'"),
    ],
)
def test_bad_input_raises_documented_error(call, error, match):
    model = HighMMT(make_config())
    with pytest.raises(error, match=match):
        call(model, inputs())


def test_float64_input_is_cast_to_model_dtype():
    model = HighMMT(make_config()).eval()
    x = inputs()
    out64 = model({m: v.double() for m, v in x.items()}, "three")
    torch.testing.assert_close(out64, model(x, "three"))


def test_typed_overrides():
    cfg = make_config()
    new = apply_overrides(cfg, ["encoder.depth=2", "fusion.kind=bottleneck", "head_dropout=0.1", "sharing.encoder=none"])
    assert (new.encoder.depth, new.fusion.kind, new.head_dropout, new.sharing.encoder) == (2, "bottleneck", 0.1, "none")
    with pytest.raises(ValueError, match="unknown key"):
        apply_overrides(cfg, ["encoder.depht=2"])
    with pytest.raises(TypeError, match="encoder.depth: expected an integer"):
        apply_overrides(cfg, ["encoder.depth=two"])
    with pytest.raises(ValueError, match="fusion.kind must be one of"):
        apply_overrides(cfg, ["fusion.kind=concat"])
    assert HighMMTConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_bf16_autocast_forward_and_backward_are_finite():
    torch.manual_seed(0)
    model = HighMMT(make_config())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(inputs(), "three")
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_token_dropout_hides_real_tokens_only_in_training() -> None:
    from highmmt.model import drop_tokens

    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool).repeat(500, 1)
    kept = drop_tokens(mask, 0.3)
    assert not (kept & ~mask).any()  # never reveals padding
    assert kept.any(dim=1).all()  # every row keeps a real token
    rate = 1 - kept.sum() / mask.sum()
    assert 0.25 < float(rate) < 0.32  # ~p, a bit under (rows of one token keep it)
    assert torch.equal(drop_tokens(mask, 0.999).sum(dim=1), torch.ones(1500, dtype=torch.long))


def test_a_checkpoint_saved_before_a_default_changed_still_loads(tmp_path) -> None:
    """A config that does not state ``summary`` / ``stem`` was written under their earlier defaults."""
    import json

    from highmmt.config import HighMMTConfig, ModalityConfig, TaskConfig
    from highmmt.model import HighMMT

    cfg = HighMMTConfig(dim=16, modalities={"s": ModalityConfig("timeseries", {"channels": 2, "summary": False}),
                                            "i": ModalityConfig("image", {"channels": 1})},
                        tasks={"t": TaskConfig(["s", "i"], "classification", 3)})
    old = HighMMT(cfg).eval()
    old.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["modalities"]["s"]["options"]["summary"]  # as a run from before the summary token wrote it
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = HighMMT.from_pretrained(tmp_path).eval()
    assert loaded.embedders["s"].summary is None
    x = {"s": torch.randn(2, 5, 2), "i": torch.rand(2, 8, 8, 1)}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, "t"), old(x, "t"))
    saved["modalities"]["s"]["options"]["channels"] = 3  # weights that fit no defaults: still a clear error
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError):
        HighMMT.from_pretrained(tmp_path)


def _wide_text_model(**options) -> HighMMT:
    cfg = HighMMTConfig(
        dim=16, encoder=EncoderConfig(num_latents=4, heads=2, dim_head=8), fusion=FusionConfig(kind="none"),
        modalities={"text": ModalityConfig(kind="text", options={"tokenizer": "words", "buckets": 256, "bigrams": False, **options}),
                    "series": ModalityConfig(kind="timeseries", options={"channels": 2})},
        tasks={"a": TaskConfig(modalities=["text", "series"]), "b": TaskConfig(modalities=["series"])},
    )
    return HighMMT(cfg)


def test_wide_text_head_reads_the_bag_linearly_and_only_for_its_own_task() -> None:
    from modalities.text import TextEmbedder

    torch.manual_seed(0)
    model = _wide_text_model(wide=True).eval()
    assert set(model.heads["a"].wide) == {"text"} and len(model.heads["b"].wide) == 0
    assert not any(".wide." in k for k in model.task_state(model.state_dict(), "b"))
    assert "heads.a.wide.text.weight" in model.task_state(model.state_dict(), "a")
    text = TextEmbedder.collate(["good good film", "bad film"], tokenizer="words", buckets=256, bigrams=False)
    inputs = {"text": text, "series": torch.randn(2, 5, 2)}
    before = model(inputs, "a")
    with torch.no_grad():
        model.heads["a"].wide["text"].weight.normal_()
    ids, weights = model.embedders["text"].wide_bag(text)
    added = (model.heads["a"].wide["text"].weight[ids] * weights.unsqueeze(-1)).sum(1)
    torch.testing.assert_close(model(inputs, "a"), before + added)  # starts at zero, adds w . bag
    torch.testing.assert_close(model({"series": inputs["series"]}, "a"), model.head("a", model.encode({"series": inputs["series"]}, "a")))
    assert len(_wide_text_model().heads["a"].wide) == 0  # off by default


def test_wide_dropout_drops_bag_entries_in_training_only_and_keeps_the_expected_logits() -> None:
    from highmmt.heads import WideReadout

    torch.manual_seed(0)
    readout = WideReadout(32, 2, dropout=0.5)
    with torch.no_grad():
        readout.weight.normal_()
    ids = torch.randint(1, 32, (4, 10))
    weights = torch.rand(4, 10)
    exact = readout.eval()(ids, weights)
    torch.testing.assert_close(readout(ids, weights), exact)  # evaluation: no dropout
    readout.train()
    draws = torch.stack([readout(ids, weights) for _ in range(4000)])
    assert (draws[0] - exact).abs().max() > 1e-3  # training: entries dropped
    torch.testing.assert_close(draws.mean(0), exact, atol=0.08, rtol=0.0)  # ... and scaled by 1 / (1 - p)
    assert (draws.std(0) > 0.1).all()
    model = _wide_text_model(wide=True)
    assert model.heads["a"].wide["text"].dropout == 0.0  # off by default
    cfg = model.config.to_dict()
    cfg["wide_dropout"] = 0.3
    assert HighMMT(HighMMTConfig.from_dict(cfg)).heads["a"].wide["text"].dropout == 0.3
    cfg["wide_dropout"] = 1.0
    with pytest.raises(ValueError, match=r"model.wide_dropout must be in \[0, 1\), got 1.0"):
        HighMMTConfig.from_dict(cfg)


def _word_rule(n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Generator]:
    """n texts of 6 words out of 40 (hashed into 256 buckets); the label says whether w3 or w7 is among them."""
    from modalities.text import TextEmbedder

    rng = torch.Generator().manual_seed(0)
    vocab = [f"w{i}" for i in range(40)]
    texts = [" ".join(vocab[j] for j in torch.randint(0, 40, (6,), generator=rng).tolist()) for _ in range(n)]
    labels = torch.tensor([int("w7" in t.split() or "w3" in t.split()) for t in texts])
    text = TextEmbedder.collate(texts, tokenizer="words", buckets=256, bigrams=False)
    return text, labels, rng


def test_wide_text_head_learns_a_word_the_label_follows_and_not_shuffled_labels() -> None:
    text, labels, rng = _word_rule(256)

    def held_out_accuracy(targets: torch.Tensor) -> float:
        torch.manual_seed(0)
        model = _wide_text_model(wide=True)
        opt = torch.optim.AdamW(model.heads["a"].wide.parameters(), lr=0.2)  # the wide read-out alone learns
        for _ in range(100):
            idx = torch.randint(0, 192, (32,), generator=rng)
            loss = nn.functional.cross_entropy(model.wide_logits({"text": {k: v[idx] for k, v in text.items()}}, "a"), targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out = model.wide_logits({"text": {k: v[192:] for k, v in text.items()}}, "a")
        return float((out.argmax(1) == labels[192:]).float().mean())

    assert held_out_accuracy(labels) >= 0.95
    assert held_out_accuracy(labels[torch.randperm(256, generator=rng)]) < 0.8


def test_training_gives_the_wide_read_out_its_own_loss_and_a_larger_lr() -> None:
    import train
    from modalities.text import TextEmbedder
    from transference.config import TrainConfig

    torch.manual_seed(0)
    model = _wide_text_model(wide=True)
    with torch.no_grad():
        model.heads["a"].wide["text"].weight.normal_()
    text = TextEmbedder.collate(["good film", "bad film"], tokenizer="words", buckets=256, bigrams=False)
    batch = {"inputs": {"text": text, "series": torch.randn(2, 4, 2)}, "target": torch.tensor([1, 0])}
    model.eval()
    plain = train.TaskLoss(model, TrainConfig(wide_loss=0.0, deep_loss=0.0))(batch, "a")
    both = train.TaskLoss(model, TrainConfig(wide_loss=0.5, deep_loss=0.0))(batch, "a")
    wide_alone = nn.functional.cross_entropy(model.wide_logits(batch["inputs"], "a"), batch["target"])
    torch.testing.assert_close(both, plain + 0.5 * wide_alone)
    deep_alone = nn.functional.cross_entropy(model(batch["inputs"], "a") - model.wide_logits(batch["inputs"], "a"), batch["target"])
    with_deep = train.TaskLoss(model, TrainConfig(wide_loss=0.5, deep_loss=2.0))(batch, "a")
    torch.testing.assert_close(with_deep, plain + 0.5 * wide_alone + 2.0 * deep_alone)
    assert model.part_names("a") == ["deep", "wide"]  # the read-out is a part with its own weight (train.part_weights)
    optimizer = train.build_optimizer(model, TrainConfig(lr=0.001, wide_lr_scale=10.0), nn.ModuleDict())
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(model.heads["a"].wide["text"].weight)] == pytest.approx(0.01)
    assert lr_of[id(model.heads["a"].to_logits[-1].weight)] == pytest.approx(0.001)
    with pytest.raises(ValueError, match="wide_lr_scale"):
        TrainConfig(wide_lr_scale=0.0)
    with pytest.raises(ValueError, match="wide_prior must be"):
        TrainConfig(wide_prior="bayes")
    with pytest.raises(ValueError, match="wide_prior_alpha"):
        TrainConfig(wide_prior_alpha=0.0)


def test_wide_own_loss_only_keeps_the_sum_s_gradient_off_the_wide_read_out() -> None:
    import train
    from modalities.text import TextEmbedder
    from transference.config import TrainConfig

    torch.manual_seed(0)
    model = _wide_text_model(wide=True).eval()
    with torch.no_grad():
        model.heads["a"].wide["text"].weight.normal_()
        model.part_weights["a"].weight.copy_(torch.tensor([0.7, 1.3]))  # fitted weights (as in a fine-tune) are kept
    text = TextEmbedder.collate(["good film", "bad film", "good"], tokenizer="words", buckets=256, bigrams=False)
    batch = {"inputs": {"text": text, "series": torch.randn(3, 4, 2)}, "target": torch.tensor([1, 0, 1])}
    wide, deep = model.heads["a"].wide["text"].weight, model.heads["a"].to_logits[-1].weight

    def grads(tc: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model.zero_grad()
        loss = train.TaskLoss(model, tc)(batch, "a")
        loss.backward()
        return loss.detach(), wide.grad.clone(), deep.grad.clone()

    loss_own, wide_own, deep_own = grads(TrainConfig(wide_loss=0.5, deep_loss=0.0, wide_own_loss_only=True))
    loss_sum, wide_sum, deep_sum = grads(TrainConfig(wide_loss=0.5, deep_loss=0.0))
    torch.testing.assert_close(loss_own, loss_sum)  # the same loss value ...
    torch.testing.assert_close(deep_own, deep_sum)  # ... the same gradient for the deep path ...
    model.zero_grad()
    (0.5 * nn.functional.cross_entropy(model.wide_logits(batch["inputs"], "a"), batch["target"])).backward()
    torch.testing.assert_close(wide_own, wide.grad)  # ... and the wide read-out's is its own loss's alone
    assert (wide_sum - wide_own).abs().max() > 1e-4
    assert model.part_weight("a", "wide") == pytest.approx(1.3)
    with pytest.raises(ValueError, match="has no output part 'modality:text'"):
        model.part_weight("a", "modality:text")
    with pytest.raises(ValueError, match="wide_own_loss_only=true needs train.wide_loss > 0"):
        TrainConfig(wide_loss=0.0, wide_own_loss_only=True)


def test_naive_bayes_prior_counts_each_id_once_per_row_and_centres_over_classes() -> None:
    from highmmt.heads import naive_bayes_prior

    ids = torch.tensor([[1, 2, 0], [1, 3, 3], [2, 0, 0]])
    weights = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])  # row 1's second 3 is a repeat
    labels = torch.tensor([0, 1, 0])
    prior = naive_bayes_prior([(ids[:2], weights[:2], labels[:2]), (ids[2:], weights[2:], labels[2:])], size=5, num_classes=2)
    counts = torch.tensor([[0, 1, 2, 0, 0], [0, 1, 0, 1, 0]], dtype=torch.float64)  # class x id
    log_p = torch.log((counts + 1) / (counts.sum(1, keepdim=True) + 4))
    expected = (log_p - log_p.mean(0)).T
    expected[[0, 4]] = 0  # padding, and an id no training row holds
    torch.testing.assert_close(prior, expected.float())
    assert prior[2, 0] > 0 > prior[3, 0]  # id 2 only in class 0, id 3 only in class 1
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        naive_bayes_prior([(ids, weights, torch.tensor([0, 2, 1]))], size=5, num_classes=2)
    with pytest.raises(ValueError, match="alpha"):
        naive_bayes_prior([(ids, weights, labels)], size=5, num_classes=2, alpha=0.0)


def test_naive_bayes_prior_predicts_a_word_rule_before_training_and_not_shuffled_labels() -> None:
    from modalities.text import hash_token

    text, labels, rng = _word_rule(400)
    vocab = [f"w{i}" for i in range(40)]
    rows = lambda s: {k: v[s] for k, v in text.items()}  # noqa: E731

    def held_out_accuracy(targets: torch.Tensor) -> float:
        torch.manual_seed(0)
        model = _wide_text_model(wide=True).eval()
        before = model({"text": rows(slice(300, None)), "series": torch.zeros(100, 3, 2)}, "a")
        seen = model.set_wide_priors("a", [({"text": rows(slice(0, 150))}, targets[:150]), ({"text": rows(slice(150, 300))}, targets[150:300])])
        assert seen == {"text": len({hash_token(w, 256) for w in vocab})}  # 40 words, a few share a bucket
        out = model.wide_logits({"text": rows(slice(300, None))}, "a")
        # the prior is part of the head's output, as trained weights are
        torch.testing.assert_close(model({"text": rows(slice(300, None)), "series": torch.zeros(100, 3, 2)}, "a"), before + out)
        return float((out.argmax(1) == labels[300:]).float().mean())

    assert held_out_accuracy(labels) >= 0.9  # no step of training
    assert held_out_accuracy(labels[torch.randperm(400, generator=rng)]) < 0.75
    regression = HighMMT(HighMMTConfig(
        dim=16, encoder=EncoderConfig(num_latents=4, heads=2, dim_head=8), fusion=FusionConfig(kind="none"),
        modalities={"text": ModalityConfig(kind="text", options={"tokenizer": "words", "buckets": 256, "wide": True})},
        tasks={"r": TaskConfig(modalities=["text"], task_type="regression", num_outputs=1)}))
    with pytest.raises(ValueError, match="needs class labels"):
        regression.set_wide_priors("r", [({"text": rows(slice(0, 4))}, torch.zeros(4))])


def test_weights_written_before_the_wide_prior_load_with_a_zero_prior(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    model = _wide_text_model(wide=True)
    with torch.no_grad():
        model.heads["a"].wide["text"].weight.normal_()
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert "heads.a.wide.text.prior" in state
    save_file({k: v for k, v in state.items() if not k.endswith(".prior")}, str(tmp_path / "model.safetensors"))
    loaded = HighMMT.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.heads["a"].wide["text"].weight, model.heads["a"].wide["text"].weight)
    assert not loaded.heads["a"].wide["text"].prior.any()


# ---- late fusion: model.modality_heads ------------------------------------------------------------
def test_modality_heads_add_one_head_per_modality_of_multimodal_classification_tasks() -> None:
    torch.manual_seed(0)
    plain, late = HighMMT(make_config()), HighMMT(make_config(modality_heads=True))
    assert len(plain.modality_heads) == 0
    # "three" (classification, 3 modalities) and "pair" (multilabel, 2) get them; "one" (regression, 1) does not
    assert {t: sorted(h) for t, h in late.modality_heads.items()} == {"three": ["a", "b", "c"], "pair": ["b", "c"]}
    counts = late.parameter_counts()["heads"]
    assert counts["three"] == plain.parameter_counts()["heads"]["three"] + 3 * (2 * 16 + 16 * 4 + 4)
    x = inputs()
    out, parts = late(x, "three", return_parts=True)
    assert sorted(parts) == ["deep", "modality:a", "modality:b", "modality:c"]
    torch.testing.assert_close(out, sum(parts.values()))
    latents = late.latents(x, "three")
    torch.testing.assert_close(parts["modality:b"], late.modality_heads["three"]["b"](latents["b"].mean(dim=1)))
    torch.testing.assert_close(late.head("three", late.encode(x, "three"), x, latents), out)
    # a modality left out at inference drops its part (the deep head sees its zero slot, as without the option)
    out_ab, parts_ab = late({m: x[m] for m in "ab"}, "three", return_parts=True)
    assert sorted(parts_ab) == ["deep", "modality:a", "modality:b"]
    torch.testing.assert_close(out_ab, sum(parts_ab.values()))
    # the regression task is the plain head
    out_one, parts_one = late({"a": x["a"]}, "one", return_parts=True)
    assert list(parts_one) == ["deep"]


def test_modality_heads_are_a_tasks_own_weights_and_survive_save_load(tmp_path) -> None:
    model = HighMMT(make_config(modality_heads=True))
    own = model.task_state(model.state_dict(), "pair")
    assert any(k.startswith("modality_heads.pair.") for k in own)
    assert not any(k.startswith("modality_heads.three.") for k in own)
    model.save_pretrained(tmp_path / "m")
    again = HighMMT.from_pretrained(tmp_path / "m")
    assert again.config.modality_heads
    x = inputs()
    model.eval(), again.eval()
    torch.testing.assert_close(again(x, "three"), model(x, "three"))


def test_training_gives_each_modality_head_its_own_loss() -> None:
    import train
    from transference.config import TrainConfig

    torch.manual_seed(0)
    model = HighMMT(make_config(modality_heads=True)).eval()
    x = inputs(b=4)
    batch = {"inputs": x, "target": torch.tensor([0, 1, 2, 3])}
    plain = train.TaskLoss(model, TrainConfig(deep_loss=0.0, modality_loss=0.0))(batch, "three")
    out, parts = model(x, "three", return_parts=True)
    ce = lambda logits: nn.functional.cross_entropy(logits, batch["target"])  # noqa: E731
    torch.testing.assert_close(plain, ce(out))
    both = train.TaskLoss(model, TrainConfig(deep_loss=2.0, modality_loss=0.5))(batch, "three")
    torch.testing.assert_close(both, ce(out) + 2.0 * ce(parts["deep"]) + 0.5 * sum(ce(parts[f"modality:{m}"]) for m in "abc"))
    with pytest.raises(ValueError, match="modality_loss"):
        TrainConfig(modality_loss=-1.0)


def test_each_modality_head_learns_its_own_modality_and_not_shuffled_labels() -> None:
    """Two modalities each carry the label alone (a noisy copy of it): trained with their own losses, each
    modality head predicts held-out rows from its modality alone; trained and scored on shuffled labels it cannot."""
    import train
    from transference.config import TrainConfig

    def held_out_accuracy(labels: torch.Tensor) -> dict[str, float]:
        torch.manual_seed(0)
        cfg = HighMMTConfig(dim=16, modalities={m: ModalityConfig("_test_vector", {"channels": 3}) for m in "ab"},
                            tasks={"t": TaskConfig(["a", "b"], "classification", 2)},
                            encoder=EncoderConfig(depth=1, num_latents=4, heads=2, dim_head=8),
                            fusion=FusionConfig(kind="none"), modality_heads=True)
        model = HighMMT(cfg)
        loss_fn = train.TaskLoss(model, TrainConfig(deep_loss=1.0, modality_loss=1.0))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for step in range(60):
            idx = torch.arange(step * 32, step * 32 + 32) % 192
            loss = loss_fn({"inputs": {m: data[m][idx] for m in "ab"}, "target": labels[idx]}, "t")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            return {m: float((model({m: data[m][192:]}, "t").argmax(1) == labels[192:]).float().mean()) for m in "ab"}

    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 2, (256,), generator=g)
    sign = (2 * truth - 1).float()[:, None, None]
    data = {m: torch.randn(256, 3, 3, generator=g) * 0.5 + sign * torch.tensor([1.0, -1.0, 0.5]) for m in "ab"}
    learned = held_out_accuracy(truth)
    assert min(learned.values()) > 0.9, learned
    shuffled = held_out_accuracy(truth[torch.randperm(256, generator=g)])
    assert max(shuffled.values()) < 0.75, shuffled


# ---- summary read-outs: model.summary_heads ---------------------------------------------------------
def _summary_config(**kw) -> HighMMTConfig:
    return HighMMTConfig(
        dim=16,
        modalities={"s": ModalityConfig("timeseries", {"channels": 3}), "p": ModalityConfig("pose", {"joints": 2, "coords": 3}),
                    "i": ModalityConfig("image", {"channels": 1})},
        tasks={"cls": TaskConfig(["s", "p", "i"], "classification", 4), "two": TaskConfig(["s"], "classification", 2),
               "reg": TaskConfig(["s"], "regression", 2)},
        encoder=EncoderConfig(depth=1, num_latents=4, heads=2, dim_head=8), fusion=FusionConfig(heads=2, dim_head=8), **kw,
    )


def _summary_inputs(b: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"s": torch.randn(b, 6, 3, generator=g), "p": torch.randn(b, 4, 2, 3, generator=g), "i": torch.rand(b, 8, 8, 1, generator=g)}


def test_summary_heads_read_each_series_statistics_as_one_more_output_part() -> None:
    torch.manual_seed(0)
    plain, model = HighMMT(_summary_config()), HighMMT(_summary_config(summary_heads=True)).eval()
    assert len(plain.summary_heads) == 0
    # the series and the pose have a summary token, the image has none; the regression task gets no part
    assert {t: sorted(h) for t, h in model.summary_heads.items()} == {"cls": ["p", "s"], "two": ["s"]}
    assert model.part_names("cls") == ["deep", "summary:s", "summary:p"] and model.part_names("reg") == ["deep"]
    x = _summary_inputs()
    out, parts = model(x, "cls", return_parts=True)
    assert sorted(parts) == ["deep", "summary:p", "summary:s"]
    torch.testing.assert_close(out, sum(parts.values()))  # part weights 1 until fitted
    stats = model.embedders["s"].summary_statistics(x["s"])
    assert stats.shape == (3, model.embedders["s"].summary_size) == (3, 7 * 3)
    torch.testing.assert_close(parts["summary:s"], model.summary_heads["cls"]["s"](stats))
    # the head reads what the token is made from: the same statistics through the token's own projection
    emb = model.embedders["s"]
    token = emb(x["s"])[0][:, -1]
    torch.testing.assert_close(token, emb.summary.proj(stats) + emb.summary.marker)
    # a modality left out drops its part; counts and a task's own weights include its summary heads
    assert sorted(model({"s": x["s"], "i": x["i"]}, "cls", return_parts=True)[1]) == ["deep", "summary:s"]
    extra = sum(p.numel() for p in model.summary_heads["cls"].parameters())
    assert model.parameter_counts()["heads"]["cls"] == plain.parameter_counts()["heads"]["cls"] + extra
    own = model.task_state(model.state_dict(), "two")
    assert any(k.startswith("summary_heads.two.s.norm.") for k in own) and not any(k.startswith("summary_heads.cls.") for k in own)
    with pytest.raises(NotImplementedError, match="no summary statistics"):
        model.embedders["i"].summary_statistics(x["i"])


def test_summary_heads_keep_their_training_statistics_through_save_load(tmp_path) -> None:
    torch.manual_seed(0)
    model = HighMMT(_summary_config(summary_heads=True)).train()
    x = _summary_inputs(b=8)
    model(x, "cls")  # a training step's forward: the standardiser takes in these rows
    norm = model.summary_heads["cls"]["s"].norm
    assert float(norm.count) == 8
    model.eval()
    model.save_pretrained(tmp_path / "m")
    again = HighMMT.from_pretrained(tmp_path / "m").eval()
    assert again.config.summary_heads
    torch.testing.assert_close(again.summary_heads["cls"]["s"].norm.mean, norm.mean)
    torch.testing.assert_close(again(x, "cls"), model(x, "cls"))


def test_a_summary_head_learns_a_statistic_of_the_series_and_not_shuffled_labels() -> None:
    """The label is the sign of channel 0's mean over a noisy series: the summary part alone predicts
    held-out rows; trained and scored on shuffled labels it cannot."""
    import train
    from transference.config import TrainConfig

    def held_out_accuracy(labels: torch.Tensor) -> float:
        torch.manual_seed(0)
        cfg = HighMMTConfig(dim=16, modalities={"s": ModalityConfig("timeseries", {"channels": 3})},
                            tasks={"t": TaskConfig(["s"], "classification", 2)},
                            encoder=EncoderConfig(depth=1, num_latents=4, heads=2, dim_head=8),
                            fusion=FusionConfig(kind="none"), summary_heads=True)
        model = HighMMT(cfg)
        loss_fn = train.TaskLoss(model, TrainConfig(modality_loss=1.0))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for step in range(60):
            idx = torch.arange(step * 32, step * 32 + 32) % 192
            loss = loss_fn({"inputs": {"s": data[idx]}, "target": labels[idx]}, "t")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            part = model({"s": data[192:]}, "t", return_parts=True)[1]["summary:s"]
        return float((part.argmax(1) == labels[192:]).float().mean())

    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 2, (256,), generator=g)
    data = torch.randn(256, 12, 3, generator=g)
    data[:, :, 0] += (2 * truth - 1).float()[:, None] * 0.6
    assert held_out_accuracy(truth) > 0.9
    assert held_out_accuracy(truth[torch.randperm(256, generator=g)]) < 0.75


def test_part_weights_weigh_down_a_part_that_only_adds_noise() -> None:
    from highmmt.heads import fit_part_weights

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (300,), generator=g)
    good = 3.0 * nn.functional.one_hot(target, 3).float() + torch.randn(300, 3, generator=g)
    noise = 3.0 * torch.randn(300, 3, generator=g)
    weights = fit_part_weights({"good": good, "noise": noise}, target, "classification")
    assert weights["noise"] < 0.2 < 0.8 < weights["good"], weights
    unchanged = fit_part_weights({"a": good, "b": good.clone()}, target, "classification")
    assert unchanged["a"] == pytest.approx(unchanged["b"], rel=1e-3)


def test_part_ridge_is_chosen_by_cross_validation_on_the_rows() -> None:
    from highmmt.heads import _folds, choose_part_ridge, fit_part_weights

    g = torch.Generator().manual_seed(0)
    # one informative part among noise, 300 rows: a weak ridge wins and the noise is weighed down
    target = torch.randint(0, 3, (300,), generator=g)
    good = 3.0 * nn.functional.one_hot(target, 3).float() + torch.randn(300, 3, generator=g)
    parts = {"good": good, **{f"noise{i}": 3.0 * torch.randn(300, 3, generator=g) for i in range(3)}}
    ridge, losses = choose_part_ridge(parts, target, "classification")
    assert ridge <= 0.01 and losses[ridge] < 0.5 * losses[math.inf], losses
    # six equally good parts on 100 rows: free weights only fit the rows' noise; the strong end wins and
    # the weights come out (nearly) equal
    target = torch.randint(0, 4, (100,), generator=g)
    base = 2.0 * nn.functional.one_hot(target, 4).float()
    equal = {f"p{i}": base + 2.0 * torch.randn(100, 4, generator=g) for i in range(6)}
    ridge, losses = choose_part_ridge(equal, target, "classification")
    assert ridge >= 1.0 and min(losses.values()) < losses[0.001], losses
    weights = fit_part_weights(equal, target, "classification")
    assert max(weights.values()) < 1.2 * min(weights.values()), weights
    # too few rows to hold two folds of two out: equal weights (a common scale only)
    few = fit_part_weights({k: v[:3] for k, v in equal.items()}, target[:3], "classification")
    assert len({round(w, 6) for w in few.values()}) == 1
    # a part whose outputs hold NaN is named, not fitted
    broken = dict(equal, p0=torch.full((100, 4), float("nan")))
    with pytest.raises(ValueError, match="'p0' hold NaN"):
        fit_part_weights(broken, target, "classification")
    # folds are dealt out by class
    fold = _folds(torch.tensor([0] * 10 + [1] * 5), 5, seed=0)
    assert all(int((fold[:10] == k).sum()) == 2 and int((fold[10:] == k).sum()) == 1 for k in range(5))


def test_fitted_part_weights_set_the_outputs_and_are_saved(tmp_path) -> None:
    torch.manual_seed(0)
    model = HighMMT(make_config(modality_heads=True)).eval()
    assert sorted(model.part_weights) == ["pair", "three"]
    x = inputs(b=8)
    before, parts = model(x, "three", return_parts=True)
    target = torch.arange(8) % 4
    weights = model.fit_part_weights("three", [(x, target)])
    assert list(weights) == ["deep", "modality:a", "modality:b", "modality:c"]
    after, parts_after = model(x, "three", return_parts=True)
    expected = weights["deep"] * parts["deep"] + sum(weights[f"modality:{m}"] * parts[f"modality:{m}"] for m in "abc")
    torch.testing.assert_close(after, expected)
    torch.testing.assert_close(parts_after["deep"], parts["deep"])  # the parts themselves are unchanged
    assert not torch.allclose(after, before)
    model.save_pretrained(tmp_path / "m")
    torch.testing.assert_close(HighMMT.from_pretrained(tmp_path / "m").eval()(x, "three"), after)
    with pytest.raises(ValueError, match="one output part"):
        model.fit_part_weights("one", [(x, target)])
    # weights saved before part weights existed load with every part at 1
    from safetensors.torch import save_file
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("part_weights.")}
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    old = HighMMT.from_pretrained(tmp_path / "m")
    assert all(bool((pw.weight == 1).all()) for pw in old.part_weights.values())


# ---- manifold mixup: train.mixup ----------------------------------------------------------------------
def test_mixup_mixes_every_output_part_as_it_mixes_the_rows() -> None:
    torch.manual_seed(0)
    model = HighMMT(_summary_config(summary_heads=True, modality_heads=True)).eval()
    x, perm = _summary_inputs(b=4), torch.tensor([2, 0, 3, 1])
    out, latents, parts = model(x, "cls", return_latents=True, return_parts=True)
    assert sorted(parts) == ["deep", "modality:i", "modality:p", "modality:s", "summary:p", "summary:s"]
    # lam = 0: each row becomes its partner, in every part (the fused head, modality heads, summary heads)
    out0, parts0 = model(x, "cls", return_parts=True, mix=(perm, 0.0))
    torch.testing.assert_close(out0, out[perm])
    for name, part in parts.items():
        torch.testing.assert_close(parts0[name], part[perm], msg=name)
    torch.testing.assert_close(model(x, "cls", mix=(perm, 1.0)), out)  # lam = 1: nothing moves
    _, mixed = model(x, "cls", return_latents=True, mix=(perm, 0.3))
    for m, z in latents.items():
        torch.testing.assert_close(mixed[m], 0.3 * z + 0.7 * z[perm])
    assert not torch.allclose(model(x, "cls", mix=(perm, 0.3)), out)
    # a text head's wide read-out (read from the inputs, beside the encoder) is mixed alike
    from modalities.text import TextEmbedder

    text_model = _wide_text_model(wide=True).eval()
    with torch.no_grad():
        text_model.heads["a"].wide["text"].weight.normal_()
    text = TextEmbedder.collate(["good good film", "bad film", "a film"], tokenizer="words", buckets=256, bigrams=False)
    inputs, p3 = {"text": text, "series": torch.randn(3, 5, 2)}, torch.tensor([1, 2, 0])
    torch.testing.assert_close(text_model(inputs, "a", mix=(p3, 0.0)), text_model(inputs, "a")[p3])


def test_mixup_loss_mixes_the_two_targets_losses_in_training_only(monkeypatch) -> None:
    import train
    from transference.config import TrainConfig

    torch.manual_seed(0)
    model = HighMMT(_summary_config(summary_heads=True))
    for module in model.modules():  # no dropout: the same rows give the same outputs in training mode
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    x, y, perm = _summary_inputs(b=4), torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 3, 2])
    batch = {"inputs": x, "target": y}
    tc = TrainConfig(mixup=0.4, deep_loss=0.0, modality_loss=0.0)
    loss_fn = train.TaskLoss(model, tc)
    monkeypatch.setattr(train.TaskLoss, "draw_mix", lambda self, target, alpha: (perm, 0.25))
    ce = nn.functional.cross_entropy
    twin = copy.deepcopy(model)  # the running statistics move once per training forward: one call each
    with torch.no_grad():
        got = loss_fn(batch, "cls")
        out = twin(x, "cls", mix=(perm, 0.25))
        torch.testing.assert_close(got, 0.25 * ce(out, y) + 0.75 * ce(out, y[perm]))
        # each part's own loss is mixed alike (train.deep_loss)
        twin = copy.deepcopy(model)
        with_deep = train.TaskLoss(model, TrainConfig(mixup=0.4, deep_loss=2.0, modality_loss=0.0))(batch, "cls")
        out, parts = twin(x, "cls", return_parts=True, mix=(perm, 0.25))
        mixed = lambda logits: 0.25 * ce(logits, y) + 0.75 * ce(logits, y[perm])  # noqa: E731
        torch.testing.assert_close(with_deep, mixed(out) + 2.0 * mixed(parts["deep"]))
        model.eval()  # evaluation: no mixing
        torch.testing.assert_close(loss_fn(batch, "cls"), ce(model(x, "cls"), y))
        model.train()  # train.task_mixup: a task's own strength over train.mixup, 0 = off for that task
        off = train.TaskLoss(model, TrainConfig(mixup=0.4, task_mixup={"cls": 0.0}, deep_loss=0.0, modality_loss=0.0))
        twin = copy.deepcopy(model)
        torch.testing.assert_close(off(batch, "cls"), ce(twin(x, "cls"), y))
        # a regression's loss mixes alike (the targets' losses, not the targets)
        twin = copy.deepcopy(model)
        z = torch.randn(4, 2)
        got = train.TaskLoss(model, tc)({"inputs": {"s": x["s"]}, "target": z}, "reg")
        out = twin({"s": x["s"]}, "reg", mix=(perm, 0.25))
        mse = nn.functional.mse_loss
        torch.testing.assert_close(got, 0.25 * mse(out, z) + 0.75 * mse(out, z[perm]))
    monkeypatch.undo()
    torch.manual_seed(3)
    perm2, lam = train.TaskLoss(model, tc).draw_mix(y, 0.4)
    torch.manual_seed(3)  # lam ~ Beta(a, a), then the rows, from torch's global generator
    a = torch.tensor(0.4)
    assert lam == float(torch.distributions.Beta(a, a).sample()) and perm2.tolist() == torch.randperm(4).tolist()
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="mixup"):
            TrainConfig(mixup=bad)
    with pytest.raises(ValueError, match="task_mixup.cls"):
        TrainConfig(task_mixup={"cls": -1.0})
    from transference.hooks import TrainHook

    class Adds(TrainHook):  # a training method that adds a loss on the batch
        name = "adds"

        def extra_loss(self, ctx, task, batch, outputs):
            return None

    class Changes(TrainHook):  # one that changes the inputs
        name = "changes"

        def training_inputs(self, task, inputs):
            return inputs

    train.TaskLoss(model, tc, hooks=[TrainHook()])  # hooks that leave the loss alone are fine
    for hook in (Adds(), Changes()):
        with pytest.raises(ValueError, match=hook.name):
            train.TaskLoss(model, tc, hooks=[hook])
        with pytest.raises(ValueError, match=hook.name):  # train.py checks before any data is parsed
            train.check_mixup_hooks(TrainConfig(task_mixup={"cls": 0.2}), [hook])
    train.check_mixup_hooks(TrainConfig(), [Adds()])  # no mixup: no conflict
    # a preset's task_mixup for a task the run does not train is no conflict; for one it trains, it is
    train.check_mixup_hooks(TrainConfig(task_mixup={"other": 0.4}), [Adds()], ["cls"])
    with pytest.raises(ValueError, match="adds"):
        train.check_mixup_hooks(TrainConfig(task_mixup={"other": 0.4}), [Adds()], ["cls", "other"])
    with pytest.raises(ValueError, match="adds"):  # train.mixup acts on every task the run trains
        train.check_mixup_hooks(TrainConfig(mixup=0.2, task_mixup={"other": 0.0}), [Adds()], ["cls"])
    train.check_mixup_hooks(TrainConfig(mixup=0.2, task_mixup={"cls": 0.0}), [Adds()], ["cls"])  # off for cls
    train.TaskLoss(model, TrainConfig(task_mixup={"other": 0.4}), hooks=[Adds()])  # "other" is not one of the model's tasks
