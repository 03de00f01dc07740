"""report.html / report.json: escaping, one embedded plotly.js, offline, schema, round trip."""

from __future__ import annotations

import json

import pytest
import torch

from mechattr.report.schema import SCHEMA_VERSION
from mechattr.validation import Claim, ValidationReport
from mechattr.validation.claims import compare

EVIL = "<script>alert(1)</script>"


def evil_report() -> ValidationReport:
    toks = [["<bos>", EVIL, "a&b", " x"], ["<bos>", "y", '"q"', EVIL]]
    c = Claim(f"head:{EVIL}", "head", {"layer": 0, "head": 1}, "user")
    c.add(compare("ablation:zero", 2.0, [0.1, 0.2, 0.3]))
    return ValidationReport(
        settings={"model": EVIL, "methods": [EVIL], "k": 0.2, "removal": "zero", "seed": 3, "n_examples": 2,
                  "target": {"target": "logit"}},
        versions={"mechattr": "0"},
        str_tokens=toks,
        token_maps={EVIL: torch.tensor([[0.0, 1.0, -1.0, 0.5], [0.0, 0.2, 0.1, 0.9]])},
        curves={EVIL: {"fractions": torch.linspace(0, 1, 3), "deletion_mean": torch.tensor([0.5, 0.2, 0.1]),
                       "insertion_mean": torch.tensor([0.1, 0.3, 0.5]), "control_deletion_mean": None,
                       "control_insertion_mean": None, "summary": {}}},
        heads={"atp": torch.randn(2, 4), "ablation": {"zero": torch.randn(2, 4)}, "path_patch": None, "links": None},
        flow=torch.rand(2, 4),
        claims=[c],
        skipped=[{"step": EVIL, "reason": "because <b>"}],
        timings={"all": 1.0},
    )


def test_html_escapes_token_strings_and_embeds_plotly_once(tmp_path):
    r = evil_report()
    r.save(tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "alert(1)</script>" not in page and "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "because &lt;b&gt;" in page
    assert page.count("plotly.js v") == 1  # the bundle, inlined once
    import re

    assert not re.search(r"<script[^>]*\bsrc=", page) and "<link" not in page  # nothing loaded from outside
    assert page.index("id='summary'") < page.index("id='tokens'") < page.index("id='heads'")
    assert page.index("id='curves'") < page.index("id='settings'")


def test_json_round_trip_is_exact_and_versioned(tmp_path):
    r = evil_report()
    r.save(tmp_path / "a")
    d = json.loads((tmp_path / "a" / "report.json").read_text(encoding="utf-8"))
    assert d["schema"] == "mechattr.validation_report" and d["schema_version"] == SCHEMA_VERSION
    assert "timings" not in d
    back = ValidationReport.load(tmp_path / "a")
    assert back.to_dict() == d
    back.save(tmp_path / "b")
    assert (tmp_path / "a" / "report.json").read_bytes() == (tmp_path / "b" / "report.json").read_bytes()
    assert back.claims[0].verdict == "confirmed" and back.claims[0].tests[0].threshold == pytest.approx(0.29)
    (tmp_path / "b" / "report.html").read_text(encoding="utf-8")  # a loaded report renders too


def test_load_rejects_other_schemas(tmp_path):
    p = tmp_path / "report.json"
    p.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match="not a mechattr validation report"):
        ValidationReport.load(tmp_path)
    p.write_text(json.dumps({"schema": "mechattr.validation_report", "schema_version": 999}))
    with pytest.raises(ValueError, match="schema_version"):
        ValidationReport.load(p)


def test_report_warns_when_a_path_map_has_not_converged():
    from mechattr.report.html import render_html

    rep = evil_report()
    rep.faithfulness = {"ig": {"summary": {}}, "saliency": {"summary": {}}}
    rep.completeness = {"ig": {"ok": False, "max_abs_delta": 0.8, "max_rel_delta": 1.5, "rtol": 0.05}}
    html = render_html(rep)
    assert "ig: not converged" in html and "150%" in html
    rep.completeness = {"ig": {"ok": True, "max_abs_delta": 1e-5, "max_rel_delta": 0.001, "rtol": 0.05}}
    assert "not converged" not in render_html(rep)
