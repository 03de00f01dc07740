"""validate(): claims against random controls, the token→head edge intervention, determinism."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import grad_x_input, make_model

from mechattr import targets
from mechattr.inputs import prepare_tokens
from mechattr.validation import Claim, ValidationReport, edge_effects, link_strength, validate
from mechattr.validation.claims import compare


def first_token(model, tokens, target):
    s = torch.zeros(tokens.shape)
    s[:, 0] = 1.0
    return s


def test_compare_uses_95th_percentile_of_controls():
    controls = list(range(10))  # q95 (linear) = 8.55
    assert compare("t", 8.5, controls).confirmed is False
    assert compare("t", 8.6, controls).confirmed is True
    assert compare("t", 8.6, controls).threshold == pytest.approx(8.55)
    assert compare("t", -9.0, controls, two_sided=True).confirmed is True  # |−9| > 8.55
    low = compare("t", -0.5, controls, sign=-1)  # lower is better: must be below q5 = 0.45
    assert low.confirmed and low.threshold == pytest.approx(0.45)
    assert not compare("t", 0.5, controls, sign=-1).confirmed
    assert compare("t", 1.0, []) is None


def test_claim_without_a_decided_outcome_falls_back_to_the_majority_of_tests():
    c = Claim("x", "head", {})
    assert c.verdict == "untested"
    c.add(compare("a", 10.0, [0.0, 1.0]))
    c.add(compare("b", 0.0, [0.0, 1.0]))
    assert c.verdict == "not confirmed"  # 1 of 2 is not more than half
    c.add(compare("c", 10.0, [0.0, 1.0]))
    assert c.verdict == "confirmed"
    c.outcome = "refuted"
    assert c.verdict == "refuted"
    assert Claim.from_dict(c.to_dict()).to_dict() == c.to_dict()


@pytest.mark.parametrize("effect, lo, hi, p_adj, n, want", [
    (5.0, 4.0, 6.0, 0.01, 16, "confirmed"),
    (5.0, 4.0, 6.0, 0.2, 16, "inconclusive"),  # not beyond the null
    (1.5, 0.5, 2.5, 0.01, 16, "inconclusive"),  # interval reaches below the minimum effect 1
    (0.2, -0.4, 0.8, 0.01, 16, "refuted"),  # |effect| interval [0, 0.8] entirely below 1
    (-0.2, -0.8, 0.4, 0.9, 16, "refuted"),
    (5.0, 4.0, 6.0, 0.01, 1, "underpowered"),  # one example: no interval
])
def test_decide_needs_the_null_and_the_minimum_effect(effect, lo, hi, p_adj, n, want):
    from mechattr.validation.verdicts import TestResult, decide

    t = TestResult("t", effect, 0.0, 100, True, ci_low=lo, ci_high=hi, p=p_adj, p_adj=p_adj, null="x", min_effect=1.0)
    assert decide(t, n)[0] == want
    t.p = t.p_adj = None
    assert decide(t, n)[0] == ("refuted" if want == "refuted" else "underpowered")


def test_edge_removal_equals_zeroing_that_attention_weight():
    """Slow reference: one example at a time, set pattern[h, q, s] = 0 (no renormalisation)."""
    m = make_model(n_layers=2, seed=3)
    tokens = torch.randint(1, 24, (3, 8), generator=torch.Generator().manual_seed(1))
    tgt = targets.logit(torch.tensor([4, 5, 6]))
    batch = prepare_tokens(m, tokens)
    q = torch.tensor([7, 7, 7])
    src = torch.tensor([[2, 5, 0], [3, 3, 6]])
    fast = edge_effects(m, batch, tgt, 1, 2, q, src, batch_size=4)
    with torch.no_grad():
        clean = tgt(m(tokens))
        ref = []
        for v in range(2):
            vals = []
            for b in range(3):
                def hook(p, hook, b=b, v=v):
                    p = p.clone()
                    p[:, 2, 7, src[v, b]] = 0.0
                    return p
                with m.hooks([("blocks.1.attn.hook_pattern", hook)]):
                    vals.append(tgt.take(torch.tensor([b]))(m(tokens[b : b + 1])) - clean[b])
            ref.append(torch.cat(vals).mean())
    assert torch.allclose(fast, torch.stack(ref), atol=1e-5)


def test_link_strength_matches_cache_loop():
    m = make_model(n_layers=2, seed=4)
    tokens = torch.randint(1, 24, (2, 6), generator=torch.Generator().manual_seed(2))
    batch = prepare_tokens(m, tokens)
    q, s = torch.tensor([5, 4]), torch.tensor([1, 3])
    got = link_strength(m, batch, q, s)
    _, cache = m.run_with_cache(tokens)
    for layer in range(2):
        for h in range(4):
            vals = [cache["pattern", layer][b, h, q[b], s[b]] * (cache["v", layer][b, s[b], h] @ m.W_O[layer, h]).norm() for b in range(2)]
            assert got[layer, h].item() == pytest.approx(torch.stack(vals).mean().item(), abs=1e-5)


def _run(seed=0, **kw):
    m = make_model(n_layers=2, seed=1)
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(1, 24, (4, 10), generator=g)
    tgt = targets.logit(torch.randint(1, 24, (4,), generator=g))
    args = dict(methods={"gxi": grad_x_input, "first": first_token}, claims=["L1H0"], n_draws=8, curve_steps=4,
                curve_draws=2, seed=seed, source_positions=torch.tensor([[3, -1]] * 4))
    args.update(kw)
    return m, validate(m, tok, tgt, **args)


def test_validate_report_contents_determinism_and_round_trip(tmp_path, unchanged):
    m = make_model(n_layers=2, seed=1)
    with unchanged(m):
        _, a = _run()
    _, b = _run()
    _, c = _run(seed=1)
    ids = [x.id for x in a.claims]
    assert "tokens:gxi" in ids and "tokens:first" in ids and "heads:L1H0" in ids
    assert a.claim("heads:L1H0").source in ("user", "auto")
    words = ("confirmed", "refuted", "inconclusive", "underpowered", "redundant")
    assert all(x.verdict_kind in words and x.reason for x in a.claims if x.kind != "link")
    t = a.claim("tokens:gxi").tests
    assert [x.test for x in t][:3] == ["comprehensiveness", "sufficiency", "log_odds"]
    assert t[0].n_controls <= 8 and t[0].primary and t[0].p is not None and t[0].p_adj >= t[0].p
    assert a.faithfulness["gxi"]["summary"]["comprehensiveness"]["value"] == pytest.approx(t[0].effect)
    assert a.to_dict() == b.to_dict()  # same seed, same numbers
    assert a.to_dict() != c.to_dict()
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    assert (tmp_path / "a" / "report.json").read_bytes() == (tmp_path / "b" / "report.json").read_bytes()
    back = ValidationReport.load(tmp_path / "a")
    assert back.to_dict() == json.loads((tmp_path / "a" / "report.json").read_text())
    assert back.verdicts() == a.verdicts()
    assert "timings" not in json.loads((tmp_path / "a" / "report.json").read_text())


def test_first_token_map_hit_rate_is_zero_when_sources_elsewhere():
    _, r = _run()
    assert r.faithfulness["first"]["hit_rate"] == 0.0  # top-1 of the 'first' map is position 0, the source is 3


@pytest.mark.parametrize(
    "kw, err, match",
    [
        ({"ablation_modes": ("blank",)}, ValueError, "unknown ablation mode 'blank'"),
        ({"top_k": 0}, ValueError, r"k must be a fraction in \(0, 1\]"),
        ({"claims": ["MLP0"]}, ValueError, "claims must be heads"),
        ({"claims": ["L9H0"]}, ValueError, "out of range"),
        ({"methods": {}}, ValueError, "methods is empty"),
    ],
)
def test_validate_bad_input(kw, err, match):
    m = make_model(n_layers=2, seed=1)
    with pytest.raises(err, match=match):
        validate(m, torch.randint(1, 24, (2, 6)), targets.logit(1), **{"methods": {"f": first_token}, **kw})


def test_validate_needs_a_mechattr_target():
    m = make_model(n_layers=2, seed=1)
    with pytest.raises(TypeError, match="mechattr.targets"):
        validate(m, torch.randint(1, 24, (2, 6)), lambda logits: logits[:, -1, 0])
