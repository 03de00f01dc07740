"""Typed component ids (``Head``, ``MLP``), parsing of ``"L3H5"`` / ``"MLP3"``, hook names.

Components are frozen, ordered dataclasses that know their own hook name and tensor index
(as auto-circuit's ``Edge.patch_idx``). Shorthand is resolved once at the entry point with
``transformer_lens.utils.get_act_name``; engines see full hook names only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


def get_act_name(name: str, layer: int | None = None) -> str:
    """TransformerLens's canonical hook name (``get_act_name``), TransformerLens imported on first use."""
    from mechattr.runtime import tl

    return tl.get_act_name(name, layer)


_HEAD_RE = re.compile(r"^\s*L?(\d+)\s*[H.:,]\s*(\d+)\s*$", re.IGNORECASE)
_MLP_RE = re.compile(r"^\s*MLP\s*(\d+)\s*$|^\s*L(\d+)\s*MLP\s*$|^\s*M(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Head:
    """Attention head ``head`` of layer ``layer``. Ablated/patched at ``blocks.L.attn.hook_z``."""

    layer: int
    head: int

    @property
    def hook_name(self) -> str:
        return get_act_name("z", self.layer)

    @property
    def index(self) -> tuple:
        """Index into the hook's ``[batch, pos, head, d_head]`` activation."""
        return (slice(None), slice(None), self.head)

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    def check(self, model: Any) -> Head:
        check_layer(model, self.layer)
        n = model.cfg.n_heads
        if not 0 <= self.head < n:
            raise ValueError(f"head {self.head} out of range for {self}: model has heads 0..{n - 1}")
        return self


@dataclass(frozen=True, order=True)
class MLP:
    """The MLP of layer ``layer``. Ablated/patched at ``blocks.L.hook_mlp_out``."""

    layer: int

    @property
    def hook_name(self) -> str:
        return get_act_name("mlp_out", self.layer)

    @property
    def index(self) -> tuple:
        return (slice(None),)

    def __str__(self) -> str:
        return f"MLP{self.layer}"

    def check(self, model: Any) -> MLP:
        check_layer(model, self.layer)
        if getattr(model.cfg, "attn_only", False):
            raise ValueError(f"{self}: the model is attention-only and has no MLPs")
        return self


Component = Head | MLP


def check_layer(model: Any, layer: int) -> int:
    """Raise ``ValueError`` unless ``0 <= layer < n_layers``."""
    n = model.cfg.n_layers
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
        raise ValueError(f"layer {layer!r} out of range: model has layers 0..{n - 1}")
    return layer


def parse_component(spec: Any, model: Any | None = None) -> Component:
    """Parse ``Head``/``MLP``, ``"L3H5"``, ``"3.5"``, ``(3, 5)``, ``"MLP3"`` into a component.

    With ``model`` given, the layer/head are range-checked against its config.
    """
    comp: Component
    if isinstance(spec, (Head, MLP)):
        comp = spec
    elif isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(x, int) for x in spec):
        comp = Head(int(spec[0]), int(spec[1]))
    elif isinstance(spec, str):
        m = _HEAD_RE.match(spec)
        if m:
            comp = Head(int(m.group(1)), int(m.group(2)))
        else:
            m = _MLP_RE.match(spec)
            if not m:
                raise ValueError(
                    f"cannot parse component {spec!r}; use 'L3H5' (or '3.5') for a head, "
                    f"'MLP3' for an MLP, a (layer, head) tuple, or Head/MLP objects"
                )
            comp = MLP(int(next(g for g in m.groups() if g is not None)))
    else:
        raise TypeError(f"cannot interpret {spec!r} ({type(spec).__name__}) as a component")
    if model is not None:
        comp.check(model)
    return comp


def parse_components(specs: Any, model: Any | None = None) -> list[Component]:
    """Parse a component or a list of them; raises on an empty list."""
    if isinstance(specs, (str, Head, MLP)) or (
        isinstance(specs, tuple) and len(specs) == 2 and all(isinstance(x, int) for x in specs)
    ):
        specs = [specs]
    out = [parse_component(s, model) for s in specs]
    if not out:
        raise ValueError("no components given: pass at least one Head/MLP")
    return out


def all_heads(model: Any) -> list[Head]:
    """Every head, in (layer, head) order."""
    return [Head(layer, h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def all_mlps(model: Any) -> list[MLP]:
    """Every MLP (empty for attention-only models)."""
    if getattr(model.cfg, "attn_only", False):
        return []
    return [MLP(layer) for layer in range(model.cfg.n_layers)]


def hook_name(name: str, layer: int | None = None, model: Any | None = None) -> str:
    """Canonical hook name via ``transformer_lens.utils.get_act_name`` (layer range-checked)."""
    if layer is not None and model is not None:
        check_layer(model, layer)
    if "." in name and layer is None:
        return name
    return get_act_name(name, layer)


# ----------------------------------------------------------------------------- graph ids
@dataclass(frozen=True, order=True)
class Input:
    """The input node: token + positional embeddings (``blocks.0.hook_resid_pre``)."""

    def __str__(self) -> str:
        return "input"


@dataclass(frozen=True, order=True)
class Logits:
    """The logits node: the final residual stream the unembedding reads."""

    def __str__(self) -> str:
        return "logits"


Node = Input | Head | MLP | Logits
INPUTS = ("q", "k", "v")


def node_order(node: Node, parallel: bool = False) -> tuple[int, int, int]:
    """Topological sort key: input, then per layer its heads, then its MLP, then logits.

    Under parallel attention/MLP (``parallel``) a layer's heads and MLP share a rank."""
    if isinstance(node, Input):
        return (-1, 0, 0)
    if isinstance(node, Logits):
        return (10**9, 0, 0)
    if isinstance(node, Head):
        return (node.layer, 0, node.head)
    return (node.layer, 0 if parallel else 1, 10**6)


def parse_node(spec: Any, model: Any | None = None) -> Node:
    """``"input"``, ``"logits"``, ``"L3H5"``, ``"MLP3"`` (or node objects) into a node."""
    if isinstance(spec, (Input, Logits, Head, MLP)):
        node = spec
    elif isinstance(spec, str) and spec.strip().lower() in ("input", "embed", "embeddings"):
        return Input()
    elif isinstance(spec, str) and spec.strip().lower() in ("logits", "output"):
        return Logits()
    else:
        try:
            node = parse_component(spec)
        except (ValueError, TypeError) as e:
            raise ValueError(f"unknown node {spec!r}: use 'input', 'logits', 'L3H5' or 'MLP3'") from e
    if model is not None and isinstance(node, (Head, MLP)):
        node.check(model)
    return node


@dataclass(frozen=True, order=True)
class Edge:
    """A circuit edge: ``sender``'s output as read by ``receiver``'s input ``input``.

    ``input`` is ``"q"``, ``"k"`` or ``"v"`` for a head receiver and ``None`` for an MLP or
    the logits. On grouped/multi-query models a ``"k"``/``"v"`` receiver ``Head(l, g)`` is
    key/value head ``g`` (TransformerLens's ``hook_k_input`` layout: ``g < n_kv_heads``),
    whose input every query head of its group reads. Prints as ``"L0H1->L1H2.k"``,
    ``"input->MLP0"``, ``"MLP1->logits"``.
    """

    sender: Node
    receiver: Node
    input: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sender, Logits):
            raise ValueError(f"the logits node cannot send: {self.sender} -> {self.receiver}")
        if isinstance(self.receiver, Input):
            raise ValueError(f"the input node cannot receive: {self.sender} -> {self.receiver}")
        if isinstance(self.receiver, Head):
            if self.input not in INPUTS:
                raise ValueError(f"edge into head {self.receiver} needs input 'q', 'k' or 'v', got {self.input!r}")
        elif self.input is not None:
            raise ValueError(f"edge into {self.receiver} takes no q/k/v input, got {self.input!r}")
        s, r = self.sender, self.receiver
        if isinstance(s, (Head, MLP)) and isinstance(r, (Head, MLP)):
            downstream = s.layer < r.layer or (s.layer == r.layer and isinstance(s, Head) and isinstance(r, MLP))
            if not downstream:
                raise ValueError(f"edge {self}: receiver {r} is not downstream of sender {s}")

    def __str__(self) -> str:
        return f"{self.sender}->{self.receiver}" + (f".{self.input}" if self.input else "")


def parse_edge(spec: Any, model: Any | None = None) -> Edge:
    """``Edge``, ``"L0H1->L1H2.k"``, ``"input->MLP0"`` or ``(sender, receiver[, input])``."""
    if isinstance(spec, Edge):
        e = spec
    elif isinstance(spec, str):
        if "->" not in spec:
            raise ValueError(f"cannot parse edge {spec!r}: use 'SENDER->RECEIVER[.q|.k|.v]', e.g. 'L0H1->L1H2.k'")
        left, right = (x.strip() for x in spec.split("->", 1))
        inp = None
        if "." in right and right.rsplit(".", 1)[1].lower() in INPUTS:
            right, inp = right.rsplit(".", 1)
            inp = inp.lower()
        e = Edge(parse_node(left), parse_node(right), inp)
    elif isinstance(spec, tuple) and len(spec) in (2, 3):
        e = Edge(parse_node(spec[0]), parse_node(spec[1]), spec[2] if len(spec) == 3 else None)
    else:
        raise TypeError(f"cannot interpret {spec!r} ({type(spec).__name__}) as an edge")
    if model is not None:
        check_edge(model, e)
    return e


def check_edge(model: Any, e: Edge) -> Edge:
    """Range-check ``e`` against ``model`` (kv-head index for ``k``/``v`` under GQA, no MLP
    in attention-only models, no same-layer head→MLP edge under parallel attention/MLP)."""
    from mechattr.runtime.split import layout

    a = layout(model)
    for n in (e.sender, e.receiver):
        if isinstance(n, MLP):
            n.check(model)
        elif isinstance(n, Head):
            check_layer(model, n.layer)
    if isinstance(e.sender, Head):
        e.sender.check(model)
    if isinstance(e.receiver, Head):
        n = a.n_heads if e.input == "q" else a.n_kv_heads
        if not 0 <= e.receiver.head < n:
            raise ValueError(f"edge {e}: receiver head {e.receiver.head} out of range for input {e.input!r} (0..{n - 1})")
    if a.parallel and isinstance(e.sender, Head) and isinstance(e.receiver, MLP) and e.sender.layer == e.receiver.layer:
        raise ValueError(f"edge {e}: attention and MLP of layer {e.sender.layer} run in parallel, so the MLP does not read the head")
    return e


def model_nodes(model: Any) -> list[Node]:
    """Every node of ``model``'s computational graph, in topological order."""
    nodes: list[Node] = [Input()]
    for layer in range(model.cfg.n_layers):
        nodes += [Head(layer, h) for h in range(model.cfg.n_heads)]
        nodes += [m for m in all_mlps(model) if m.layer == layer]
    return nodes + [Logits()]


def receivers(model: Any) -> list[tuple[Node, str | None]]:
    """Every receiver input ``(node, input)`` in topological order (heads' q, k, v per head
    (k/v per key/value head), then the layer's MLP; logits last)."""
    from mechattr.runtime.split import layout

    a = layout(model)
    out: list[tuple[Node, str | None]] = []
    for layer in range(a.n_layers):
        for w in INPUTS:
            out += [(Head(layer, h), w) for h in range(a.n_heads if w == "q" else a.n_kv_heads)]
        out += [(m, None) for m in all_mlps(model) if m.layer == layer]
    return out + [(Logits(), None)]


def model_edges(model: Any) -> list[Edge]:
    """Every edge of ``model``'s graph: each sender (input, head, MLP) to each downstream
    receiver input, ordered by receiver then sender (topologically)."""
    from mechattr.runtime.split import layout

    parallel = layout(model).parallel
    senders = [n for n in model_nodes(model) if not isinstance(n, Logits)]
    out = []
    for r, w in receivers(model):
        for s in senders:
            if upstream(s, r, parallel):
                out.append(Edge(s, r, w))
    return out


def upstream(s: Node, r: Node, parallel: bool = False) -> bool:
    """Whether sender ``s``'s output reaches receiver ``r``'s input directly."""
    if isinstance(s, Input) or isinstance(r, Logits):
        return True
    if isinstance(s, Logits) or isinstance(r, Input):
        return False
    if s.layer != r.layer:
        return s.layer < r.layer
    return isinstance(s, Head) and isinstance(r, MLP) and not parallel
