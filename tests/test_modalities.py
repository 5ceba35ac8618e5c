"""Registry sweep over every modality embedder, plus per-kind checks.

A new kind needs one entry in ``EXAMPLES``: its options, a few raw samples of different sizes with the
number of real tokens each should give, a bare tensor, and bad inputs with the error they raise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from highmmt.embedder import Embedder
from highmmt.registry import EMBEDDERS
from tasks.base import KINDS

DIM = 16
NAME = "probe"


@dataclass
class Example:
    """One kind's test material.

    options: embedder options (JSON values); samples: raw samples collated into one batch;
    real_tokens: real tokens each sample gives; bare: a bare tensor and the tokens per sample it gives;
    bad: case -> (error type, input given to the embedder); bad_collate: (error type, samples) pairs;
    variants: other (options, real_tokens) run on the same samples; bare_options: options for the bare
    tensor when they differ.
    """

    options: dict[str, Any]
    samples: list[Any]
    real_tokens: list[int]
    bare: tuple[torch.Tensor, int]
    bad: dict[str, tuple[type[Exception], Any]]
    bad_collate: list[tuple[type[Exception], list[Any]]]
    variants: list[tuple[dict[str, Any], list[int]]] = field(default_factory=list)
    bare_options: dict[str, Any] | None = None


def nan_at_first(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[0] = float("nan")
    return x


def image(rng: np.random.Generator) -> Example:
    sizes = [(8, 8), (12, 16), (4, 4), (5, 3)]
    return Example(
        options={"channels": 1, "patch_size": 4},
        samples=[rng.integers(0, 256, (h, w, 1), dtype=np.uint8) for h, w in sizes],
        real_tokens=[4, 12, 1, 2],
        bare=(torch.rand(2, 28, 28, 1), 49),
        bad={
            "rank": (ValueError, torch.rand(2, 28, 28)),
            "channels": (ValueError, torch.rand(2, 28, 28, 3)),
            "nonfinite": (ValueError, nan_at_first(torch.rand(2, 28, 28, 1))),
            "dtype": (TypeError, torch.ones(2, 28, 28, 1, dtype=torch.int64)),
        },
        bad_collate=[
            (ValueError, [np.zeros((8, 8))]),
            (ValueError, [np.zeros((8, 8, 1)), np.zeros((8, 8, 3))]),
            (TypeError, [np.zeros((8, 8, 1), dtype=np.int64)]),
        ],
        variants=[({"channels": 1, "patch_size": 2}, [16, 48, 4, 6]),
                  ({"channels": 1, "patch_size": 2, "stem": "linear"}, [16, 48, 4, 6]),
                  ({"channels": 1, "patch_size": 3, "stem": "conv"}, [9, 24, 4, 2])],
    )


def video(rng: np.random.Generator) -> Example:
    frames = [3, 7, 1]
    return Example(
        options={"channels": 1, "patch_size": 4, "tubelet": 2, "max_frames": 4, "max_size": 16},
        samples=[rng.integers(0, 256, (t, 8, 12, 1), dtype=np.uint8) for t in frames],
        real_tokens=[12, 12, 6],  # tubelets: 2, 2 (7 frames -> 4), 1; x 2 x 3 patches
        bare=(torch.rand(2, 4, 8, 8, 1), 8),
        bad={
            "rank": (ValueError, torch.rand(2, 8, 8, 1)),
            "channels": (ValueError, torch.rand(2, 4, 8, 8, 3)),
            "nonfinite": (ValueError, nan_at_first(torch.rand(2, 4, 8, 8, 1))),
            "dtype": (TypeError, torch.ones(2, 4, 8, 8, 1, dtype=torch.int32)),
        },
        bad_collate=[
            (ValueError, [np.zeros((8, 8, 1))]),
            (ValueError, [np.zeros((2, 8, 8, 1)), np.zeros((2, 8, 9, 1))]),
        ],
        variants=[({"channels": 1, "patch_size": 4, "tubelet": 1, "max_frames": 4, "max_size": 4}, [3, 4, 1]),
                  ({"channels": 1, "patch_size": 4, "tubelet": 2, "max_frames": 4, "max_size": 16, "motion_map": 8},
                   [16, 16, 10]),  # + (8 / 4)^2 motion-map tokens each
                  ({"channels": 1, "patch_size": 4, "tubelet": 1, "max_frames": 4, "max_size": 4, "crop_to_content": True},
                   [3, 4, 1])],
    )


def audio(rng: np.random.Generator) -> Example:
    # 8 ms window = 64 samples (n_fft 64), 4 ms hop = 32 samples, 2 frames per token
    lengths = [800, 400, 10]
    return Example(
        options={"sample_rate": 8000, "n_mels": 8, "win_ms": 8, "hop_ms": 4, "frames_per_token": 2},
        samples=[(0.1 * rng.standard_normal(s)).astype(np.float32) for s in lengths],
        real_tokens=[12, 5, 1],  # frames (s - 64) // 32 + 1 = 24, 11, 0 -> tokens 12, 5, 0 (kept: 1)
        bare=(0.1 * torch.randn(2, 800), 12),
        bad={
            "rank": (ValueError, torch.randn(2, 1, 800)),
            "nonfinite": (ValueError, nan_at_first(torch.randn(2, 800))),
            "dtype": (TypeError, torch.ones(2, 800, dtype=torch.int16)),
        },
        bad_collate=[(ValueError, [np.zeros((100, 2), np.float32)])],
        variants=[({"sample_rate": 8000, "n_mels": 8, "win_ms": 8, "hop_ms": 4, "frames_per_token": 1}, [24, 11, 1]),
                  ({"sample_rate": 8000, "n_mels": 8, "win_ms": 8, "hop_ms": 4, "frames_per_token": 2, "stem": "conv"},
                   [12, 5, 1])],
    )


def timeseries(rng: np.random.Generator) -> Example:
    lengths = [5, 12, 1, 0]
    return Example(
        options={"channels": 3, "max_len": 8, "patch": 2},
        samples=[rng.standard_normal((t, 3)).astype(np.float32) for t in lengths],
        real_tokens=[4, 5, 2, 2],  # 12 steps -> 8; the empty sample keeps one token; + the summary token
        bare=(torch.randn(2, 10, 3), 5),
        bad={
            "rank": (ValueError, torch.randn(2, 10)),
            "channels": (ValueError, torch.randn(2, 10, 4)),
            "nonfinite": (ValueError, nan_at_first(torch.randn(2, 10, 3))),
            "dtype": (TypeError, torch.ones(2, 10, 3, dtype=torch.int64)),
        },
        bad_collate=[
            (ValueError, [np.zeros((5,), np.float32)]),
            (ValueError, [np.zeros((5, 3)), np.zeros((5, 2))]),
        ],
        variants=[({"channels": 3, "max_len": 8, "patch": 1}, [6, 9, 2, 2]),
                  ({"channels": 3, "max_len": 8, "patch": 2, "summary": False}, [3, 4, 1, 1]),
                  ({"channels": 3, "max_len": 8, "patch": 2, "stem": "linear"}, [4, 5, 2, 2])],
    )


def irregular_timeseries(rng: np.random.Generator) -> Example:
    def sample(t: int) -> dict[str, np.ndarray]:
        observed = rng.random((t, 2)) < 0.6
        values = np.where(observed, rng.standard_normal((t, 2)), np.nan).astype(np.float32)  # NaN where unobserved
        return {"values": values, "observed": observed, "times": np.sort(rng.uniform(0, 48, t)).astype(np.float32)}

    x = torch.randn(2, 6, 2)
    return Example(
        options={"channels": 2, "max_len": 16},
        samples=[sample(t) for t in (5, 20, 0)],
        real_tokens=[6, 17, 2],  # + the summary token
        bare=(x, 7),
        bad={
            "rank": (ValueError, torch.randn(2, 6)),
            "channels": (ValueError, torch.randn(2, 6, 3)),
            "nonfinite": (ValueError, nan_at_first(x)),
            "nonfinite_time": (ValueError, {"x": x, "times": nan_at_first(torch.rand(2, 6))}),
            "dtype": (TypeError, torch.ones(2, 6, 2, dtype=torch.int64)),
        },
        bad_collate=[
            (ValueError, [np.zeros((5, 2), np.float32)]),
            (ValueError, [{"values": np.zeros((5, 2)), "observed": np.ones((5, 2), bool), "times": np.zeros(4)}]),
        ],
        variants=[({"channels": 2, "max_len": 4, "time_bands": 3}, [5, 5, 2]),
                  ({"channels": 2, "max_len": 4, "time_bands": 3, "summary": False}, [4, 4, 1])],
    )


def tabular(rng: np.random.Generator) -> Example:
    def sample() -> dict[str, np.ndarray]:
        observed = rng.random(3) < 0.7
        return {
            "numeric": np.where(observed, rng.standard_normal(3), np.nan).astype(np.float32),
            "numeric_observed": observed,
            "categorical": np.array([rng.integers(-1, 4), rng.integers(-1, 2)], dtype=np.int64),
        }

    samples = [sample() for _ in range(3)]
    samples[0]["numeric_observed"][:] = False  # one row with every numeric value missing
    cat = torch.tensor([[0, 1], [3, -1]])
    return Example(
        options={"num_numeric": 3, "categorical_cardinalities": [4, 2]},
        samples=samples,
        real_tokens=[5, 5, 5],
        bare=(torch.randn(2, 3), 3),
        bare_options={"num_numeric": 3},
        bad={
            "rank": (ValueError, torch.randn(2, 3, 1)),
            "channels": (ValueError, torch.randn(2, 4)),
            "nonfinite": (ValueError, {"x": nan_at_first(torch.randn(2, 3)), "categorical": cat}),
            "dtype": (TypeError, {"x": torch.ones(2, 3, dtype=torch.int64), "categorical": cat}),
            "category_range": (ValueError, {"x": torch.randn(2, 3), "categorical": torch.tensor([[0, 2], [4, -1]])}),
            "category_dtype": (TypeError, {"x": torch.randn(2, 3), "categorical": cat.float()}),
            "category_missing": (ValueError, {"x": torch.randn(2, 3)}),
        },
        bad_collate=[
            (ValueError, [np.zeros(3, np.float32)]),
            (ValueError, [{"numeric": np.zeros(3, np.float32), "categorical": np.zeros(2, np.int64)},
                          {"numeric": np.zeros(4, np.float32), "categorical": np.zeros(2, np.int64)}]),
        ],
    )


def text(rng: np.random.Generator) -> Example:
    return Example(
        options={"max_len": 16},
        samples=["hello", "héllo wörld ✓, longer than sixteen bytes", ""],
        real_tokens=[5, 16, 1],
        bare=(torch.randint(0, 256, (2, 10)), 10),
        bad={
            "rank": (ValueError, torch.randint(0, 256, (2, 10, 1))),
            "ids": (ValueError, torch.full((2, 10), 300)),
            "dtype": (TypeError, torch.rand(2, 10)),
        },
        bad_collate=[(TypeError, ["ok", 3])],
    )


def pose(rng: np.random.Generator) -> Example:
    frames = [5, 9, 2]
    return Example(
        options={"joints": 4, "coords": 3, "max_frames": 6},
        samples=[rng.standard_normal((t, 4, 3)).astype(np.float32) for t in frames],
        real_tokens=[6, 7, 3],  # + the summary token
        bare=(torch.randn(2, 5, 4, 3), 6),
        bad={
            "rank": (ValueError, torch.randn(2, 5, 12)),
            "channels": (ValueError, torch.randn(2, 5, 5, 3)),
            "coords": (ValueError, torch.randn(2, 5, 4, 2)),
            "nonfinite": (ValueError, nan_at_first(torch.randn(2, 5, 4, 3))),
            "dtype": (TypeError, torch.ones(2, 5, 4, 3, dtype=torch.int64)),
        },
        bad_collate=[
            (ValueError, [np.zeros((5, 12), np.float32)]),
            (ValueError, [np.zeros((5, 4, 3)), np.zeros((5, 5, 3))]),
        ],
        variants=[({"joints": 4, "coords": 3, "max_frames": 6, "tokens": "joint"}, [21, 25, 9]),
                  ({"joints": 4, "coords": 3, "max_frames": 6, "summary": False}, [5, 6, 2]),
                  ({"joints": 4, "coords": 3, "max_frames": 6, "stem": "conv"}, [6, 7, 3])],
    )


def set_(rng: np.random.Generator) -> Example:
    sizes = [4, 1, 6]
    return Example(
        options={"channels": 2},
        samples=[rng.standard_normal((n, 2)).astype(np.float32) for n in sizes],
        real_tokens=sizes,
        bare=(torch.randn(2, 5, 2), 5),
        bad={
            "rank": (ValueError, torch.randn(2, 5)),
            "channels": (ValueError, torch.randn(2, 5, 3)),
            "nonfinite": (ValueError, nan_at_first(torch.randn(2, 5, 2))),
            "dtype": (TypeError, torch.ones(2, 5, 2, dtype=torch.int64)),
        },
        bad_collate=[(ValueError, [np.zeros((4, 2)), np.zeros((4, 3))])],
    )


def pretrained(rng: np.random.Generator) -> Example:
    """A patch convolution as the backbone (any nn.Module works; timm models: tests/test_pretrained.py)."""
    sizes = [(8, 8), (12, 16), (4, 4)]
    conv = {"in_channels": 1, "out_channels": 8, "kernel_size": 4, "stride": 4}
    return Example(
        options={"channels": 1, "backbone": "module:torch.nn:Conv2d", "backbone_options": conv, "feature_dim": 8},
        samples=[rng.integers(0, 256, (h, w, 1), dtype=np.uint8) for h, w in sizes],
        real_tokens=[4, 12, 1],
        bare=(torch.rand(2, 8, 8, 1), 4),
        bad={
            "rank": (ValueError, torch.rand(2, 8, 8)),
            "channels": (ValueError, torch.rand(2, 8, 8, 3)),
            "nonfinite": (ValueError, nan_at_first(torch.rand(2, 8, 8, 1))),
            "dtype": (TypeError, torch.ones(2, 8, 8, 1, dtype=torch.int64)),
        },
        bad_collate=[(ValueError, [np.zeros((8, 8, 1), np.uint8), np.zeros((8, 8, 2), np.uint8)])],
        variants=[({"channels": 1, "backbone": "module:torch.nn:Conv2d", "backbone_options": conv, "feature_dim": 8,
                    "tokens": "pooled"}, [1, 1, 1])],
    )


EXAMPLES: dict[str, Callable[[np.random.Generator], Example]] = {
    "image": image,
    "video": video,
    "audio": audio,
    "timeseries": timeseries,
    "irregular_timeseries": irregular_timeseries,
    "tabular": tabular,
    "text": text,
    "pose": pose,
    "set": set_,
    "pretrained": pretrained,
}
KIND_NAMES = EMBEDDERS.names()


def example(kind: str) -> Example:
    torch.manual_seed(0)
    return EXAMPLES[kind](np.random.default_rng(0))


def build(kind: str, options: dict[str, Any]) -> Embedder:
    torch.manual_seed(0)
    options = json.loads(json.dumps(options))  # options arrive from JSON task specs
    return EMBEDDERS.get(kind)(name=NAME, dim=DIM, **options)


def configurations(kind: str) -> list[tuple[dict[str, Any], list[int]]]:
    ex = example(kind)
    return [(ex.options, ex.real_tokens), *ex.variants]


CONFIGS = [(k, i) for k in KIND_NAMES for i in range(len(configurations(k)))]


def test_every_kind_is_registered_and_has_an_example() -> None:
    assert sorted(KINDS) == KIND_NAMES
    assert sorted(EXAMPLES) == KIND_NAMES
    for kind in KIND_NAMES:
        cls = EMBEDDERS.get(kind)
        assert issubclass(cls, Embedder) and cls.kind == kind
        assert cls.__module__.startswith("modalities.") and cls.__doc__


@pytest.mark.parametrize("kind,config", CONFIGS)
def test_shapes_masks_and_padding_invariance(kind: str, config: int) -> None:
    """Batched tokens of each sample equal the tokens of that sample alone; padding is masked and zero."""
    ex = example(kind)
    options, real = configurations(kind)[config]
    emb = build(kind, options)
    batch = EMBEDDERS.get(kind).collate(ex.samples)
    assert batch["mask"].dtype == torch.bool
    with torch.no_grad():
        tokens, mask = emb(batch)
    b = len(ex.samples)
    assert tokens.dim() == 3 and tokens.shape[0] == b and tokens.shape[2] == DIM
    assert mask.shape == tokens.shape[:2] and mask.dtype == torch.bool
    assert torch.isfinite(tokens).all()
    assert mask.sum(dim=1).tolist() == real
    assert (tokens[~mask] == 0).all()
    for i, sample in enumerate(ex.samples):
        with torch.no_grad():
            alone, alone_mask = emb(EMBEDDERS.get(kind).collate([sample]))
        assert int(alone_mask.sum()) == real[i]
        torch.testing.assert_close(tokens[i][mask[i]], alone[0][alone_mask[0]], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind,config", CONFIGS)
def test_every_parameter_gets_a_gradient(kind: str, config: int) -> None:
    ex = example(kind)
    emb = build(kind, configurations(kind)[config][0])
    tokens, mask = emb(EMBEDDERS.get(kind).collate(ex.samples))
    weights = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1))
    (tokens * weights)[mask].sum().backward()
    params = dict(emb.named_parameters())
    assert params
    for pname, p in params.items():
        assert p.grad is not None, f"{kind}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{kind}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{kind}: {pname} got an all-zero gradient"


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_collate_options_give_the_same_tokens(kind: str) -> None:
    """Loaders may pass the modality options to collate (which then resamples/truncates early)."""
    ex = example(kind)
    emb = build(kind, ex.options)
    cls = EMBEDDERS.get(kind)
    with torch.no_grad():
        plain, plain_mask = emb(cls.collate(ex.samples))
        early, early_mask = emb(cls.collate(ex.samples, **ex.options))
    assert plain_mask.sum(1).tolist() == early_mask.sum(1).tolist()
    for i in range(len(ex.samples)):
        torch.testing.assert_close(plain[i][plain_mask[i]], early[i][early_mask[i]], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_bare_tensor(kind: str) -> None:
    ex = example(kind)
    x, n = ex.bare
    tokens, mask = build(kind, ex.bare_options or ex.options)(x)
    assert tokens.shape == (x.shape[0], n, DIM)
    assert mask.all() and torch.isfinite(tokens).all()


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_bfloat16_weights(kind: str) -> None:
    """A bf16 model (inputs cast like the model casts them) gives bf16 finite tokens."""
    ex = example(kind)
    emb = build(kind, ex.options).to(torch.bfloat16)
    batch = {
        k: v.to(torch.bfloat16) if v.is_floating_point() else v
        for k, v in EMBEDDERS.get(kind).collate(ex.samples).items()
    }
    with torch.no_grad():
        tokens, mask = emb(batch)
    assert tokens.dtype == torch.bfloat16 and torch.isfinite(tokens).all()
    assert mask.sum(1).tolist() == ex.real_tokens


BAD = [(k, case) for k in KIND_NAMES for case in example(k).bad] + [(k, "empty") for k in KIND_NAMES]


@pytest.mark.parametrize("kind,case", BAD)
def test_bad_inputs_raise_naming_the_modality(kind: str, case: str) -> None:
    ex = example(kind)
    emb = build(kind, ex.options)
    if case == "empty":
        error, bad = ValueError, ex.bare[0][:0]
    else:
        error, bad = ex.bad[case]
    with pytest.raises(error, match=f"{NAME}.*{kind}"):
        emb(bad)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_bad_inputs_cover_rank_and_dtype(kind: str) -> None:
    assert {"rank", "dtype"} <= set(example(kind).bad)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_collate_rejects_bad_samples_naming_the_kind(kind: str) -> None:
    cls = EMBEDDERS.get(kind)
    with pytest.raises(ValueError, match=kind):
        cls.collate([])
    for error, samples in example(kind).bad_collate:
        with pytest.raises(error, match=kind):
            cls.collate(samples)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_collate_checks_option_counts(kind: str) -> None:
    """Options handed to collate that disagree with the samples are an error, not silently ignored."""
    ex = example(kind)
    wrong = {"channels": 99, "joints": 99, "num_numeric": 99}
    keys = [k for k in wrong if k in ex.options]
    if not keys:
        pytest.skip(f"{kind} has no count option that collate can check")
    with pytest.raises(ValueError, match=kind):
        EMBEDDERS.get(kind).collate(ex.samples, **{**ex.options, keys[0]: wrong[keys[0]]})


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_constructor_rejects_bad_options(kind: str) -> None:
    ex = example(kind)
    key = next(k for k, v in ex.options.items() if isinstance(v, int) and not isinstance(v, bool))
    with pytest.raises(ValueError, match=key):
        build(kind, {**ex.options, key: -1})


def test_mask_with_no_real_token_keeps_the_first() -> None:
    emb = build("timeseries", {"channels": 1, "summary": False})
    tokens, mask = emb({"x": torch.randn(2, 4, 1), "mask": torch.tensor([[True, True, False, False], [False] * 4])})
    assert mask.tolist() == [[True, True, False, False], [True, False, False, False]]
    assert (tokens[1, 1:] == 0).all() and (tokens[0, 2:] == 0).all()


def test_set_is_permutation_equivariant() -> None:
    emb = build("set", {"channels": 3})
    x = torch.randn(2, 7, 3)
    mask = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    perm = torch.tensor([3, 0, 4, 1, 2, 5, 6])  # permutes the real elements of both samples
    with torch.no_grad():
        tokens, m = emb({"x": x, "mask": mask})
        tokens_p, m_p = emb({"x": x[:, perm], "mask": mask[:, perm]})
    torch.testing.assert_close(tokens_p, tokens[:, perm])
    assert torch.equal(m_p, m[:, perm])

    def pooled(t: torch.Tensor, mk: torch.Tensor) -> torch.Tensor:
        return (t * mk[..., None]).sum(1) / mk.sum(1, keepdim=True)

    torch.testing.assert_close(pooled(tokens_p, m_p), pooled(tokens, m))


def test_text_round_trip_and_byte_ids() -> None:
    from modalities.text import PAD_ID, decode, encode

    s = "naïve café — 日本語 🎉 Ωμέγα"
    assert decode(encode(s)) == s
    batch = EMBEDDERS.get("text").collate([s, "a"])
    ids = list(s.encode("utf-8"))
    assert batch["x"][0].tolist() == ids
    assert batch["x"][1].tolist() == [97] + [PAD_ID] * (len(ids) - 1)
    assert batch["mask"].sum(1).tolist() == [len(ids), 1]
    assert decode(batch["x"][1].tolist()) == "a"



WORDS = {"tokenizer": "words", "buckets": 64, "max_len": 16}


def test_text_word_hash_is_fixed_across_processes() -> None:
    """CRC-32 ids, not Python's salted hash(): the same in this and any other process, on any machine."""
    import subprocess
    import sys

    from modalities.text import encode_words, hash_token, words

    assert words("Not bad, héllo-World!") == ["not", "bad", ",", "héllo", "-", "world", "!"]
    assert hash_token("good", 2**15) == 10141 and hash_token("not bad", 2**15) == 14638
    assert encode_words("Not bad!") == [3458, 14638, 15956, 30025, 15534]  # not, "not bad", bad, "bad !", !
    code = "from modalities.text import encode_words; print(encode_words('Not bad!'))"
    seed = "1" if os.environ.get("PYTHONHASHSEED") == "12345" else "12345"  # another salt than this process's
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": seed}, cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "[3458, 14638, 15956, 30025, 15534]"


def test_text_words_shapes_masks_and_padding_invariance() -> None:
    samples = ["A good film.", "not bad at all , really not bad !", ""]
    cls = EMBEDDERS.get("text")
    batch = cls.collate(samples, **WORDS)
    assert batch["x"].dtype == torch.int64 and batch["mask"].dtype == torch.bool
    assert batch["mask"].sum(1).tolist() == [7, 16, 0]  # k tokens -> 2k - 1 ids, capped at max_len
    assert batch["x"].shape == (3, 16) and (batch["x"][~batch["mask"]] == 0).all()
    assert ((batch["x"] >= 1) & (batch["x"] < 64))[batch["mask"]].all()
    emb = build("text", WORDS)
    assert emb.token_embed.num_embeddings == 64 and emb.token_embed.padding_idx == 0
    with torch.no_grad():
        tokens, mask = emb(batch)
    assert tokens.shape == (3, 16, DIM) and mask.sum(1).tolist() == [7, 16, 1]
    assert torch.isfinite(tokens).all() and (tokens[~mask] == 0).all()
    for i, sample in enumerate(samples):
        with torch.no_grad():
            alone, alone_mask = emb(cls.collate([sample], **WORDS))
        torch.testing.assert_close(tokens[i][mask[i]], alone[0][alone_mask[0]])
    long = emb(cls.collate(["a b c d e f g h i j k l m n o p"], tokenizer="words", buckets=64))[1]
    assert long.shape == (1, 16)  # collate without max_len: the embedder truncates (31 ids -> 16)


def test_text_words_gradient_flows_to_used_rows_only() -> None:
    emb = build("text", WORDS)
    batch = EMBEDDERS.get("text").collate(["good film", "bad"], **WORDS)
    tokens, mask = emb(batch)
    (tokens * torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1)))[mask].sum().backward()
    grad = emb.token_embed.weight.grad
    used = batch["x"][batch["mask"]].unique()
    assert torch.isfinite(grad).all() and (grad[used].abs().sum(1) > 0).all()
    assert (grad[0] == 0).all()  # the padding row never learns


def test_text_words_rejects_out_of_range_ids_and_bad_options() -> None:
    emb = build("text", WORDS)
    for bad in (64, -1):
        with pytest.raises(ValueError, match=f"{NAME}.*text.*0..63"):
            emb({"x": torch.tensor([[1, bad]]), "mask": torch.tensor([[True, True]])})
    emb({"x": torch.tensor([[1, 999]]), "mask": torch.tensor([[True, False]])})  # padding is not checked
    with pytest.raises(ValueError, match="tokenizer"):
        build("text", {"tokenizer": "sentencepiece"})
    with pytest.raises(ValueError, match="tokenizer"):
        EMBEDDERS.get("text").collate(["a"], tokenizer="chars")
    with pytest.raises(ValueError, match="buckets"):
        build("text", {"tokenizer": "words", "buckets": 1})
    assert build("text", {}).tokenizer == "bytes"  # saved configs without the option keep bytes


def test_text_collate_follows_the_tokenizer_option() -> None:
    from modalities.text import encode_words

    cls = EMBEDDERS.get("text")
    by_default = cls.collate(["Hi there"], max_len=16)
    assert by_default["x"][0].tolist() == list(b"Hi there")
    hashed = cls.collate(["Hi there", "x"], **{**WORDS, "unknown_option": 1})
    assert hashed["x"][0].tolist() == encode_words("Hi there", 64)
    assert hashed["x"][1].tolist() == encode_words("x", 64) + [0, 0]


def test_default_token_budgets() -> None:
    """Defaults keep real data within a few hundred tokens per sample."""
    counts = {}
    with torch.no_grad():
        counts["mnist"] = build("image", {})(torch.rand(1, 28, 28, 1))[0].shape[1]
        counts["omniglot"] = build("image", {})(torch.rand(1, 105, 105, 1))[0].shape[1]
        depth = torch.randint(0, 256, (1, 60, 120, 160, 1), dtype=torch.uint8)
        counts["depth_video"] = build("video", {})(depth)[0].shape[1]
        counts["audio_1s"] = build("audio", {})(0.1 * torch.randn(1, 8000))[0].shape[1]
        counts["imu"] = build("timeseries", {"channels": 6})(torch.randn(1, 1000, 6))[0].shape[1]
        counts["skeleton"] = build("pose", {})(torch.randn(1, 100, 20, 3))[0].shape[1]
    assert counts == {"mnist": 49, "omniglot": 256, "depth_video": 480, "audio_1s": 25, "imu": 257, "skeleton": 65}


def test_image_resize_keeps_mask_of_smaller_images() -> None:
    emb = build("image", {"patch_size": 4, "max_size": 16})
    batch = EMBEDDERS.get("image").collate([np.zeros((32, 32, 1), np.uint8), np.zeros((16, 16, 1), np.uint8)])
    tokens, mask = emb(batch)
    assert tokens.shape == (2, 16, DIM) and mask.sum(1).tolist() == [16, 4]


def test_irregular_times_and_observed_matter() -> None:
    emb = build("irregular_timeseries", {"channels": 2})
    x = torch.randn(1, 3, 2)
    base = {"x": x, "observed": torch.ones(1, 3, 2, dtype=torch.bool), "times": torch.tensor([[0.0, 1.0, 2.0]])}
    with torch.no_grad():
        t0, _ = emb(base)
        t_shift, _ = emb({**base, "times": base["times"] + 5.0})
        hidden = {**base, "observed": torch.zeros(1, 3, 2, dtype=torch.bool), "x": torch.full((1, 3, 2), float("nan"))}
        t_hidden, _ = emb(hidden)
    assert not torch.allclose(t0, t_shift)
    assert torch.isfinite(t_hidden).all()
    # unobserved values do not leak: any value there gives the same tokens
    with torch.no_grad():
        t_zero, _ = emb({**hidden, "x": torch.zeros(1, 3, 2)})
    torch.testing.assert_close(t_hidden, t_zero)


def test_tabular_missing_values_use_the_missing_embedding() -> None:
    emb = build("tabular", {"num_numeric": 2, "categorical_cardinalities": [3]})
    batch = EMBEDDERS.get("tabular").collate([
        {"numeric": np.array([np.nan, 1.0], np.float32), "numeric_observed": np.array([False, True]),
         "categorical": np.array([-1])},
        {"numeric": np.array([7.0, 1.0], np.float32), "numeric_observed": np.array([False, True]),
         "categorical": np.array([2])},
    ])
    with torch.no_grad():
        tokens, mask = emb(batch)
    assert tokens.shape == (2, 3, DIM) and mask.all()
    torch.testing.assert_close(tokens[0, :2], tokens[1, :2])  # missing numeric: value ignored
    assert not torch.allclose(tokens[0, 2], tokens[1, 2])  # missing vs category 2


def test_audio_utterance_normalization_removes_a_constant_gain_and_ignores_padding():
    from modalities.audio import AudioEmbedder, utterance_normalize

    spec = torch.randn(2, 3, 10)
    out = utterance_normalize(spec, torch.tensor([10, 4]))
    assert torch.allclose(out[0].mean(dim=1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out[1, :, :4].std(dim=1, unbiased=False), torch.ones(3), atol=1e-3)
    assert (out[1, :, 4:] == 0).all()
    torch.manual_seed(0)
    emb = AudioEmbedder(name="a", dim=8, normalize="utterance")
    wave = 0.1 * torch.randn(1, 4000)
    loud, _ = emb.embed({"x": 4 * wave, "mask": torch.ones(1, 4000, dtype=torch.bool)})
    quiet, _ = emb.embed({"x": wave, "mask": torch.ones(1, 4000, dtype=torch.bool)})
    assert torch.allclose(loud, quiet, atol=1e-4)  # a gain is a constant shift of the log-mel: removed
    with pytest.raises(ValueError, match="normalize"):
        AudioEmbedder(name="a", dim=8, normalize="global")


def test_audio_band_warp_stretches_the_mel_axis_in_training_only():
    from modalities.audio import AudioEmbedder, warp_bands

    spec = torch.arange(5.0).repeat(2, 1).unsqueeze(-1).expand(2, 5, 3)  # band j holds the value j
    torch.testing.assert_close(warp_bands(spec, 0.0), spec)
    torch.manual_seed(0)
    warped = warp_bands(spec, 0.2)
    alpha = warped[:, 1, 0]  # band 1 reads source band alpha
    assert ((alpha >= 0.8) & (alpha <= 1.2)).all() and not torch.allclose(alpha, torch.ones(2))
    torch.testing.assert_close(warped[:, :, 0], (torch.arange(5.0) * alpha[:, None]).clamp(max=4))  # linear in j, top repeated
    torch.testing.assert_close(warped[..., 0:1].expand_as(warped), warped)  # every frame alike
    emb = AudioEmbedder(name="a", dim=8, warp=0.1)
    batch = {"x": 0.1 * torch.randn(2, 4000), "mask": torch.ones(2, 4000, dtype=torch.bool)}
    emb.eval()
    with torch.no_grad():
        a, _ = emb.embed(batch)
        b, _ = emb.embed(batch)
        emb.train()
        c, _ = emb.embed(batch)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="warp"):
        AudioEmbedder(name="a", dim=8, warp=1.5)


def test_text_bag_of_words_options():
    from modalities.text import TextEmbedder, encode_words

    assert len(encode_words("not bad at all")) == 7 and len(encode_words("not bad at all", bigrams=False)) == 4
    batch = TextEmbedder.collate(["not bad at all"], tokenizer="words", bigrams=False)
    assert batch["x"].shape == (1, 4)
    torch.manual_seed(0)
    bag = TextEmbedder(name="t", dim=8, tokenizer="words", positions=False, bigrams=False)
    a, _ = bag.embed(TextEmbedder.collate(["bad not"], tokenizer="words", bigrams=False))
    b, _ = bag.embed(TextEmbedder.collate(["not bad"], tokenizer="words", bigrams=False))
    assert torch.allclose(a.sort(dim=1).values, b.sort(dim=1).values)  # word order is gone: the same bag
    with pytest.raises(ValueError, match="positions"):
        TextEmbedder(name="t", dim=8, positions="no")


def test_text_bag_token_is_the_mean_of_the_real_token_rows():
    from modalities.text import TextEmbedder

    torch.manual_seed(0)
    emb = TextEmbedder(name="t", dim=8, tokenizer="words", positions=True, bigrams=False, bag=True)
    batch = TextEmbedder.collate(["not bad at all", "good"], tokenizer="words", bigrams=False)
    tokens, mask = emb.embed(batch)
    assert tokens.shape == (2, 5, 8) and mask.tolist() == [[True] * 5, [True, False, False, False, True]]
    rows = emb.token_embed(batch["x"])
    torch.testing.assert_close(tokens[0, -1], rows[0].mean(0) + emb.bag_marker)  # no positions in the bag
    torch.testing.assert_close(tokens[1, -1], rows[1, 0] + emb.bag_marker)  # padding left out of the mean
    swapped, _ = emb.embed(TextEmbedder.collate(["all at bad not", "good"], tokenizer="words", bigrams=False))
    torch.testing.assert_close(swapped[0, -1], tokens[0, -1])  # word order does not change the bag
    assert not torch.allclose(swapped[0, :4], tokens[0, :4])  # it does change the positioned tokens
    tokens.sum().backward()
    assert emb.bag_marker.grad is not None and emb.token_embed.weight.grad.abs().sum() > 0
    assert TextEmbedder(name="t", dim=8, tokenizer="words").bag_marker is None  # off by default
    with pytest.raises(ValueError, match="bag"):
        TextEmbedder(name="t", dim=8, bag="yes")


def test_summary_segments_are_statistics_of_equal_runs_of_real_steps():
    from modalities._common import SummaryToken, masked_summary, segment_masks
    from modalities.timeseries import TimeseriesEmbedder

    valid = torch.zeros(2, 7, 1, dtype=torch.bool)
    valid[0, :6] = True  # 6 real steps -> 2 + 2 + 2; padding in no part
    valid[1, :4] = True  # 4 real steps -> 2 + 1 + 1 (floor(3 i / 4) for i = 0..3: 0, 0, 1, 2)
    parts = segment_masks(valid, 3)
    assert [p[0, :, 0].tolist() for p in parts] == [[True, True] + [False] * 5, [False] * 2 + [True, True] + [False] * 3,
                                                   [False] * 4 + [True, True, False]]
    assert [int(p[1].sum()) for p in parts] == [2, 1, 1]
    x = torch.arange(14.0).view(2, 7, 1)
    up, down = x.clone(), x.clone()
    down[0, :6, 0] = x[0, :6, 0].flip(0)  # the same values in reverse order: the whole-series min/max/mean/std agree
    torch.manual_seed(0)
    token = SummaryToken(1, 8, segments=3)
    assert token.proj.in_features == 7 * 4
    whole = masked_summary(up, valid)[:, :, 1:5]  # mean, std, min, max
    torch.testing.assert_close(whole[0], masked_summary(down, valid)[0, :, 1:5])
    assert not torch.allclose(token(up, valid)[0], token(down, valid)[0])  # the parts tell the order apart
    plain = SummaryToken(1, 8)
    assert plain.proj.in_features == 7
    emb = TimeseriesEmbedder(name="s", dim=8, channels=2, summary_segments=3)
    assert emb.summary.proj.in_features == 7 * 2 * 4
    with pytest.raises(ValueError, match="summary_segments"):
        SummaryToken(1, 8, segments=-1)


def test_summary_steps_are_the_mean_absolute_change_between_consecutive_valid_values():
    from modalities._common import SummaryToken, masked_summary, mean_abs_step
    from modalities.irregular_timeseries import IrregularTimeseriesEmbedder
    from modalities.pose import PoseEmbedder
    from modalities.timeseries import TimeseriesEmbedder

    x = torch.tensor([[1.0, 0.0], [3.0, 5.0], [9.0, 0.0], [6.0, 1.0]]).unsqueeze(0)  # [1, t=4, c=2]
    valid = torch.tensor([[1, 0], [1, 1], [0, 0], [1, 1]], dtype=torch.bool).unsqueeze(0)
    # channel 0: 1 -> 3 -> (gap; the 9 is not valid) -> 6: |2| and |3|; channel 1: 5 -> 1: |4|
    torch.testing.assert_close(mean_abs_step(torch.where(valid, x, 0.0), valid), torch.tensor([[2.5, 4.0]]))
    stats = masked_summary(x, valid, steps=True)
    assert stats.shape == (1, 2, 8)
    torch.testing.assert_close(stats[..., :7], masked_summary(x, valid))  # the 7 others unchanged
    one = torch.zeros(1, 4, 1, dtype=torch.bool)
    one[0, 2] = True  # a single valid value: no step
    assert float(mean_abs_step(torch.ones(1, 4, 1), one)) == 0.0
    # the same values in another order: mean, std, min, max agree, the steps tell them apart
    smooth, rough = torch.tensor([0.0, 1, 2, 3]).view(1, 4, 1), torch.tensor([0.0, 2, 1, 3]).view(1, 4, 1)
    real = torch.ones(1, 4, 1, dtype=torch.bool)
    assert float(mean_abs_step(smooth, real)) == 1.0 and float(mean_abs_step(rough, real)) == pytest.approx(5 / 3)
    assert SummaryToken(2, 8, segments=2, steps=True).proj.in_features == 8 * 2 * 3
    assert TimeseriesEmbedder(name="s", dim=8, channels=3, summary_steps=True).summary.proj.in_features == 8 * 3
    assert PoseEmbedder(name="p", dim=8, joints=2, coords=3, summary_steps=True).summary.proj.in_features == 8 * 6
    assert IrregularTimeseriesEmbedder(name="v", dim=8, channels=5, summary_steps=True).summary.proj.in_features == 8 * 5
    assert TimeseriesEmbedder(name="s", dim=8, channels=3).summary.proj.in_features == 7 * 3  # off by default
    with pytest.raises(ValueError, match="summary_steps"):
        SummaryToken(1, 8, steps="yes")


def test_summary_norm_standardises_by_the_training_rows_and_freezes_at_evaluation():
    from modalities._common import RunningStandardize, SummaryToken
    from modalities.timeseries import TimeseriesEmbedder

    torch.manual_seed(0)
    x = torch.randn(90, 3) * torch.tensor([0.01, 10.0, 0.0]) + torch.tensor([5.0, -2.0, 3.0])
    norm = RunningStandardize(3).train()
    for part in x.split(7):  # uneven batches: the running moments are still exact
        norm(part)
    torch.testing.assert_close(norm.mean, x.mean(0))
    torch.testing.assert_close((norm.m2 / (norm.count - 1)).sqrt(), x.std(0), rtol=1e-4, atol=1e-6)
    z = norm.eval()(x)
    torch.testing.assert_close(z[:, :2].mean(0), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(z[:, :2].std(0), torch.ones(2), atol=1e-4, rtol=0)
    assert torch.equal(z[:, 2], torch.zeros(90))  # a constant feature: centred, std kept at 1
    seen = float(norm.count)
    norm(torch.randn(5, 3) * 100)
    assert float(norm.count) == seen  # evaluation rows never join the statistics
    # a row's value does not depend on the rest of its batch
    assert torch.equal(norm(x[:1]), norm(x[:4])[:1])
    # in the token: the buffers are saved with the weights; off by default
    emb = TimeseriesEmbedder(name="s", dim=8, channels=2, summary_norm=True)
    assert {"summary.norm.count", "summary.norm.mean", "summary.norm.m2"} <= set(emb.state_dict())
    assert TimeseriesEmbedder(name="s", dim=8, channels=2).summary.norm is None
    with pytest.raises(ValueError, match="summary_norm"):
        SummaryToken(1, 8, norm=1)


def test_text_wide_bag_holds_each_distinct_word_once():
    from modalities.text import TextEmbedder, encode_words

    emb = TextEmbedder(name="t", dim=8, tokenizer="words", buckets=64, wide=True)
    assert emb.wide_size == 64 and TextEmbedder(name="t", dim=8, tokenizer="words").wide_size == 0  # off by default
    texts = ["not bad not bad", "", "good movie"]
    ids, weights = emb.wide_bag(TextEmbedder.collate(texts, tokenizer="words", buckets=64))
    for row, text in enumerate(texts):
        distinct = set(encode_words(text, 64))  # words and bigrams, each once
        kept = ids[row][weights[row] > 0].tolist()
        assert sorted(kept) == sorted(distinct)
        if distinct:
            torch.testing.assert_close(weights[row][weights[row] > 0], torch.full((len(distinct),), len(distinct) ** -0.5))
    assert (ids[weights == 0] == 0).all()  # repeats and padding point at row 0, which pads
    byte_ids, byte_weights = TextEmbedder(name="t", dim=8, wide=True).wide_bag(TextEmbedder.collate(["abba", "\x00"]))
    assert sorted(byte_ids[0][byte_weights[0] > 0].tolist()) == [ord("a") + 1, ord("b") + 1]  # bytes: id + 1, 0 pads
    assert byte_ids[1][byte_weights[1] > 0].tolist() == [1]  # the NUL byte is a byte like any other
    with pytest.raises(NotImplementedError, match="no wide input"):
        TextEmbedder(name="t", dim=8, tokenizer="words").wide_bag(TextEmbedder.collate(["a"], tokenizer="words"))


def test_text_wide_buckets_give_the_wide_bag_its_own_words_and_bigrams():
    from modalities.text import TextEmbedder, encode_words

    emb = TextEmbedder(name="t", dim=8, tokenizer="words", buckets=64, bigrams=False, wide=True, wide_buckets=4096)
    assert emb.wide_size == 4096 and emb.token_embed.num_embeddings == 64  # the deep path keeps its small table
    texts = ["Not bad, not bad at all", "", "good"]
    options = dict(tokenizer="words", buckets=64, bigrams=False, max_len=4, wide_buckets=4096)
    batch = TextEmbedder.collate(texts, **options)
    assert batch["x"].shape[1] == 4
    ids, weights = emb.wide_bag(batch)
    for row, text in enumerate(texts):
        expected = set(encode_words(" ".join(text.lower().replace(",", " ,").split()[:4]), 4096))  # first max_len words + bigrams
        assert sorted(ids[row][weights[row] > 0].tolist()) == sorted(expected)
    assert ids.max() >= 64  # ids beyond the deep path's buckets
    bytes_emb = TextEmbedder(name="t", dim=8, wide=True, wide_buckets=512)  # bytes for the deep path, words for the wide
    bytes_ids, _ = bytes_emb.wide_bag(TextEmbedder.collate(["good film"], wide_buckets=512))
    assert sorted(set(bytes_ids[0].tolist()) - {0}) == sorted(set(encode_words("good film", 512)))
    with pytest.raises(ValueError, match="needs the batch's 'wide' ids"):
        emb.wide_bag(TextEmbedder.collate(texts, tokenizer="words", buckets=64))
    with pytest.raises(ValueError, match="needs 'wide': true"):
        TextEmbedder(name="t", dim=8, wide_buckets=4096)
    with pytest.raises(ValueError, match="wide_buckets"):
        TextEmbedder(name="t", dim=8, wide=True, wide_buckets=1)


def test_video_motion_map_is_the_cropped_frame_difference_energy() -> None:
    from modalities.video import motion_maps

    def moving_square(top: int, left: int, side: int, t: int = 4) -> torch.Tensor:
        x = torch.zeros(t, 24, 24, 1)
        for i in range(t):  # a square sliding one pixel right per frame
            x[i, top:top + side, left + i:left + i + side] = 1.0
        return x

    mask = torch.ones(2, 4, dtype=torch.bool)
    maps = motion_maps(torch.stack([moving_square(2, 2, 4), moving_square(10, 9, 4)]), mask, 8)
    assert maps.shape == (2, 8, 8, 1) and float(maps.max()) == 1.0
    torch.testing.assert_close(maps[0], maps[1])  # the crop: where the motion happens does not matter
    # by hand: the energy is |diff| summed over the 3 frame pairs; the crop is its bounding box
    x = moving_square(2, 2, 4)
    energy = (x[1:] - x[:-1]).abs().sum(0)[..., 0]
    rows, cols = energy.sum(1).nonzero().squeeze(1), energy.sum(0).nonzero().squeeze(1)
    crop = energy[int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]
    expected = torch.nn.functional.interpolate(crop[None, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(maps[0, ..., 0], expected / expected.max())
    # a frame that is padding adds no motion; a still video gives a zero map
    padded = motion_maps(torch.stack([moving_square(2, 2, 4)]), torch.tensor([[True, True, True, False]]), 8)
    assert not torch.allclose(padded, maps[:1])
    assert float(motion_maps(torch.ones(1, 3, 8, 8, 1), torch.ones(1, 3, dtype=torch.bool), 8).abs().sum()) == 0.0
    emb = build("video", {"channels": 1, "patch_size": 4, "max_size": 24, "motion_map": 8})
    tokens, token_mask = emb({"x": torch.stack([moving_square(2, 2, 4)]), "mask": mask[:1]})
    assert tokens.shape[1] == 2 * 6 * 6 + 4 and bool(token_mask.all())
    with pytest.raises(ValueError, match="motion_map must be 0"):
        build("video", {"patch_size": 4, "motion_map": 6})


def test_video_crop_to_content_puts_the_actor_in_the_same_frame_wherever_they_stand() -> None:
    from modalities.video import crop_to_content

    def actor(top: int, left: int, height: int, width: int, t: int = 3) -> torch.Tensor:
        x = torch.zeros(t, 24, 32, 1)  # a 3 : 4 frame, zero background
        for i in range(t):  # a figure whose lower half moves one pixel right per frame
            x[i, top:top + height // 2, left:left + width] = 0.6
            x[i, top + height // 2:top + height, left + i:left + i + width] = 0.7
        return x

    near, far = actor(2, 3, 12, 4), actor(9, 20, 12, 4)  # the same figure at another place
    out = crop_to_content(torch.stack([near, far]))
    assert out.shape == (2, 3, 24, 32, 1)
    torch.testing.assert_close(out[0], out[1])  # where the actor stands does not matter
    # by hand: the box over all frames is rows 2-13, columns 3-8 (6 wide); widened to 4 : 3 -> 16 columns
    # around its centre, -2 to 13 (two columns of zeros left of the frame), then resized back to 24 x 32
    crop = torch.nn.functional.pad(near[:, 2:14, 0:14].permute(0, 3, 1, 2), (2, 0))
    expected = torch.nn.functional.interpolate(crop, size=(24, 32), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(out[0], expected)
    # a larger actor (twice the size) fills the frame alike: the rows with content span the frame in both
    big = crop_to_content(actor(0, 4, 24, 8)[None])[0]
    assert bool((big[:, 0] != 0).any()) and bool((big[:, -1] != 0).any())
    assert bool((out[0][:, 0] != 0).any()) and bool((out[0][:, -1] != 0).any())
    # a blank clip is kept as it is
    torch.testing.assert_close(crop_to_content(torch.zeros(1, 2, 24, 32, 1)), torch.zeros(1, 2, 24, 32, 1))
    # through the embedder: the token values no longer depend on the actor's place
    emb = build("video", {"channels": 1, "patch_size": 4, "max_size": 32, "crop_to_content": True})
    mask = torch.ones(2, 3, dtype=torch.bool)
    tokens, _ = emb({"x": torch.stack([near, far]), "mask": mask})
    torch.testing.assert_close(tokens[0], tokens[1])
    plain, _ = build("video", {"channels": 1, "patch_size": 4, "max_size": 32})({"x": torch.stack([near, far]), "mask": mask})
    assert not torch.allclose(plain[0], plain[1])
    # a padding frame's pixels are not content: the box is that of the real frames
    padded = torch.cat([near, torch.full((1, 24, 32, 1), 0.9)])  # a fourth frame, all non-zero, marked padding
    tokens_padded, _ = emb({"x": padded[None], "mask": torch.tensor([[True, True, True, False]])})
    torch.testing.assert_close(tokens_padded[0, :tokens.shape[1]], tokens[0])
    # an actor at the bottom-right corner: the widened box leaves the frame there and is padded with zeros
    corner = crop_to_content(actor(12, 26, 12, 4)[None])[0]  # box rows 12-23, columns 26-31 (6 wide) -> 16 columns 21-36
    crop = torch.nn.functional.pad(actor(12, 26, 12, 4)[:, 12:24, 21:32].permute(0, 3, 1, 2), (0, 5))
    expected = torch.nn.functional.interpolate(crop, size=(24, 32), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(corner, expected)
    with pytest.raises(ValueError, match="crop_to_content must be true or false"):
        build("video", {"crop_to_content": 1})


def test_pose_conv_stem_sees_neighbouring_frames_and_needs_frame_tokens() -> None:
    """With ``stem="conv"`` a frame's token changes when the next frame moves; with the linear map it does not."""
    x = torch.randn(1, 6, 4, 3)
    moved = x.clone()
    moved[0, 3] += 1.0
    for stem, changes in (("conv", True), ("linear", False)):
        emb = build("pose", {"joints": 4, "coords": 3, "max_frames": 6, "summary": False, "stem": stem}).eval()
        with torch.no_grad():
            before, after = emb(x)[0][0], emb(moved)[0][0]
        assert not torch.allclose(before[3], after[3])  # the moved frame itself
        assert torch.allclose(before[0], after[0])  # far from it
        assert (not torch.allclose(before[2], after[2])) == changes  # its neighbour
    with pytest.raises(ValueError, match="stem='conv' needs tokens='frame'"):
        build("pose", {"joints": 4, "coords": 3, "tokens": "joint", "stem": "conv"})
    with pytest.raises(ValueError, match="stem"):
        build("pose", {"joints": 4, "coords": 3, "stem": "gru"})
