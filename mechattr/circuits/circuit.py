"""The ``Circuit`` data type: a set of typed edges, their scores and the settings that chose them.

A circuit (Conmy et al. 2023, ACDC; Syed et al. 2023, EAP) is a subgraph of the model's
computational graph: nodes ``input``, heads ``L0H1``, MLPs ``MLP3`` and ``logits``, edges
``sender -> receiver[.q|.k|.v]`` (:class:`mechattr.components.Edge`). A ``Circuit`` is data:
``.to_networkx()``, ``.to_frame()``, ``.save()`` / :meth:`Circuit.load` (JSON, checked schema)
and ``.plot()`` (plotly), plus set algebra. Nothing here runs a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechattr.components import (
    INPUTS,
    MLP,
    Edge,
    Head,
    Input,
    Logits,
    Node,
    check_edge,
    node_order,
    parse_edge,
)
from mechattr.io import to_jsonable

SCHEMA = "mechattr.circuit"
SCHEMA_VERSION = 1
_KEYS = {"schema", "schema_version", "edges", "scores", "settings"}
_KIND = {Input: "input", Head: "head", MLP: "mlp", Logits: "logits"}


def edge_order(e: Edge) -> tuple:
    """Topological sort key of an edge: receiver, then its input (q, k, v), then sender."""
    return (node_order(e.receiver), INPUTS.index(e.input) if e.input else -1, node_order(e.sender))


def _score(edge: Any, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"score of edge {edge} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"score of edge {edge} must be finite, got {v}")
    return v


@dataclass(frozen=True, eq=True, repr=False)
class Circuit:
    """A set of edges with optional scores and provenance; equality and hashing use edges only.

    ``edges``: sorted topologically (:func:`edge_order`) and deduplicated. ``scores``:
    ``{edge: float}`` for some or all edges (empty when unscored). ``settings``: provenance
    (method, selection, n, threshold, tau, ablation, versions, ``n_layers`` …), JSON values.
    Build with :meth:`from_edges` (non-empty) or :meth:`empty`; direct construction normalises
    the same way and allows no edges (set operations can produce an empty circuit).
    """

    edges: tuple[Edge, ...]
    scores: dict[Edge, float] = field(default_factory=dict, compare=False)
    settings: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        members = {parse_edge(e) for e in self.edges}
        edges = tuple(sorted(members, key=edge_order))
        pairs = ((parse_edge(k), v) for k, v in dict(self.scores or {}).items())
        scores = {e: _score(e, v) for e, v in pairs if e in members}  # others are ignored
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "settings", dict(self.settings or {}))

    @classmethod
    def from_edges(cls, edges: Iterable[Any], scores: Mapping[Any, Any] | None = None,
                   settings: Mapping[str, Any] | None = None, model: Any | None = None) -> Circuit:
        """A circuit from ``Edge`` objects or strings (``"L0H1->L1H2.k"``).

        ``scores``: ``{edge or string: float}``; entries for other edges are ignored (a full
        edge-score mapping may be passed). With ``model``, each edge is range-checked
        (:func:`~mechattr.components.check_edge`) and ``settings["n_layers"]`` set if absent.
        Raises ``ValueError`` for no edges (use :meth:`empty`).
        """
        if isinstance(edges, (str, Edge)):
            edges = [edges]
        parsed = [parse_edge(e) for e in edges]
        if not parsed:
            raise ValueError("empty circuit: from_edges needs at least one edge (use Circuit.empty() for none)")
        settings = dict(settings or {})
        if model is not None:
            for e in parsed:
                check_edge(model, e)
            settings.setdefault("n_layers", int(model.cfg.n_layers))
        kept = {parse_edge(k): _score(k, v) for k, v in dict(scores or {}).items()}
        return cls(tuple(parsed), kept, settings)

    @classmethod
    def empty(cls, settings: Mapping[str, Any] | None = None) -> Circuit:
        """The circuit with no edges."""
        return cls((), {}, dict(settings or {}))

    @property
    def nodes(self) -> tuple[Node, ...]:
        """Nodes touched by an edge, in topological order (:func:`mechattr.components.node_order`)."""
        return tuple(sorted({n for e in self.edges for n in (e.sender, e.receiver)}, key=node_order))

    def __len__(self) -> int:
        return len(self.edges)

    def __iter__(self) -> Iterator[Edge]:
        return iter(self.edges)

    def __contains__(self, item: Any) -> bool:
        return isinstance(item, (str, tuple, Edge)) and parse_edge(item) in self.edges

    def __str__(self) -> str:
        if not self.edges:
            return "Circuit(empty)"
        names = [str(n) for n in self.nodes]
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        ne, nn = len(self.edges), len(names)
        return f"Circuit({ne} edge{'s' * (ne != 1)}, {nn} node{'s' * (nn != 1)}: {shown})"

    __repr__ = __str__

    def _combine(self, other: Any, op: str) -> Circuit:
        o = ensure_circuit(other, allow_empty=True)
        a, b = set(self.edges), set(o.edges)
        edges = a | b if op == "union" else a & b if op == "intersection" else a - b
        settings = {"operation": op, "left": self.settings, "right": o.settings}
        return Circuit(tuple(edges), {**o.scores, **self.scores}, settings)

    def union(self, other: Any) -> Circuit:
        """Edges in either circuit (scores from ``self`` win where both have one)."""
        return self._combine(other, "union")

    def intersection(self, other: Any) -> Circuit:
        """Edges in both circuits (may be empty)."""
        return self._combine(other, "intersection")

    def difference(self, other: Any) -> Circuit:
        """Edges of ``self`` not in ``other`` (may be empty)."""
        return self._combine(other, "difference")

    __or__, __and__, __sub__ = union, intersection, difference

    def _n_layers(self) -> int | None:
        n = self.settings.get("n_layers")
        return n if isinstance(n, int) and not isinstance(n, bool) else None

    def to_networkx(self) -> Any:
        """A ``networkx.MultiDiGraph`` of the circuit.

        Nodes are named ``str(node)`` (``"input"``, ``"L0H1"``, ``"MLP3"``, ``"logits"``) with
        attributes ``kind`` (``"input"|"head"|"mlp"|"logits"``) and ``layer`` (-1 for the input,
        ``settings["n_layers"]`` or ``None`` for the logits). A multigraph because a head reads a
        sender through up to three inputs: edge key ``"q"|"k"|"v"`` (``""`` into MLPs/logits),
        attributes ``input`` (``Edge.input``), ``name`` (``"L0H1->L1H2.k"``), ``score`` (NaN
        when unscored). ``g.graph["settings"]`` holds the settings.
        """
        import networkx as nx

        g = nx.MultiDiGraph(settings=dict(self.settings))
        for n in self.nodes:
            layer = -1 if isinstance(n, Input) else self._n_layers() if isinstance(n, Logits) else n.layer
            g.add_node(str(n), kind=_KIND[type(n)], layer=layer)
        for e in self.edges:
            g.add_edge(str(e.sender), str(e.receiver), key=e.input or "", input=e.input, name=str(e),
                       score=self.scores.get(e, math.nan))
        return g

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per edge: ``edge, sender, receiver, input, score``.

        ``score`` is NaN for unscored edges. Rows are by ``|score|`` descending when any edge
        is scored (unscored rows last), topological otherwise (ties keep topological order).
        """
        import pandas as pd

        df = pd.DataFrame({
            "edge": [str(e) for e in self.edges], "sender": [str(e.sender) for e in self.edges],
            "receiver": [str(e.receiver) for e in self.edges], "input": [e.input for e in self.edges],
            "score": [self.scores.get(e, math.nan) for e in self.edges],
        })
        if self.scores:
            df = df.sort_values("score", key=abs, ascending=False, kind="mergesort", na_position="last")
        return df.reset_index(drop=True)

    def save(self, path: str | Path) -> Path:
        """Write the circuit as JSON (``{"schema", "schema_version", "edges", "scores", "settings"}``)."""
        path = Path(path)
        if path.suffix != ".json":
            raise ValueError(f"circuits are saved as JSON: path must end in '.json', got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "edges": [str(e) for e in self.edges],
                   "scores": {str(e): s for e, s in self.scores.items()}, "settings": to_jsonable(self.settings)}
        path.write_text(json.dumps(payload, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        """Read back what :meth:`save` wrote. Anything else (wrong schema or version, bad edge
        string, score for an edge not in it, non-JSON) is a ``ValueError``; nothing is executed."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a circuit file (not valid JSON: {e})") from None
        if not isinstance(payload, dict) or payload.get("schema") != SCHEMA:
            got = payload.get("schema") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"{path}: schema must be {SCHEMA!r}, got {got!r}")
        if payload.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path}: unsupported schema_version {payload.get('schema_version')!r} (this mechattr reads {SCHEMA_VERSION})")
        if set(payload) != _KEYS:
            raise ValueError(f"{path}: keys must be {sorted(_KEYS)}, got {sorted(payload)}")
        edges, scores, settings = payload["edges"], payload["scores"], payload["settings"]
        if not (isinstance(edges, list) and all(isinstance(e, str) for e in edges)
                and isinstance(scores, dict) and isinstance(settings, dict)):
            raise ValueError(f"{path}: 'edges' must be a list of edge strings, 'scores' and 'settings' JSON objects")
        try:
            parsed = [parse_edge(e) for e in edges]
            score_map = {parse_edge(k): v for k, v in scores.items() if v is not None}
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: bad edge in circuit file: {e}") from None
        if extra := [str(e) for e in score_map if e not in set(parsed)]:
            raise ValueError(f"{path}: scores for edges not in the circuit: {extra[:5]}")
        return cls(tuple(parsed), {e: _score(e, v) for e, v in score_map.items()}, settings)

    def plot(self, title: str | None = None) -> Any:
        """A plotly circuit diagram: one row per layer, input at the bottom, logits at the top.

        Heads of layer ``l`` sit on row ``l + 1`` at x = head index, its MLP slightly above
        (row ``l + 1.4``). Edges are lines (one trace each, named by the edge; q/k/v land at
        slightly different x), width and opacity by ``|score|`` (uniform when unscored), blue if
        positive, red if negative, hover ``"L0H1->L1H2.k: 0.123"``; nodes: one trace ``"nodes"``.
        """
        import plotly.graph_objects as go

        nodes = self.nodes
        layers = [n.layer for n in nodes if isinstance(n, (Head, MLP))]
        top = max([self._n_layers() or 0] + [x + 1 for x in layers])
        width = max([n.head + 1 for n in nodes if isinstance(n, Head)] + [1])
        mid = (width - 1) / 2

        def pos(n: Node) -> tuple[float, float]:
            if isinstance(n, (Input, Logits)):
                return mid, 0.0 if isinstance(n, Input) else float(top + 1)
            return (float(n.head), n.layer + 1.0) if isinstance(n, Head) else (mid, n.layer + 1.4)

        smax = max((abs(s) for s in self.scores.values()), default=0.0)
        fig = go.Figure()
        for e in self.edges:
            (x0, y0), (x1, y1) = pos(e.sender), pos(e.receiver)
            x1 += {"q": -0.15, "k": 0.0, "v": 0.15}.get(e.input or "", 0.0)
            s = self.scores.get(e)
            if s is None:
                w, op, col, text = 2.0, 0.6, "#888888", str(e)
            else:
                r = abs(s) / smax if smax > 0 else 1.0
                w, op, col, text = 1.0 + 5.0 * r, 0.25 + 0.75 * r, "#2166ac" if s >= 0 else "#b2182b", f"{e}: {s:.4g}"
            fig.add_trace(go.Scatter(x=[x0, (x0 + x1) / 2, x1], y=[y0, (y0 + y1) / 2, y1], mode="lines",
                                     line={"width": w, "color": col}, opacity=op, hovertext=[text] * 3,
                                     hoverinfo="text", showlegend=False, name=str(e)))
        xy = [pos(n) for n in nodes]
        fig.add_trace(go.Scatter(
            x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers+text", name="nodes", showlegend=False,
            text=[str(n) for n in nodes], textposition="top center", hovertext=[str(n) for n in nodes], hoverinfo="text",
            marker={"size": 14, "color": [{"input": "#555555", "head": "#ff7f0e", "mlp": "#2ca02c", "logits": "#9467bd"}[_KIND[type(n)]] for n in nodes]},
        ))
        fig.update_layout(
            title=title if title is not None else str(self), plot_bgcolor="white", height=200 + 90 * (top + 1),
            xaxis={"visible": False, "range": [-1, width]},
            yaxis={"tickvals": list(range(top + 2)), "ticktext": ["input"] + [f"layer {i}" for i in range(top)] + ["logits"],
                   "showgrid": False, "zeroline": False, "range": [-0.5, top + 1.6]},
        )
        return fig


def ensure_circuit(x: Any, model: Any | None = None, *, allow_empty: bool = False) -> Circuit:
    """``x`` as a :class:`Circuit`: a Circuit (edges range-checked against ``model`` if given)
    or an edge / iterable of ``Edge`` objects and strings. Raises ``ValueError`` when it has
    no edges, unless ``allow_empty``."""
    if isinstance(x, Circuit):
        if not x.edges and not allow_empty:
            raise ValueError("empty circuit: it has no edges")
        for e in x.edges if model is not None else ():
            check_edge(model, e)
        return x
    if isinstance(x, (str, Edge)):
        x = [x]
    if not isinstance(x, Iterable):
        raise TypeError(f"expected a Circuit or an iterable of edges, got {x!r} ({type(x).__name__})")
    edges = list(x)
    return Circuit.empty() if not edges and allow_empty else Circuit.from_edges(edges, model=model)
