"""The planted organisms' documented edges against the slow one-forward-per-edge reference.

Every edge listed as active (``mechattr.organisms.edges``) has a nonzero single-edge effect
and every other edge of ``model_edges`` exactly 0; ACDC at the documented threshold keeps
the documented edges; EAP disagrees with exact patching where the cards say it does. Also:
edge parsing errors and ``model_edges`` counts.
"""

from __future__ import annotations

import pytest
import torch

from mechattr import organisms
from mechattr.components import MLP, Edge, Head, Input, Logits, model_edges, parse_edge
from mechattr.organisms import edges as documented
from tests.circuits.reference import slow_acdc, slow_eap_scores, slow_edge_effects
from tests.conftest import requires_hooked

PLANTED = ["planted_induction", "planted_mlp", "planted_backup"]
ABLATIONS = ["patch", "zero"]
N, SEED = 4, 5  # a small batch, seeds other than the cards'
ZERO = 1e-6


@pytest.fixture(scope="module")
def planted():
    return {n: organisms.load(n, device="cpu") for n in PLANTED}


def _batch(name):
    return organisms.task(name).sample(N, SEED)


def _edge_strs(es):
    return [str(e) for e in es]


# ----------------------------------------------------------------------------- single edges
@requires_hooked  # TransformerLens 4's native bridge has no split q/k/v input hooks
@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("name", PLANTED)
def test_documented_active_edges_are_exactly_the_nonzero_single_edge_effects(planted, unchanged, name, ablation):
    m, b = planted[name], _batch(name)
    es = model_edges(m)
    with unchanged(m):
        eff = slow_edge_effects(m, b.tokens, b.corrupted, b.target, es, ablation)
    active = [e for e, x in zip(es, eff.tolist()) if abs(x) >= ZERO]
    assert _edge_strs(active) == organisms.circuit_edges(name, ablation)
    assert min(abs(x) for x in eff.tolist() if abs(x) >= ZERO) > 1.0  # active edges move the answer logit a lot
    assert max(abs(x) for e, x in zip(es, eff.tolist()) if e not in active) < ZERO


@requires_hooked
@pytest.mark.parametrize("name", PLANTED)
def test_documented_active_edges_hold_on_another_batch(planted, name):
    """The active set is the mechanism's, not the batch's."""
    m, b = planted[name], organisms.task(name).sample(3, SEED + 1)
    es = [parse_edge(e) for e in organisms.circuit_edges(name, None)]
    eff = slow_edge_effects(m, b.tokens, b.corrupted, b.target, es, "patch")
    assert [str(e) for e, x in zip(es, eff.tolist()) if abs(x) >= ZERO] == organisms.circuit_edges(name, "patch")


@requires_hooked
@pytest.mark.parametrize("name", PLANTED)
def test_patching_every_active_edge_at_once_gives_the_corrupted_answer_logit(planted, name):
    """The active edges carry the corruption: patching each alone drops the answer logit by ~the gain."""
    m, b = planted[name], _batch(name)
    eff = slow_edge_effects(m, b.tokens, b.corrupted, b.target, organisms.circuit_edges(name, "patch"), "patch")
    with torch.no_grad():
        drop = (b.target(m(b.corrupted)) - b.target(m(b.tokens))).mean()
    torch.testing.assert_close(eff, drop.expand_as(eff), atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------- ACDC and EAP
@requires_hooked
@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("name", PLANTED)
def test_acdc_at_documented_threshold_returns_documented_edges(planted, name, ablation):
    m, b = planted[name], _batch(name)
    kept = slow_acdc(m, b.tokens, b.corrupted, b.target, model_edges(m), documented.acdc_threshold(name), ablation)
    assert _edge_strs(kept) == documented.acdc_edges(name, ablation)


@requires_hooked
def test_acdc_under_zero_drops_backup_edges_with_large_single_edge_effects(planted):
    """ACDC visits L1H1->logits first, while the backup is silent, and never sees its compensation."""
    name = "planted_backup"
    kept = set(documented.acdc_edges(name, "zero"))
    backup_only = [e for e in organisms.circuit_edges(name, "zero") if e not in kept]
    assert backup_only
    m, b = planted[name], _batch(name)
    eff = slow_edge_effects(m, b.tokens, b.corrupted, b.target, backup_only, "zero")
    assert (eff.abs() > 1.0).all()


@requires_hooked
def test_backup_eap_disagrees_with_exact_under_zero_ablation(planted):
    """Saturated softmax: the flag edge is +G exactly but ~0 by EAP; compensation: the
    primary's value edge is 0 exactly but -G by EAP. Under patch they agree."""
    m, b = planted["planted_backup"], _batch("planted_backup")
    es = ["L0H3->L1H1.q", "input->L0H3.v", "L0H3->logits"]
    exact = slow_edge_effects(m, b.tokens, None, b.target, es, "zero")
    eap = slow_eap_scores(m, b.tokens, None, b.target, es, "zero")
    assert exact[0] > 5 and abs(eap[0]) < 1e-3
    assert abs(exact[1]) < ZERO and eap[1] < -5
    torch.testing.assert_close(exact[2], eap[2], atol=1e-3, rtol=0)
    active = organisms.circuit_edges("planted_backup", "patch")
    torch.testing.assert_close(
        slow_eap_scores(m, b.tokens, b.corrupted, b.target, active), slow_edge_effects(m, b.tokens, b.corrupted, b.target, active), atol=1e-3, rtol=0,
    )


@requires_hooked
def test_mlp_and_gate_makes_eap_double_the_exact_effect(planted):
    """EAP linearizes the AND unit: slope 2 on the clean pair's unit, the corrupted pair's unit off."""
    m, b = planted["planted_mlp"], _batch("planted_mlp")
    es = ["input->L0H2.v", "input->MLP0", "L0H2->MLP0", "MLP0->L1H0.v"]
    exact = slow_edge_effects(m, b.tokens, b.corrupted, b.target, es)
    eap = slow_eap_scores(m, b.tokens, b.corrupted, b.target, es)
    torch.testing.assert_close(eap[:3], 2 * exact[:3], atol=1e-3, rtol=0)
    torch.testing.assert_close(eap[3], exact[3], atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------- organisms
@pytest.mark.parametrize("name", PLANTED)
def test_planted_organism_solves_its_task_and_corrupted_task(planted, name):
    m, b = planted[name], organisms.task(name).sample(64, SEED)
    with torch.no_grad():
        assert (m(b.tokens)[:, -1].argmax(-1) == b.answers).all()
        assert (m(b.corrupted)[:, -1].argmax(-1) == b.corrupted_answers).all()
    assert (b.answers != b.corrupted_answers).all()


@pytest.mark.parametrize("name", PLANTED)
def test_documented_edges_are_edges_of_the_model_and_nested(planted, name):
    m = planted[name]
    order = _edge_strs(model_edges(m))
    circuit = organisms.circuit_edges(name, None)
    for es in [circuit] + [organisms.circuit_edges(name, a) for a in ABLATIONS] + [documented.acdc_edges(name, a) for a in ABLATIONS]:
        assert [str(parse_edge(e, m)) for e in es] == es
        assert set(es) <= set(circuit)
        assert es == sorted(es, key=order.index)  # listed in model_edges order
    card = organisms.card(name).evidence
    assert card["circuit_edges"] == circuit and card["active_edges_patch"] == organisms.circuit_edges(name, "patch")


@requires_hooked
@pytest.mark.parametrize("name", ["planted_mlp", "planted_backup"])
def test_shipped_weights_equal_construction(planted, name):
    from mechattr.organisms.build import BUILDERS

    built = dict(BUILDERS[name]().named_parameters())
    shipped = dict(planted[name].named_parameters())
    assert set(built) == set(shipped)
    assert all(torch.equal(v, shipped[k]) for k, v in built.items())


def test_circuit_edges_rejects_unknown_organism_and_ablation():
    with pytest.raises(ValueError, match="'nope'.*planted_backup"):
        organisms.circuit_edges("nope")
    with pytest.raises(ValueError, match="'mean'.*'patch'"):
        organisms.circuit_edges("planted_mlp", "mean")
    with pytest.raises(ValueError, match="'mean'.*'zero'"):
        documented.acdc_edges("planted_mlp", "mean")


# ----------------------------------------------------------------------------- edge ids
@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("L1H0->L0H1.q", "receiver L0H1 is not downstream of sender L1H0"),
        ("L0H0->L0H1.k", "receiver L0H1 is not downstream"),
        ("MLP1->L1H0.v", "receiver L1H0 is not downstream of sender MLP1"),
        ("L0X1->logits", "unknown node 'L0X1'"),
        ("L0H1->L1H2", "needs input 'q', 'k' or 'v', got None"),
        ("L0H1->MLP1.q", "takes no q/k/v input, got 'q'"),
        ("logits->L1H0.q", "logits node cannot send"),
        ("L0H1", "cannot parse edge 'L0H1'"),
    ],
)
def test_parse_edge_rejects_invalid_edges_naming_them(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_edge(spec)


def test_parse_edge_checks_ranges_against_the_model(planted):
    with pytest.raises(ValueError, match="head 7 out of range"):
        parse_edge("L0H7->logits", planted["planted_induction"])
    with pytest.raises(ValueError, match="attention-only"):
        parse_edge("input->MLP0", planted["planted_backup"])
    e = parse_edge("L0H2->MLP0", planted["planted_mlp"])
    assert e == Edge(Head(0, 2), MLP(0)) and str(parse_edge(str(e))) == "L0H2->MLP0"


def _expected_edge_count(n_layers: int, n_heads: int, mlps: bool) -> int:
    """Senders upstream of each receiver input, summed: a head's q/k/v in layer l reads the
    input and every component of layers < l; an MLP also reads its own layer's heads."""
    per_layer = n_heads + (1 if mlps else 0)
    total = 0
    for layer in range(n_layers):
        upstream = 1 + layer * per_layer
        total += 3 * n_heads * upstream
        if mlps:
            total += upstream + n_heads
    return total + 1 + n_layers * per_layer  # the logits read everything


@pytest.mark.parametrize("name", PLANTED)
def test_model_edges_count_matches_formula(planted, name):
    m = planted[name]
    es = model_edges(m)
    assert len(es) == _expected_edge_count(m.cfg.n_layers, m.cfg.n_heads, not m.cfg.attn_only)
    assert len(set(es)) == len(es)
    assert sum(isinstance(e.sender, Input) for e in es) == 3 * m.cfg.n_layers * m.cfg.n_heads + (0 if m.cfg.attn_only else m.cfg.n_layers) + 1
    assert sum(isinstance(e.receiver, Logits) for e in es) == 1 + m.cfg.n_layers * (m.cfg.n_heads + (0 if m.cfg.attn_only else 1))
