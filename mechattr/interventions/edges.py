"""Edge patching: a receiver's input sees one sender's reference output, every other sender's
own — batched over edges (and over whole circuits) along the batch dimension.

A model's computational graph (:func:`mechattr.components.model_edges`) has senders (the
input embeddings, each head's output ``z_h W_O^h``, each MLP's output) and receiver inputs
(each head's q/k/v input, each MLP's input, the final residual). Every receiver's input is
the sum of its upstream senders' outputs (plus biases), so patching edge ``s → r`` is
adding ``ref_s − a_s`` to receiver ``r``'s input alone (:mod:`mechattr.runtime.split`
supplies each head's own input), where ``ref_s`` is ``s``'s output in the corrupted run
(``"patch"``), its batch mean at each position (``"mean"``) or 0 (``"zero"``).

- :func:`edge_effects` — every edge alone (``exact``): one variant per edge on the variant
  engine, an ``ADD`` edit of ``ref_s − a_s^clean`` at ``r``'s input (``a_s`` is clean
  because nothing upstream of the edge changed).
- :func:`run_circuits` — many edges at once (circuits, ACDC; EAP-IG's ``evaluate_graph``,
  Conmy et al. 2023's ACDC): each variant row block ablates its own edge set, with
  ``a_s`` the sender's output *in that forward* (it may itself be downstream of an
  ablated edge), added at each receiver hook through the intervention core.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechattr.components import Edge, Head, Logits, Node, model_nodes
from mechattr.interventions.variants import (
    Edit,
    Mode,
    Variant,
    cache_activations,
    intervene,
    run_variants,
)
from mechattr.runtime.chunks import max_rows, row_chunks
from mechattr.runtime.hooks import hooked
from mechattr.runtime.split import SplitIO
from mechattr.targets import check_finite, run_target

ABLATIONS = ("patch", "mean", "zero")


@dataclass(frozen=True)
class Graph:
    """The edge list of one model with the hooks of its senders and receivers."""

    edges: tuple[Edge, ...]
    senders: tuple[Node, ...]
    io: SplitIO

    @classmethod
    def of(cls, model: Any, io: SplitIO, edges: Sequence[Edge]) -> Graph:
        senders = tuple(n for n in model_nodes(model) if not isinstance(n, Logits))
        return cls(tuple(edges), senders, io)

    @functools.cached_property
    def sender_index(self) -> dict[Node, int]:
        """Position of each sender in :attr:`senders` (the sender axis of outputs)."""
        return {s: i for i, s in enumerate(self.senders)}

    def sender_hooks(self) -> list[str]:
        return list(dict.fromkeys(self.io.sender(s)[0] for s in self.senders))


def sender_outputs(model: Any, tokens: Tensor, graph: Graph, attention_mask: Tensor | None = None, linear: Any = None) -> Float[Tensor, "batch pos sender d_model"]:
    """Every sender's output in one forward of ``tokens`` (split hooks on), stacked. With
    ``linear`` (:class:`mechattr.runtime.linear_io.LinearIO`) heads' outputs are computed
    from ``hook_z`` instead (no split forward)."""
    acts = cache_activations(model, tokens, output_hooks(graph, linear), attention_mask=attention_mask)
    return stack_outputs(acts, graph, linear)


def output_hooks(graph: Graph, linear: Any = None) -> list[str]:
    """The hooks :func:`stack_outputs` reads."""
    if linear is None:
        return graph.sender_hooks()
    names = [f"blocks.{n.layer}.attn.hook_z" if isinstance(n, Head) else graph.io.sender(n)[0] for n in graph.senders]
    return list(dict.fromkeys(names))


def stack_outputs(acts: dict[str, Tensor], graph: Graph, linear: Any = None) -> Tensor:
    """``[batch, pos, sender, d_model]`` sender outputs from the activations at :func:`output_hooks`."""
    acts = dict(acts)
    if linear is not None:
        for layer in range(graph.io.n_layers):
            z = acts.pop(f"blocks.{layer}.attn.hook_z", None)
            if z is not None:
                acts[f"blocks.{layer}.attn.hook_result"] = linear.head_outputs(layer, z)
    outs = []
    for s in graph.senders:
        hook, idx = graph.io.sender(s)
        outs.append(acts[hook][(slice(None), *idx)])
    return torch.stack(outs, 2).float()


def reference_outputs(clean_out: Tensor, ablation: str, corrupted_out: Tensor | None) -> Tensor:
    """``ref`` of every sender: corrupted outputs, the clean batch mean per position, or 0."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; allowed: {list(ABLATIONS)}")
    if ablation == "patch":
        if corrupted_out is None:
            raise ValueError("ablation='patch' needs a corrupted input")
        return corrupted_out
    if ablation == "mean":
        return clean_out.mean(0, keepdim=True)
    return torch.zeros_like(clean_out[:1])


def _delta_values(graph: Graph, e: Edge, delta: Tensor) -> Edit:
    """The ``ADD`` edit of sender ``e.sender``'s difference at ``e``'s receiver input."""
    hook, idx = graph.io.receiver(e.receiver, e.input)
    d = delta[:, :, graph.sender_index[e.sender]]
    if idx:  # a per-head input [pos, head, d_model]
        d = d[:, :, None, :].expand(d.shape[0], d.shape[1], graph.io.slots(hook), d.shape[-1])
    return Edit(hook, idx, Mode.ADD, d)


def edge_effects(
    model: Any,
    tokens: Tensor,
    graph: Graph,
    delta: Float[Tensor, "b pos sender d_model"],
    target: Callable,
    *,
    attention_mask: Tensor | None = None,
    batch_size: int | None = None,
) -> tuple[Float[Tensor, "edges batch"], Float[Tensor, " batch"]]:
    """Target of every edge of ``graph`` patched alone, and of the clean run.

    ``delta = ref − clean`` sender outputs (``[B or 1, pos, sender, d_model]``)."""
    variants = [Variant()] + [Variant((_delta_values(graph, e, delta),), str(e)) for e in graph.edges]
    out = run_variants(model, tokens, variants, target, attention_mask=attention_mask, batch_size=batch_size)
    return out[1:], out[0]


# ----------------------------------------------------------------------------- circuits
def _receiver_plan(graph: Graph) -> dict[str, tuple[list[int], Tensor]]:
    """Per receiver hook: the upstream sender indices and ``edge_id[sender, receiver slot]``
    (−1 where the graph has no such edge)."""
    io = graph.io
    slots: dict[str, dict[tuple, int]] = {}
    for i, e in enumerate(graph.edges):
        hook, idx = io.receiver(e.receiver, e.input)
        slots.setdefault(hook, {})[(graph.sender_index[e.sender], idx[1] if idx else 0)] = i
    plan = {}
    for hook, m in slots.items():
        send = sorted({s for s, _ in m})
        row = {s: j for j, s in enumerate(send)}
        # every head of the hook has a slot, also those no edge of this graph reaches
        ids = torch.full((len(send), io.slots(hook)), -1, dtype=torch.long)
        for (s, r), i in m.items():
            ids[row[s], r] = i
        plan[hook] = (send, ids)
    return plan


def run_circuits(
    model: Any,
    tokens: Tensor,
    graph: Graph,
    ref: Float[Tensor, "b pos sender d_model"],
    ablated: Bool[Tensor, "variants edges"],
    target: Callable,
    *,
    attention_mask: Tensor | None = None,
    batch_size: int | None = None,
) -> Float[Tensor, "variants batch"]:
    """Target under each row of ``ablated`` (``True``: that edge of ``graph`` is ablated).

    In variant ``v`` every receiver input gets ``Σ_{s: (s→r) ablated in v} (ref_s − a_s)``
    with ``a_s`` the sender's output in that same forward (module docstring). Variants are
    stacked variant-major along the batch and chunked by ``batch_size`` rows (and by the
    memory of the stacked sender differences)."""
    B, n_pos = tokens.shape
    ablated = ablated.to(torch.bool)
    if ablated.ndim != 2 or ablated.shape[1] != len(graph.edges):
        raise ValueError(f"ablated must be [variants, {len(graph.edges)}] booleans, got shape {tuple(ablated.shape)}")
    plan = _receiver_plan(graph)
    d_model = ref.shape[-1]
    per_row = n_pos * len(graph.senders) * d_model * 4
    mem_rows = max(1, (512 << 20) // per_row)
    per = max(1, min(max_rows(model, n_pos, batch_size, tokens.device), mem_rows) // B)
    out = []
    with torch.no_grad():
        for sl in row_chunks(ablated.shape[0], per):
            out.append(_circuit_chunk(model, tokens, graph, ref, ablated[sl].to(tokens.device), plan, target, attention_mask))
    return check_finite(torch.cat(out), "target of a circuit")


def _circuit_chunk(model: Any, tokens: Tensor, graph: Graph, ref: Tensor, ablated: Tensor, plan: dict, target: Callable, attention_mask: Tensor | None) -> Tensor:
    V, B = ablated.shape[0], tokens.shape[0]
    diffs: dict[int, Tensor] = {}
    io = graph.io
    by_hook: dict[str, list[tuple[int, tuple]]] = {}
    for i, s in enumerate(graph.senders):
        hook, idx = io.sender(s)
        by_hook.setdefault(hook, []).append((i, idx))
    ref = ref.to(tokens.device)

    def sender_hook(pairs: list[tuple[int, tuple]]) -> Callable:
        def hook(act: Tensor, hook: Any = None) -> Tensor:
            a = act.reshape(V, B, *act.shape[1:])
            for i, idx in pairs:
                diffs[i] = ref[:, :, i].to(act.dtype) - a[(slice(None), slice(None), *idx)]
            return act

        return hook

    def receiver_hook(name: str, send: list[int], ids: Tensor) -> Callable:
        ids_d = ids.to(tokens.device)
        on = torch.where(ids_d[None] >= 0, ablated[:, ids_d.clamp(min=0)], False).to(ref.dtype)  # [V, S, R]
        active = [j for j, s in enumerate(send) if bool(on[:, j].any())]

        def hook(act: Tensor, hook: Any = None) -> Tensor:
            if not active:
                return act
            d = torch.stack([diffs[send[j]] for j in active], 3)  # [V, B, pos, S, d]
            m = on[:, active]
            if act.ndim == 4:  # per-head input [rows, pos, head, d]
                upd = torch.einsum("vbpsd,vsr->vbprd", d, m)
            else:
                upd = torch.einsum("vbpsd,vs->vbpd", d, m[:, :, 0])
            act = act.clone()  # a bridge may hand the hook the residual itself
            intervene(act, slice(None), Edit(name, (), Mode.ADD, upd.reshape(act.shape).to(act.dtype)))
            return act

        return hook

    hooks = [(h, sender_hook(p)) for h, p in by_hook.items()] + [(h, receiver_hook(h, *plan[h])) for h in plan]
    # the input's output is read before any receiver; a sender hook at a receiver's hook
    # (none today) would need ordering
    with hooked(model, hooks):
        vals = run_target(model, tokens.repeat(V, 1), target, attention_mask=attention_mask, n_examples=B)
    return vals.reshape(V, B).float()


__all__ = ["ABLATIONS", "Graph", "edge_effects", "reference_outputs", "run_circuits", "sender_outputs"]
