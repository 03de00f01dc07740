"""shapley_sampling / kernel_shap / lime / exact_shapley against their definitions, a brute-force
enumeration written here, and Captum's ShapleyValueSampling / KernelShap / Lime (same draws)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import make_model

from mechattr import targets
from mechattr.attribution.shapley_methods import weighted_linear_fit
from mechattr.attribution.tokens import attribute_tokens

TOKS = torch.tensor([[5, 9, 14, 3, 7, 2, 11], [1, 8, 8, 20, 4, 6, 17]])
IDS = torch.tensor([7, 3])
T = targets.logprob(IDS)


@pytest.fixture(scope="module")
def m():
    return make_model(seed=11)


def _f(model, emb, row):
    """F(embeddings ``[n, pos, d]``) of example ``row``, one plain forward with a hook on hook_embed."""
    toks = TOKS[row : row + 1].expand(emb.shape[0], -1)
    with torch.no_grad():
        logits = model.run_with_hooks(toks, fwd_hooks=[("hook_embed", lambda a, hook: emb)])
    return logits[:, -1].log_softmax(-1)[:, IDS[row]]


def _v(model, row, kept, spans=None):
    """Target with every feature outside ``kept`` replaced by the zero embedding (one forward)."""
    x = model.W_E[TOKS[row]].detach().clone()
    spans = spans or [(p, p + 1) for p in range(x.shape[0])]
    for j, (s, e) in enumerate(spans):
        if j not in kept:
            x[s:e] = 0
    return float(_f(model, x[None], row)[0])


def _brute_shapley(model, row, n, spans=None):
    """Shapley values as the average marginal contribution over all n! orderings."""
    cache = {S: _v(model, row, set(S), spans) for r in range(n + 1) for S in itertools.combinations(range(n), r)}
    phi = [0.0] * n
    for order in itertools.permutations(range(n)):
        cur: tuple = ()
        for j in order:
            nxt = tuple(sorted(cur + (j,)))
            phi[j] += cache[nxt] - cache[cur]
            cur = nxt
    return torch.tensor(phi) / math.factorial(n)


def test_exact_shapley_equals_brute_force_over_all_orderings(m):
    r = attribute_tokens(m, TOKS, T, "exact_shapley")
    for row in range(2):
        torch.testing.assert_close(r.scores[row], _brute_shapley(m, row, 7), atol=2e-5, rtol=1e-4)


def test_exact_shapley_over_segments_equals_brute_force_over_segments(m):
    spans = [(0, 2), (2, 3), (3, 6), (6, 7)]
    r = attribute_tokens(m, TOKS, T, "exact_shapley", segments=spans)
    torch.testing.assert_close(r.scores[1], _brute_shapley(m, 1, 4, spans), atol=2e-5, rtol=1e-4)
    assert torch.allclose(r.token_scores[1, 3:6], r.scores[1, 2].expand(3) / 3)


@pytest.mark.parametrize("method,kw", [("exact_shapley", {}), ("shapley_sampling", {"n_samples": 3})])
def test_shapley_methods_satisfy_efficiency(m, method, kw):
    r = attribute_tokens(m, TOKS, T, method, seed=1, **kw)
    x = m.W_E[TOKS].detach()
    full = torch.stack([_f(m, x[i : i + 1], i)[0] for i in range(2)])
    empty = torch.stack([_f(m, torch.zeros_like(x[i : i + 1]), i)[0] for i in range(2)])
    torch.testing.assert_close(r.scores.sum(-1), full - empty, atol=1e-5, rtol=1e-5)
    assert r.convergence_delta.abs().max() < 1e-5


def test_shapley_sampling_converges_to_exact_shapley(m):
    exact = attribute_tokens(m, TOKS, T, "exact_shapley").scores
    few = attribute_tokens(m, TOKS, T, "shapley_sampling", n_samples=4, seed=0).scores
    many = attribute_tokens(m, TOKS, T, "shapley_sampling", n_samples=400, seed=0).scores
    assert (many - exact).abs().max() < 0.5 * (few - exact).abs().max()


def _captum(cls, m, row, seed, n_samples, **init):
    """Captum ``cls`` on example ``row`` over its token embeddings, one feature per token."""
    x = m.W_E[TOKS[row]].detach()[None]
    mask = torch.arange(x.shape[1])[None, :, None].expand_as(x).contiguous()
    torch.manual_seed(seed)
    alg = cls(lambda e: _f(m, e, row), **init)
    if "interpretable_model" in init or cls.__name__ == "KernelShap":
        alg.interpretable_model = _WLS()
    attr = alg.attribute(x, baselines=torch.zeros_like(x), feature_mask=mask, n_samples=n_samples)
    return attr[0, :, 0]


class _WLS:
    """Captum interpretable model: weighted least squares with intercept (numpy, minimum norm)."""

    def fit(self, data, **kw):
        import numpy as np

        X, y, w = (t.double().numpy() for t in next(iter(data)))
        w = w / w.sum()
        Xc, yc = X - w @ X, y - w @ y
        self.coef = np.linalg.lstsq(Xc * np.sqrt(w)[:, None], yc * np.sqrt(w), rcond=None)[0]

    def representation(self):
        return torch.tensor(self.coef, dtype=torch.float32)[None]


def test_shapley_sampling_equals_captum_with_the_same_permutations(m):
    from captum.attr import ShapleyValueSampling

    r = attribute_tokens(m, TOKS, T, "shapley_sampling", n_samples=5, seed=3)
    for row in range(2):
        torch.testing.assert_close(r.scores[row], _captum(ShapleyValueSampling, m, row, 3, 5), atol=2e-5, rtol=1e-4)


def test_kernel_shap_equals_captum_with_the_same_draws(m):
    from captum.attr import KernelShap

    r = attribute_tokens(m, TOKS, T, "kernel_shap", n_samples=40, seed=5)
    for row in range(2):
        torch.testing.assert_close(r.scores[row], _captum(KernelShap, m, row, 5, 40), atol=1e-4, rtol=1e-3)
    assert r.extras["efficiency_gap"].abs().max() < 1e-3  # the 1e6 end-point weights nearly enforce it


def test_lime_on_embeddings_equals_captum_lime_on_the_embedding_input(m):
    from captum.attr import Lime

    r = attribute_tokens(m, TOKS, T, "lime", n_samples=30, seed=2, alpha=0.0, kernel_on="embeddings")
    for row in range(2):
        torch.testing.assert_close(r.scores[row], _captum(Lime, m, row, 2, 30, interpretable_model=_WLS()), atol=1e-4, rtol=1e-3)


def test_lime_on_features_equals_captum_lime_on_the_binary_presence_input(m):
    """As Captum's LLMAttribution feeds Lime: the input is the 0/1 presence vector (all ones),
    the baseline zeros, so the cosine kernel is computed on that vector."""
    from captum.attr import Lime

    r = attribute_tokens(m, TOKS, T, "lime", n_samples=30, seed=4, alpha=0.0)
    for row in range(2):
        x = m.W_E[TOKS[row]].detach()

        def f(present, row=row, x=x):
            return _f(m, present[..., None] * x[None], row)

        torch.manual_seed(4)
        theirs = Lime(f, interpretable_model=_WLS()).attribute(torch.ones(1, 7), baselines=torch.zeros(1, 7), n_samples=30)
        torch.testing.assert_close(r.scores[row], theirs[0], atol=1e-4, rtol=1e-3)
    other = attribute_tokens(m, TOKS, T, "lime", n_samples=30, seed=4, alpha=0.0, kernel_on="embeddings")
    assert (other.scores - r.scores).abs().max() > 1e-4  # the kernel matters


def test_lasso_fit_satisfies_the_kkt_conditions():
    g = torch.Generator().manual_seed(0)
    X = torch.bernoulli(torch.full((40, 6), 0.5), generator=g)
    y = X @ torch.tensor([2.0, 0.0, -1.0, 0.01, 0.0, 0.5]) + 0.1 * torch.randn(40, generator=g)
    w = torch.rand(40, generator=g).double()
    alpha = 0.05
    beta = weighted_linear_fit(X, y, w, alpha)
    wn = w / w.sum()
    Xc, yc = X.double() - wn @ X.double(), y.double() - wn @ y.double()
    grad = Xc.T @ (wn * (yc - Xc @ beta))  # = α·sign(β) where β ≠ 0, |·| ≤ α where β = 0
    nz = beta != 0
    torch.testing.assert_close(grad[nz], alpha * beta[nz].sign(), atol=1e-6, rtol=0)
    assert (grad[~nz].abs() <= alpha + 1e-6).all() and nz.sum() < 6


def test_coalitions_run_as_stacked_chunks_not_one_forward_each(m):
    calls = []
    h = m.blocks[0].register_forward_hook(lambda mod, i, o: calls.append((o[0] if isinstance(o, tuple) else o).shape[0]))
    try:
        a = attribute_tokens(m, TOKS, T, "exact_shapley", batch_size=64)
        rows = 2 * 2**7
        stacked = [c for c in calls if c > 2]  # the rest are clean runs of the 2 examples
        assert stacked == [64] * math.ceil(rows / 64) and len(calls) - len(stacked) <= 2
    finally:
        h.remove()
    b = attribute_tokens(m, TOKS, T, "exact_shapley")
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=1e-6)


def test_removal_zero_equals_the_zero_baseline_and_delete_ends_at_the_kept_tokens(m):
    a = attribute_tokens(m, TOKS, T, "exact_shapley", removal="zero")
    b = attribute_tokens(m, TOKS, T, "exact_shapley")
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=1e-6)
    d = attribute_tokens(m, TOKS[:1], targets.logprob(IDS[:1]), "exact_shapley", removal="delete", exclude_tokens=[5])
    with torch.no_grad():  # every feature deleted: the model sees only the excluded first token
        alone = m(TOKS[:1, :1])[0, -1].log_softmax(-1)[IDS[0]]
        full = m(TOKS[:1])[0, -1].log_softmax(-1)[IDS[0]]
    torch.testing.assert_close(d.scores.sum(), full - alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["shapley_sampling", "kernel_shap", "lime"])
def test_n_samples_below_one_is_a_value_error(m, method):
    with pytest.raises(ValueError, match="n_samples"):
        attribute_tokens(m, TOKS, T, method, n_samples=0)


def test_exact_shapley_over_twelve_features_is_a_value_error():
    model = make_model(n_ctx=16)
    toks = torch.arange(13)[None] % 20
    with pytest.raises(ValueError, match="at most 12"):
        attribute_tokens(model, toks, targets.logprob(torch.tensor([1])), "exact_shapley")


def test_overlapping_or_incomplete_segments_are_value_errors(m):
    with pytest.raises(ValueError, match="overlap"):
        attribute_tokens(m, TOKS, T, "shapley_sampling", segments=[(0, 3), (2, 7)])
    with pytest.raises(ValueError, match="leave token 3"):
        attribute_tokens(m, TOKS, T, "kernel_shap", segments=[(0, 3), (4, 7)])


def test_removal_with_baseline_or_plain_callable_is_a_value_error(m):
    with pytest.raises(ValueError, match="not both"):
        attribute_tokens(m, TOKS, T, "lime", baseline=0, removal="zero")
    with pytest.raises(ValueError, match="removal"):
        attribute_tokens(m, TOKS, lambda lg: lg[:, -1, 0], "lime", removal="delete")
    with pytest.raises(ValueError, match="unknown removal"):
        attribute_tokens(m, TOKS, T, "lime", removal="blur")
    with pytest.raises(ValueError, match="kernel_on"):
        attribute_tokens(m, TOKS, T, "lime", kernel_on="tokens")
