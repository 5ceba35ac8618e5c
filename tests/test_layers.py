"""Attention and its key-dropout mask (highmmt/layers.py)."""

from __future__ import annotations

import pytest
import torch

from highmmt import HighMMTConfig, apply_overrides
from highmmt.config import EncoderConfig, FusionConfig
from highmmt.encoder import PerceiverEncoder
from highmmt.layers import Attention, drop_keys


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_dropout_probability_is_a_clear_error(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Attention(dim=16, heads=2, dim_head=8, dropout=p)
    with pytest.raises(ValueError, match=r"encoder.dropout must be in \[0, 1\)"):
        EncoderConfig(dropout=p)


def test_drop_keys_keeps_padding_and_never_empties_a_row():
    torch.manual_seed(0)
    mask = torch.ones(500, 1, 1, 4, dtype=torch.bool)
    mask[:, ..., 2:] = False  # two real keys per row
    out = drop_keys(mask, batch=500, keys=4, p=0.6, device=torch.device("cpu"))
    assert out.shape == mask.shape
    assert not (out & ~mask).any(), "a padded key was let through"
    assert out.any(dim=-1).all(), "a row lost every key"
    assert (out.sum(-1) == 1).any(), "no key was ever dropped"
    free = drop_keys(None, batch=500, keys=3, p=0.9, device=torch.device("cpu"))
    assert free.any(dim=-1).all()


@pytest.mark.parametrize("kind", ["keys", "probs"])
def test_attention_dropout_kinds_train_and_are_off_in_eval(kind):
    torch.manual_seed(0)
    attn = Attention(dim=16, heads=2, dim_head=8, dropout=0.5, dropout_kind=kind, cross=True)
    x, ctx = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 1:] = False  # one real key: dropping must not leave that row without any
    attn.train()
    a, b = attn(x, ctx, mask), attn(x, ctx, mask)
    assert torch.isfinite(a).all() and not torch.allclose(a, b), "training outputs should vary with the masks"
    a.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in attn.parameters())
    attn.eval()
    reference = Attention(dim=16, heads=2, dim_head=8, dropout=0.0, cross=True)
    reference.load_state_dict(attn.state_dict())
    assert torch.allclose(attn(x, ctx, mask), reference.eval()(x, ctx, mask))


def test_encoder_with_key_dropout_is_finite_on_a_one_token_modality():
    torch.manual_seed(0)
    enc = PerceiverEncoder(dim=16, cfg=EncoderConfig(num_latents=4, heads=2, dim_head=8, dropout=0.5)).train()
    out = enc(torch.randn(8, 1, 16), torch.ones(8, 1, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_attention_dropout_kind_is_checked_and_overridable():
    with pytest.raises(ValueError, match="attention_dropout must be one of"):
        EncoderConfig(attention_dropout="heads")
    with pytest.raises(ValueError, match="fusion.attention_dropout must be one of"):
        FusionConfig(attention_dropout="x")
    with pytest.raises(ValueError, match="dropout kind must be one of"):
        Attention(dim=8, dropout_kind="heads")
    cfg = apply_overrides(HighMMTConfig(), ["encoder.attention_dropout=probs", "fusion.dropout=0.2"])
    assert (cfg.encoder.attention_dropout, cfg.fusion.dropout, cfg.fusion.attention_dropout) == ("probs", 0.2, "keys")


def test_adamw_is_fused_on_cpu_and_steps_like_the_reference():
    from transference.autotune import adamw

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fused = adamw([{"params": a[:1], "weight_decay": 0.1}, {"params": a[1:], "weight_decay": 0.0}], lr=0.01)
    plain = torch.optim.AdamW([{"params": b[:1], "weight_decay": 0.1}, {"params": b[1:], "weight_decay": 0.0}], lr=0.01)
    assert fused.defaults["fused"] is True
    for _ in range(3):
        grads = [torch.randn_like(p) for p in a]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
