"""The circuit section: ``mechattr circuit``, ``validate(circuit=...)``, safe JSON and HTML."""

from __future__ import annotations

import json

import pytest

from mechattr import organisms
from mechattr.cli import main
from mechattr.report.circuit import CircuitReport, circuit_report
from mechattr.runtime.tl import HAS_HOOKED

needs_split = pytest.mark.skipif(not HAS_HOOKED, reason="TL 4 organisms are native bridges without per-head inputs")


@needs_split
def test_cli_writes_the_planted_circuit(tmp_path, capsys):
    assert main(["circuit", "--task", "planted_mlp", "--n", "6", "--n-steps", "4", "--out", str(tmp_path)]) == 0
    rep = CircuitReport.load(tmp_path)
    assert set(rep.circuit) == set(organisms.circuit_edges("planted_mlp", "patch"))
    assert rep.evaluation["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    assert "faithfulness 1.000" in capsys.readouterr().out
    html = (tmp_path / "circuit.html").read_text()
    assert "plotly" in html and "input-&gt;MLP0" in html


@needs_split
def test_tampered_circuit_json_is_refused(tmp_path):
    m = organisms.load("planted_induction")
    b = organisms.task("planted_induction").sample(4, seed=0)
    rep = circuit_report(m, b.tokens, b.corrupted, b.target, n_steps=2, str_tokens=[["<script>x</script>"] * b.tokens.shape[1]] * 4)
    rep.save(tmp_path)
    assert "<script>x</script>" not in (tmp_path / "circuit.html").read_text()
    d = json.loads((tmp_path / "circuit.json").read_text())
    for key, value, msg in (("schema_version", 2, "schema_version"), ("circuit", ["L9H9->L0H0.q"], "not downstream"),
                            ("evil", 1, "unknown fields")):
        bad = dict(d, **{key: value})
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=msg):
            CircuitReport.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        CircuitReport.load(tmp_path / "bad.json")


def test_validate_adds_the_circuit_section_or_says_why_not(tmp_path):
    from mechattr.validation import ValidationReport, validate

    m = organisms.load("planted_induction")
    b = organisms.task("planted_induction").sample(4, seed=1)
    rep = validate(m, b.tokens, b.target, corrupted=b.corrupted, methods=["input_x_gradient"], top_heads=1, top_links=0,
                   n_draws=2, curve_draws=0, sanity_methods=(), circuit={"n_steps": 2})
    if HAS_HOOKED:
        assert set(rep.circuit["circuit"]) == set(organisms.circuit_edges("planted_induction", "patch"))
        rep.save(tmp_path)
        assert "id='circuit'" in (tmp_path / "report.html").read_text()
        assert ValidationReport.load(tmp_path).circuit["circuit"] == rep.circuit["circuit"]
    else:
        assert not rep.circuit and any(s["step"] == "circuit" for s in rep.skipped)
