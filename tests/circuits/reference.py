"""Slow, independent edge-patching reference: one forward per edge, hand-written hooks.

Edge semantics (EAP, Syed et al. 2023; ACDC, Conmy et al. 2023): a receiver's input is the
residual stream it reads, the sum of its senders' outputs (``input`` =
``blocks.0.hook_resid_pre``, embeddings + positions; a head's output = its per-head
``attn.hook_result``; an MLP's = ``hook_mlp_out``). Patching edge ``s -> r`` adds
``ref_s - clean_s`` to receiver ``r``'s input only (a head's ``blocks.l.hook_{q,k,v}_input
[:, :, h]``, an MLP's ``blocks.l.hook_mlp_in``, the logits' ``blocks.{L-1}.hook_resid_post``),
every other receiver keeps its input and everything downstream recomputes. ``ref_s`` is
the sender's output on the corrupted batch (``"patch"``), zero (``"zero"``) or its clean
batch mean per position (``"mean"``). Effect = batch-mean target(patched) − target(clean).

Written against TransformerLens hooks only (no mechattr engine), so it can check one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from mechattr.components import MLP, Edge, Head, Input, Logits, parse_edge

FLAGS = ("use_split_qkv_input", "use_attn_result", "use_hook_mlp_in")
ABLATIONS = ("patch", "zero", "mean")


def _set_flag(model: Any, flag: str, value: bool) -> None:
    setter = getattr(model, f"set_{flag}", None)
    if callable(setter):
        setter(value)
    else:
        setattr(model.cfg, flag, value)


@contextlib.contextmanager
def edge_flags(model: Any) -> Iterator[None]:
    """The three TransformerLens flags that expose edge hooks, on; restored in ``finally``."""
    flags = [f for f in FLAGS if not (f == "use_hook_mlp_in" and model.cfg.attn_only)]  # TL refuses it there
    old = {f: getattr(model.cfg, f) for f in flags}
    try:
        for f in flags:
            _set_flag(model, f, True)
        yield
    finally:
        for f, v in old.items():
            if getattr(model.cfg, f) != v:
                _set_flag(model, f, v)


def sender_hook(node: Any) -> tuple[str, tuple]:
    """Hook name and index of a sender's output ``[batch, pos, d_model]``."""
    if isinstance(node, Input):
        return "blocks.0.hook_resid_pre", (slice(None),)
    if isinstance(node, Head):
        return f"blocks.{node.layer}.attn.hook_result", (slice(None), slice(None), node.head)
    if isinstance(node, MLP):
        return f"blocks.{node.layer}.hook_mlp_out", (slice(None),)
    raise ValueError(f"{node} sends nothing")


def receiver_hook(model: Any, node: Any, inp: str | None) -> tuple[str, tuple]:
    """Hook name and index of a receiver's input ``[batch, pos, d_model]``."""
    if isinstance(node, Head):
        return f"blocks.{node.layer}.hook_{inp}_input", (slice(None), slice(None), node.head)
    if isinstance(node, MLP):
        return f"blocks.{node.layer}.hook_mlp_in", (slice(None),)
    if isinstance(node, Logits):
        return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", (slice(None),)
    raise ValueError(f"{node} receives nothing")


def _check_ablation(ablation: str, corrupted: torch.Tensor | None) -> None:
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation {ablation!r} unknown; allowed: {list(ABLATIONS)}")
    if ablation == "patch" and corrupted is None:
        raise ValueError("ablation 'patch' needs corrupted tokens")


def _caches(model: Any, clean: torch.Tensor, corrupted: torch.Tensor | None, names: list[str]) -> tuple[dict, dict | None]:
    keep = set(names)
    _, c = model.run_with_cache(clean, names_filter=lambda n: n in keep)
    clean_c = {n: c[n].detach().clone() for n in names}
    if corrupted is None:
        return clean_c, None
    _, r = model.run_with_cache(corrupted, names_filter=lambda n: n in keep)
    return clean_c, {n: r[n].detach().clone() for n in names}


def _reference(ablation: str, clean_out: torch.Tensor, corr_out: torch.Tensor | None) -> torch.Tensor:
    if ablation == "patch":
        return corr_out
    if ablation == "zero":
        return torch.zeros_like(clean_out)
    return clean_out.mean(0, keepdim=True).expand_as(clean_out)


def _delta(ablation: str, clean_c: dict, corr_c: dict | None, name: str, idx: tuple) -> torch.Tensor:
    """``ref_s − clean_s`` of the sender at ``name[idx]``."""
    c = clean_c[name][idx]
    return _reference(ablation, c, None if corr_c is None else corr_c[name][idx]) - c


@torch.no_grad()
def slow_edge_effects(
    model: Any, clean: torch.Tensor, corrupted: torch.Tensor | None, target: Callable, edges: Iterable[Any], ablation: str = "patch",
) -> torch.Tensor:
    """Single-edge effects ``[len(edges)]``: batch-mean target with only that edge patched,
    minus batch-mean clean target (one forward per edge)."""
    _check_ablation(ablation, corrupted)
    edges = [parse_edge(e, model) for e in edges]
    with edge_flags(model):
        senders = sorted({sender_hook(e.sender)[0] for e in edges})
        clean_c, corr_c = _caches(model, clean, corrupted if ablation == "patch" else None, senders)
        base = target(model(clean)).float().mean()
        out = []
        for e in edges:
            s_name, s_idx = sender_hook(e.sender)
            r_name, r_idx = receiver_hook(model, e.receiver, e.input)
            delta = _delta(ablation, clean_c, corr_c, s_name, s_idx)

            def hook(x, hook, r_idx=r_idx, delta=delta):
                x = x.clone()
                x[r_idx] = x[r_idx] + delta
                return x

            logits = model.run_with_hooks(clean, fwd_hooks=[(r_name, hook)])
            out.append(target(logits).float().mean() - base)
    return torch.stack(out).cpu() if out else torch.zeros(0)


def slow_edge_effect(model: Any, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor | None, target: Callable, edge: Any, ablation: str = "patch") -> float:
    """The effect of patching ``edge`` alone (see :func:`slow_edge_effects`)."""
    return float(slow_edge_effects(model, clean_tokens, corrupted_tokens, target, [edge], ablation)[0])


def slow_eap_scores(
    model: Any, clean: torch.Tensor, corrupted: torch.Tensor | None, target: Callable, edges: Iterable[Any], ablation: str = "patch",
) -> torch.Tensor:
    """EAP scores ``[len(edges)]`` (Syed et al. 2023): ``Σ_{batch,pos,d} (ref_s − clean_s) ·
    ∂(batch-mean target)/∂(input of r)`` at the clean run, the gradient taken through every
    downstream path (a zero tensor added at each receiver input, differentiated)."""
    _check_ablation(ablation, corrupted)
    edges = [parse_edge(e, model) for e in edges]
    with edge_flags(model):
        senders = sorted({sender_hook(e.sender)[0] for e in edges})
        clean_c, corr_c = _caches(model, clean, corrupted if ablation == "patch" else None, senders)
        names = sorted({receiver_hook(model, e.receiver, e.input)[0] for e in edges})
        zs: dict[str, torch.Tensor] = {}

        def add_zero(name: str) -> Callable:  # keyed by our name: a bridge's hook.name may be an alias target
            def hook(x, hook):
                zs[name] = torch.zeros_like(x, requires_grad=True)
                return x + zs[name]
            return hook

        with torch.enable_grad():
            value = target(model.run_with_hooks(clean, fwd_hooks=[(n, add_zero(n)) for n in names])).float().mean()
            grads = dict(zip(names, torch.autograd.grad(value, [zs[n] for n in names])))
        out = []
        for e in edges:
            s_name, s_idx = sender_hook(e.sender)
            r_name, r_idx = receiver_hook(model, e.receiver, e.input)
            delta = _delta(ablation, clean_c, corr_c, s_name, s_idx)
            out.append((delta * grads[r_name][r_idx]).sum())
    return torch.stack(out).detach().cpu() if out else torch.zeros(0)


@torch.no_grad()
def slow_circuit_target(
    model: Any, clean: torch.Tensor, corrupted: torch.Tensor | None, target: Callable, removed: Iterable[Any], ablation: str = "patch",
) -> float:
    """Batch-mean target with every edge in ``removed`` patched at once (the ACDC forward).

    Each receiver's input gets ``Σ_{s: s->r removed} (ref_s − out_s)``, where ``out_s`` is
    the sender's output in this same forward (it may itself be changed by removed edges
    upstream) and ``ref_s`` is as in :func:`slow_edge_effects` (computed from the
    corrupted / clean runs)."""
    _check_ablation(ablation, corrupted)
    removed = [parse_edge(e, model) for e in removed]
    with edge_flags(model):
        senders = sorted({sender_hook(e.sender)[0] for e in removed})
        clean_c, corr_c = _caches(model, clean, corrupted if ablation == "patch" else None, senders)
        return _circuit_forward(model, clean, target, removed, ablation, clean_c, corr_c)


def _circuit_forward(model: Any, clean: torch.Tensor, target: Callable, removed: list[Edge], ablation: str, clean_c: dict, corr_c: dict | None) -> float:
    senders = sorted({sender_hook(e.sender)[0] for e in removed})
    live: dict[str, torch.Tensor] = {}

    def save(name: str) -> Callable:  # keyed by our name: a bridge's hook.name may be an alias target
        def hook(x, hook):
            live[name] = x.detach().clone()
            return x
        return hook

    by_name: dict[str, list[tuple[tuple, Edge]]] = {}
    for e in removed:
        r_name, r_idx = receiver_hook(model, e.receiver, e.input)
        by_name.setdefault(r_name, []).append((r_idx, e))

    def patch(name: str) -> Callable:
        def hook(x, hook):
            x = x.clone()
            for r_idx, e in by_name[name]:
                s_name, s_idx = sender_hook(e.sender)
                ref = _reference(ablation, clean_c[s_name][s_idx], None if corr_c is None else corr_c[s_name][s_idx])
                x[r_idx] = x[r_idx] + ref - live[s_name][s_idx]
            return x
        return hook

    hooks = [(n, save(n)) for n in senders] + [(n, patch(n)) for n in by_name]
    return float(target(model.run_with_hooks(clean, fwd_hooks=hooks)).float().mean())


@torch.no_grad()
def slow_acdc(
    model: Any, clean: torch.Tensor, corrupted: torch.Tensor | None, target: Callable, edges: Iterable[Any], tau: float, ablation: str = "patch",
) -> list[Edge]:
    """ACDC (Conmy et al. 2023) with a target metric: visit receivers in reverse topological
    order (logits first; a layer's MLP before its heads, heads last-first, each head's v, k,
    q), each receiver's senders latest first; remove an edge when
    ``|target(circuit without it) − target(current circuit)| < tau`` (one multi-edge
    forward per edge, :func:`slow_circuit_target`). Returns the kept edges in input order."""
    from mechattr.components import node_order

    _check_ablation(ablation, corrupted)
    edges = [parse_edge(e, model) for e in edges]
    rank = {"q": 0, "k": 1, "v": 2, None: 3}
    order = sorted(edges, key=lambda e: (node_order(e.receiver), rank[e.input], node_order(e.sender)), reverse=True)
    removed: list[Edge] = []
    with edge_flags(model):
        senders = sorted({sender_hook(e.sender)[0] for e in edges})
        clean_c, corr_c = _caches(model, clean, corrupted if ablation == "patch" else None, senders)
        current = _circuit_forward(model, clean, target, removed, ablation, clean_c, corr_c)
        for e in order:
            trial = _circuit_forward(model, clean, target, removed + [e], ablation, clean_c, corr_c)
            if abs(trial - current) < tau:
                removed.append(e)
                current = trial
    return [e for e in edges if e not in removed]
