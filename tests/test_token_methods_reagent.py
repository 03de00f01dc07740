"""ReAGent: determinism under a seed, batching invariance, its proposers, ground truth on the
organisms (the copied token ranks high; the planted copy source ranks first) and option checks."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from mechattr import organisms, targets
from mechattr.attribution.tokens import attribute_tokens

TOKS = torch.tensor([[5, 9, 14, 3, 7, 2, 11], [1, 8, 8, 20, 4, 6, 17]])
IDS = torch.tensor([7, 3])
FAST = dict(n_steps=6, n_probes=4)


@pytest.fixture(scope="module")
def m():
    return make_model(seed=4)


def test_same_seed_same_scores_other_seed_other_scores_and_batching_does_not_matter(m):
    t = targets.logit(IDS)
    a = attribute_tokens(m, TOKS, t, "reagent", seed=1, **FAST)
    b = attribute_tokens(m, TOKS, t, "reagent", seed=1, batch_size=3, **FAST)
    c = attribute_tokens(m, TOKS, t, "reagent", seed=2, **FAST)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(a.scores, c.scores)
    assert a.settings["n_probes"] == 4 and a.extras["options"] == dict(n_steps=6, n_probes=4, replace_ratio=0.3, proposer="model", score="prob", keep_top_n=5, stop_top_k=3)


def test_scores_are_a_distribution_over_the_attributable_tokens(m):
    r = attribute_tokens(m, TOKS, targets.logit(IDS), "reagent", seed=0, exclude_tokens=[8], **FAST)
    s = r.scores
    assert (s >= 0).all() and (s[1, 1:3] == 0).all()  # token 8 excluded
    torch.testing.assert_close(s.sum(-1), torch.ones(2), atol=1e-5, rtol=0)
    assert r.extras["per_probe"].shape == (4, 2, 7) and (r.extras["steps"] <= 6).all()


def test_without_the_stopping_rule_every_probe_runs_n_steps_and_with_it_no_more(m):
    t = targets.logit(IDS)
    full = attribute_tokens(m, TOKS, t, "reagent", seed=0, stop_top_k=None, **FAST)
    assert (full.extras["steps"] == 6).all()
    loose = attribute_tokens(m, TOKS, t, "reagent", seed=0, stop_top_k=24, **FAST)  # top-24 of a 24-token vocab: always
    assert (loose.extras["steps"] == 1).all()


def test_model_proposer_draws_from_the_models_next_token_distribution_without_the_original():
    from mechattr.attribution.reagent import _proposals
    from mechattr.attribution.tokens import Ctx
    from mechattr.inputs import prepare_tokens

    m = make_model(seed=4)
    batch = prepare_tokens(m, TOKS, None)
    ones = torch.ones_like(TOKS).bool()
    ctx = Ctx(m, batch, targets.logit(IDS), ones, ~ones, torch.zeros(2, 7, 32), None, None, None, 0, torch.tensor([6, 6]))
    d = _proposals(ctx, "model")
    probs = m(TOKS)[:, :-1].softmax(-1).detach()
    probs = probs.scatter(-1, TOKS[:, 1:, None], 0.0)
    torch.testing.assert_close(d[:, 1:], probs / probs.sum(-1, keepdim=True), atol=1e-5, rtol=1e-4)
    u = _proposals(ctx, "uniform")
    assert (u.gather(-1, TOKS[..., None]) == 0).all()
    torch.testing.assert_close(u.sum(-1), torch.ones(2, 7))
    assert torch.allclose(u[0, 0, 0], torch.tensor(1 / 23))


def test_on_induction_the_copied_token_is_in_the_top3_more_often_than_random():
    mdl = organisms.load("induction", device="cpu")
    tb = organisms.task("induction").sample(16, seed=5)
    src = tb.source_positions[:, 0]
    for proposer in ("model", "uniform"):
        s = attribute_tokens(mdl, tb.tokens, tb.target, "reagent", seed=0, n_steps=15, n_probes=8, proposer=proposer).scores
        hit = (s.argsort(-1, descending=True)[:, :3] == src[:, None]).any(-1).float().mean()
        g = torch.Generator().manual_seed(0)
        rnd = torch.rand(s.shape, generator=g)
        rnd[:, 0] = -1  # BOS is never ranked
        rand_hit = (rnd.argsort(-1, descending=True)[:, :3] == src[:, None]).any(-1).float().mean()
        assert hit > rand_hit and hit >= 0.5, (proposer, float(hit), float(rand_hit))


def test_on_planted_backup_the_copied_position_ranks_first():
    mdl = organisms.load("planted_backup", device="cpu")
    tb = organisms.task("planted_backup").sample(16, seed=0)
    s = attribute_tokens(mdl, tb.tokens, tb.target, "reagent", seed=0, n_steps=10, n_probes=8, stop_top_k=None).scores
    assert (s.argmax(-1) == tb.source_positions[:, 0]).float().mean() >= 0.9


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(proposer="roberta"), "unknown proposer"),
        (dict(score="logit"), "unknown score"),
        (dict(n_probes=0), "n_probes must be"),
        (dict(replace_ratio=0.0), "replace_ratio must be"),
        (dict(replace_ratio=1.5), "replace_ratio must be"),
        (dict(keep_top_n=0), "keep_top_n must be"),
        (dict(stop_top_k=0), "stop_top_k must be"),
        (dict(n_stepz=3), "unknown option"),
    ],
)
def test_bad_options_are_value_errors(m, kw, match):
    with pytest.raises(ValueError, match=match):
        attribute_tokens(m, TOKS, targets.logit(IDS), "reagent", **kw)


def test_prob_score_needs_a_token_target_and_target_score_takes_any(m):
    diff = targets.logit_diff(IDS, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="needs a token target"):
        attribute_tokens(m, TOKS, diff, "reagent")
    r = attribute_tokens(m, TOKS, diff, "reagent", score="target", seed=0, **FAST)
    assert torch.isfinite(r.scores).all()
    with pytest.raises(ValueError, match="stop_top_k=None"):
        attribute_tokens(m, TOKS, lambda lg: lg[:, -1, 0], "reagent", score="target", **FAST)
    p = attribute_tokens(m, TOKS, lambda lg: lg[:, -1, 0], "reagent", score="target", stop_top_k=None, seed=0, **FAST)
    assert torch.isfinite(p.scores).all()


def test_one_iteration_equals_the_papers_update_written_out(m):
    """s₁ = s₀ + logit(½ + ½·d), d = ±(p(x) − p(x̃)) on replaced/kept tokens; score = mean over probes of softmax(s₁).
    The draws come from the documented per-example streams, in the documented order (start, subset, proposals)."""
    from mechattr.attribution.baselines import example_generators

    R, seed = 3, 5
    r = attribute_tokens(m, TOKS, targets.logit(IDS), "reagent", seed=seed, n_steps=1, n_probes=R, stop_top_k=None,
                         proposer="uniform", exclude_bos=False)
    gens = example_generators(TOKS, torch.ones_like(TOKS).bool(), seed, salt="reagent")
    V = m.cfg.d_vocab
    for i, g in enumerate(gens):
        x = TOKS[i]
        s0 = torch.rand(R, x.numel(), generator=g)
        repl = torch.rand(R, x.numel(), generator=g) < 0.3
        dist = torch.ones(x.numel(), V).scatter(-1, x[:, None], 0.0)
        draws = torch.multinomial(dist / dist.sum(-1, keepdim=True), R, replacement=True, generator=g).T
        xt = torch.where(repl, draws, x[None])
        with torch.no_grad():
            p = m(x[None])[0, -1].softmax(-1)[IDS[i]]
            pt = m(xt)[:, -1].softmax(-1)[:, IDS[i]]
        d = torch.where(repl, (p - pt)[:, None], -(p - pt)[:, None])
        s1 = s0 + torch.logit(0.5 + 0.5 * d)
        torch.testing.assert_close(r.extras["per_probe"][:, i], s1.softmax(-1), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(r.scores[i], s1.softmax(-1).mean(0), atol=1e-5, rtol=1e-4)
