"""Issue 11 acceptance: verdicts a reviewer would accept (controls, effect sizes, redundancy,
disagreements, no claims from noise) and the statistics under them."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from mechattr import targets
from mechattr.components import Head, all_heads
from mechattr.validation import HeadClaim, SetClaim, parse_claims, validate
from mechattr.validation.controls import matched_sets, null_tokens, reread
from mechattr.validation.stats import bootstrap_ci, decided_not_significant, holm, mc_pvalue

FAST = dict(methods=["input_x_gradient"], curve_steps=2, curve_draws=0, sanity_methods=(), top_links=0, profile="fast", n_draws=40)


# ----------------------------------------------------------------------------- statistics
def test_holm_matches_the_step_down_definition():
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    got = holm(p)
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    ref = [0.0] * m
    for r, i in enumerate(order):  # p̃_(r) = max over j ≤ r of (m − j) p_(j), capped at 1
        ref[i] = min(1.0, max((m - j) * p[order[j]] for j in range(r + 1)))
    assert got == pytest.approx(ref)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_mc_pvalue_counts_the_statistic_itself():
    assert mc_pvalue(5.0, torch.arange(10.0)) == pytest.approx(1 / 11 * (1 + 5))
    assert mc_pvalue(100.0, torch.arange(99.0)) == pytest.approx(1 / 100)


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_examples():
    g = torch.Generator().manual_seed(0)
    small = torch.randn(10, generator=g) + 3
    big = torch.randn(400, generator=g) + 3
    lo_s, hi_s = bootstrap_ci(small, seed=1)
    lo_b, hi_b = bootstrap_ci(big, seed=1)
    assert lo_s < float(small.mean()) < hi_s and lo_b < float(big.mean()) < hi_b
    assert hi_b - lo_b < hi_s - lo_s
    # normal-theory interval of the mean as an independent reference (n = 400)
    se = float(big.std() / 20)
    assert lo_b == pytest.approx(float(big.mean()) - 1.96 * se, abs=0.3 * se)
    assert bootstrap_ci(torch.tensor([1.0])) != bootstrap_ci(torch.tensor([1.0]))  # NaN: one example has no interval


def test_sequential_stop_never_stops_a_test_that_could_still_be_significant():
    n_max = 200
    for k in range(0, 30):
        if decided_not_significant(k, n_max):
            # even if every remaining draw were less extreme, the final p exceeds alpha
            assert (k + 1) / (n_max + 1) > 0.05


# ----------------------------------------------------------------------------- controls
def test_matched_controls_exclude_claimed_and_documented_heads_and_keep_layers():
    m = make_model(n_layers=3, n_heads=8, seed=0)
    heads = all_heads(m)
    claim = (Head(1, 0), Head(2, 3))
    documented = {Head(1, 1), Head(2, 2)}
    sets, n_possible, rule = matched_sets(claim, heads, set(claim) | documented, 50, seed=0)
    assert n_possible == 6 * 6 and "same layers" in rule  # 6 allowed heads in layer 1 and in layer 2
    assert len(sets) == 36  # fewer than 50 exist: all of them
    for s in sets:
        assert len(s) == 2 and not set(s) & (set(claim) | documented)
        assert sorted(h.layer for h in s) == [1, 2]
    _, n_any, rule = matched_sets((Head(0, 0),), heads, {Head(0, 0)}, 50, seed=0)
    assert n_any == 7 + 8 + 8 - 0 - 0 or "any layer" in rule  # layer 0 alone has 7 (< 20): any layer
    assert "any layer" in rule and n_any == 23


def test_answer_token_null_rereads_the_logits_for_other_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 11, generator=g)  # [V, batch, vocab]
    ans = torch.tensor([1, 5, 10, 0])
    tgt = targets.logprob(ans)
    ids = null_tokens(tgt, 4, 11, 500, seed=0)
    assert (ids != ans[None]).all() and ids.min() >= 0 and ids.max() <= 10
    assert set(ids[:, 0].tolist()) == set(range(11)) - {1}  # every other token can be drawn
    got = reread(tgt, x, ids[:7])
    ref = torch.stack([torch.stack([x[v].log_softmax(-1)[torch.arange(4), ids[r]] for r in range(7)]) for v in range(3)])
    assert torch.allclose(got, ref, atol=1e-6)
    diff = targets.logit_diff(ans, torch.tensor([2, 2, 2, 2]))
    ids2 = null_tokens(diff, 4, 11, 300, seed=1)
    assert (ids2 != 2).all() and (ids2 != ans[None]).all()


def test_old_claim_forms_parse_into_typed_claims():
    m = make_model(n_layers=2, seed=0)
    got = parse_claims(m, {"ind": ["L1H0", "L1H1"], "one": "L0H2", "heads": ["L0H0", "L0H1"]})
    assert got[0] == SetClaim((Head(1, 0), Head(1, 1)), "ind") and got[1] == HeadClaim(Head(0, 2), "one")
    assert got[2:] == [HeadClaim(Head(0, 0)), HeadClaim(Head(0, 1))]
    assert [c.id for c in parse_claims(m, ["L1H2", ["L0H1", "L0H0"]])] == ["heads:L1H2", "heads:L0H0+L0H1"]
    with pytest.raises(ValueError, match="more than once"):
        parse_claims(m, ["L1H2", "L1H2"])


# ----------------------------------------------------------------------------- small models
def test_adaptive_controls_reach_the_full_draw_verdicts():
    m = make_model(n_layers=3, n_heads=8, seed=5)
    g = torch.Generator().manual_seed(1)
    tok = torch.randint(1, 24, (6, 8), generator=g)
    tgt = targets.logit(torch.randint(1, 24, (6,), generator=g))
    kw = dict(FAST, claims={"a": "L2H1", "b": ["L1H0", "L2H3"]}, max_head_controls=60, top_heads=2, n_draws=60, seed=0,
              top_links=2)
    a = validate(m, tok, tgt, adaptive=True, **kw)
    f = validate(m, tok, tgt, adaptive=False, **kw)
    assert a.verdicts() == f.verdicts()
    na = {c.id: c.primary.n_controls for c in a.claims if c.kind in ("head", "set", "link")}
    nf = {c.id: c.primary.n_controls for c in f.claims if c.kind in ("head", "set", "link")}
    assert any(c.kind == "link" for c in a.claims)
    assert all(na[k] <= nf[k] for k in na)


def test_fast_profile_runs_path_methods_at_few_steps_and_escalates_when_incomplete(monkeypatch):
    """profile="fast": IG first at 16 steps; the map is attribute_tokens' at 16 steps when it
    passes completeness, and the method's default (64) when it does not."""
    from mechattr.attribution.tokens import attribute_tokens
    from mechattr.faithfulness import completeness
    from mechattr.validation import token_maps

    m = make_model(n_layers=2, seed=5)
    g = torch.Generator().manual_seed(4)
    tok = torch.randint(1, 24, (4, 8), generator=g)
    tgt = targets.logit(torch.randint(1, 24, (4,), generator=g))
    kw = dict(FAST, methods=["ig"], top_heads=0, top_links=0, n_draws=20, seed=0)
    ref16 = attribute_tokens(m, tok, tgt, "ig", n_steps=16)
    assert completeness(ref16)["passes"]  # precondition: this small model converges at 16 steps
    rep = validate(m, tok, tgt, **kw)
    assert rep.settings["path_steps"] == {"ig": 16}
    torch.testing.assert_close(rep.token_maps["ig"], ref16.scores.float(), atol=1e-6, rtol=1e-6)
    monkeypatch.setattr(token_maps, "completeness", lambda res, **k: {**completeness(res), "passes": False})
    rep2 = validate(m, tok, tgt, **kw)
    assert rep2.settings["path_steps"] == {"ig": 64}
    torch.testing.assert_close(rep2.token_maps["ig"], attribute_tokens(m, tok, tgt, "ig").scores.float(), atol=1e-6, rtol=1e-6)
    assert "16 steps first" in rep2.settings["profile_runs"]
    exact = validate(m, tok, tgt, **dict(kw, profile="default"))
    assert exact.settings["path_steps"] == {}  # the default profile runs every method at its own default


def test_random_init_model_with_one_prompt_confirms_nothing():
    m = make_model(n_layers=2, seed=11)
    tok = torch.randint(1, 24, (1, 8), generator=torch.Generator().manual_seed(3))
    rep = validate(m, tok, targets.logit(5), claims=["L1H0"], seed=0, **FAST)
    assert rep.claims and not rep.confirmed()
    assert any("population" in s["reason"] for s in rep.skipped)
    assert all(c.verdict in ("underpowered", "refuted", "inconclusive") for c in rep.claims)


def test_thorough_profile_reports_secondary_modes_outside_the_verdict():
    m = make_model(n_layers=3, n_heads=8, seed=5)
    g = torch.Generator().manual_seed(2)
    tok = torch.randint(1, 24, (5, 8), generator=g)
    tgt = targets.logit(torch.randint(1, 24, (5,), generator=g))
    kw = dict(FAST, profile="thorough", claims=["L2H1"], top_heads=0, n_draws=30, max_head_controls=30, seed=0)
    rep = validate(m, tok, tgt, **kw)
    tests = rep.claim("heads:L2H1").tests
    assert [t.primary for t in tests] == [True, False, False]
    assert "secondary" in tests[1].test and "zero" in tests[1].test and "resample" in tests[2].test
    assert rep.settings["ablation_modes"] == ["mean", "zero", "resample"] and "thorough" in rep.settings["profile_runs"]

