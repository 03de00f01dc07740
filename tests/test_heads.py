"""Head / MLP / neuron attribution against definitions and slow references written here."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import both_sides, hooked_side, make_model

from mechattr import targets
from mechattr.attribution.atp_star import head_effects
from mechattr.attribution.components import (
    ComponentAttribution,
    attribute_heads,
    attribute_mlps,
    attribute_neurons,
)


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(1, 24, (3, 8), generator=g)
    corr = clean.clone()
    corr[:, 2] = torch.randint(1, 24, (3,), generator=g)
    return clean, corr


def _mean_logit(model, tokens, ids, fwd_hooks=()):
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))
    return logits[torch.arange(tokens.shape[0]), -1, ids].mean()


def test_atp_equals_raw_hook_definition(model, pair, unchanged):
    clean, corr = pair
    ids = torch.tensor([3, 5, 7])
    _, cc = model.run_with_cache(corr)
    zs = {}

    def grad_embed(x, hook):  # make the whole graph differentiable, keep every z
        return x.detach().requires_grad_(True)

    def keep(x, hook):
        zs[hook.name] = x
        return x

    names = [f"blocks.{i}.attn.hook_z" for i in range(2)]
    with torch.enable_grad():
        logits = model.run_with_hooks(clean, fwd_hooks=[("hook_embed", grad_embed)] + [(n, keep) for n in names])
        f = logits[torch.arange(3), -1, ids].mean()
        grads = torch.autograd.grad(f, [zs[n] for n in names])
    ref = torch.stack([((cc[n] - zs[n].detach()) * g).sum((0, 1, 3)) for n, g in zip(names, grads)])
    ref_pos = torch.stack([((cc[n] - zs[n].detach()) * g).sum((0, 3)).T for n, g in zip(names, grads)])
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    with unchanged(model):
        got = attribute_heads(model, clean, targets.logit(ids), corrupted=corr, method="atp")
        got_pos = attribute_heads(model, clean, targets.logit(ids), corrupted=corr, method="atp", per_position=True, batch_size=2)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_pos, ref_pos, atol=1e-5, rtol=1e-4)


def _patch_heads(model, clean, corr, ids):
    """Activation patching (noising): clean run with one head's z from the corrupted run."""
    _, cc = model.run_with_cache(corr)
    base = _mean_logit(model, clean, ids)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            def put(x, hook, layer=layer, h=h):
                x = x.clone()
                x[:, :, h] = cc["z", layer][:, :, h]
                return x
            out[layer, h] = _mean_logit(model, clean, ids, [(f"blocks.{layer}.attn.hook_z", put)]) - base
    return out


def test_atp_close_to_activation_patching_on_one_layer_attention_only():
    model = make_model(n_layers=1, attn_only=True, seed=3)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(1, 24, (4, 8), generator=g)
    corr = clean.clone()
    corr[:, 3] = (corr[:, 3] + 1) % 23 + 1  # a small corruption: one token of eight
    ids = torch.tensor([1, 2, 3, 4])
    ref = _patch_heads(model, clean, corr, ids)
    got = attribute_heads(model, clean, targets.logit(ids), corrupted=corr)
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()
    assert torch.corrcoef(torch.stack([got.flatten(), ref.flatten()]))[0, 1] > 0.98


def test_dla_sums_with_other_direct_terms_to_logit(model, tokens, unchanged):
    ids = torch.tensor([3, 5, 7])
    with unchanged(model):
        heads = attribute_heads(model, tokens, targets.logit(ids), method="dla")
        mlps = attribute_mlps(model, tokens, targets.logit(ids), method="dla")
        neurons = attribute_neurons(model, tokens, targets.logit(ids), method="dla")
    logits, cache = model.run_with_cache(tokens)
    scale = cache["ln_final.hook_scale"][:, -1]  # [batch, 1]
    direction = model.ln_final.w * model.W_U[:, ids].T  # [batch, d_model]

    def direct(term):  # term [batch, d_model] at the last position, as apply_ln_to_stack
        return (((term - term.mean(-1, keepdim=True)) / scale) * direction).sum(-1).mean()

    other = direct(cache["hook_embed"][:, -1]) + direct(cache["hook_pos_embed"][:, -1])
    other = other + sum(direct(model.b_O[layer].expand(3, -1)) for layer in range(2))
    bias = (model.ln_final.b @ model.W_U[:, ids] + model.b_U[ids]).mean()
    total = heads.sum() + mlps.sum() + other + bias
    torch.testing.assert_close(total, logits[torch.arange(3), -1, ids].mean(), atol=1e-4, rtol=0)
    head_ref = torch.stack([torch.stack([direct(cache["z", layer][:, -1, h] @ model.W_O[layer, h]) for h in range(4)]) for layer in range(2)])
    torch.testing.assert_close(heads, head_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(neurons.sum(-1), mlps - torch.stack([direct(model.b_out[layer].expand(3, -1)) for layer in range(2)]), atol=1e-5, rtol=1e-4)


def test_ig_over_heads_completeness(model, pair, unchanged):
    clean, corr = pair
    ids = torch.tensor([3, 5, 7])
    with unchanged(model):
        res = attribute_heads(model, clean, targets.logit(ids), corrupted=corr, method="ig", n_steps=24, return_result=True)
    _, cc = model.run_with_cache(corr)
    hooks = [(f"blocks.{layer}.attn.hook_z", lambda x, hook, layer=layer: cc["z", layer]) for layer in range(2)]
    expected = _mean_logit(model, clean, ids) - _mean_logit(model, clean, ids, hooks)
    torch.testing.assert_close(res.scores.sum(), expected, atol=1e-4, rtol=1e-4)
    assert abs(float(res.convergence_delta)) < 1e-4
    mlps = attribute_mlps(model, clean, targets.logit(ids), corrupted=corr, method="ig", return_result=True)
    assert abs(float(mlps.convergence_delta)) < 1e-4


def _slow_qk(A, gz, q, k, v, q2, k2, v2, scale):
    """One node at a time: exact softmax with one query row / one key column patched."""
    B, H, P = A.shape[0], A.shape[1], A.shape[-1]
    causal = torch.tril(torch.ones(P, P, dtype=torch.bool))
    out = torch.zeros(B, P, H, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            S = (q[b, :, h] @ k[b, :, h].T / scale).masked_fill(~causal, -math.inf)
            gA = gz[b, :, h] @ v[b, :, h].T
            for t in range(P):
                S2 = S.clone()
                S2[t] = (q2[b, t, h] @ k[b, :, h].T / scale).masked_fill(~causal[t], -math.inf)
                out[b, t, h] += ((S2.softmax(-1) - A[b, h]) * gA).sum()
            for s in range(P):
                S2 = S.clone()
                S2[:, s] = torch.where(causal[:, s], q[b, :, h] @ k2[b, s, h] / scale, -math.inf)
                out[b, s, h] += ((S2.softmax(-1) - A[b, h]) * gA).sum()
                out[b, s, h] += (A[b, h][:, s, None] * (v2[b, s, h] - v[b, s, h])[None] * gz[b, :, h]).sum()
    return out


def test_atp_star_qk_fix_matches_one_node_at_a_time_softmax():
    g = torch.Generator().manual_seed(0)
    B, P, H, D = 2, 6, 3, 4
    q, k, v, q2, k2, v2, gz = (torch.randn(B, P, H, D, generator=g, dtype=torch.float64) * 2 for _ in range(7))
    causal = torch.tril(torch.ones(P, P, dtype=torch.bool))
    A = (torch.einsum("bthd,bshd->bhts", q, k) / 2.0).masked_fill(~causal, -math.inf).softmax(-1)
    got = head_effects(A, gz, q, k, v, q2, k2, v2, 2.0)
    assert got.shape == (3, B, P, H)
    torch.testing.assert_close(got.sum(0).double(), _slow_qk(A, gz, q, k, v, q2, k2, v2, 2.0), atol=1e-5, rtol=1e-4)


def test_atp_star_qk_fix_is_exact_on_a_saturated_float32_pattern():
    """A pattern saturated at 1 − 1e-8 reads as 1.0 (or 1 − 6e-8) in float32: the key estimate
    must come from the logits, not from the rounded weight (it returned ~0 for a −1 effect)."""
    g = torch.Generator().manual_seed(1)
    B, P, H, D = 1, 5, 2, 4
    q, k, v, q2, k2, v2, gz = (torch.randn(B, P, H, D, generator=g, dtype=torch.float64) for _ in range(7))
    u = torch.randn(1, 1, H, D, generator=g, dtype=torch.float64)
    u = 2.5 * u / u.norm(dim=-1, keepdim=True)
    q = u + 0.1 * q  # every query points roughly along u ...
    k = k.clone()
    k[:, 1] = 12 * u[:, 0]  # ... so it attends almost only to key 1 (logit gap ≫ 17)
    k2 = k.clone()
    k2[:, 1] = -k[:, 1]  # the key corruption moves the attention away from key 1
    causal = torch.tril(torch.ones(P, P, dtype=torch.bool))
    S = (torch.einsum("bthd,bshd->bhts", q, k) / 2.0).masked_fill(~causal, -math.inf)
    A64 = S.softmax(-1)
    assert (A64[0, :, 2:, 1] > 1 - 1e-6).all()
    got = head_effects(A64.float(), gz, q, k, v, q2, k2, v2, 2.0)
    want = _slow_qk(A64, gz, q, k, v, q2, k2, v2, 2.0)
    assert want.abs().max() > 1.0
    torch.testing.assert_close(got.sum(0).double(), want, atol=1e-3, rtol=1e-3)


def test_atp_star_without_qk_fix_is_autograd_atp_of_q_k_v(model, pair, unchanged):
    """qk_fix=False must reduce to plain AtP at the query/key/value hooks (autograd here)."""
    clean, corr = pair
    ids = torch.tensor([3, 5, 7])
    kinds = ("q", "k", "v")
    names = [f"blocks.{i}.attn.hook_{c}" for i in range(2) for c in kinds]
    _, cc = model.run_with_cache(corr)
    acts = {}

    def keep(x, hook):
        acts[hook.name] = x
        return x

    with torch.enable_grad():
        logits = model.run_with_hooks(clean, fwd_hooks=[("hook_embed", lambda x, hook: x.detach().requires_grad_(True))] + [(n, keep) for n in names])
        grads = dict(zip(names, torch.autograd.grad(logits[torch.arange(3), -1, ids].mean(), [acts[n] for n in names])))
    with unchanged(model):
        res = attribute_heads(model, clean, targets.logit(ids), corrupted=corr, method="atp_star", grad_drop=False, qk_fix=False, return_result=True)
        fixed = attribute_heads(model, clean, targets.logit(ids), corrupted=corr, method="atp_star", grad_drop=False, return_result=True)
    for c in kinds:
        ref = torch.stack([((cc[f"blocks.{i}.attn.hook_{c}"] - acts[f"blocks.{i}.attn.hook_{c}"].detach()) * grads[f"blocks.{i}.attn.hook_{c}"]).sum((0, 1, 3)) for i in range(2)])
        torch.testing.assert_close(res.parts[c], ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(res.parts["v"], fixed.parts["v"])  # values are linear either way
    torch.testing.assert_close(sum(fixed.parts.values()), fixed.scores, atol=1e-6, rtol=1e-5)


def test_atp_star_graddrop_last_layer_is_abs_of_qk_fixed(model, pair, unchanged):
    clean, corr = pair
    t = targets.logit(torch.tensor([3, 5, 7]))
    with unchanged(model):
        signed = attribute_heads(model, clean, t, corrupted=corr, method="atp_star", grad_drop=False)
        gd = attribute_heads(model, clean, t, corrupted=corr, method="atp_star")
    # dropping layers before the last leaves the last layer's gradient unchanged; dropping
    # the last zeroes it: (L-1)/(L-1) · |ĉ|
    torch.testing.assert_close(gd[-1], signed[-1].abs(), atol=1e-5, rtol=1e-4)
    assert (gd >= 0).all()


def test_methods_match_on_bridge(hf_pair):
    ht, br = hf_pair
    hooked_side(ht)
    g = torch.Generator().manual_seed(2)
    clean = torch.randint(3, 40, (2, 7), generator=g)
    corr = torch.randint(3, 40, (2, 7), generator=g)
    t = targets.logit(torch.tensor([4, 9]))
    for method in ("atp", "dla", "atp_star"):
        a = attribute_heads(ht, clean, t, corrupted=corr, method=method)
        b = attribute_heads(br, clean, t, corrupted=corr, method=method)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["atp", "atp_star", "ig", "grad_x_act", "dla"])
def test_model_unchanged_and_shapes(model, pair, unchanged, method):
    clean, corr = pair
    with unchanged(model):
        s = attribute_heads(model, clean, targets.logprob(torch.tensor([1, 2, 3])), corrupted=corr, method=method, n_steps=4, grad_drop=False)
    assert s.shape == (2, 4) and torch.isfinite(s).all()


def test_bad_inputs_raise(model, pair, unchanged):
    clean, corr = pair
    t = targets.logit(3)
    with unchanged(model):
        with pytest.raises(ValueError, match="same shape"):
            attribute_heads(model, clean, t, corrupted=corr[:, :5])
        with pytest.raises(ValueError, match="unknown component attribution method"):
            attribute_heads(model, clean, t, corrupted=corr, method="shap")
        with pytest.raises(ValueError, match="needs corrupted"):
            attribute_heads(model, clean, t)
        with pytest.raises(ValueError, match="n_ctx"):
            attribute_heads(model, torch.ones(1, 17, dtype=torch.long), t, corrupted=torch.ones(1, 17, dtype=torch.long))
        with pytest.raises(ValueError, match="NaN"):
            attribute_heads(model, clean, lambda lg: lg[:, -1, 0] * float("nan"), corrupted=corr)
        with pytest.raises(ValueError, match="unknown kind"):
            attribute_heads(model, clean, t, corrupted=corr, kind="layers")
        with pytest.raises(ValueError, match="batch_size"):
            attribute_heads(model, clean, t, corrupted=corr, batch_size=0)
    with pytest.raises(ValueError, match="attention-only"):
        attribute_mlps(make_model(attn_only=True), clean, t, corrupted=corr)


def test_result_object_frame_plot_and_save(model, pair, tmp_path):
    clean, corr = pair
    res = attribute_heads(model, clean, targets.logit(3), corrupted=corr, return_result=True)
    assert isinstance(res, ComponentAttribution)
    df = res.to_frame()
    assert len(df) == 8 and set(df.component) == {f"L{i}H{j}" for i in range(2) for j in range(4)}
    assert df.score.sum() == pytest.approx(float(res.scores.sum()), abs=1e-5)
    assert res.plot().data
    back = ComponentAttribution.load(res.save(tmp_path / "heads.json"))
    torch.testing.assert_close(back.scores, res.scores)
    assert back.method == "atp" and back.meta["target"]["target"] == "logit"


@pytest.mark.parametrize("name", ["induction", "planted_induction"])
def test_top_atp_head_is_documented_induction_head(name):
    from mechattr import organisms

    model = organisms.load(name)
    tb = organisms.task(name).sample(16, seed=0)
    s = attribute_heads(model, tb.tokens, tb.target, corrupted=tb.corrupted, method="atp")
    layer, head = divmod(int(s.abs().argmax()), model.cfg.n_heads)
    assert s[layer, head] < 0  # noising the induction head lowers the answer's logit
    assert (layer, head) in {(h.layer, h.head) for h in organisms.circuit(name)["induction"]}


def test_atp_star_exact_for_q_k_v_nodes_when_readout_is_linear(unchanged):
    """1 attention-only layer, no LayerNorm: the logit is linear in z, so the QK fix makes
    every query/key/value node estimate exact; plain AtP is off where attention saturates."""
    model = make_model(n_layers=1, attn_only=True, normalization_type=None, seed=5)
    with torch.no_grad():
        model.blocks[0].attn.W_Q.mul_(6.0)  # sharp (saturated) attention (in place: a view on a TransformerBridge)
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(1, 24, (2, 6), generator=g)
    corr = torch.randint(1, 24, (2, 6), generator=g)
    ids = torch.tensor([4, 9])
    _, cc = model.run_with_cache(corr)
    base = _mean_logit(model, clean, ids)
    truth = torch.zeros(3, 1, 4, 6)
    for i, c in enumerate("qkv"):
        for h in range(4):
            for p in range(6):
                def put(x, hook, c=c, h=h, p=p):
                    x = x.clone()
                    x[:, p, h] = cc[f"blocks.0.attn.hook_{c}"][:, p, h]
                    return x
                truth[i, 0, h, p] = _mean_logit(model, clean, ids, [(f"blocks.0.attn.hook_{c}", put)]) - base
    kw = dict(corrupted=corr, method="atp_star", grad_drop=False, per_position=True, return_result=True)
    with unchanged(model):
        star = attribute_heads(model, clean, targets.logit(ids), **kw)
        lin = attribute_heads(model, clean, targets.logit(ids), qk_fix=False, **kw)
    est = torch.stack([star.parts[c] for c in "qkv"])
    torch.testing.assert_close(est, truth, atol=1e-4, rtol=1e-4)
    err_lin = (torch.stack([lin.parts[c] for c in "qkv"]) - truth).abs().max()
    assert err_lin > 10 * (est - truth).abs().max()


def test_left_padding_equals_unpadded_on_both_model_types(hf_pair):
    """A left-padded example gets the attributions of the same tokens without padding (and
    zero at the pads), on HookedTransformer and TransformerBridge alike (no NaN)."""
    from mechattr.attribution.components import attribute_resid

    clean = torch.tensor([[2, 2, 1, 9, 10, 11]])
    corr = torch.tensor([[2, 2, 1, 12, 10, 11]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    t = targets.logit(torch.tensor([4]), pos="last")
    for m in both_sides(hf_pair):
        for method in ("atp", "dla", "atp_star"):
            pad = attribute_heads(m, clean, t, corrupted=corr, method=method, per_position=True, attention_mask=mask, grad_drop=False)
            ref = attribute_heads(m, clean[:, 2:], t, corrupted=corr[:, 2:], method=method, per_position=True, grad_drop=False)
            assert torch.isfinite(pad).all() and (pad[..., :2] == 0).all()
            torch.testing.assert_close(pad[..., 2:], ref, atol=1e-5, rtol=1e-4)
        pad = attribute_resid(m, clean, t, corrupted=corr, attention_mask=mask, n_steps=4)
        ref = attribute_resid(m, clean[:, 2:], t, corrupted=corr[:, 2:], n_steps=4)
        torch.testing.assert_close(pad[:, 2:], ref, atol=1e-5, rtol=1e-4)


def test_ig_over_heads_matches_step_by_step_reference(model, pair):
    """Joint IG over all hook_z, written out: one forward per quadrature point, every
    layer's z replaced by b + α(x − b), gradients weighted and summed."""
    from mechattr.attribution.paths import schedule

    clean, corr = pair
    ids = torch.tensor([3, 5, 7])
    _, cx = model.run_with_cache(clean)
    _, cb = model.run_with_cache(corr)
    names = [f"blocks.{i}.attn.hook_z" for i in range(2)]
    alphas, weights = schedule(6, "gausslegendre")
    G = {n: torch.zeros_like(cx[n]) for n in names}
    for a, w in zip(alphas.tolist(), weights.tolist()):
        leaves = {n: (cb[n] + a * (cx[n] - cb[n])).requires_grad_(True) for n in names}
        with torch.enable_grad():
            logits = model.run_with_hooks(clean, fwd_hooks=[(n, lambda x, hook, v=leaves[n]: v) for n in names])
            grads = torch.autograd.grad(logits[torch.arange(3), -1, ids].mean(), [leaves[n] for n in names])
        for n, g in zip(names, grads):
            G[n] += w * g
    ref = torch.stack([((cx[n] - cb[n]) * G[n]).sum((0, 1, 3)) for n in names])
    got = attribute_heads(model, clean, targets.logit(ids), corrupted=corr, method="ig", n_steps=6, batch_size=4)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_dla_by_source_token_splits_dla(model, tokens):
    """per_position='source': Σ over sources = DLA; each entry = the direct effect of
    A[t, s] · v_s @ W_O at the target position t (reference from the cache)."""
    ids = torch.tensor([3, 5, 7])
    t = targets.logit(ids)
    src = attribute_heads(model, tokens, t, method="dla", per_position="source")
    assert src.shape == (2, 4, 8)
    torch.testing.assert_close(src.sum(-1), attribute_heads(model, tokens, t, method="dla"), atol=1e-5, rtol=1e-4)
    _, cache = model.run_with_cache(tokens)
    scale = cache["ln_final.hook_scale"][:, -1]
    direction = model.ln_final.w * model.W_U[:, ids].T
    layer, h, s = 1, 2, 3
    term = cache["pattern", layer][:, h, -1, s, None] * cache["v", layer][:, s, h] @ model.W_O[layer, h]
    ref = (((term - term.mean(-1, keepdim=True)) / scale) * direction).sum(-1).mean()
    torch.testing.assert_close(src[layer, h, s], ref, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="source"):
        attribute_heads(model, tokens, t, method="atp", corrupted=tokens, per_position="source")
