"""dig, udig and sig: monotone paths (the points inspected), a slow per-token path builder,
slow one-forward-per-point loops, completeness where it holds, option checks."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from mechattr import targets
from mechattr.attribution.discrete_paths import monotone_path
from mechattr.attribution.paths import schedule
from mechattr.attribution.tokens import attribute_tokens
from mechattr.runtime.embedding import embed_tokens, vocab_embeddings

TOKS = torch.tensor([[5, 9, 14, 3, 7], [1, 8, 8, 20, 4]])
IDS = torch.tensor([7, 3])


def _f(model, emb):
    """log p(IDS) at the last position with hook_embed replaced by ``emb`` (one forward)."""
    with model.hooks(fwd_hooks=[("hook_embed", lambda a, hook: emb)]):
        logits = model(TOKS[: emb.shape[0]])
    return logits[:, -1].log_softmax(-1)[torch.arange(emb.shape[0]), IDS[: emb.shape[0]]]


def _grad(model, emb):
    e = emb.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_f(model, e).sum(), e)
    return g


def _slow_path(E, w, x, b, n, strategy, K, uniform, base_word):
    """One token's DIG/UDIG path, candidate by candidate (the definition, no batching)."""
    pts, used, c, word, m = [x], {w, base_word}, x, w, n - 2
    for k in range(m):
        if uniform:
            d = (E - (b + (m - k) / (m + 1) * (x - b))).norm(dim=-1)
        else:
            d = (E - E[word]).norm(dim=-1)
            d[word] = float("inf")
        best = None
        for a in d.argsort()[:K].tolist():
            if a in used:
                continue
            A = E[a]
            mono = (A >= torch.minimum(c, b)) & (A <= torch.maximum(c, b))
            M = torch.where(mono, A, c - (c - b) / n)
            s = float((A - M).norm()) if strategy == "greedy" else -int(mono.sum())
            if best is None or s < best[0]:
                best = (s, a, M)
        if best is None:
            c = b
        else:
            _, word, c = best
            used.add(word)
        pts.append(c)
    return torch.stack([b, *pts[::-1]])


@pytest.mark.parametrize("uniform", [False, True], ids=["dig", "udig"])
@pytest.mark.parametrize("strategy", ["greedy", "maxcount"])
def test_paths_are_monotone_and_equal_a_slow_per_token_builder(uniform, strategy):
    m = make_model(seed=1, d_vocab=64)
    E = vocab_embeddings(m)
    words = TOKS.flatten()
    x = E[words]
    for b, base in [(torch.zeros_like(x), -1), (E[2].expand_as(x), 2)]:
        n = 7
        path = monotone_path(E, words, x, b, n, strategy=strategy, n_neighbors=12, uniform=uniform,
                             base_words=torch.full_like(words, base))
        assert path.shape == (n, len(words), E.shape[1])
        torch.testing.assert_close(path[0], b)
        torch.testing.assert_close(path[-1], x)
        step = path[1:] - path[:-1]
        direction = torch.sign(x - b)
        assert ((step * direction) >= 0).all()  # every dimension moves from b towards x, never back
        assert (step[:, direction == 0] == 0).all()
        assert (path[1:-1] != path[-1]).any() and (path[1:-1] != path[0]).any()  # interior points are new
        for t in range(len(words)):
            ref = _slow_path(E, int(words[t]), x[t], b[t], n, strategy, 12, uniform, base)
            torch.testing.assert_close(path[:, t], ref)


def test_udig_and_dig_paths_differ():
    m = make_model(seed=1, d_vocab=64)
    E = vocab_embeddings(m)
    words = TOKS.flatten()
    x = E[words]
    kw = dict(n_neighbors=8, base_words=torch.full_like(words, -1))
    assert not torch.equal(monotone_path(E, words, x, 0 * x, 6, **kw), monotone_path(E, words, x, 0 * x, 6, uniform=True, **kw))


@pytest.mark.parametrize("method", ["dig", "udig"])
def test_dig_udig_equal_a_slow_loop_over_path_points(method):
    m = make_model(seed=3, d_vocab=48)
    E = vocab_embeddings(m)
    n, K = 6, 10
    x = embed_tokens(m, TOKS)
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), method, n_steps=n, n_neighbors=K, strategy="maxcount", batch_size=3)
    path = monotone_path(E, TOKS.flatten(), x.flatten(0, 1), torch.zeros(TOKS.numel(), E.shape[1]), n, strategy="maxcount",
                         n_neighbors=K, uniform=method == "udig", base_words=torch.full((TOKS.numel(),), -1)).view(n, *x.shape)
    attr = sum(_grad(m, path[k]) * (path[k + 1] - path[k]) for k in range(n - 1))
    torch.testing.assert_close(r.scores, attr.sum(-1), atol=1e-5, rtol=1e-4)
    f_x, f_b = _f(m, x), _f(m, path[0])
    torch.testing.assert_close(r.convergence_delta, attr.sum((-1, -2)) - (f_x - f_b), atol=1e-5, rtol=1e-4)
    assert r.settings["n_steps"] == n and r.settings["n_neighbors"] == K and r.settings["strategy"] == "maxcount"


def test_udig_is_complete_when_the_vocabulary_lies_on_the_straight_line():
    """With words at every uniform point of the line from 0 to each input word, UDIG's anchors are
    those points (fully monotone, distance 0), its path is IG's uniform grid, and Σ scores is a
    left Riemann sum of the IG integral: the completeness error shrinks like 1/n."""
    n = 26
    toks = torch.tensor([[1, 2, 3]])
    m = make_model(seed=6, d_vocab=4 + 3 * (n - 2) + 1)
    with torch.no_grad():
        m.W_E[1:4] *= 4  # words far from the baseline: a large gap to explain
        for t in (1, 2, 3):
            for j in range(1, n - 1):
                m.W_E[4 + (t - 1) * (n - 2) + (j - 1)] = j / (n - 1) * m.W_E[t]
    t = targets.logprob(torch.tensor([4]))
    u = attribute_tokens(m, toks, t, "udig", n_steps=n, baseline="zero")
    gap = u.f_input - u.f_baseline
    assert gap.abs().min() > 0.05
    assert (u.convergence_delta.abs() <= 0.06 * gap.abs()).all(), (u.convergence_delta, gap)
    ig = attribute_tokens(m, toks, t, "ig", n_steps=n - 1, quadrature="riemann_left", baseline="zero")
    torch.testing.assert_close(u.scores, ig.scores, atol=1e-5, rtol=1e-4)  # the same left Riemann sum


def test_sig_equals_a_slow_loop_of_one_token_igs():
    m = make_model(seed=8)
    x = embed_tokens(m, TOKS)
    a, w = schedule(6)
    mask = embed_tokens(m, torch.tensor(0))
    expected = torch.zeros(TOKS.shape)
    for p in range(TOKS.shape[1]):
        for ak, wk in zip(a.tolist(), w.tolist()):
            e = x.clone()
            e[:, p] = mask + ak * (x[:, p] - mask)
            expected[:, p] += wk * (_grad(m, e)[:, p] * (x[:, p] - mask)).sum(-1)
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "sig", n_steps=6, baseline=0, batch_size=5)
    torch.testing.assert_close(r.scores, expected, atol=1e-5, rtol=1e-4)


def test_sig_completeness_holds_per_token():
    """Each token's IG is complete on its own path: Σ_d score_t = F(x) − F(x with t at the baseline)."""
    m = make_model(seed=8)
    x = embed_tokens(m, TOKS)
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "sig", n_steps=24)
    masked = torch.stack([_f(m, torch.cat([x[:, :p], torch.zeros_like(x[:, p:p + 1]), x[:, p + 1:]], 1)) for p in range(TOKS.shape[1])], 1)
    torch.testing.assert_close(r.extras["f_masked"], masked, atol=1e-5, rtol=1e-5)
    gap = _f(m, x)[:, None] - masked
    assert (r.extras["token_delta"].abs() <= 1e-3 * gap.abs().max() + 1e-5).all()
    torch.testing.assert_close(r.scores, gap, atol=1e-3 * float(gap.abs().max()), rtol=0)
    torch.testing.assert_close(r.convergence_delta, r.extras["token_delta"].sum(-1))
    assert ((r.f_input - r.f_baseline) - gap.sum(-1)).abs().max() < 1e-5


def test_sig_scores_excluded_tokens_zero_and_does_not_move_them():
    m = make_model(seed=8)
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "sig", n_steps=4, exclude_tokens=[8])
    assert (r.scores[1, 1:3] == 0).all() and (r.scores[0] != 0).all()
    torch.testing.assert_close(r.extras["f_masked"][1, 1:3], r.f_input[1].expand(2))


def test_discrete_path_options_are_checked():
    m = make_model(seed=8)
    t = targets.logprob(IDS)
    for method, kw, msg in [("dig", {"strategy": "nearest"}, "strategy"), ("udig", {"n_neighbors": 0}, "n_neighbors"),
                            ("dig", {"n_steps": 1}, "n_steps"), ("sig", {"quadrature": "simpson"}, "simpson"),
                            ("udig", {"baseline": "gaussian", "seed": 0, "n_steps": 3}, None)]:
        if msg is None:  # one random draw is one baseline: allowed
            attribute_tokens(m, TOKS, t, method, **kw)
            continue
        with pytest.raises(ValueError, match=msg):
            attribute_tokens(m, TOKS, t, method, **kw)
