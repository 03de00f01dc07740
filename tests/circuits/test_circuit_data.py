"""The Circuit data type: construction, container protocol, set algebra, exports, JSON, plot."""

from __future__ import annotations

import json
import math

import pytest

from mechattr.circuits.circuit import Circuit, edge_order, ensure_circuit
from mechattr.components import MLP, Head, Input, Logits, node_order, parse_edge

EDGES = ["L0H1->L1H2.k", "input->L0H1.q", "L0H1->L1H2.q", "L1H2->logits", "input->MLP0", "L0H3->MLP0", "MLP0->L1H2.v"]
SCORES = {"L0H1->L1H2.k": 0.5, "input->L0H1.q": -2.0, "L1H2->logits": 1.25, "L0H3->MLP0": -0.1}


@pytest.fixture
def circ() -> Circuit:
    return Circuit.from_edges(EDGES, scores=SCORES, settings={"method": "eap", "n": 7, "n_layers": 2})


@pytest.fixture(scope="module")
def planted():
    from mechattr import organisms

    return organisms.load("planted_induction")


# ----------------------------------------------------------------------------- construction
def test_from_edges_sorts_topologically_and_deduplicates():
    mixed = [EDGES[3], parse_edge(EDGES[0]), *EDGES, EDGES[0].replace("->", " -> ")]
    c = Circuit.from_edges(mixed)
    assert len(c) == len(set(EDGES))
    assert list(c.edges) == sorted({parse_edge(e) for e in EDGES}, key=edge_order)
    ranks = [edge_order(e) for e in c]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert all(node_order(e.receiver) > node_order(e.sender) for e in c)


def test_nodes_are_the_touched_nodes_in_topological_order(circ):
    touched = {n for e in EDGES for n in (parse_edge(e).sender, parse_edge(e).receiver)}
    assert set(circ.nodes) == touched and len(circ.nodes) == len(touched)
    assert list(circ.nodes) == sorted(touched, key=node_order)
    assert circ.nodes[0] == Input() and circ.nodes[-1] == Logits()
    assert circ.nodes.index(Head(0, 3)) < circ.nodes.index(MLP(0)) < circ.nodes.index(Head(1, 2))


def test_contains_accepts_edges_and_strings(circ):
    assert "L0H1->L1H2.k" in circ and parse_edge("MLP0->L1H2.v") in circ
    assert "L0H1->L1H2.v" not in circ and 3 not in circ
    assert [str(e) for e in circ] == [str(e) for e in circ.edges]


def test_from_edges_with_no_edges_raises_and_empty_is_the_only_empty_constructor():
    with pytest.raises(ValueError, match="empty circuit"):
        Circuit.from_edges([])
    e = Circuit.empty(settings={"method": "acdc"})
    assert len(e) == 0 and e.nodes == () and e.settings == {"method": "acdc"}
    assert str(e) == repr(e) == "Circuit(empty)"


def test_single_string_is_one_edge_not_its_characters():
    c = Circuit.from_edges("L0H1->L1H2.k")
    assert c.edges == (parse_edge("L0H1->L1H2.k"),)


@pytest.mark.parametrize("bad", ["L0H1->L1H2", "garbage", "L1H0->L0H0.q", "logits->L1H0.q", "L0H1->input", "MLP1->MLP0"])
def test_unparsable_or_impossible_edges_are_value_errors(bad):
    with pytest.raises(ValueError):
        Circuit.from_edges(["input->MLP0", bad])


@pytest.mark.parametrize("bad", [math.nan, math.inf, "high"])
def test_non_finite_or_non_numeric_scores_raise(bad):
    with pytest.raises(ValueError, match="score of edge input->MLP0"):
        Circuit.from_edges(["input->MLP0"], scores={"input->MLP0": bad})


def test_scores_outside_the_circuit_are_ignored_and_parsed_keys_used():
    c = Circuit.from_edges(["input->MLP0"], scores={"input -> MLP0": 3, "L0H1->L1H2.k": 9.0})
    assert c.scores == {parse_edge("input->MLP0"): 3.0}
    direct = Circuit((parse_edge("input->MLP0"),), {parse_edge("L0H1->L1H2.k"): 9.0})
    assert direct.scores == {}


def test_model_check_rejects_out_of_range_edges(planted):
    ok = Circuit.from_edges(["L0H1->L1H2.k", "L1H2->logits"], model=planted)
    assert ok.settings["n_layers"] == planted.cfg.n_layers
    for bad in ["L1H9->logits", "L0H1->L5H0.q", "input->MLP0"]:  # head/layer out of range; attn-only: no MLP
        Circuit.from_edges([bad])  # fine without a model
        with pytest.raises(ValueError):
            Circuit.from_edges([bad], model=planted)
        with pytest.raises(ValueError):
            ensure_circuit(Circuit.from_edges([bad]), planted)


def test_str_and_repr_summarise_without_listing_edges(circ):
    s = str(circ)
    assert s == repr(circ)
    assert s.startswith(f"Circuit({len(EDGES)} edges, {len(circ.nodes)} nodes: input, L0H1")
    assert "->" not in s
    big = Circuit.from_edges([f"input->L{layer}H{h}.q" for layer in range(3) for h in range(8)])
    assert str(big).endswith(", ...)") and len(str(big)) < 120
    assert str(Circuit.from_edges(["input->MLP0"])) == "Circuit(1 edge, 2 nodes: input, MLP0)"


# ----------------------------------------------------------------------------- equality, set algebra
def test_equality_and_hash_use_edges_only(circ):
    same = Circuit.from_edges(list(reversed(EDGES)))
    assert same == circ and hash(same) == hash(circ)
    assert Circuit.from_edges(EDGES[:-1]) != circ


def test_set_algebra_matches_python_sets(circ):
    other = Circuit.from_edges(["L0H1->L1H2.k", "L1H2->logits", "L0H0->L1H2.q"], scores={"L1H2->logits": 99.0})
    a, b = set(circ.edges), set(other.edges)
    assert set(circ.union(other).edges) == a | b == set((circ | other).edges)
    assert set(circ.intersection(other).edges) == a & b == set((circ & other).edges)
    assert set(circ.difference(other).edges) == a - b == set((circ - other).edges)
    u = circ.union(other)
    assert u.scores[parse_edge("L1H2->logits")] == SCORES["L1H2->logits"]  # left operand's score wins
    assert u.settings["operation"] == "union" and u.settings["left"]["method"] == "eap"
    assert circ.union(["L0H0->L1H2.q"]) == Circuit.from_edges([*EDGES, "L0H0->L1H2.q"])
    assert all(set(x.scores) <= set(x.edges) for x in (u, circ & other, circ - other))
    assert len(circ.difference(circ)) == 0 and circ.intersection(Circuit.empty()) == Circuit.empty()


def test_ensure_circuit_passes_circuits_through_and_builds_from_iterables(circ):
    assert ensure_circuit(circ) is circ
    assert ensure_circuit(iter(EDGES)) == circ
    assert ensure_circuit("input->MLP0") == Circuit.from_edges(["input->MLP0"])
    for empty in ([], Circuit.empty()):
        with pytest.raises(ValueError, match="empty circuit"):
            ensure_circuit(empty)
        assert len(ensure_circuit(empty, allow_empty=True)) == 0
    with pytest.raises(TypeError):
        ensure_circuit(5)


# ----------------------------------------------------------------------------- exports
def test_to_networkx_has_one_node_per_node_and_one_keyed_edge_per_edge(circ):
    import networkx as nx

    g = circ.to_networkx()
    assert isinstance(g, nx.MultiDiGraph)
    assert g.number_of_nodes() == len(circ.nodes) and g.number_of_edges() == len(circ)
    assert set(g.nodes) == {str(n) for n in circ.nodes}
    assert g.nodes["input"] == {"kind": "input", "layer": -1}
    assert g.nodes["logits"] == {"kind": "logits", "layer": 2}
    assert g.nodes["L1H2"] == {"kind": "head", "layer": 1} and g.nodes["MLP0"] == {"kind": "mlp", "layer": 0}
    assert set(g["L0H1"]["L1H2"]) == {"q", "k"}  # two inputs between one pair of nodes
    assert g["L0H1"]["L1H2"]["k"]["score"] == 0.5 and g["L0H1"]["L1H2"]["k"]["input"] == "k"
    assert math.isnan(g["L0H1"]["L1H2"]["q"]["score"])
    assert g["input"]["MLP0"][""]["input"] is None
    assert nx.is_directed_acyclic_graph(g) and g.graph["settings"]["method"] == "eap"
    assert Circuit.from_edges(EDGES).to_networkx().nodes["logits"]["layer"] is None  # n_layers unknown


def test_to_frame_sorts_by_abs_score_then_unscored_topologically(circ):
    df = circ.to_frame()
    assert list(df.columns) == ["edge", "sender", "receiver", "input", "score"]
    assert len(df) == len(circ)
    scored = df["score"].notna().sum()
    assert scored == len(SCORES)
    assert list(df["edge"][:scored]) == sorted(SCORES, key=lambda k: -abs(SCORES[k]))
    rest = [parse_edge(e) for e in df["edge"][scored:]]
    assert rest == sorted(rest, key=edge_order) and df["score"][scored:].isna().all()
    row = df[df["edge"] == "L0H1->L1H2.k"].iloc[0]
    assert (row["sender"], row["receiver"], row["input"], row["score"]) == ("L0H1", "L1H2", "k", 0.5)


def test_to_frame_unscored_is_topological():
    c = Circuit.from_edges(EDGES)
    df = c.to_frame()
    assert list(df["edge"]) == [str(e) for e in c.edges] and df["score"].isna().all()


# ----------------------------------------------------------------------------- JSON
def test_save_load_round_trip_keeps_edges_scores_and_settings(circ, tmp_path):
    path = circ.save(tmp_path / "sub" / "c.json")
    back = Circuit.load(path)
    assert back == circ and back.edges == circ.edges
    assert back.scores == circ.scores and back.settings == circ.settings
    empty = Circuit.load(Circuit.empty(settings={"n": 0}).save(tmp_path / "e.json"))
    assert len(empty) == 0 and empty.settings == {"n": 0}


def test_save_refuses_non_json_suffix(circ, tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        circ.save(tmp_path / "c.safetensors")


def _tamper(circ, tmp_path, edit):
    path = circ.save(tmp_path / "c.json")
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))
    return path


@pytest.mark.parametrize("edit, match", [
    (lambda p: p.update(schema_version=2), "schema_version"),
    (lambda p: p.update(schema="mechattr.result"), "schema"),
    (lambda p: p["edges"].__setitem__(0, "L9H9->L0H0.q"), "bad edge"),
    (lambda p: p["edges"].__setitem__(0, "os.system('echo hi')"), "bad edge"),
    (lambda p: p["edges"].__setitem__(0, 7), "edge strings"),
    (lambda p: p["scores"].__setitem__("L0H0->L1H0.q", 1.0), "not in the circuit"),
    (lambda p: p["scores"].__setitem__("L0H1->L1H2.k", "big"), "must be a number"),
    (lambda p: p.update(settings=[1]), "JSON objects"),
    (lambda p: p.update(extra=1), "keys"),
])
def test_tampered_file_is_a_value_error_naming_the_problem(circ, tmp_path, edit, match):
    with pytest.raises(ValueError, match=match):
        Circuit.load(_tamper(circ, tmp_path, edit))


@pytest.mark.parametrize("text", ["not json {", "[1, 2]", "", "\u0000\u0001"])
def test_non_json_or_non_object_file_is_a_value_error(tmp_path, text):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="circuit file|schema"):
        Circuit.load(path)


# ----------------------------------------------------------------------------- plot
def test_plot_has_one_marker_per_node_and_one_line_per_edge(circ):
    import plotly.graph_objects as go

    fig = circ.plot(title="mine")
    assert isinstance(fig, go.Figure) and fig.layout.title.text == "mine"
    nodes = [t for t in fig.data if t.name == "nodes"]
    assert len(nodes) == 1 and len(nodes[0].x) == len(circ.nodes)
    assert list(nodes[0].text) == [str(n) for n in circ.nodes]
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == len(circ)
    by_name = {t.name: t for t in lines}
    assert "L0H1->L1H2.k: 0.5" in by_name["L0H1->L1H2.k"].hovertext
    big, small = by_name["input->L0H1.q"], by_name["L0H3->MLP0"]  # |-2.0| vs |-0.1|
    assert big.line.width > small.line.width and big.opacity > small.opacity
    assert by_name["L0H1->L1H2.k"].line.color != big.line.color  # positive vs negative
    ys = dict(zip(nodes[0].text, nodes[0].y))
    assert ys["input"] < ys["L0H1"] < ys["MLP0"] < ys["L1H2"] < ys["logits"]  # MLP above its layer's heads


def test_plot_unscored_edges_are_uniform():
    fig = Circuit.from_edges(EDGES).plot()
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len({(t.line.width, t.opacity, t.line.color) for t in lines}) == 1
    assert fig.layout.title.text.startswith("Circuit(")
