"""Sanity checks (Adebayo et al. 2018), agreement and completeness."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import grad_x_input, make_model

from mechattr import faithfulness as F
from mechattr import targets


def test_spearman_matches_scipy_and_handles_ties():
    from scipy.stats import spearmanr

    a = torch.tensor([1.0, 2.0, 2.0, 5.0, 3.0])
    b = torch.tensor([2.0, 1.0, 4.0, 4.0, 9.0])
    assert F.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-9)
    assert F.spearman(a, -a) == pytest.approx(-1.0)
    assert F.spearman(torch.ones(4), a[:4]) != F.spearman(torch.ones(4), a[:4])  # NaN for a constant map


def test_cascading_randomization_separates_model_dependent_from_constant_maps(unchanged):
    model = make_model(seed=5)
    tokens = torch.randint(1, 24, (4, 8), generator=torch.Generator().manual_seed(0))
    tgt = targets.logit(torch.tensor([1, 2, 3, 4]))
    with unchanged(model):
        r = F.cascading_randomization(model, tokens, tgt, grad_x_input, seed=0)
        const = F.cascading_randomization(model, tokens, tgt, lambda m, t, g: torch.arange(8.0).expand(4, 8), seed=0)
    assert r.stages == ["unembed", "blocks.1", "blocks.0", "embed"]
    assert r.spearman.shape == (4, 4) and r.maps.shape == (5, 4, 8)
    assert r.summary()["passes"]
    assert abs(r.summary()["spearman"][-1]) < 0.5
    assert const.summary()["spearman"] == pytest.approx([1.0] * 4)
    assert not const.summary()["passes"]
    again = F.cascading_randomization(model, tokens, tgt, grad_x_input, seed=0)
    assert torch.equal(again.spearman, r.spearman)  # deterministic under the seed
    with pytest.raises(TypeError, match="callable"):
        F.cascading_randomization(model, tokens, tgt, "ig")


def test_cascading_randomization_stage_subset_and_given_base_equal_the_full_run(unchanged):
    """Evaluating a subset of stages (and reusing a given base map) gives exactly the full
    cascade's rows for those stages: the re-draws happen in the same order either way."""
    model = make_model(seed=5)
    tokens = torch.randint(1, 24, (4, 8), generator=torch.Generator().manual_seed(0))
    tgt = targets.logit(torch.tensor([1, 2, 3, 4]))
    calls = []

    def fn(m, t, g):
        calls.append(1)
        return grad_x_input(m, t, g)

    full = F.cascading_randomization(model, tokens, tgt, fn, seed=3)
    assert len(calls) == 5 and F.stage_names(model) == full.stages
    base = fn(model, tokens, tgt)
    calls.clear()
    with unchanged(model):
        sub = F.cascading_randomization(model, tokens, tgt, fn, seed=3, base=base, stages=2)
    assert len(calls) == 2  # no call for the base, one per evaluated stage
    assert sub.stages == ["unembed", "embed"]
    idx = [full.stages.index(s) for s in sub.stages]
    assert torch.equal(sub.maps[1:], full.maps[1:][idx]) and torch.equal(sub.maps[0], full.maps[0])
    assert torch.allclose(sub.spearman, full.spearman[idx], equal_nan=True)
    named = F.cascading_randomization(model, tokens, tgt, fn, seed=3, stages=["blocks.0"])
    assert torch.equal(named.maps[1], full.maps[1 + full.stages.index("blocks.0")])
    for bad, msg in ((1, "≥ 2"), (["blocks.7"], "unknown stage"), ("embed", "list of stage names")):
        with pytest.raises(ValueError, match=msg):
            F.cascading_randomization(model, tokens, tgt, fn, stages=bad)
    with pytest.raises(ValueError, match="base has shape"):
        F.cascading_randomization(model, tokens, tgt, fn, base=base[:, :4])


def test_agreement_identical_reversed_and_disjoint(model, tokens):
    tgt = targets.logit(1)
    s = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    a = F.agreement(model, tokens, tgt, {"a": s, "same": s * 3 + 1, "rev": -s}, k=0.25)
    assert a["methods"] == ["a", "same", "rev"]
    assert a["spearman"][0][1] == pytest.approx(1.0) and a["spearman"][0][2] == pytest.approx(-1.0)
    assert a["top_k_overlap"][0][1] == pytest.approx(1.0)
    assert a["top_k_overlap"][0][2] == pytest.approx(0.0)  # top 2 of 8 vs bottom 2 of 8
    with pytest.raises(ValueError, match="maps"):
        F.agreement(model, tokens, tgt, {})
    with pytest.raises(ValueError, match="shape"):
        F.agreement(model, tokens, tgt, {"a": s[:, :4]})


def test_completeness_uses_convergence_delta():
    ok = SimpleNamespace(scores=torch.tensor([[1.0, 2.0]]), convergence_delta=torch.tensor([0.01]))
    bad = SimpleNamespace(scores=torch.tensor([[1.0, 2.0]]), convergence_delta=torch.tensor([0.5]))
    assert F.completeness(ok)["passes"]
    r = F.completeness(bad)
    assert not r["passes"] and r["max_abs_delta"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="path-method"):
        F.completeness(SimpleNamespace(scores=torch.zeros(1, 2), convergence_delta=None))
