"""attribute_interactions: Shapley–Taylor against its definition (brute force written here), SPEX
recovering planted interactions of a plain set function, and the negator × polarity AND on the
sentiment organism."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import make_model

from mechattr import organisms, targets
from mechattr.attribution.interactions import (
    Interactions,
    attribute_interactions,
    shapley_taylor,
    spex,
)


def _brute_sti(v, n, k):
    """Shapley–Taylor index by its definition (Sundararajan et al. 2020, eq. 3 / def. 2):
    |S| < k: δ_S v(∅); |S| = k: k/n · Σ_{T ⊆ N∖S} δ_S v(T) / C(n−1, |T|), δ_S v(T) = Σ_{W ⊆ S} (−1)^{|S|−|W|} v(W ∪ T)."""

    def delta(S, T):
        return sum((-1) ** (len(S) - r) * v(frozenset(W) | T) for r in range(len(S) + 1) for W in itertools.combinations(S, r))

    out = {}
    for size in range(1, k + 1):
        for S in itertools.combinations(range(n), size):
            if size < k:
                out[S] = delta(S, frozenset())
            else:
                rest = [j for j in range(n) if j not in S]
                out[S] = k / n * sum(delta(S, frozenset(T)) / math.comb(n - 1, len(T))
                                     for r in range(len(rest) + 1) for T in itertools.combinations(rest, r))
    return out


@pytest.mark.parametrize("k", [2, 3])
def test_shapley_taylor_equals_its_definition_on_a_random_set_function(k):
    n = 6
    g = torch.Generator().manual_seed(k)
    table = torch.randn(2**n, generator=g, dtype=torch.float64)

    def v(S):
        return float(table[sum(1 << j for j in S)])

    got = shapley_taylor(table, n, k)
    ref = _brute_sti(v, n, k)
    assert got.keys() == ref.keys()
    for S in ref:
        assert got[S] == pytest.approx(ref[S], abs=1e-9)
    top = sum(e for S, e in got.items() if len(S) == k) + sum(e for S, e in got.items() if len(S) < k)
    assert top == pytest.approx(v(range(n)) - v(()), abs=1e-9)  # efficiency of the index


def test_attribute_interactions_shapley_taylor_equals_brute_force_on_the_model():
    m = make_model(seed=3)
    toks = torch.tensor([[4, 9, 2, 13, 7]])
    tgt = targets.logprob(torch.tensor([5]))
    r = attribute_interactions(m, toks, tgt, method="shapley_taylor", max_order=2)
    x = m.W_E[toks].detach()
    memo: dict = {}

    def v(S):
        key = frozenset(S)
        if key not in memo:
            memo[key] = value(key)
        return memo[key]

    def value(S):
        e = x.clone()
        e[0, [j for j in range(5) if j not in S]] = 0
        with torch.no_grad():
            return float(m.run_with_hooks(toks, fwd_hooks=[("hook_embed", lambda a, hook: e)])[0, -1].log_softmax(-1)[5])

    ref = _brute_sti(v, 5, 2)
    for S, e in ref.items():
        assert r.effects[0][S] == pytest.approx(e, abs=2e-5)
    assert r.f_input[0] == pytest.approx(v(range(5)), abs=1e-5) and r.f_empty[0] == pytest.approx(v(()), abs=1e-5)


def _planted(mask):
    m = mask.double()
    return 1 + 3 * m[:, 0] * m[:, 3] - 2 * m[:, 1] * m[:, 4] * m[:, 5] + 0.5 * m[:, 2] - 1.5 * m[:, 7] * m[:, 11]


def test_spex_recovers_planted_and_interactions_of_a_set_function():
    calls = []

    def f(mask):
        calls.append(mask.shape[0])
        return _planted(mask)

    e = spex(f, 16, max_order=3, seed=1)
    big = {S: round(x, 6) for S, x in e.items() if abs(x) > 1e-6}
    assert big == {(0, 3): 3.0, (1, 4, 5): -2.0, (2,): 0.5, (7, 11): -1.5}
    assert len(calls) == 1 and calls[0] < 2**16 // 10  # one batched query, far fewer than 2^n masks


def test_spex_with_noise_still_ranks_the_planted_pair_first():
    g = torch.Generator().manual_seed(0)
    noise = {}

    def f(mask):
        key = mask.long() @ (2 ** torch.arange(mask.shape[1]))
        eps = torch.tensor([noise.setdefault(int(k), 0.05 * float(torch.randn(1, generator=g))) for k in key], dtype=torch.float64)
        return _planted(mask) + eps

    e = spex(f, 20, max_order=2, seed=2)
    pairs = sorted(((S, x) for S, x in e.items() if len(S) == 2), key=lambda t: -abs(t[1]))
    assert pairs[0][0] == (0, 3) and pairs[0][1] == pytest.approx(3.0, abs=0.2)


def test_negator_times_polarity_is_the_top_pair_on_negated_sentiment_examples():
    m = organisms.load("sentiment")
    b = organisms.task("sentiment").sample(24, seed=5)
    neg = (b.info["negator"] >= 0).nonzero().flatten()[:10]
    tgt = targets.logit_diff(b.answers[neg], b.corrupted_answers[neg])
    marker = int(b.tokens[0, -1])  # the query token "sentiment:" is the prompt, not content: not a feature
    r = attribute_interactions(m, b.tokens[neg], tgt, method="spex", exclude_tokens=[marker], seed=0, n_bins_log2=4, n_delays=10)
    hits = [set(r.top(i, 1)[0].positions) == {int(b.info["polarity"][j]), int(b.info["negator"][j])} for i, j in enumerate(neg.tolist())]
    assert sum(hits) / len(hits) >= 0.9, hits
    assert "sentiment:" not in repr(r) and repr(r).startswith("Interactions(method='spex'")


def test_result_lists_sets_by_effect_and_frames():
    m = make_model(seed=3)
    r = attribute_interactions(m, torch.tensor([[4, 9, 2, 13]]), targets.logprob(torch.tensor([5])), method="shapley_taylor", max_order=3)
    assert isinstance(r, Interactions) and len(repr(r)) < 200
    top = r.top(0, 3)
    assert [abs(t.effect) for t in top] == sorted((abs(t.effect) for t in top), reverse=True)
    assert all(len(t.positions) >= 2 for t in top)
    df = r.to_frame()
    assert len(df) == 4 + 6 + 4 and set(df.columns) == {"row", "size", "positions", "tokens", "effect"}


def test_bad_interaction_arguments_are_value_errors():
    m = make_model(seed=3)
    toks, tgt = torch.tensor([[4, 9, 2, 13]]), targets.logprob(torch.tensor([5]))
    with pytest.raises(ValueError, match="unknown interaction method"):
        attribute_interactions(m, toks, tgt, method="lasso")
    with pytest.raises(ValueError, match="max_order"):
        attribute_interactions(m, toks, tgt, max_order=4)
    with pytest.raises(ValueError, match="unknown option"):
        attribute_interactions(m, toks, tgt, method="shapley_taylor", n_delays=3)
    with pytest.raises(ValueError, match="at most 12"):
        attribute_interactions(m, torch.arange(14)[None] % 20, tgt, method="shapley_taylor")
