"""``report.html``: one self-contained, offline page for a :class:`ValidationReport`.

Order: verdict summary first, then token heatmaps per method, faithfulness table and
deletion/insertion curves, agreement, sanity checks, layer × head maps (AtP, ablation, path
patching, token→head links), attention flow, every test with its numbers, settings and
versions. plotly.js is embedded once (``include_plotlyjs=True`` for the first figure, then
``False``). Every user-derived string (token strings, method names, claim ids) is
HTML-escaped; tables go through ``pandas.DataFrame.to_html(escape=True)``.
"""

from __future__ import annotations

import html
import json
from typing import Any

import torch

from mechattr.io import to_jsonable
from mechattr.report import figures

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.confirmed{background:#d7f5dd;font-weight:600} .not-confirmed,.refuted{background:#fbdcdc;font-weight:600} .untested{background:#eee}
.redundant{background:#e3ecfb;font-weight:600} .inconclusive,.underpowered{background:#fff3d6;font-weight:600}
.note{color:#555;font-size:.9em} .warn{color:#a40000} pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:.8em}
"""


class _Figs:
    """Renders figures to HTML divs, embedding plotly.js only in the first one."""

    def __init__(self) -> None:
        self.first = True

    def __call__(self, fig: Any) -> str:
        out = fig.to_html(full_html=False, include_plotlyjs=self.first, config={"displaylogo": False})
        self.first = False
        return out


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(df: Any, float_format: str = "{:.4g}") -> str:
    return df.to_html(escape=True, index=False, na_rep="–", float_format=lambda v: float_format.format(v), border=0)


PLAIN = {
    "confirmed": "the intervention changes the target beyond its null and by at least the minimum effect",
    "refuted": "the effect is reliably smaller than the minimum effect",
    "redundant": "matters only together with the other heads of its group (they compensate for it)",
    "inconclusive": "the numbers do not decide either way (see why)",
    "underpowered": "too few controls or examples to decide",
    "untested": "no test ran",
    "not confirmed": "did not pass its tests",
}


def _claim_note(c: Any) -> str:
    bits = [c.note] if c.note else []
    return "".join(f"<br><span class='note'>{_e(b)}</span>" for b in bits)


def _verdict_rows(report: Any) -> str:
    rows = []
    for c in report.claims:
        kind = c.verdict_kind
        t = c.primary
        num = "–"
        if t is not None:
            ci = "" if t.ci_low is None else f" [{t.ci_low:.3g}, {t.ci_high:.3g}]"
            num = f"{t.effect:.3g}{ci}"
        nul = "–" if t is None or not t.null else f"{_e(t.null)} (n={t.n_controls})"
        p = "–" if t is None or t.p is None else f"{t.p:.3g}" + ("" if t.p_adj is None else f" / {t.p_adj:.3g}")
        rows.append(
            f"<tr><td>{_e(c.id)}{_claim_note(c)}</td><td class='{_e(kind.replace(' ', '-'))}' title='{_e(PLAIN.get(kind, ''))}'>"
            f"{_e(c.verdict)}</td><td style='text-align:left'>{_e(PLAIN.get(kind, ''))}. {_e(c.reason)}</td>"
            f"<td>{num}</td><td>{nul}</td><td>{p}</td><td>{_e(c.source)}</td></tr>")
    head = ("<tr><th>claim</th><th>verdict</th><th>in plain words</th><th>effect [95% CI]</th><th>null</th>"
            "<th>p / Holm</th><th>source</th></tr>")
    return f"<table id='verdicts'>{head}{''.join(rows)}</table>"


def _verdict_table(report: Any) -> str:
    return _verdict_rows(report)


def verdict_html(report: Any) -> str:
    """The verdict table with the rule and the target in words (for ``_repr_html_`` and the page top)."""
    st = report.settings
    words = st.get("target_words") or []
    tw = f"<p>Target: {_e('; '.join(words[:3]))}{' …' if len(words) > 3 else ''}</p>" if words else ""
    warn = "".join(f"<p class='warn'><b>Warning:</b> {_e(w)}</p>" for w in st.get("warnings", []) or [])
    me = st.get("min_effect_abs")
    rule = (f"<p class='note'>Multiple comparisons and minimum effect: {_e(st.get('verdict_rule', ''))}. Minimum effect "
            f"here: {me:.3g} target units ({_e(st.get('min_effect'))} of the reference gap). "
            f"{_e(st.get('profile_runs', ''))}.</p>") if me is not None else ""
    return tw + warn + _verdict_rows(report) + rule


def _faith_frame(report: Any) -> Any:
    import pandas as pd

    rows = []
    for m, f in report.faithfulness.items():
        s = f.get("summary", {})
        c = report.curves.get(m, {}).get("summary", {})
        row = {"method": m}
        for key, short in (("log_odds", "LO↓"), ("comprehensiveness", "Comp↑"), ("sufficiency", "Suff↓")):
            row[short] = s.get(key, {}).get("value")
            row[f"{short} random"] = s.get(key, {}).get("control_mean")
        row["deletion AUC↓"] = c.get("deletion", {}).get("auc")
        row["insertion AUC↑"] = c.get("insertion", {}).get("auc")
        if "hit_rate" in f:
            row["hit rate"] = f["hit_rate"]
            row["hit rate random"] = f.get("hit_rate_control_mean")
        comp = report.completeness.get(m)
        row["completeness |δ|max"] = comp.get("max_abs_delta") if comp else None
        row["converged"] = comp.get("ok", comp.get("passes")) if comp else None
        rows.append(row)
    return pd.DataFrame(rows)


def _matrix(names: list[str], mat: Any, label: str) -> str:
    import pandas as pd

    df = pd.DataFrame(mat, index=names, columns=names).reset_index().rename(columns={"index": label})
    return _table(df, "{:.3f}")


def _section(title: str, body: str, anchor: str) -> str:
    return f"<section id='{anchor}'><h2>{_e(title)}</h2>{body}</section>"


def render_html(report: Any) -> str:
    """The report page as a string (see the module docstring)."""
    import pandas as pd

    fig = _Figs()
    st = report.settings
    parts: list[str] = []
    title = f"mechattr validation report — {st.get('model', 'model')}"
    n_conf = len(report.confirmed())
    parts.append(f"<h1>{_e(title)}</h1>")
    parts.append(
        f"<p class='note'>target: {_e(json.dumps(st.get('target'), sort_keys=True))} · examples: {_e(st.get('n_examples'))}"
        f" · methods: {_e(', '.join(st.get('methods', [])))} · k = {_e(st.get('k'))} · removal: {_e(st.get('removal'))}"
        f" · seed: {_e(st.get('seed'))}</p>"
    )
    ar = st.get("architecture") or {}
    if ar:
        parts.append(
            f"<p class='note'>model: {_e(ar.get('architecture') or '?')} as a {_e(ar.get('kind'))} "
            f"(TransformerLens {_e(ar.get('transformer_lens'))}) · {_e(ar.get('n_layers'))} layers × "
            f"{_e(ar.get('n_heads'))} heads, {_e(ar.get('attention'))} ({_e(ar.get('n_kv_heads'))} key/value heads) · "
            f"positions: {_e(ar.get('positional'))} · norm: {_e(ar.get('norm'))}</p>"
        )
    counts: dict[str, int] = {}
    for c in report.claims:
        counts[c.verdict_kind] = counts.get(c.verdict_kind, 0) + 1
    summary = (f"<p>{n_conf} of {len(report.claims)} claims confirmed ("
               + ", ".join(f"{v} {_e(k)}" for k, v in counts.items()) + ").</p>" + verdict_html(report))
    if report.skipped:
        summary += "<h3>Skipped steps</h3><ul>" + "".join(
            f"<li><b>{_e(s.get('step'))}</b>: {_e(s.get('reason'))}</li>" for s in report.skipped) + "</ul>"
    parts.append(_section("Summary of verdicts", summary, "summary"))
    from mechattr.validation.sections import render_sections

    for anchor, title, body in render_sections(getattr(report, "sections", {}) or {}):
        parts.append(_section(title, body, anchor))

    # token maps
    body = []
    toks = report.str_tokens  # every example: the heatmap pages them with a slider
    for m, sc in report.token_maps.items():
        t = torch.as_tensor(sc, dtype=torch.float32)
        body.append(fig(figures.token_heatmap(t, toks, title=f"{m}: token attribution", row_labels=[f"ex {i}" for i in range(len(t))])))
    if body:
        parts.append(_section("Token attribution per method", "".join(body), "tokens"))

    # faithfulness
    if report.faithfulness:
        body = [f"<p class='note'>k = {_e(st.get('k'))} of removable tokens (never BOS/padding), removal "
                f"'{_e(st.get('removal'))}'. Comp = p(ŷ|x) − p(ŷ|x without top-k) (DeYoung et al. 2020), "
                "Suff = p(ŷ|x) − p(ŷ|top-k only), LO = log p(ŷ|x without top-k) − log p(ŷ|x) (Shrikumar et al. 2017); "
                "'random' is the mean over random rankings.</p>", _table(_faith_frame(report))]
        for m, comp in report.completeness.items():
            if comp and comp.get("ok", comp.get("passes", True)) is False:
                d, rel, tol = comp.get("max_abs_delta", float("nan")), comp.get("max_rel_delta", float("nan")), comp.get("rtol", 0.05)
                body.append(f"<p class='warn'><b>{_e(m)}: not converged.</b> Completeness error |δ| up to {d:.3g} "
                            f"({rel:.0%} of |F(x) − F(x′)|, allowed {tol:.0%}): its scores do not add up to the "
                            "effect they explain; raise n_steps or choose a baseline nearer the input before "
                            "trusting this map.</p>")
        parts.append(_section("Faithfulness", "".join(body), "faithfulness"))
    if report.curves:
        body = []
        for kind in ("deletion", "insertion"):
            ys: dict[str, Any] = {}
            xs = None
            for m, c in report.curves.items():
                xs = to_jsonable(c["fractions"])
                ys[m] = to_jsonable(c[f"{kind}_mean"])
                ctrl = c.get(f"control_{kind}_mean")
                if ctrl is not None and "random ranking" not in ys:  # same seeded rankings for every method
                    ys["random ranking"] = to_jsonable(ctrl)
            body.append(fig(figures.curves(xs, ys, title=f"{kind} curve", xlabel="fraction of tokens", ylabel="p(ŷ)")))
        parts.append(_section("Deletion and insertion curves", "".join(body), "curves"))
    if report.agreement:
        a = report.agreement
        body = "<h3>Spearman rank correlation</h3>" + _matrix(a["methods"], a["spearman"], "method")
        body += f"<h3>Top-{_e(a.get('k'))} overlap</h3>" + _matrix(a["methods"], a["top_k_overlap"], "method")
        parts.append(_section("Cross-method agreement", body, "agreement"))
    if report.sanity:
        rows = []
        for m, s in report.sanity.items():
            for stage, r, ra in zip(s["stages"], s["spearman"], s["spearman_abs"]):
                rows.append({"method": m, "randomized through": stage, "Spearman": r, "Spearman |·|": ra})
            rows.append({"method": m, "randomized through": "passes" if s["passes"] else "FAILS", "Spearman": None, "Spearman |·|": None})
        body = ("<p class='note'>Cascading parameter randomization (Adebayo et al. 2018) on a copy of the model, "
                "top layer first: a faithful map decorrelates from the trained model's map. Every stage up to a row's "
                "is re-drawn; rows are the stages evaluated (the default profile evaluates three).</p>" + _table(pd.DataFrame(rows)))
        parts.append(_section("Sanity checks", body, "sanity"))

    # heads
    body = []
    h = report.heads
    for key, label in (("path_patch", "path patching to logits (direct effect)"),
                       ("links", "token→head link strength (attention × ‖v W_O‖)")):
        if h.get(key) is not None:
            body.append(fig(figures.layer_head_heatmap(torch.as_tensor(h[key], dtype=torch.float32), title=label)))
    by = h.get("atp_by_corruption") or ({"corrupted": {"noising": h["atp"]}} if h.get("atp") is not None else {})
    for cname, grids in by.items():
        for direction, grid in grids.items():
            if grid is not None:
                body.append(fig(figures.layer_head_heatmap(torch.as_tensor(grid, dtype=torch.float32),
                                                           title=f"AtP ({direction}) under corruption '{cname}'")))
    for mode, grid in (h.get("ablation") or {}).items():
        body.append(fig(figures.layer_head_heatmap(torch.as_tensor(grid, dtype=torch.float32), title=f"{mode} ablation: Δ target")))
    for mode, effects in (h.get("ablation_solo") or {}).items():
        if effects:
            st_ = report.settings
            grid = torch.full((int(st_.get("n_layers", 0)), int(st_.get("n_heads", 0))), float("nan"))
            for name, v in effects.items():
                layer, hh = (int(x) for x in name[1:].split("H"))
                grid[layer, hh] = v
            body.append(fig(figures.layer_head_heatmap(grid, title=f"{mode} ablation of each tested head alone: Δ target (blank: not tested)")))
    if body:
        parts.append(_section("Heads", "".join(body), "heads"))
    if report.flow is not None:
        parts.append(_section("Attention flow", _flow_html(report, fig), "flow"))
    if getattr(report, "circuit", None):
        from mechattr.report.circuit import circuit_html

        parts.append(_section("Circuit", circuit_html(report.circuit, fig), "circuit"))

    # all numbers
    rows = [{"claim": c.id, "test": t.test, "effect": t.effect, "CI low": t.ci_low, "CI high": t.ci_high, "null": t.null,
             "threshold": t.threshold, "p": t.p, "p Holm": t.p_adj, "n controls": t.n_controls, "rule": t.rule,
             "primary": t.primary} for c in report.claims for t in c.tests]
    parts.append(_section("Every test", _table(pd.DataFrame(rows)) if rows else "<p>none</p>", "tests"))
    if report.timings:
        parts.append(_section("Timings (s)", _table(pd.DataFrame([report.timings])), "timings"))
    meta = {"settings": report.settings, "versions": report.versions}
    parts.append(_section("Settings and versions", f"<pre>{_e(json.dumps(meta, indent=1, sort_keys=True, default=str))}</pre>", "settings"))
    if fig.first:  # no figure at all: still embed nothing, the page is static
        pass
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    )


def _flow_html(report: Any, fig: _Figs) -> str:
    """Attention-flow figure: the shared flow-graph figure if present, else a token heatmap."""
    flow = torch.as_tensor(report.flow, dtype=torch.float32)
    graph_fig = getattr(figures, "attention_flow_graph", None)
    note = ("<p class='note'>Max-flow from each input token to the target position (Abnar &amp; Zuidema 2020); "
            "the layered graph is example 0, edges Â_l[q, k].</p>")
    gj = report.heads.get("flow_graph")
    body = ""
    if callable(graph_fig) and gj:
        import networkx as nx

        g = nx.DiGraph()
        for layer, pos, tok in gj["nodes"]:
            g.add_node((layer, pos), layer=layer, pos=pos, token=tok)
        for l0, k, l1, q, cap in gj["edges"]:
            g.add_edge((l0, k), (l1, q), capacity=cap)
        body = fig(graph_fig(g, flow=flow[0], title="attention flow graph (example 0)"))
    return note + body + fig(figures.token_heatmap(flow, report.str_tokens, title="attention flow to the target position"))
