"""Plotly figures shared by results and reports. Token strings are HTML-escaped.

Each function returns a ``plotly.graph_objects.Figure``; nothing global (no template) is
set at import.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def escape_tokens(tokens: Sequence[str]) -> list[str]:
    """HTML-escape token strings (and make whitespace visible) for display."""
    out = []
    for t in tokens:
        s = html.escape(str(t), quote=True)
        out.append(s.replace(" ", "␣").replace("\n", "\\n") if s.strip() != s or "\n" in s else s)
    return out


def _np(x: Any):
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    return x


PAGE_ROWS = 8  # token heatmap rows per slider page
CELL_PX = 56  # width of one token cell, so token labels stay readable (wide figures scroll)
WIDE_POS = 24  # positions that fit a ~1200 px page at a readable cell width; longer rows get a fixed, wider figure


def _colorbar(zlabel: str) -> dict:
    return {"title": {"text": html.escape(zlabel), "side": "right"}}


def _int_axis(n: int, title: str, labels: Sequence[str] | None = None) -> dict:
    """An axis with one integer tick per index ``0..n-1`` (optionally labelled)."""
    ax: dict[str, Any] = {"title": title, "tickmode": "array", "tickvals": list(range(n))}
    ax["ticktext"] = list(labels) if labels is not None else [str(i) for i in range(n)]
    return ax


def _row_labels(n: int, row_labels: Sequence[str] | None, target_words: Sequence[str] | str | None) -> list[str]:
    labels = [html.escape(str(r)) for r in row_labels] if row_labels is not None else [f"ex {i}" for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"row_labels has {len(labels)} entries for {n} rows")
    if target_words is None:
        return labels
    words = [target_words] * n if isinstance(target_words, str) else list(target_words)
    if len(words) != n:
        raise ValueError(f"target_words has {len(words)} entries for {n} rows")
    return [f"{lab} → {escape_tokens([w])[0]}" for lab, w in zip(labels, words)]


def token_heatmap(scores: Tensor, str_tokens: Sequence[Sequence[str]] | None = None, *, title: str = "token attribution",
                  row_labels: Sequence[str] | None = None, zlabel: str = "attribution", target_words: Sequence[str] | str | None = None,
                  page_rows: int = PAGE_ROWS):
    """Heatmap of ``scores [rows, pos]`` with token strings as text (diverging, centred at 0).

    Rows are paged ``page_rows`` at a time with a slider (one trace per page, one shared
    colour scale), so every example is reachable; positions are integer ticks; cells are
    ``CELL_PX`` wide beyond ``WIDE_POS`` positions (the figure then scrolls instead of
    squeezing the labels). ``zlabel`` titles the colour bar (say the unit, e.g. "Δ logit");
    ``target_words`` (one per row, or one for all) are appended to the row labels as "→ word".
    """
    import plotly.graph_objects as go

    if isinstance(page_rows, bool) or not isinstance(page_rows, int) or page_rows < 1:
        raise ValueError(f"page_rows must be a positive int, got {page_rows!r}")
    s = _np(scores if scores.ndim == 2 else scores[None])
    n, p = s.shape
    text = None
    if str_tokens is not None:
        if len(str_tokens) < n:
            raise ValueError(f"str_tokens has {len(str_tokens)} rows for {n} score rows")
        text = [escape_tokens(r)[:p] + [""] * (p - len(r)) for r in list(str_tokens)[:n]]
    labels = _row_labels(n, row_labels, target_words)
    lim = float(abs(s).max()) if s.size else 1.0
    lim = lim if lim > 0 else 1.0
    pages = [list(range(i, min(i + page_rows, n))) for i in range(0, max(n, 1), page_rows)] if n else [[]]
    hover = "pos %{x}<br>%{text}<br>" + html.escape(zlabel) + " %{z:.4g}<extra>%{y}</extra>" if text is not None else None
    fig = go.Figure()
    for k, rows in enumerate(pages):
        fig.add_trace(go.Heatmap(
            z=s[rows], x=list(range(p)), y=[labels[r] for r in rows], text=[text[r] for r in rows] if text is not None else None,
            texttemplate="%{text}" if text is not None else None, textfont={"size": 11}, colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
            colorbar=_colorbar(zlabel), hovertemplate=hover, visible=k == 0, name=f"rows {rows[0]}–{rows[-1]}" if rows else "",
        ))
    if len(pages) > 1:
        steps = [{"method": "update", "label": f"{rows[0]}–{rows[-1]}", "args": [{"visible": [j == k for j in range(len(pages))]}]}
                 for k, rows in enumerate(pages)]
        fig.update_layout(sliders=[{"active": 0, "currentvalue": {"prefix": f"examples ({n} in all): "}, "steps": steps, "pad": {"t": 40}}])
    shown = len(pages[0]) if n else 1
    layout: dict[str, Any] = {"title": html.escape(title), "xaxis": _int_axis(p, "position"), "yaxis_autorange": "reversed",
                              "height": 160 + 40 * shown + (90 if len(pages) > 1 else 0)}
    if p > WIDE_POS:  # below this the page width gives every cell enough room
        layout["width"] = 220 + CELL_PX * p
    fig.update_layout(**layout)
    return fig


def layer_head_heatmap(scores: Tensor, *, title: str = "heads", zlabel: str = "score"):
    """Heatmap of ``scores [n_layers, n_heads]`` (diverging, centred at 0): integer layer and
    head ticks, the colour bar titled ``zlabel`` (say the unit), values in small grids' cells."""
    import plotly.graph_objects as go

    s = _np(scores)
    lim = float(abs(s[s == s]).max()) if (s == s).any() else 1.0
    lim = lim if lim > 0 else 1.0
    n_layers, n_heads = s.shape
    fig = go.Figure(
        go.Heatmap(
            z=s, x=list(range(n_heads)), y=list(range(n_layers)), colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
            colorbar=_colorbar(zlabel), texttemplate="%{z:.2g}" if s.size <= 144 else None,
            hovertemplate="L%{y}H%{x}<br>" + html.escape(zlabel) + " %{z:.4g}<extra></extra>",
        )
    )
    fig.update_layout(title=html.escape(title), xaxis=_int_axis(n_heads, "head"), yaxis=_int_axis(n_layers, "layer") | {"autorange": "reversed"},
                      height=min(900, max(300, 160 + 48 * n_layers)))
    return fig


def layer_pos_heatmap(scores: Tensor, str_tokens: Sequence[str] | None = None, *, title: str = "residual stream",
                      row_names: Sequence[str] | None = None, zlabel: str = "score"):
    """Heatmap of ``scores [rows, pos]`` such as residual-stream attribution per layer:
    integer position ticks (labelled with the tokens when given), integer row ticks unless
    ``row_names``, the colour bar titled ``zlabel`` (say the unit)."""
    import plotly.graph_objects as go

    s = _np(scores)
    lim = float(abs(s[s == s]).max()) if (s == s).any() else 1.0
    lim = lim if lim > 0 else 1.0
    n, p = s.shape
    names = [html.escape(str(r)) for r in row_names] if row_names is not None else None
    fig = go.Figure(go.Heatmap(z=s, x=list(range(p)), y=list(range(n)), colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
                               colorbar=_colorbar(zlabel), hovertemplate="row %{y}, pos %{x}<br>" + html.escape(zlabel) + " %{z:.4g}<extra></extra>"))
    xlab = [f"{t} [{i}]" for i, t in enumerate(escape_tokens(str_tokens))][:p] if str_tokens is not None else None
    if xlab is not None and len(xlab) < p:
        xlab += [str(i) for i in range(len(xlab), p)]
    layout: dict[str, Any] = {"title": html.escape(title), "xaxis": _int_axis(p, "position", xlab),
                              "yaxis": _int_axis(n, "", names) | {"autorange": "reversed"}, "height": min(900, 200 + 32 * n)}
    if p > 24 and xlab is not None:
        layout["width"] = 220 + 40 * p
    fig.update_layout(**layout)
    return fig


def curves(xs: Sequence[Any], ys: dict[str, Any], *, title: str = "", xlabel: str = "", ylabel: str = ""):
    """Line plot of several named curves sharing ``xs`` (e.g. deletion/insertion curves)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, y in ys.items():
        fig.add_trace(go.Scatter(x=list(_np(torch.as_tensor(xs))), y=list(_np(torch.as_tensor(y))), mode="lines+markers", name=html.escape(name)))
    fig.update_layout(title=html.escape(title), xaxis_title=xlabel, yaxis_title=ylabel)
    return fig


def attention_flow_graph(graph: Any, *, flow: Any = None, min_capacity: float = 0.05, title: str = "attention flow"):
    """Layered attention graph (from ``mechattr.attention_graph``): nodes ``(layer, pos)`` at
    ``x = pos``, ``y = layer``; edges with ``capacity ≥ min_capacity`` drawn with width and
    opacity ∝ capacity; input nodes coloured by ``flow [pos]`` when given."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for (u, v, d) in graph.edges(data=True):
        c = float(d.get("capacity", 0.0))
        if c < min_capacity:
            continue
        fig.add_trace(go.Scatter(x=[u[1], v[1]], y=[u[0], v[0]], mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"width": 0.5 + 4 * c, "color": f"rgba(31,119,180,{min(1.0, 0.15 + c):.3f})"}))
    nodes = list(graph.nodes(data=True))
    labels = [escape_tokens([d.get("token") or str(n[1])])[0] for n, d in nodes]
    color = None
    if flow is not None:
        f = _np(torch.as_tensor(flow)).reshape(-1)
        color = [float(f[n[1]]) if n[0] == 0 and n[1] < len(f) else 0.0 for n, _ in nodes]
    fig.add_trace(go.Scatter(
        x=[n[1] for n, _ in nodes], y=[n[0] for n, _ in nodes], mode="markers", showlegend=False,
        text=[f"L{n[0]} pos {n[1]}: {lab}" for (n, _), lab in zip(nodes, labels)], hoverinfo="text",
        marker={"size": 9, "color": color if color is not None else "#444", "colorscale": "Viridis", "showscale": color is not None},
    ))
    bottom = [lab for (n, _), lab in zip(nodes, labels) if n[0] == 0]
    fig.update_layout(title=html.escape(title), xaxis={"title": "position", "tickvals": list(range(len(bottom))), "ticktext": bottom},
                      yaxis={"title": "layer", "dtick": 1})
    return fig
