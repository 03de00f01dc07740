"""Per-edge hook points: each head's own q/k/v input, each head's own output, the MLP input.

An edge of the computational graph (Elhage et al. 2021's residual-stream view; the graphs of
ACDC, Conmy et al. 2023, and EAP, Syed et al. 2023) joins a *sender*'s output to one
*receiver input*. TransformerLens exposes both when three config flags are on, on a
HookedTransformer and on a TransformerBridge alike:

- ``use_split_qkv_input``: ``blocks.L.hook_{q,k,v}_input`` ``[batch, pos, head, d_model]``
  — the residual each head's query (and each key/value head's key/value) reads, one copy
  per head (under grouped-query attention ``k``/``v`` have ``n_kv_heads`` copies);
- ``use_attn_result``: ``blocks.L.attn.hook_result`` ``[batch, pos, head, d_model]`` — each
  head's ``z_h W_O^h`` (``b_O`` is shared, so it belongs to no head);
- ``use_hook_mlp_in``: ``blocks.L.hook_mlp_in`` ``[batch, pos, d_model]``.

:func:`split_io` turns them on for the duration of a ``with`` block and restores them
afterwards (also on exceptions); :class:`SplitIO` maps a node to its hook and index. The
input node's output is ``blocks.0.hook_resid_pre`` (token + positional embeddings), the
logits node's input ``blocks.{n_layers-1}.hook_resid_post`` (what the final norm reads).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mechattr.components import MLP, Head, Input, Logits, Node
from mechattr.runtime.arch import arch
from mechattr.runtime.memo import per_model
from mechattr.runtime.tl import set_config_flags


class SplitUnsupported(ValueError):
    """TransformerLens cannot give this model per-head inputs (edge-level work is impossible)."""


SPLIT_FLAGS = ("use_split_qkv_input", "use_attn_result", "use_hook_mlp_in")


def flags_for(model: Any) -> tuple[str, ...]:
    """The split flags ``model`` takes (no MLP-input hook in attention-only models)."""
    return tuple(f for f in SPLIT_FLAGS if not (f == "use_hook_mlp_in" and arch(model).attn_only))


@dataclass(frozen=True)
class SplitIO:
    """Hook names and indices of the graph's senders and receivers (module docstring).

    Indices index one example's activation (no batch axis, as
    :class:`mechattr.interventions.variants.Edit`), e.g. ``(slice(None), h)`` for head
    ``h`` of ``hook_result`` / ``hook_q_input`` (``[pos, head, d_model]``)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel: bool = False  # attention and MLP of a layer read the same residual
    attn_only: bool = False

    def sender(self, node: Node) -> tuple[str, tuple]:
        """``(hook, index)`` of ``node``'s output."""
        if isinstance(node, Input):
            return "blocks.0.hook_resid_pre", ()
        if isinstance(node, Head):
            return f"blocks.{node.layer}.attn.hook_result", (slice(None), node.head)
        if isinstance(node, MLP):
            return f"blocks.{node.layer}.hook_mlp_out", ()
        raise ValueError(f"{node} sends nothing: only input, heads and MLPs are senders")

    def slots(self, hook: str) -> int:
        """How many receivers a receiver hook holds: ``n_heads`` (``hook_q_input``),
        ``n_kv_heads`` (``hook_k/v_input``), else 1."""
        if hook.endswith("hook_q_input"):
            return self.n_heads
        return self.n_kv_heads if hook.endswith(("hook_k_input", "hook_v_input")) else 1

    def receiver(self, node: Node, which: str | None = None) -> tuple[str, tuple]:
        """``(hook, index)`` of ``node``'s input ``which`` (``q``/``k``/``v`` for heads)."""
        if isinstance(node, Head):
            return f"blocks.{node.layer}.hook_{which}_input", (slice(None), node.head)
        if isinstance(node, MLP):
            return f"blocks.{node.layer}.hook_mlp_in", ()
        if isinstance(node, Logits):
            return f"blocks.{self.n_layers - 1}.hook_resid_post", ()
        raise ValueError(f"{node} receives nothing: only heads, MLPs and the logits are receivers")


def layout(model: Any) -> SplitIO:
    """The graph's shape and hooks for ``model`` (no flags changed)."""
    a = arch(model)
    return SplitIO(a.n_layers, a.n_heads, a.n_kv_heads, a.parallel_attn_mlp, a.attn_only)


@contextlib.contextmanager
def split_io(model: Any, *, check: bool = True, heads: bool = True) -> Iterator[SplitIO]:
    """Turn on per-head inputs/outputs and the MLP-input hook for the ``with`` block
    (``heads=False``: only the MLP-input hook, for :mod:`mechattr.runtime.linear_io`).

    Raises ``ValueError`` for models where TransformerLens cannot split the inputs (e.g.
    bridges of gated attention), checked once per model with a two-token forward that must
    reproduce the unsplit logits."""
    if check:
        err = _split_error(model)
        if err:
            raise SplitUnsupported(err)
    flags = [f for f in flags_for(model) if heads or f == "use_hook_mlp_in"]
    old = set_config_flags(model, {f: True for f in flags})
    try:
        yield layout(model)
    finally:
        set_config_flags(model, old)


@per_model
def _split_error(model: Any) -> str:
    """Why split inputs do not work on ``model`` ("" when they do): TransformerLens refuses
    them, a sender/receiver hook does not exist or never fires, or the logits change."""
    toks = torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device)
    lay = layout(model)
    needed = [lay.sender(Input()), lay.receiver(Logits())]
    for layer in range(lay.n_layers):
        needed += [lay.sender(Head(layer, 0))] + [lay.receiver(Head(layer, 0), w) for w in "qkv"]
        if not lay.attn_only:
            needed += [lay.sender(MLP(layer)), lay.receiver(MLP(layer))]
    names = list(dict.fromkeys(n for n, _ in needed))
    out, fired = {}, set()

    def seen(name: str) -> Any:
        def hook(act: Any, hook: Any = None) -> Any:
            fired.add(name)
            return act

        return hook

    try:
        with torch.no_grad():
            for on in (True, False):
                old = set_config_flags(model, {f: on for f in flags_for(model)})
                try:
                    if on:
                        known = set(getattr(model, "hook_dict", {}) or {})
                        absent = [n for n in names if n not in known]
                        if absent:
                            return _why(model, f"it has no hook points {absent[:4]}")
                        out[on] = model.run_with_hooks(toks, fwd_hooks=[(n, seen(n)) for n in names])
                    else:
                        out[on] = model(toks)
                finally:
                    set_config_flags(model, old)
    except Exception as e:  # TransformerLens refuses split inputs on this architecture
        return _why(model, str(e))
    silent = [n for n in names if n not in fired]
    if silent:
        return _why(model, f"its hook points {silent[:4]} never fire with split inputs on")
    if not torch.allclose(out[True], out[False], atol=1e-4, rtol=1e-4):
        return (
            f"this {type(model).__name__} computes different logits with split q/k/v inputs "
            f"(max |Δ| {float((out[True] - out[False]).abs().max()):.2e}), so edge-level results would be wrong"
        )
    return ""


def _why(model: Any, reason: str) -> str:
    return (f"edge-level circuits need each head's own q/k/v input, output and MLP input (TransformerLens's "
            f"use_split_qkv_input / use_attn_result / use_hook_mlp_in), which this {type(model).__name__} does not "
            f"support: {reason}")
