"""Attention rollout, flow and graph against references written here (Abnar & Zuidema 2020)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from conftest import both_sides, hooked_side, make_model

from mechattr.graph import (
    _flow_networkx,
    _flow_scipy,
    attention_flow,
    attention_graph,
    attention_rollout,
    augment,
)


def _ref_aug(model, tokens):
    """Â per layer from TransformerLens's own cache: head mean, 0.5A + 0.5I, rows renormalised."""
    _, cache = model.run_with_cache(tokens)
    out = []
    for layer in range(model.cfg.n_layers):
        A = cache["pattern", layer].mean(1).double()
        a = 0.5 * A + 0.5 * torch.eye(A.shape[-1], dtype=A.dtype)
        out.append(a / a.sum(-1, keepdim=True))
    return torch.stack(out, 1)  # [batch, L, pos, pos]


def _ref_flow(aug, out_pos):
    """Per-token networkx max-flow on a graph built here from the definition."""
    L, P = aug.shape[0], aug.shape[-1]
    G = nx.DiGraph()
    for layer in range(L):
        for q in range(P):
            for k in range(P):
                if aug[layer, q, k] > 0:
                    G.add_edge((layer, k), (layer + 1, q), capacity=float(aug[layer, q, k]))
    return np.array([nx.maximum_flow_value(G, (0, k), (L, out_pos)) if (0, k) in G else 0.0 for k in range(P)])


def _random_aug(L, P, seed, causal=True):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(L, P, P, generator=g, dtype=torch.float64) * 3
    if causal:
        s = s.masked_fill(torch.triu(torch.ones(P, P, dtype=torch.bool), 1), -float("inf"))
    return augment(s.softmax(-1)).numpy()


def test_rollout_rows_sum_to_one_and_match_matrix_product(model, tokens, unchanged):
    with unchanged(model):
        R = attention_rollout(model, tokens)
        per = attention_rollout(model, tokens, per_layer=True)
    aug = _ref_aug(model, tokens)
    ref = aug[:, 0]
    for layer in range(1, aug.shape[1]):
        ref = aug[:, layer] @ ref
    assert R.shape == (3, 8, 8) and per.shape == (3, 2, 8, 8)
    torch.testing.assert_close(R.sum(-1), torch.ones(3, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(R.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(per[:, -1], R)
    torch.testing.assert_close(per[:, 0].double(), aug[:, 0], atol=1e-6, rtol=0)


def test_rollout_head_selection_uses_only_those_heads(model, tokens):
    R = attention_rollout(model, tokens, heads=["L0H1", "L1H2"])
    _, cache = model.run_with_cache(tokens)
    a0 = augment(cache["pattern", 0][:, 1].double())
    a1 = augment(cache["pattern", 1][:, 2].double())
    torch.testing.assert_close(R.double(), a1 @ a0, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="out of range"):
        attention_rollout(model, tokens, heads=["L0H9"])


def test_flow_equals_per_token_networkx_reference(model, tokens, unchanged):
    with unchanged(model):
        fast = attention_flow(model, tokens)
        slow = attention_flow(model, tokens, backend="networkx")
        mid = attention_flow(model, tokens, output_pos=4)
    aug = _ref_aug(model, tokens).numpy()
    for b in range(3):
        np.testing.assert_allclose(fast[b].numpy(), _ref_flow(aug[b], 7), atol=1e-5)
        np.testing.assert_allclose(mid[b].numpy(), _ref_flow(aug[b], 4), atol=1e-5)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    assert (mid[:, 5:] == 0).all()  # causal: later tokens cannot reach position 4


@pytest.mark.parametrize("L,P", [(2, 128), (3, 40)])
def test_scipy_backend_equals_networkx_on_long_sequences(L, P):
    from mechattr.graph import _graph_from_aug, int_scale

    aug = _random_aug(L, P, seed=P)
    fast = _flow_scipy(aug, P - 1, L)
    G = _graph_from_aug(aug)
    for k in sorted({0, 1, 2, P // 3, P // 2, P - 2, P - 1}):  # the definition, token by token
        assert fast[k] == pytest.approx(nx.maximum_flow_value(G, (0, k), (L, P - 1)), abs=1e-5)
    assert int_scale(P) * (P + 1) < 2**31
    bi = _random_aug(2, 24, seed=1, causal=False)  # bidirectional: no pruning shortcut
    np.testing.assert_allclose(_flow_scipy(bi, 5, 2), _flow_networkx(bi, 5, 2), atol=1e-5)


def _widest_path(aug, out_pos):
    """Max over paths of the min capacity (a lower bound on the flow): max-min products."""
    W = aug[0]
    for layer in range(1, aug.shape[0]):
        W = np.max(np.minimum(aug[layer][:, :, None], W[None, :, :]), axis=1)
    return W[out_pos]


def _cut_bound(aug, k, out_pos):
    """min over layers l of the capacity of the cut {layers ≤ l} | {layers > l} restricted
    to nodes reachable from (0, k) — an upper bound on the flow (max-flow ≤ any cut)."""
    L, P = aug.shape[0], aug.shape[-1]
    reach = np.zeros(P, dtype=bool)
    reach[k] = True
    best = np.inf
    for layer in range(L):
        best = min(best, aug[layer][:, reach].sum())
        reach = (aug[layer][:, reach] > 0).any(1)
    return min(best, aug[L - 1][out_pos].sum())


def test_flow_between_widest_path_and_cut_bounds(model, tokens):
    flow = attention_flow(model, tokens).double().numpy()
    aug = _ref_aug(model, tokens).numpy()
    for b in range(3):
        lo = _widest_path(aug[b], 7)
        hi = np.array([_cut_bound(aug[b], k, 7) for k in range(8)])
        assert (flow[b] >= lo - 1e-6).all()
        assert (flow[b] <= hi + 1e-6).all()
        assert (flow[b] <= 1 + 1e-6).all()


def test_attention_graph_structure(model, tokens, unchanged):
    with unchanged(model):
        G = attention_graph(model, tokens, batch_index=1)
    aug = _ref_aug(model, tokens)[1]
    L, P = 2, 8
    assert G.number_of_nodes() == (L + 1) * P
    assert G.graph["n_layers"] == L and G.graph["n_pos"] == P
    assert G.number_of_edges() == int((aug > 0).sum())
    for layer in range(L):
        for q in range(P):
            for k in range(q + 1):
                assert G[(layer, k)][(layer + 1, q)]["capacity"] == pytest.approx(float(aug[layer, q, k]), abs=1e-6)
    assert G.nodes[(0, 3)]["pos"] == 3 and G.nodes[(2, 3)]["layer"] == 2


def test_flow_per_layer_last_equals_full(model, tokens):
    per = attention_flow(model, tokens, per_layer=True)
    assert per.shape == (3, 2, 8)
    torch.testing.assert_close(per[:, -1], attention_flow(model, tokens))
    aug = _ref_aug(model, tokens).numpy()
    np.testing.assert_allclose(per[0, 0].numpy(), _ref_flow(aug[0][:1], 7), atol=1e-5)


def test_graph_functions_match_on_bridge(hf_pair):
    ht, br = hf_pair
    hooked_side(ht)
    toks = torch.randint(3, 40, (2, 10), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(attention_rollout(ht, toks), attention_rollout(br, toks), atol=1e-5, rtol=0)
    torch.testing.assert_close(attention_flow(ht, toks), attention_flow(br, toks), atol=1e-5, rtol=0)


def test_bad_inputs_raise(model, tokens, unchanged):
    with unchanged(model):
        with pytest.raises(ValueError, match="unknown attention-flow backend"):
            attention_flow(model, tokens, backend="igraph")
        with pytest.raises(ValueError, match="out of range"):
            attention_flow(model, tokens, output_pos=8)
        with pytest.raises(ValueError, match="n_ctx"):
            attention_rollout(model, torch.ones(1, 17, dtype=torch.long))
        with pytest.raises(ValueError, match="batch_index"):
            attention_graph(model, tokens, batch_index=5)


def test_padding_positions_get_no_flow():
    m = make_model(n_layers=2)
    toks = torch.randint(1, 24, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    f = attention_flow(m, toks, attention_mask=mask)
    assert (f[0, :2].abs() < 1e-6).all() and (f[1] > 0).all()
    R = attention_rollout(m, toks, attention_mask=mask)
    assert (R[0, -1, :2].abs() < 1e-6).all()


def test_left_padding_equals_unpadded_on_both_model_types(hf_pair):
    clean = torch.tensor([[2, 2, 1, 9, 10, 11]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    for m in both_sides(hf_pair):
        R = attention_rollout(m, clean, attention_mask=mask)
        torch.testing.assert_close(R[:, 2:, 2:], attention_rollout(m, clean[:, 2:]), atol=1e-6, rtol=1e-5)
        f = attention_flow(m, clean, attention_mask=mask, output_pos="last")
        torch.testing.assert_close(f[:, 2:], attention_flow(m, clean[:, 2:]), atol=1e-5, rtol=0)
        assert (f[:, :2] == 0).all()
