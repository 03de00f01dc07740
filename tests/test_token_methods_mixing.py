"""value_zeroing and ALTI against slow references written here (loops over keys and layers,
weights read directly), their row-stochastic matrices, aggregation and option checks."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from mechattr import organisms, targets
from mechattr.attribution.tokens import attribute_tokens

TOKS = torch.tensor([[5, 9, 14, 3, 7, 2, 11], [1, 8, 8, 20, 4, 6, 17]])
IDS = torch.tensor([7, 3])


def _params(module):
    """(weight, bias) of a norm module, whatever its attribute names."""
    ps = [p.detach() for _, p in module.named_parameters()]
    return ps[0], (ps[1] if len(ps) > 1 else torch.zeros_like(ps[0]))


def _slow_alti_one_layer(m, toks):
    """ALTI of a 1-layer LN model from its weights: LN, q/k/v, pattern, T_q(x_k), L1 distances."""
    a = m.blocks[0].attn
    x = m.W_E[toks].detach() + m.W_pos[: toks.shape[1]].detach()  # [b, p, d] (standard positions)
    w, b = _params(m.blocks[0].ln1)
    eps = m.cfg.eps
    B, P, _ = x.shape
    out = torch.zeros(B, P, P)
    for bi in range(B):
        ln = []
        for k in range(P):
            xc = x[bi, k] - x[bi, k].mean()
            ln.append(xc / torch.sqrt((xc**2).mean() + eps) * w + b)
        ln = torch.stack(ln)  # [p, d]
        q = torch.einsum("pd,hde->hpe", ln, a.W_Q.detach()) + a.b_Q.detach()[:, None]
        kk = torch.einsum("pd,hde->hpe", ln, a.W_K.detach()) + a.b_K.detach()[:, None]
        v = torch.einsum("pd,hde->hpe", ln, a.W_V.detach()) + a.b_V.detach()[:, None]
        scores = q @ kk.transpose(1, 2) / (m.cfg.d_head**0.5)
        scores = scores.masked_fill(~torch.ones(P, P).tril().bool(), float("-inf"))
        A = scores.softmax(-1)  # [h, q, k]
        for qi in range(P):
            terms = []
            for k in range(P):
                t = sum(A[h, qi, k] * (v[h, k] @ a.W_O.detach()[h]) for h in range(A.shape[0]))
                terms.append(t + (x[bi, k] if k == qi else 0))
            y = sum(terms) + a.b_O.detach()
            c = torch.stack([(y.abs().sum() - (y - t).abs().sum()).clamp_min(0) for t in terms])
            out[bi, qi] = c / c.sum()
    return out


@pytest.mark.parametrize("query_chunk", [None, 1])
def test_alti_equals_a_slow_reference_from_the_weights_on_a_one_layer_model(query_chunk, monkeypatch):
    from mechattr.attribution import context_mixing

    if query_chunk is not None:  # one query position per T_q(x_k) block
        monkeypatch.setattr(context_mixing, "QUERY_CHUNK_FLOATS", query_chunk)
    m = make_model(n_layers=1, seed=3)
    r = attribute_tokens(m, TOKS, targets.logit(IDS), "alti", exclude_bos=False)
    ref = _slow_alti_one_layer(m, TOKS)
    torch.testing.assert_close(r.extras["mixing"][:, 0], ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r.scores, ref[:, -1], atol=1e-4, rtol=1e-4)


def test_alti_and_value_zeroing_rows_sum_to_one_and_are_causal():
    m = make_model(seed=5)
    upper = torch.ones(7, 7).triu(1).bool()
    for meth in ("alti", "value_zeroing"):
        r = attribute_tokens(m, TOKS, targets.logit(IDS), meth, exclude_bos=False)
        for mat in (r.extras["mixing"], r.extras["combined"]):
            torch.testing.assert_close(mat.sum(-1), torch.ones(mat.shape[:-1]), atol=1e-5, rtol=0)
            assert (mat >= 0).all() and (mat[..., upper] == 0).all(), meth
        assert torch.allclose(r.scores.sum(-1), torch.ones(2), atol=1e-5)


def test_rollout_is_the_product_of_layer_matrices_and_last_or_index_pick_one_layer():
    m = make_model(n_layers=3, seed=2)
    t = targets.logit(IDS)
    r = attribute_tokens(m, TOKS, t, "alti", exclude_bos=False)
    C = r.extras["mixing"]
    torch.testing.assert_close(r.extras["combined"], C[:, 2] @ C[:, 1] @ C[:, 0], atol=1e-6, rtol=1e-5)
    last = attribute_tokens(m, TOKS, t, "alti", aggregate="last", exclude_bos=False)
    torch.testing.assert_close(last.scores, C[:, 2, -1], atol=1e-6, rtol=0)
    one = attribute_tokens(m, TOKS, t, "alti", aggregate=1, exclude_bos=False)
    torch.testing.assert_close(one.scores, C[:, 1, -1], atol=1e-6, rtol=0)


def _slow_value_zeroing(m, toks):
    """Per layer and key: a full forward with that key's values zeroed, cosine distance at resid_post."""
    L, P = m.cfg.n_layers, toks.shape[1]
    out = torch.zeros(toks.shape[0], L, P, P)
    for layer in range(L):
        name = f"blocks.{layer}.hook_resid_post"
        _, cache = m.run_with_cache(toks, names_filter=[name])
        clean = cache[name]
        for k in range(P):
            got = {}

            def zero(v, hook, k=k):
                v = v.clone()
                v[:, k] = 0
                return v

            def keep(x, hook, got=got):
                got["x"] = x.detach()

            m.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.attn.hook_v", zero), (name, keep)])
            out[:, layer, :, k] = 1 - torch.nn.functional.cosine_similarity(got["x"], clean, dim=-1)
        out[:, layer] = out[:, layer] * torch.ones(P, P).tril()
        out[:, layer] = out[:, layer] / out[:, layer].sum(-1, keepdim=True)
    return out


def test_value_zeroing_equals_a_slow_reference_of_one_forward_per_key_and_layer():
    m = make_model(seed=7)
    ref = _slow_value_zeroing(m, TOKS)
    for bs in (None, 5):  # chunking does not change the result
        r = attribute_tokens(m, TOKS, targets.logit(IDS), "value_zeroing", exclude_bos=False, batch_size=bs)
        torch.testing.assert_close(r.extras["mixing"], ref, atol=2e-4, rtol=1e-3)
        rollout = ref[:, 1] @ ref[:, 0]
        torch.testing.assert_close(r.scores, rollout[:, -1], atol=2e-4, rtol=1e-3)


def test_alti_raises_where_the_attention_output_is_not_the_sum_of_its_terms():
    m = make_model(seed=1)
    with m.hooks(fwd_hooks=[("blocks.0.hook_attn_out", lambda a, hook: 2 * a)]):
        with pytest.raises(ValueError, match="not Σ_h Σ_k A·v·W_O"):
            attribute_tokens(m, TOKS, targets.logit(IDS), "alti")


@pytest.mark.parametrize("bad", ["first", True, 2, -3, 0.5])
def test_bad_aggregate_is_a_value_error_naming_the_allowed_values(bad):
    m = make_model(seed=1)
    for meth in ("alti", "value_zeroing"):
        with pytest.raises(ValueError, match="aggregate must be one of"):
            attribute_tokens(m, TOKS, targets.logit(IDS), meth, aggregate=bad)


def test_on_induction_the_copied_token_is_in_the_top3_more_often_than_by_chance():
    m = organisms.load("induction", device="cpu")
    tb = organisms.task("induction").sample(24, seed=3)
    src = tb.source_positions[:, 0]
    chance = 3 / (tb.tokens.shape[1] - 1)  # BOS excluded
    for meth in ("alti", "value_zeroing"):
        s = attribute_tokens(m, tb.tokens, tb.target, meth).scores
        hit = (s.argsort(-1, descending=True)[:, :3] == src[:, None]).any(-1).float().mean()
        assert hit > 2 * chance, (meth, float(hit))


def test_hooked_transformer_and_bridge_of_one_checkpoint_give_the_same_maps(hf_pair):
    from conftest import hooked_side

    h, b = hf_pair
    h = hooked_side(h)  # the bridge runs the full forward ended at each block, the HookedTransformer one block
    toks = torch.tensor([[1, 5, 9, 14, 3, 7, 11], [1, 8, 8, 20, 4, 6, 17]])
    t = targets.logit(torch.tensor([3, 4]))
    for meth in ("alti", "value_zeroing"):
        rh, rb = (attribute_tokens(m, toks, t, meth) for m in (h, b))
        torch.testing.assert_close(rh.extras["mixing"], rb.extras["mixing"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rh.scores, rb.scores, atol=1e-5, rtol=1e-4)
