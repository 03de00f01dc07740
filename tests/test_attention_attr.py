"""Attention attribution (grad × attention, Hao et al. IG, RPI over scores) against references."""

from __future__ import annotations

import pytest
import torch
from conftest import both_sides, hooked_side

from mechattr import targets
from mechattr.attribution.attention import attention_to_tokens, attribute_attention

IDS = torch.tensor([3, 5, 7])


def _logits_at(model, tokens, hooks=()):
    return model.run_with_hooks(tokens, fwd_hooks=list(hooks))[torch.arange(tokens.shape[0]), -1, IDS]


def test_grad_x_attn_equals_definition(model, tokens, unchanged):
    pats = {}

    def keep(x, hook):
        pats[hook.name] = x
        return x

    names = [f"blocks.{i}.attn.hook_pattern" for i in range(2)]
    with torch.enable_grad():
        f = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda x, hook: x.detach().requires_grad_(True))] + [(n, keep) for n in names])
        f = f[torch.arange(3), -1, IDS].sum()  # examples are independent: each gets its own gradient
        grads = torch.autograd.grad(f, [pats[n] for n in names])
    ref = torch.stack([pats[n].detach() * g for n, g in zip(names, grads)], 1)
    with unchanged(model):
        got = attribute_attention(model, tokens, targets.logit(IDS), batch_size=2)
    assert got.shape == (3, 2, 4, 8, 8)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-4)


def test_ig_attention_completeness_per_layer(model, tokens, unchanged):
    with unchanged(model):
        got = attribute_attention(model, tokens, targets.logit(IDS), method="ig", n_steps=32)
    full = _logits_at(model, tokens)
    for layer in range(2):
        zeroed = _logits_at(model, tokens, [(f"blocks.{layer}.attn.hook_pattern", lambda x, hook: torch.zeros_like(x))])
        torch.testing.assert_close(got[:, layer].sum((1, 2, 3)), full - zeroed, atol=2e-4, rtol=1e-3)
    assert (got.triu(1) == 0).all()  # masked (future) entries carry nothing


def _scores_dead(model):
    from mechattr.runtime.attention import pattern_hooks_live

    if pattern_hooks_live(model, scores=True):
        return False
    with pytest.raises(ValueError, match="hook_attn_scores"):  # refused, not silently zero
        attribute_attention(model, torch.tensor([[1, 2, 3]]), targets.logit(3), method="rpi", n_steps=2)
    return True


def test_rpi_constant_baseline_is_ig_from_uniform_attention(model, tokens, unchanged):
    """σ = 0 makes every baseline the constant score μ: uniform causal attention."""
    if _scores_dead(model):
        return
    with unchanged(model):
        got = attribute_attention(model, tokens, targets.logit(IDS), method="rpi", n_baselines=2, mu=0.5, sigma=0.0, n_steps=32)
    full = _logits_at(model, tokens)
    causal = torch.tril(torch.ones(8, 8))
    uniform = causal / causal.sum(-1, keepdim=True)
    for layer in range(2):
        flat = _logits_at(model, tokens, [(f"blocks.{layer}.attn.hook_pattern", lambda x, hook: uniform.expand_as(x).clone())])
        torch.testing.assert_close(got[:, layer].sum((1, 2, 3)), full - flat, atol=2e-4, rtol=1e-3)
    tok = attention_to_tokens(got)
    assert tok.shape == (3, 8)
    torch.testing.assert_close(tok.sum(-1), got.sum((1, 2, 3, 4)))


def test_rpi_random_baselines_seeded_and_averaged(model, tokens):
    if _scores_dead(model):
        return
    t = targets.logit(IDS)
    a = attribute_attention(model, tokens, t, method="rpi", n_baselines=3, seed=7, n_steps=4)
    b = attribute_attention(model, tokens, t, method="rpi", n_baselines=3, seed=7, n_steps=4)
    per = attribute_attention(model, tokens, t, method="rpi", n_baselines=3, seed=7, n_steps=4, return_all=True)
    c = attribute_attention(model, tokens, t, method="rpi", n_baselines=3, seed=8, n_steps=4)
    torch.testing.assert_close(a, b)
    assert per.shape == (3, 3, 2, 4, 8, 8)
    torch.testing.assert_close(per.mean(0), a, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(a, c)
    assert (per.triu(1) == 0).all() and torch.isfinite(per).all()
    assert attention_to_tokens(per, query=-1).shape == (3, 3, 8)


def test_attention_methods_match_on_bridge(hf_pair):
    ht, br = hf_pair
    hooked_side(ht)
    toks = torch.randint(3, 40, (2, 6), generator=torch.Generator().manual_seed(6))
    t = targets.logit(torch.tensor([4, 9]))
    for method in ("grad_x_attn", "rpi"):
        a = attribute_attention(ht, toks, t, method=method, n_steps=4, seed=0)
        b = attribute_attention(br, toks, t, method=method, n_steps=4, seed=0)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_bad_inputs_raise(model, tokens, unchanged):
    with unchanged(model):
        with pytest.raises(ValueError, match="unknown attention attribution method"):
            attribute_attention(model, tokens, targets.logit(1), method="lrp")
        with pytest.raises(ValueError, match="n_baselines"):
            attribute_attention(model, tokens, targets.logit(1), method="rpi", n_baselines=0)
        with pytest.raises(ValueError, match="NaN"):
            attribute_attention(model, tokens, lambda lg: lg[:, -1, 0] * float("nan"))
    with pytest.raises(ValueError, match="query"):
        attention_to_tokens(torch.zeros(1, 2, 4, 8, 8), query=9)


def test_left_padding_equals_unpadded_on_both_model_types(hf_pair):
    clean = torch.tensor([[2, 2, 1, 9, 10, 11]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    t = targets.logit(torch.tensor([4]), pos="last")
    for m in both_sides(hf_pair):
        for method in ("grad_x_attn", "ig", "rpi"):
            pad = attribute_attention(m, clean, t, method=method, attention_mask=mask, n_steps=4, seed=0)
            assert torch.isfinite(pad).all() and (pad[..., :2, :] == 0).all() and (pad[..., :2] == 0).all()
            if method != "rpi":  # rpi draws its random baselines over the padded shape, so they differ
                ref = attribute_attention(m, clean[:, 2:], t, method=method, n_steps=4)
                torch.testing.assert_close(pad[..., 2:, 2:], ref, atol=1e-6, rtol=1e-4)
