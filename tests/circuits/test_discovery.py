"""Circuit discovery (top-n, threshold, greedy, ACDC) and evaluation (faithfulness, curves,
completeness, minimality) against their definitions and slow references."""

from __future__ import annotations

import pytest
import torch

from mechattr import targets
from mechattr.circuits import (
    Circuit,
    EdgeScores,
    acdc,
    attribute_edges,
    discover_circuit,
    evaluate_circuit,
    faithfulness_curve,
    model_edges,
)
from mechattr.circuits.discovery import greedy, prune_edges
from mechattr.components import parse_edge
from tests.circuits.reference import slow_circuit_target
from tests.conftest import both_sides


def _pair(n=3, pos=6, vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, vocab, (n, pos), generator=g)
    corr = clean.clone()
    corr[:, 1:4] = torch.randint(3, vocab, (n, 3), generator=g)
    return clean, corr


def _target(clean):
    return targets.logit_diff(clean[:, -1] * 0 + 5, clean[:, -1] * 0 + 9)


def _sequential_acdc(m, clean, corr, t, edges, tau):
    """ACDC one forward per test (Conmy et al. 2023), with the slow multi-edge reference."""
    from mechattr.components import Logits, node_order

    removed: list = []
    cur = slow_circuit_target(m, clean, corr, t, removed)
    recv = sorted({e.receiver for e in edges}, key=node_order, reverse=True)
    for r in recv:
        into = sorted([e for e in edges if e.receiver == r], key=lambda e: (node_order(e.sender), e.input or ""), reverse=True)
        alive_out = [e for e in edges if e.sender == r and e not in removed]
        if not isinstance(r, Logits) and not alive_out:
            removed += into
            continue
        for e in into:
            v = slow_circuit_target(m, clean, corr, t, removed + [e])
            if abs(v - cur) < tau:
                removed.append(e)
                cur = v
    return [e for e in edges if e not in removed]


def test_acdc_batched_equals_sequential_acdc(hf_pair):
    m = both_sides(hf_pair)[-1]
    clean, corr = _pair()
    t = _target(clean)
    es = model_edges(m)
    exact = attribute_edges(m, clean, corr, t, method="exact").scores.abs()
    tau = float(exact.quantile(0.8))
    got = acdc(m, clean, corr, t, tau=tau, prune=False)
    want = _sequential_acdc(m, clean, corr, t, es, tau)
    assert set(got.edges) == set(want)
    assert 0 < len(want) < len(es)  # the threshold really splits the graph
    assert got.settings["n_evaluated"] >= 1


def _fake_scores(edges, values):
    return EdgeScores([parse_edge(e) for e in edges], torch.tensor(values, dtype=torch.float32), "eap")


def test_topn_keeps_largest_magnitudes_then_prunes_dangling_edges():
    s = _fake_scores(["input->L0H0.v", "L0H0->logits", "input->L1H1.q", "L0H1->L1H1.k", "input->logits"],
                     [0.5, -2.0, 0.1, 3.0, 0.05])
    # top 3 by |score|: L0H1->L1H1.k, L0H0->logits, input->L0H0.v ; L0H1->L1H1.k has neither path
    c = discover_circuit(None, None, None, None, selection="topn", n=3, scores=s)
    assert set(map(str, c.edges)) == {"input->L0H0.v", "L0H0->logits"}
    c2 = discover_circuit(None, None, None, None, selection="topn", n=3, scores=s, prune=False)
    assert len(c2.edges) == 3
    c3 = discover_circuit(None, None, None, None, selection="threshold", threshold=0.4, scores=s, prune=False)
    assert set(map(str, c3.edges)) == {"input->L0H0.v", "L0H0->logits", "L0H1->L1H1.k"}


def test_greedy_grows_backwards_from_the_logits():
    edges = [parse_edge(e) for e in ["L1H0->logits", "L0H0->L1H0.q", "input->L0H0.q", "L0H3->L1H2.v", "input->logits"]]
    vals = [1.0, 0.9, 0.2, 5.0, 0.1]  # the best edge overall is unreachable from the logits
    assert [str(e) for e in greedy(edges, vals, 3)] == ["L1H0->logits", "L0H0->L1H0.q", "input->L0H0.q"]
    assert prune_edges(greedy(edges, vals, 2)) == []  # no path to the input yet


def test_discovery_rejects_bad_parameters():
    s = _fake_scores(["input->logits"], [1.0])
    with pytest.raises(ValueError, match="tau >= 0"):
        discover_circuit(None, None, None, None, selection="acdc", tau=-0.1)
    with pytest.raises(ValueError, match="needs n"):
        discover_circuit(None, None, None, None, selection="topn", scores=s)
    with pytest.raises(ValueError, match="unknown selection 'best'"):
        discover_circuit(None, None, None, None, selection="best", scores=s)
    with pytest.raises(ValueError, match="threshold >= 0"):
        discover_circuit(None, None, None, None, selection="threshold", scores=s)


def test_full_circuit_is_faithful_and_matches_the_slow_reference(hf_pair):
    for m in both_sides(hf_pair):
        clean, corr = _pair(seed=1)
        t = _target(clean)
        es = model_edges(m)
        full = evaluate_circuit(m, Circuit.from_edges(es), clean, corr, t)
        assert full.faithfulness == pytest.approx(1.0, abs=1e-6)
        half = [e for i, e in enumerate(es) if i % 2 == 0]
        ev = evaluate_circuit(m, Circuit.from_edges(half), clean, corr, t)
        rest = [e for e in es if e not in set(half)]
        assert ev.target_circuit == pytest.approx(slow_circuit_target(m, clean, corr, t, rest), abs=1e-5)
        assert ev.target_empty == pytest.approx(slow_circuit_target(m, clean, corr, t, es), abs=1e-5)
        with torch.no_grad():
            assert ev.target_full == pytest.approx(float(t(m(clean)).float().mean()), abs=1e-5)
            assert ev.target_empty == pytest.approx(float(t(m(corr)).float().mean()), abs=1e-4)
        want = (ev.target_circuit - ev.target_empty) / (ev.target_full - ev.target_empty)
        assert ev.faithfulness == pytest.approx(want)


def test_curve_runs_from_empty_to_full(hf_pair):
    m = both_sides(hf_pair)[0]
    clean, corr = _pair(seed=2)
    t = _target(clean)
    s = attribute_edges(m, clean, corr, t, method="eap")
    curve = faithfulness_curve(m, s, clean, corr, t)
    assert curve.counts[0] == 0 and curve.counts[-1] == len(s.edges)
    assert curve.faithfulness[0] == pytest.approx(0.0, abs=1e-6)
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-6)
    xs = [k / len(s.edges) for k in curve.counts]
    area = sum((xs[i + 1] - xs[i]) * (curve.faithfulness[i] + curve.faithfulness[i + 1]) / 2 for i in range(len(xs) - 1))
    assert curve.area == pytest.approx(area)
    with pytest.raises(ValueError, match="counts must lie in"):
        faithfulness_curve(m, s, clean, corr, t, counts=[len(s.edges) + 1])


def test_completeness_and_minimality_follow_wang_et_al(hf_pair):
    m = both_sides(hf_pair)[0]
    clean, corr = _pair(seed=3)
    t = _target(clean)
    es = model_edges(m)
    full = evaluate_circuit(m, Circuit.from_edges(es), clean, corr, t, completeness=True, n_subsets=3)
    # the full model is complete: C = M, so every knockout matches
    assert max(full.completeness.values()) == pytest.approx(0.0, abs=1e-5)
    some = [e for e in es if str(e.receiver) == "logits"]
    ev = evaluate_circuit(m, Circuit.from_edges(some), clean, corr, t, completeness=True, n_subsets=2)
    assert ev.completeness["{}"] == pytest.approx(abs(ev.target_circuit - ev.target_full), abs=1e-5)
    # minimality of v with K = ∅: |T(C∖v) − T(C)|, a lower bound on the reported maximum
    v = next(e.sender for e in some if str(e.sender) != "input")
    without = [e for e in es if e not in set(some) or e.sender == v]
    assert ev.minimality[str(v)] >= abs(slow_circuit_target(m, clean, corr, t, without) - ev.target_circuit) - 1e-5


def test_circuit_calls_leave_the_model_untouched(hf_pair, unchanged):
    m = both_sides(hf_pair)[-1]
    clean, corr = _pair()
    t = _target(clean)
    with unchanged(m):
        c = discover_circuit(m, clean, corr, t, method="eap", selection="topn", n=10)
        evaluate_circuit(m, c, clean, corr, t, completeness=True, n_subsets=1)
        acdc(m, clean, corr, t, tau=0.5)


def test_evaluate_rejects_bad_circuits(hf_pair):
    m = both_sides(hf_pair)[0]
    clean, corr = _pair()
    t = _target(clean)
    with pytest.raises(ValueError, match="empty"):
        evaluate_circuit(m, [], clean, corr, t)
    with pytest.raises(ValueError, match="layer 7 out of range"):
        evaluate_circuit(m, ["L7H0->logits"], clean, corr, t)
    with pytest.raises(ValueError, match="unknown ablation"):
        evaluate_circuit(m, ["input->logits"], clean, corr, t, ablation="resample")


def test_acdc_on_an_edge_subset_missing_heads(hf_pair):
    """A subset that leaves out some heads' inputs entirely still runs (and equals sequential ACDC)."""
    m = both_sides(hf_pair)[0]
    clean, corr = _pair(seed=4)
    t = _target(clean)
    sub = [e for e in model_edges(m) if all(str(n) in ("input", "logits", "L0H0", "L1H0", "MLP0", "MLP1") for n in (e.sender, e.receiver))]
    exact = attribute_edges(m, clean, corr, t, method="exact", edges=sub).scores.abs()
    tau = float(exact.quantile(0.5))
    got = acdc(m, clean, corr, t, tau=tau, edges=sub, prune=False)
    assert set(got.edges) == set(_sequential_acdc(m, clean, corr, t, sub, tau))


def test_light_names_match_the_engines():
    """The CLI's light name lists (mechattr.circuits.names) are the engines' own."""
    from mechattr.circuits import names
    from mechattr.interventions.edges import ABLATIONS

    assert names.ABLATIONS == ABLATIONS
    assert set(names.LINEAR_METHODS) <= set(names.METHODS)
