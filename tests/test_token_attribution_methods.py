"""Each token method against its definition (slow references written here), baselines, BOS,
segments and the result object."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from mechattr import targets
from mechattr.attribution.paths import schedule
from mechattr.attribution.result import TokenAttribution, word_spans
from mechattr.attribution.tokens import attribute_tokens

TOKS = torch.tensor([[5, 9, 14, 3, 7, 2, 11], [1, 8, 8, 20, 4, 6, 17]])
IDS = torch.tensor([7, 3])


def _f(model, emb, ids=IDS):
    """F(embeddings) by a hook on hook_embed (one forward, no stacking)."""
    logits = model.run_with_hooks(TOKS[: emb.shape[0]], fwd_hooks=[("hook_embed", lambda a, hook: emb)])
    return logits[:, -1].log_softmax(-1)[torch.arange(emb.shape[0]), ids[: emb.shape[0]]]


def _grad(model, emb):
    e = emb.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_f(model, e).sum(), e)
    return g


def _x(model):
    return model.W_E[TOKS].detach()


@pytest.fixture
def m():
    return make_model(seed=11)


def test_saliency_is_the_l2_norm_of_the_embedding_gradient(m):
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "saliency")
    g = _grad(m, _x(m))
    torch.testing.assert_close(r.scores, g.norm(dim=-1), atol=1e-5, rtol=1e-5)
    s = attribute_tokens(m, TOKS, targets.logprob(IDS), "saliency", reduction="sum")
    torch.testing.assert_close(s.scores, g.sum(-1), atol=1e-5, rtol=1e-5)
    assert r.settings["reduction"] == "l2" and s.settings["reduction"] == "sum"


def test_ig_l2_reduction_is_the_norm_of_the_per_dimension_attribution(m):
    a, w = schedule(16)
    x = _x(m)
    G = sum(wk * _grad(m, ak * x) for ak, wk in zip(a.tolist(), w.tolist()))
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "ig", n_steps=16, reduction="l2")
    torch.testing.assert_close(r.scores, (x * G).norm(dim=-1), atol=1e-5, rtol=1e-4)


def test_ig_clipped_equals_ig_with_each_step_gradient_clamped(m):
    a, w = schedule(8)
    x = _x(m)
    G = sum(wk * _grad(m, ak * x).clamp(-0.02, 0.02) for ak, wk in zip(a.tolist(), w.tolist()))
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "ig_clipped", n_steps=8, theta=0.02)
    torch.testing.assert_close(r.scores, (x * G).sum(-1), atol=1e-5, rtol=1e-4)
    big = attribute_tokens(m, TOKS, targets.logprob(IDS), "ig_clipped", n_steps=8)  # θ = 1e6
    ig = attribute_tokens(m, TOKS, targets.logprob(IDS), "ig", n_steps=8)
    torch.testing.assert_close(big.scores, ig.scores)


def test_expected_gradients_converges_to_ig_for_a_point_baseline_and_is_seeded(m):
    b = 0.5 * m.W_E[TOKS.flip(-1)].detach()
    eg = attribute_tokens(m, TOKS, targets.logprob(IDS), "expected_gradients", baseline=b, n_samples=600, seed=1)
    ig = attribute_tokens(m, TOKS, targets.logprob(IDS), "ig", baseline=b, n_steps=64)
    err = (eg.scores - ig.scores).norm() / ig.scores.norm()
    assert err < 0.1
    a = attribute_tokens(m, TOKS, targets.logprob(IDS), "expected_gradients", n_samples=4, seed=1)
    again = attribute_tokens(m, TOKS, targets.logprob(IDS), "expected_gradients", n_samples=4, seed=1)
    other = attribute_tokens(m, TOKS, targets.logprob(IDS), "expected_gradients", n_samples=4, seed=2)
    assert torch.equal(a.scores, again.scores) and not torch.equal(a.scores, other.scores)


def _fixed_sampler(bs):
    def sampler(n, embeds, generator):
        return bs[:n]

    return sampler


def test_rpi_keeps_an_ig_map_per_baseline_and_picks_the_most_comprehensive(m):
    g = torch.Generator().manual_seed(0)
    bs = 0.3 * torch.randn(3, *TOKS.shape, m.cfg.d_model, generator=g)
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "rpi", baseline=_fixed_sampler(bs), n_baselines=3, n_steps=16, k=0.3)
    x = _x(m)
    a, w = schedule(16)
    for j in range(3):
        ig = attribute_tokens(m, TOKS, targets.logprob(IDS), "ig", baseline=bs[j], n_steps=16)
        torch.testing.assert_close(r.extras["maps"][j], ig.scores, atol=1e-5, rtol=1e-4)
    # ψ by a slow reference: remove the top ceil(0.3·7) = 3 tokens (zero embedding), one forward each
    f_x = _f(m, x)
    psi = torch.zeros(3, 2)
    for j in range(3):
        for i in range(2):
            top = r.extras["maps"][j, i].argsort(descending=True)[:3]
            e = x.clone()
            e[i, top] = 0
            psi[j, i] = f_x[i] - _f(m, e)[i]
    torch.testing.assert_close(r.extras["psi"], psi, atol=1e-5, rtol=1e-4)
    chosen = psi.argmax(0)
    torch.testing.assert_close(r.scores, r.extras["maps"][chosen, torch.arange(2)])
    assert r.convergence_delta.abs().max() < 0.05 * (r.f_input - r.f_baseline).abs().min() + 1e-3


def test_rpi_sufficiency_and_custom_psi(m):
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "rpi", n_baselines=2, n_steps=8, psi="sufficiency", seed=0)
    assert r.extras["maps"].shape == (2, 2, 7)
    pick_second = attribute_tokens(m, TOKS, targets.logprob(IDS), "rpi", n_baselines=2, n_steps=8, seed=0, psi=lambda ctx, maps: torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    torch.testing.assert_close(pick_second.scores, pick_second.extras["maps"][1])
    with pytest.raises(ValueError, match="psi"):
        attribute_tokens(m, TOKS, targets.logprob(IDS), "rpi", n_baselines=2, n_steps=4, psi="accuracy")


def test_ps_ig_equals_the_expectation_of_ig_over_baselines_sampled_on_the_path(m):
    """Paper 001: E_β~U[IG(x; β x)] (zero baseline) equals the CDF-weighted path integral."""
    ps = attribute_tokens(m, TOKS, targets.logprob(IDS), "ps_ig", n_steps=64)
    betas, bw = schedule(12)
    x = _x(m)
    expect = sum(wj * attribute_tokens(m, TOKS, targets.logprob(IDS), "ig", baseline=bj * x, n_steps=48).scores for bj, wj in zip(betas.tolist(), bw.tolist()))
    torch.testing.assert_close(ps.scores, expect, atol=2e-3, rtol=2e-2)
    assert ps.convergence_delta.abs().max() < 1e-3
    beta = attribute_tokens(m, TOKS, targets.logprob(IDS), "ps_ig", n_steps=32, density=("beta", 2.0, 2.0))
    assert beta.convergence_delta.abs().max() < 1e-3
    assert not torch.allclose(beta.scores, ps.scores)


def _patterns(m):
    _, cache = m.run_with_cache(TOKS)
    return torch.stack([cache["pattern", layer] for layer in range(m.cfg.n_layers)], 1)  # b l h q k


def test_attention_is_the_layer_and_head_mean_from_the_target_position(m):
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "attention")
    ref = _patterns(m)[:, :, :, -1, :].mean((1, 2))
    torch.testing.assert_close(r.scores, ref)


def test_aieg_matches_a_loop_over_paper_003_equations(m):
    N = 10
    x = _x(m)
    with torch.no_grad():
        F = [_f(m, (k / N) * x) for k in range(N + 1)]
    G = torch.zeros_like(x)
    for k in range(1, N + 1):
        ef = (F[k] - F[k - 1]).abs() / (F[k].abs() + F[k - 1].abs())  # eq. 12
        G += (ef[:, None, None] / N) * _grad(m, (k / N) * x)
    ig_ef = (x * G).sum(-1)
    posnorm = ig_ef / ig_ef.clamp_min(0).sum(-1, keepdim=True)  # eq. 13
    ref = _patterns(m)[:, :, :, -1, :].mean((1, 2)) * posnorm  # eqs. 9, 11
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "aieg", n_steps=N)
    torch.testing.assert_close(r.scores, ref, atol=1e-5, rtol=1e-4)
    assert (r.extras["ef"] >= 0).all() and (r.extras["ef"] <= 1).all()


@pytest.mark.parametrize("window", [1, 3])
def test_occlusion_matches_one_forward_per_window(m, window):
    x = _x(m)
    f_x = _f(m, x)
    n = TOKS.shape[1]
    starts = list(range(0, n - window + 1))
    total, cover = torch.zeros(2, n), torch.zeros(n)
    for s in starts:
        e = x.clone()
        e[:, s : s + window] = m.W_E[0]
        total[:, s : s + window] += (f_x - _f(m, e))[:, None]
        cover[s : s + window] += 1
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "occlusion", baseline=0, window=window, batch_size=5)
    torch.testing.assert_close(r.scores, total / cover, atol=1e-5, rtol=1e-4)


def test_baseline_kinds(m):
    t = targets.logprob(IDS)
    mean = attribute_tokens(m, TOKS, t, "ig", baseline="mean", n_steps=8)
    explicit = attribute_tokens(m, TOKS, t, "ig", baseline=m.W_E.mean(0).detach(), n_steps=8)
    torch.testing.assert_close(mean.scores, explicit.scores)
    ids = torch.full_like(TOKS, 4)
    tok = attribute_tokens(m, TOKS, t, "ig", baseline=4, n_steps=8)
    tok2 = attribute_tokens(m, TOKS, t, "ig", baseline=ids, n_steps=8)
    torch.testing.assert_close(tok.scores, tok2.scores)
    u1 = attribute_tokens(m, TOKS, t, "ig", baseline="uniform", seed=5, n_steps=8)
    u2 = attribute_tokens(m, TOKS, t, "ig", baseline="uniform", seed=5, n_steps=8)
    u3 = attribute_tokens(m, TOKS, t, "ig", baseline="uniform", seed=6, n_steps=8)
    assert torch.equal(u1.scores, u2.scores) and not torch.equal(u1.scores, u3.scores)
    assert u1.convergence_delta.abs().max() < 0.05


def test_bos_keeps_its_embedding_in_the_baseline_and_scores_zero(hf_model):
    ht = hf_model
    toks = torch.tensor([[1, 5, 9, 12, 7], [1, 30, 22, 4, 8]])
    t = targets.logprob(torch.tensor([12, 4]))
    r = attribute_tokens(ht, toks, t, "ig", n_steps=64)
    assert torch.equal(r.scores[:, 0], torch.zeros(2))
    b = torch.zeros(2, 5, ht.cfg.d_model)
    b[:, 0] = ht.W_E[1].detach()
    ref = attribute_tokens(ht, toks, t, "ig", n_steps=64, baseline=b, exclude_bos=False)
    torch.testing.assert_close(r.scores, ref.scores, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(r.f_baseline, ref.f_baseline)
    assert (r.convergence_delta.abs() <= 0.01 * (r.f_input - r.f_baseline).abs()).all()
    incl = attribute_tokens(ht, toks, t, "ig", n_steps=8, exclude_bos=False)
    assert (incl.scores[:, 0] != 0).all()
    ex = attribute_tokens(ht, toks, t, "occlusion", exclude_tokens=[30])
    assert ex.scores[1, 1] == 0 and ex.scores[0, 0] == 0 and (ex.scores[0, 1:] != 0).all()


def test_segments_sum_token_scores_and_occlude_spans_jointly(m):
    t = targets.logprob(IDS)
    spans = [(0, 2), (2, 5), (5, 7)]
    tok = attribute_tokens(m, TOKS, t, "ig", n_steps=8)
    seg = attribute_tokens(m, TOKS, t, "ig", n_steps=8, segments=spans)
    ref = torch.stack([tok.scores[:, s:e].sum(-1) for s, e in spans], -1)
    torch.testing.assert_close(seg.scores, ref)
    torch.testing.assert_close(seg.token_scores, tok.scores)
    l2 = attribute_tokens(m, TOKS, t, "ig", n_steps=8, segments=spans, reduction="l2")
    ltok = attribute_tokens(m, TOKS, t, "ig", n_steps=8, reduction="l2")
    torch.testing.assert_close(l2.scores[:, 1], ltok.scores[:, 2:5].pow(2).sum(-1).sqrt())
    occ = attribute_tokens(m, TOKS, t, "occlusion", segments=spans)
    x = _x(m)
    e = x.clone()
    e[:, 2:5] = 0
    torch.testing.assert_close(occ.scores[:, 1], _f(m, x) - _f(m, e), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="span"):
        attribute_tokens(m, TOKS, t, "ig", segments=[(3, 2)])


def test_word_spans_join_subword_tokens():
    strs = ["<|endoftext|>", "The", " un", "believ", "able", " cat", "!", "<pad>"]
    real = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0]).bool()
    special = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0]).bool()
    assert word_spans(strs, real, special) == [(0, 1), (1, 2), (2, 5), (5, 7)]
    assert word_spans(["<s>", "a", "b"], torch.ones(3).bool(), torch.tensor([1, 0, 0]).bool()) == [(0, 1), (1, 2), (2, 3)]


def test_words_segments_end_to_end_on_a_word_level_tokenizer(hf_model):
    ht = hf_model
    toks = torch.tensor([[1, 5, 9, 12, 7], [2, 1, 30, 22, 4]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    t = targets.logprob(torch.tensor([12, 4]), pos="last")
    tok = attribute_tokens(ht, toks, t, "ig", n_steps=8, attention_mask=mask)
    words = attribute_tokens(ht, toks, t, "ig", n_steps=8, attention_mask=mask, segments="words")
    assert words.str_tokens[0] == ["w1", "w5", "w9", "w12", "w7"] and words.str_tokens[1][:4] == ["w1", "w30", "w22", "w4"]
    torch.testing.assert_close(words.scores[0], tok.scores[0])
    torch.testing.assert_close(words.scores[1, :4], tok.scores[1, 1:])


def test_result_top_k_frame_plot_and_json_roundtrip(m, tmp_path):
    r = attribute_tokens(m, TOKS, targets.logprob(IDS), "rpi", n_baselines=2, n_steps=4, seed=0)
    top = r.top_k(2)
    for i in range(2):
        order = r.scores[i].argsort(descending=True)[:2].tolist()
        assert [p for p, _, _ in top[i]] == order
    df = r.to_frame()
    assert len(df) == 14 and set(df.columns) >= {"example", "position", "token", "score"}
    fig = r.plot()
    assert fig.data[0].z.shape == (2, 7)
    path = r.save(tmp_path / "ta.json")
    back = TokenAttribution.load(path)
    torch.testing.assert_close(back.scores, r.scores)
    torch.testing.assert_close(back.convergence_delta, r.convergence_delta)
    torch.testing.assert_close(back.extras["maps"], r.extras["maps"])
    assert back.method == "rpi" and back.settings["n_baselines"] == 2 and back.settings["seed"] == 0
    assert back.str_tokens == r.str_tokens and "torch" in back.versions
    with pytest.raises(ValueError, match="k must"):
        r.top_k(0)
