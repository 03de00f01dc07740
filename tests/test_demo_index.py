"""``make demo``'s index page links every report it made, and its terminal summary fits 100
columns (issue 15)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from mechattr.demo import WIDTH, run_demo, write_index
from mechattr.report.cli import format_summary


class _Rep:
    """The part of a ValidationReport that the summary reads."""

    def __init__(self, rows):
        self._rows = rows
        self.claims = rows
        self.skipped = [{"step": "sanity", "reason": "a long reason " * 12}]

    def summary_frame(self):
        return pd.DataFrame(self._rows, columns=["claim", "verdict", "tests", "numbers"])

    def confirmed(self):
        return [r for r in self._rows if r[1] == "confirmed"]


LONG = "; ".join(f"ablation:resample at layer {i}: -9.653 vs 0 (q95 0.25)" for i in range(8))
ROWS = [("heads:wrong: L1H0 (random non-circuit head with a very long name)", "not confirmed", "0/4", LONG),
        ("tokens:ig", "confirmed", "4/4", "comprehensiveness: 0.98 vs 0.76"),
        ("link:top token(input_x_gradient)→L1H2", "confirmed", "1/1", "x" * 150)]


def test_summary_fits_the_width_and_keeps_every_number():
    for width in (100, 80, 60):
        lines = format_summary(_Rep(ROWS), width)
        assert max(len(ln) for ln in lines) <= width, [ln for ln in lines if len(ln) > width]
        text = " ".join(ln.strip() for ln in lines)
        for part in LONG.split("; "):
            assert part in text  # wrapped, not cut
        assert "not confirmed" in text and "tokens:ig" in text


def test_index_links_every_page_of_every_organism(tmp_path):
    results = {}
    for name in ("induction", "planted<x>"):
        d = tmp_path / name
        d.mkdir()
        for f in ("report.html", "report.json", "circuit.html"):
            (d / f).write_text("{}")
        results[name] = {"confirmed": 3, "claims": 5, "seconds": 1.0,
                         "checks": [("documented heads confirmed", True, "confirmed"), ("<b>wrong</b>", False, "x")]}
    page = write_index(tmp_path, results).read_text()
    links = re.findall(r'href="([^"]+)"', page)
    assert len(links) == 6 and all((tmp_path / link.replace("&lt;", "<").replace("&gt;", ">")).exists() for link in links)
    assert "<b>wrong</b>" not in page and "&lt;b&gt;wrong&lt;/b&gt;" in page  # escaped
    assert "Some checks failed" in page


def test_demo_writes_an_index_of_its_reports_and_prints_within_100_columns(tmp_path, capsys):
    run_demo(out=str(tmp_path), organisms=("planted_induction",), quiet=True, n=4, methods="input_x_gradient",
             n_draws=4, curve_steps=2, curve_draws=1, sanity_methods=(), circuit=False)
    out = capsys.readouterr().out
    # every line fits, the output directory's path aside (as long as the user made it)
    assert max(len(ln.replace(str(tmp_path), "<out>")) for ln in out.splitlines()) <= WIDTH
    page = (tmp_path / "index.html").read_text()
    assert 'href="planted_induction/report.html"' in page and 'href="planted_induction/report.json"' in page
    assert not (tmp_path / "report.html").exists()  # no top-level copy of one organism's report
    assert str(Path(tmp_path) / "index.html") in out
