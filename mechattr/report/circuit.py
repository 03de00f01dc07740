"""The circuit section: edges scored, a circuit chosen, evaluated, and linked to input tokens.

:func:`circuit_report` runs one circuit investigation — :func:`mechattr.circuits.
attribute_edges` (``method``), the faithfulness curve of that ranking, a circuit
(``selection``: top-``n`` — by default the smallest top-``n`` whose faithfulness reaches
``min_faithfulness`` on the curve —, threshold, greedy, or ACDC at ``tau``), its evaluation
(faithfulness, Wang et al.'s completeness and minimality) and, for every circuit edge from
the input, the tokens it carries: EAP-IG's per-position terms ``Δ_input[pos] · g_r[pos]``
(they sum to the edge's score), top positions per example. :class:`CircuitReport` holds it
as JSON-able data and writes ``circuit.json`` (schema ``mechattr.circuit_report``,
version 1, checked on load) and a standalone ``circuit.html``; :func:`circuit_html` renders
the section inside the validation report too. Every user-derived string is escaped.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_NAME = "mechattr.circuit_report"
SCHEMA_VERSION = 1
TOP_EDGES = 40
TOP_TOKENS = 3


@dataclass
class CircuitReport:
    """Everything the circuit section shows (JSON-able; see the module docstring)."""

    settings: dict[str, Any]
    edges: list[dict[str, Any]]
    circuit: list[str]
    evaluation: dict[str, Any]
    curve: dict[str, Any]
    token_links: list[dict[str, Any]] = field(default_factory=list)
    str_tokens: list[list[str]] = field(default_factory=list)

    def __repr__(self) -> str:
        f = self.evaluation.get("faithfulness")
        return f"CircuitReport({len(self.circuit)} edges of {len(self.edges)}, faithfulness={f})"

    def to_dict(self) -> dict[str, Any]:
        from mechattr.io import to_jsonable

        return {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, **to_jsonable(asdict(self))}

    @classmethod
    def from_dict(cls, d: Any) -> CircuitReport:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA_NAME:
            raise ValueError(f"not a mechattr circuit report (schema={d.get('schema') if isinstance(d, dict) else type(d).__name__!r})")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"circuit report schema_version {d.get('schema_version')!r}; this mechattr reads {SCHEMA_VERSION}")
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - names - {"schema", "schema_version"})
        if unknown:
            raise ValueError(f"circuit report has unknown fields {unknown}")
        from mechattr.components import parse_edge

        for e in d.get("circuit", []):
            parse_edge(e)  # refuses a tampered edge
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "circuit.json").write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False), encoding="utf-8")
        (out / "circuit.html").write_text(standalone_html(self.to_dict()), encoding="utf-8")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> CircuitReport:
        p = Path(directory)
        p = p / "circuit.json" if p.is_dir() else p
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{p} is not JSON: {err}") from None
        return cls.from_dict(d)


def circuit_report(
    model: Any,
    clean: Any,
    corrupted: Any,
    target: Callable,
    *,
    method: str = "eap_ig_inputs",
    selection: str = "topn",
    n: int | None = None,
    threshold: float | None = None,
    tau: float | None = None,
    ablation: str = "patch",
    min_faithfulness: float = 0.8,
    n_steps: int = 10,
    str_tokens: list[list[str]] | None = None,
    max_examples: int = 8,
    batch_size: int | None = None,
    attention_mask: Any = None,
    model_name: str | None = None,
) -> CircuitReport:
    """Score, choose, evaluate and link a circuit (module docstring)."""
    from mechattr.circuits import (
        attribute_edges,
        discover_circuit,
        evaluate_circuit,
        faithfulness_curve,
    )
    from mechattr.io import versions

    if not 0 < min_faithfulness <= 1:
        raise ValueError(f"min_faithfulness must be in (0, 1], got {min_faithfulness!r}")
    kw = dict(attention_mask=attention_mask, batch_size=batch_size)
    scores = attribute_edges(model, clean, corrupted, target, method=method, ablation=ablation, n_steps=n_steps, **kw)
    curve = faithfulness_curve(model, scores, clean, corrupted, target, ablation=ablation, **kw)
    if selection == "topn" and n is None:
        ok = [k for k, f in zip(curve.counts, curve.faithfulness) if k > 0 and f == f and f >= min_faithfulness]
        n = min(ok) if ok else len(scores.edges)
    circ = discover_circuit(model, clean, corrupted, target, selection=selection, n=n, threshold=threshold, tau=tau,
                            ablation=ablation, scores=None if selection == "acdc" else scores, **kw)
    if not len(circ):
        ev: dict[str, Any] = {"faithfulness": None, "note": "the selection kept no edge on an input→logits path"}
    else:
        e = evaluate_circuit(model, circ, clean, corrupted, target, ablation=ablation, completeness=True, n_subsets=4, **kw)
        ev = {"faithfulness": e.faithfulness, "target_circuit": e.target_circuit, "target_full": e.target_full,
              "target_empty": e.target_empty, "n_edges": e.n_edges, "completeness": e.completeness, "minimality": e.minimality}
    links = []
    inputs = [x for x in circ.edges if str(x.sender) == "input"]
    if inputs:
        pp = attribute_edges(model, clean, corrupted, target, method="eap_ig_inputs", ablation=ablation, n_steps=n_steps,
                             edges=inputs, per_position=True, **kw).per_position
        for i, x in enumerate(inputs):
            rows = []
            for b in range(min(max_examples, pp.shape[1])):
                top = pp[i, b].abs().argsort(descending=True)[:TOP_TOKENS].tolist()
                rows.append([[p, _tok(str_tokens, b, p), float(pp[i, b, p])] for p in top])
            links.append({"edge": str(x), "score": float(circ.scores.get(x, float("nan"))), "examples": rows})
    order = scores.scores.abs().argsort(descending=True)[:TOP_EDGES].tolist()
    in_c = set(circ.edges)
    edges = [{"edge": str(scores.edges[i]), "score": float(scores.scores[i]), "in_circuit": scores.edges[i] in in_c} for i in order]
    settings = {"model": model_name, "method": method, "selection": selection, "n": n, "threshold": threshold, "tau": tau,
                "ablation": ablation, "min_faithfulness": min_faithfulness, "n_steps": n_steps,
                "n_layers": model.cfg.n_layers, "versions": versions()}
    curve_d = {"counts": curve.counts, "faithfulness": curve.faithfulness, "area": curve.area, "n_edges": curve.n_edges}
    circ_scores = {str(k): v for k, v in circ.scores.items()}
    settings["circuit_scores"] = circ_scores
    return CircuitReport(settings, edges, [str(x) for x in circ.edges], ev, curve_d, links, list(str_tokens or []))


def _tok(str_tokens: list[list[str]] | None, b: int, p: int) -> str:
    try:
        return str(str_tokens[b][p])  # type: ignore[index]
    except (TypeError, IndexError):
        return f"pos {p}"


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and v != v) else f"{v:.4g}" if isinstance(v, float) else _e(v)


def circuit_html(d: dict[str, Any], fig: Callable[[Any], str]) -> str:
    """The section body (HTML) for circuit report data ``d``; ``fig`` renders a plotly figure."""
    from mechattr.circuits import Circuit
    from mechattr.components import parse_edge
    from mechattr.report import figures

    s, ev = d.get("settings", {}), d.get("evaluation", {})
    parts = [f"<p class='note'>Edges scored by <b>{_e(s.get('method'))}</b> (ablation {_e(s.get('ablation'))}); "
             f"circuit by <b>{_e(s.get('selection'))}</b>"
             + (f", n = {_e(s.get('n'))}" if s.get("n") is not None else "")
             + (f", τ = {_e(s.get('tau'))}" if s.get("tau") is not None else "")
             + f": {len(d.get('circuit', []))} of {d.get('curve', {}).get('n_edges', '?')} edges. "
             "Faithfulness = (T(circuit) − T(empty)) / (T(full) − T(empty)), T the batch-mean target.</p>"]
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_num(ev.get(k))}</td></tr>"
                   for k in ("faithfulness", "target_circuit", "target_full", "target_empty", "n_edges"))
    parts.append(f"<table><tr><th>quantity</th><th>value</th></tr>{rows}</table>")
    if ev.get("note"):
        parts.append(f"<p class='warn'>{_e(ev['note'])}</p>")
    if d.get("circuit"):
        sc = {parse_edge(k): v for k, v in s.get("circuit_scores", {}).items()}
        c = Circuit.from_edges(d["circuit"], scores=sc, settings={"n_layers": s.get("n_layers")})
        parts.append(fig(c.plot(title="circuit (edge width ∝ |score|)")))
    cv = d.get("curve") or {}
    if cv.get("counts"):
        f = figures.curves(cv["counts"], {"faithfulness": cv["faithfulness"]}, title=f"faithfulness vs edges kept (area {cv['area']:.3f})",
                           xlabel="top-k edges kept (count)", ylabel="normalised faithfulness")
        parts.append(fig(f))
    for title, key in (("completeness |T(C∖K) − T(M∖K)| (small is complete)", "completeness"),
                       ("minimality max_K |T(C∖(K∪v)) − T(C∖K)| (large: v matters)", "minimality")):
        if ev.get(key):
            body = "".join(f"<tr><td>{_e(k)}</td><td>{_num(v)}</td></tr>" for k, v in sorted(ev[key].items(), key=lambda kv: -kv[1])[:20])
            parts.append(f"<h3>{_e(title)}</h3><table><tr><th>knocked out</th><th>|Δ|</th></tr>{body}</table>")
    if d.get("token_links"):
        body = ""
        for link in d["token_links"]:
            for b, row in enumerate(link["examples"]):
                toks = ", ".join(f"{_e(t)}@{p} ({v:+.3g})" for p, t, v in row)
                body += f"<tr><td>{_e(link['edge'])}</td><td>{b}</td><td style='text-align:left'>{toks}</td></tr>"
        parts.append("<h3>circuit edges from the input → the tokens they carry (EAP-IG per position)</h3>"
                     f"<table><tr><th>edge</th><th>example</th><th>top tokens (position, term)</th></tr>{body}</table>")
    body = "".join(f"<tr><td>{_e(x['edge'])}</td><td>{x['score']:+.4g}</td><td>{'✓' if x['in_circuit'] else ''}</td></tr>"
                   for x in d.get("edges", []))
    parts.append(f"<h3>top edges by |score|</h3><table><tr><th>edge</th><th>score</th><th>in circuit</th></tr>{body}</table>")
    return "".join(parts)


def standalone_html(d: dict[str, Any]) -> str:
    """``circuit.html``: the section as one offline page (plotly.js embedded once)."""
    from mechattr.report.html import CSS, _Figs

    title = f"mechattr circuit report — {d.get('settings', {}).get('model') or 'model'}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style></head>"
            f"<body><h1>{_e(title)}</h1>{circuit_html(d, _Figs())}</body></html>")
