"""repr() and _repr_html_ of result objects: a short summary (method, shapes, top items,
settings names), never tensors or settings values, and HTML with every string escaped."""

from __future__ import annotations

import re

import pytest
import torch

import mechattr
from mechattr import organisms
from mechattr.attribution.component_result import ComponentAttribution
from mechattr.attribution.generation import GenerationAttribution
from mechattr.attribution.result import TokenAttribution
from mechattr.circuits.scores import EdgeScores
from mechattr.components import parse_edge
from mechattr.interventions.result import InterventionResult
from mechattr.runtime.split import SplitUnsupported

EVIL = "<script>alert('x')</script>"
BIG = torch.arange(5000.0)  # a settings value whose text would be huge


def token_attr(n):
    g = torch.Generator().manual_seed(n)
    strs = [["<bos>", EVIL, *[f"w{j}" for j in range(6)]] for _ in range(n)]
    scores = torch.randn(n, 8, generator=g)
    scores[:, 1] = 100.0  # the hostile token is the top one
    return TokenAttribution(scores=scores, tokens=torch.zeros(n, 8, dtype=torch.long), str_tokens=strs,
                            method="integrated_gradients", settings={"baseline": "pad", "n_steps": 16, "huge": BIG})


def component_attr(n):
    return ComponentAttribution(torch.randn(n, 12, generator=torch.Generator().manual_seed(n)), "heads", "atp", meta={"target": EVIL, "huge": BIG})


def generation_attr(n):
    matrix = torch.randn(n, 5 + n, generator=torch.Generator().manual_seed(n))
    matrix[:, 1] = 100.0
    return GenerationAttribution(matrix=matrix, tokens=torch.zeros(1, 5 + n, dtype=torch.long),
                                 context=["<bos>", EVIL, "a", "b", "c"] + [f"g{i}" for i in range(n)], generated=[f"g{i}" for i in range(n)],
                                 n_prompt=5, step_scores={"prob": torch.rand(n)}, method="saliency", settings={"huge": BIG})


def intervention(n):
    return InterventionResult(torch.randn(n, 12, generator=torch.Generator().manual_seed(n)), [f"L{i}H{j}" for i in range(n) for j in range(12)],
                              ("layer", "head"), "ablation_scan", {"mode": "mean", "clean": 1.5, "huge": BIG})


def edges(n):
    es = [parse_edge(f"L0H{i % 12}->L{1 + i // 12}H{i % 12}.q") for i in range(n)]
    return EdgeScores(es, torch.randn(n, generator=torch.Generator().manual_seed(n)), "eap", {"ablation": "patch", "huge": BIG})


MAKERS = {"TokenAttribution": token_attr, "ComponentAttribution": component_attr, "GenerationAttribution": generation_attr,
          "InterventionResult": intervention, "EdgeScores": edges}
METHOD = {"TokenAttribution": "integrated_gradients", "ComponentAttribution": "atp", "GenerationAttribution": "saliency",
          "InterventionResult": "ablation_scan", "EdgeScores": "eap"}


@pytest.mark.parametrize("kind", MAKERS)
def test_repr_is_a_short_summary_whatever_the_size(kind):
    small, big = repr(MAKERS[kind](3)), repr(MAKERS[kind](40))
    for r in (small, big):
        assert r.startswith(kind + "(") and METHOD[kind] in r.splitlines()[0]
        assert "tensor(" not in r and "4999" not in r  # no tensor, no settings value
        assert "huge" in r  # settings are named
        assert len(r) < 800 and len(r.splitlines()) <= 8
    assert abs(len(big) - len(small)) < 200  # bounded: does not grow with the rows


@pytest.mark.parametrize("kind", MAKERS)
def test_repr_html_is_a_small_escaped_table(kind):
    h = MAKERS[kind](4)._repr_html_()
    assert h.startswith("<table>") and h.endswith("</table>") and len(h) < 3000
    assert "<script" not in h and "<bos>" not in h  # every string escaped
    assert METHOD[kind] in h and "tensor(" not in h
    if kind in ("TokenAttribution", "GenerationAttribution"):  # the hostile top token is shown escaped, not dropped
        assert "&lt;script&gt;" in re.sub(r"<[^>]+>", "", h)


def test_top_items_are_the_largest_magnitudes():
    s = torch.zeros(3, 4)
    s[2, 1], s[0, 3], s[1, 0] = -9.0, 5.0, 0.5
    r = repr(ComponentAttribution(s, "heads", "atp"))
    top = re.search(r"top \|score\|: (.*)", r).group(1)
    assert [t.split()[0] for t in top.split(", ")] == ["L2H1", "L0H3", "L1H0"]
    ip = InterventionResult(torch.tensor([[4.0, 1.0], [0.9, 2.0]]), ["L0H0", "L0H1", "L1H0", "L1H1"], ("layer", "head"),
                            "activation_patch", {"direction": "denoise", "corrupted": 1.0, "clean": 4.0})
    line = re.search(r"top \|score − corrupted\|: (.*)", repr(ip)).group(1)  # patched values ranked by change
    assert line.split(", ")[0].startswith("L0H0 +3")


def test_real_results_from_an_organism_summarise():
    m = organisms.load("planted_induction")
    b = organisms.task("planted_induction").sample(16, seed=0)
    c = mechattr.attribute_heads(m, b.tokens, b.target, corrupted=b.corrupted, return_result=True)
    assert "L1H2 -10" in repr(c)  # the induction head, exactly -G
    p = mechattr.activation_patch(m, b.tokens, b.corrupted, b.target, direction="noise", return_result=True)
    assert "L1H2 -10" in repr(p) and len(repr(p)) < 800
    t = mechattr.attribute_tokens(m, b.tokens, b.target, method="saliency")
    assert repr(t).startswith("TokenAttribution(saliency, 16 rows)") and "tensor(" not in repr(t)
    try:
        e = mechattr.attribute_edges(m, b.tokens, b.corrupted, b.target)
    except SplitUnsupported:  # TransformerLens 4's bridge of this organism has no per-head q/k/v inputs
        return
    assert repr(e).startswith("EdgeScores(eap") and "L1H2->logits" in repr(e)
