"""Circuit methods against circuits known exactly: the planted organisms' edge sets."""

from __future__ import annotations

import pytest
import torch

from mechattr import organisms
from mechattr.circuits import (
    EdgeScores,
    acdc,
    attribute_edges,
    discover_circuit,
    evaluate_circuit,
    roc_auc,
)
from mechattr.components import parse_edge
from mechattr.organisms.edges import acdc_edges, acdc_threshold, circuit_edges
from mechattr.runtime.split import layout
from mechattr.runtime.tl import HAS_HOOKED

PLANTED = ["planted_induction", "planted_mlp", "planted_backup"]
# TL 4 loads organisms as native bridges, which have no per-head inputs (split_io refuses them)


@pytest.fixture(scope="module")
def planted():
    if not HAS_HOOKED:
        pytest.skip("TransformerLens 4 builds organisms as native bridges without per-head q/k/v inputs")
    out = {}
    for name in PLANTED:
        b = organisms.task(name).sample(6, seed=11)
        out[name] = (organisms.load(name), b)
    return out


@pytest.mark.parametrize("method", ["exact", "eap_ig_inputs", "eap_ig_activations"])
@pytest.mark.parametrize("name", PLANTED)
def test_true_edges_rank_first(planted, name, method):
    m, b = planted[name]
    s = attribute_edges(m, b.tokens, b.corrupted, b.target, method=method, n_steps=8)
    assert roc_auc(s, circuit_edges(name, "patch")) == 1.0


@pytest.mark.parametrize("name", PLANTED)
def test_acdc_at_the_documented_tau_returns_the_true_edges(planted, name):
    m, b = planted[name]
    c = acdc(m, b.tokens, b.corrupted, b.target, tau=acdc_threshold(name))
    assert {str(e) for e in c.edges} == set(acdc_edges(name, "patch"))
    ev = evaluate_circuit(m, c, b.tokens, b.corrupted, b.target)
    assert ev.faithfulness == pytest.approx(1.0, abs=1e-4)


def test_eap_misses_the_backup_head_that_exact_patching_finds(planted):
    """planted_backup under zero ablation: the edge that switches the backup on has a large
    exact effect but ~0 EAP score (the backup's softmax is saturated)."""
    m, b = planted["planted_backup"]
    edge = parse_edge("L0H3->L1H1.q")
    ex = attribute_edges(m, b.tokens, None, b.target, method="exact", ablation="zero", edges=[edge])
    eap = attribute_edges(m, b.tokens, None, b.target, method="eap", ablation="zero", edges=[edge])
    assert abs(float(ex.scores[0])) > 5 and abs(float(eap.scores[0])) < 0.1 * abs(float(ex.scores[0]))


def test_topn_with_the_true_count_recovers_the_circuit(planted):
    m, b = planted["planted_mlp"]
    true = set(circuit_edges("planted_mlp", "patch"))
    c = discover_circuit(m, b.tokens, b.corrupted, b.target, method="exact", selection="topn", n=len(true))
    assert {str(e) for e in c.edges} == true


def test_roc_auc_definition():
    es = [parse_edge(e) for e in ["input->logits", "L0H0->logits", "L0H1->logits", "L0H2->logits"]]
    s = EdgeScores(es, torch.tensor([3.0, -2.0, 1.0, 1.0]), "eap")
    assert roc_auc(s, ["input->logits"]) == 1.0
    assert roc_auc(s, ["L0H2->logits"]) == pytest.approx((0 + 0 + 0.5) / 3)
    assert roc_auc(s, ["L0H0->logits"], absolute=False) == 0.0
    with pytest.raises(ValueError, match="true and false"):
        roc_auc(s, [str(e) for e in es])
    with pytest.raises(ValueError, match="not among the scored"):
        roc_auc(s, ["L1H0->logits"])


@pytest.mark.skipif(HAS_HOOKED, reason="TransformerLens 3 organisms are HookedTransformers, which split")
def test_native_bridge_without_split_inputs_is_a_clear_error():
    """Where TransformerLens cannot split a model's q/k/v inputs, circuit calls say so."""
    m = organisms.load("planted_induction")
    b = organisms.task("planted_induction").sample(2, seed=0)
    assert layout(m).n_layers == 2  # the graph's shape needs no split
    with pytest.raises(ValueError, match="does not support"):
        attribute_edges(m, b.tokens, b.corrupted, b.target)
