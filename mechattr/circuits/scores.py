"""Edge attribution: a score for every edge of a model's graph (EAP, EAP-IG, exact).

Every score estimates the same quantity, the *edge effect*: the change of the batch-mean
target when only edge ``s → r`` is patched (receiver ``r``'s input sees sender ``s``'s
reference output ``ref_s``, :mod:`mechattr.interventions.edges`). With ``Δ_s = ref_s −
a_s^clean`` (summed over batch, positions and ``d_model``; ``g_r = ∂(batch-mean
target)/∂x_r``, the gradient at receiver ``r``'s own input):

- ``exact``: the edge effect itself, every edge patched alone, batched on the variant engine;
- ``eap`` (Syed et al. 2023, *Attribution Patching Outperforms Automated Circuit
  Discovery*): ``Δ_s · g_r`` at the clean run — 2 forwards and 1 backward for all edges;
- ``clean_corrupted`` (Hanna et al. 2024): ``Δ_s · ½(g_r|clean + g_r|ref)``, gradients at
  the clean and at the reference (corrupted) run;
- ``eap_ig_inputs`` (Hanna et al. 2024, *Have Faith in Faithfulness*, EAP-IG): ``Δ_s ·
  (1/n) Σ_k g_r|α_k`` with the input embeddings moved from the reference (``α = 0``) to the
  clean run, ``α_k = k/n``, ``k = 1..n`` (their schedule) — ``n`` forwards and backwards;
- ``eap_ig_activations``: integrated gradients along each receiver's *own* input,
  ``x_r(α) = x_r^clean + α Σ_{s→r} Δ_s`` (every other input clean), ``Δ_s · ∫_0^1
  g_r|x_r(α) dα`` (Gauss–Legendre, ``n`` nodes). Per receiver this is complete: the sum over
  a receiver's incoming edges equals the target change when its whole input is patched
  (:attr:`EdgeScores.receiver_totals`), up to quadrature. Costs ``n_receivers × n``
  forwards and backwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechattr.attribution.schedules import SCHEDULES
from mechattr.circuits._run import Setup, check_args
from mechattr.circuits.names import LINEAR_METHODS, METHODS
from mechattr.components import Edge, Input, parse_edge
from mechattr.interventions.edges import (
    ABLATIONS,
    Graph,
    edge_effects,
    output_hooks,
    stack_outputs,
)
from mechattr.io import load_result, save_result, versions
from mechattr.model import check_model, model_guard
from mechattr.runtime.chunks import max_rows, row_chunks
from mechattr.runtime.hooks import hooked
from mechattr.runtime.linear_io import linear_io
from mechattr.runtime.split import split_io
from mechattr.targets import check_finite, run_target


@dataclass
class EdgeScores:
    """One score per edge (``scores[i]`` for ``edges[i]``), in target units; ``per_position``
    ``[edge, batch, pos]`` when asked for (its sum over batch and positions is ``scores``).

    ``settings``: method, ablation, n_steps, the clean batch-mean target (``clean``) and,
    for ``exact``, the per-example effects; ``receiver_totals`` (``eap_ig_activations``):
    per receiver input, the target change when that input is patched as a whole."""

    edges: list[Edge]
    scores: Tensor
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    receiver_totals: dict[str, float] = field(default_factory=dict)
    per_position: Tensor | None = None

    def __len__(self) -> int:
        return len(self.edges)

    def __repr__(self) -> str:
        from mechattr import reprs

        return reprs.text(*reprs.edge_scores(self))

    def _repr_html_(self) -> str:
        """A small escaped HTML table (shapes, top items, settings names) for notebooks."""
        from mechattr import reprs

        return reprs.html(*reprs.edge_scores(self))

    def as_dict(self) -> dict[Edge, float]:
        return {e: float(s) for e, s in zip(self.edges, self.scores.tolist())}

    def top(self, n: int) -> list[tuple[Edge, float]]:
        """The ``n`` edges of largest ``|score|`` with their scores."""
        order = self.scores.abs().argsort(descending=True, stable=True)[:n]
        return [(self.edges[i], float(self.scores[i])) for i in order.tolist()]

    def to_frame(self) -> Any:
        """A pandas DataFrame: edge, sender, receiver, input, score (by ``|score|``)."""
        import pandas as pd

        rows = [{"edge": str(e), "sender": str(e.sender), "receiver": str(e.receiver), "input": e.input or "",
                 "score": float(s)} for e, s in zip(self.edges, self.scores.tolist())]
        df = pd.DataFrame(rows)
        return df.reindex(df["score"].abs().sort_values(ascending=False, kind="stable").index).reset_index(drop=True)

    def save(self, path: str | Path) -> Path:
        meta = {"kind": "EdgeScores", "method": self.method, "edges": [str(e) for e in self.edges],
                "settings": self.settings, "receiver_totals": self.receiver_totals}
        return save_result(path, {"scores": self.scores.detach().float().cpu(), "per_position": self.per_position}, meta)

    @classmethod
    def load(cls, path: str | Path) -> EdgeScores:
        tensors, meta = load_result(path)
        if meta.get("kind") != "EdgeScores":
            raise ValueError(f"{path} holds {meta.get('kind')!r}, not EdgeScores")
        edges = [parse_edge(e) for e in meta["edges"]]
        if tensors["scores"].shape != (len(edges),):
            raise ValueError(f"{path}: {len(edges)} edges but scores of shape {tuple(tensors['scores'].shape)}")
        pp = tensors.get("per_position")
        if pp is not None and (pp.ndim != 3 or pp.shape[0] != len(edges)):
            raise ValueError(f"{path}: per_position of shape {tuple(pp.shape)} does not match {len(edges)} edges")
        return cls(edges, tensors["scores"], meta["method"], meta.get("settings", {}), meta.get("receiver_totals", {}), pp)


def attribute_edges(
    model: Any,
    clean: Any,
    corrupted: Any,
    target: Callable | None = None,
    *,
    method: str = "eap",
    ablation: str = "patch",
    n_steps: int = 10,
    edges: Sequence[Any] | None = None,
    per_position: bool = False,
    engine: str = "auto",
    batch_size: int | None = None,
    attention_mask: Any = None,
) -> EdgeScores:
    """Score every edge of ``model``'s graph (or ``edges``) by ``method`` (module docstring).

    ``clean``/``corrupted``: token ids ``[batch, pos]`` (or text); ``corrupted`` may be
    ``None`` for ``ablation="mean"|"zero"``. Scores approximate the batch-mean target change
    when the edge alone is ablated; ``exact`` computes it. Returns :class:`EdgeScores`.
    ``per_position`` (gradient methods): also :attr:`EdgeScores.per_position` ``[edge,
    batch, pos]``, the terms ``Δ_s · g_r`` at each example and position (they sum to the
    scores); for edges from the input it says which tokens the edge carries.
    ``engine``: ``"auto"`` computes ``eap``, ``clean_corrupted`` and ``eap_ig_inputs`` from
    unsplit forwards where :func:`mechattr.runtime.linear_io.linear_io` verifies that the
    per-head inputs are linear maps of them (same numbers, several times faster on a CPU);
    ``"split"`` always runs TransformerLens's split forwards.
    """
    check_model(model)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {list(METHODS)}")
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; allowed: {list(ABLATIONS)}")
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    if per_position and method == "exact":
        raise ValueError("per_position needs a gradient method (eap, clean_corrupted, eap_ig_*), not 'exact'")
    if method == "clean_corrupted" and ablation != "patch":
        raise ValueError("method='clean_corrupted' takes gradients at the corrupted run: it needs ablation='patch'")
    if engine not in ("auto", "split"):
        raise ValueError(f"unknown engine {engine!r}; allowed: ['auto', 'split']")
    check_args(clean, corrupted, target)
    lio = linear_io(model) if engine == "auto" and method in LINEAR_METHODS else None
    with model_guard(model), split_io(model, heads=lio is None) as io:
        fused = method in ("eap", "clean_corrupted")  # the clean gradient forward also reads the sender outputs
        run = Setup(model, io, clean, corrupted, target, ablation, attention_mask, batch_size, edges, lio, defer_clean=fused)
        c, x, es, graph = run.c, run.x, run.edges, run.graph
        max_rows(model, c.shape[1], batch_size, c.tokens.device)
        grads = _receiver_grads(model, c, x, graph, None, None, target, method, n_steps, batch_size, lio, run) if fused else None
        clean_out, ref = run.clean_out, run.ref
        delta = ref - clean_out
        settings: dict[str, Any] = {"method": method, "ablation": ablation, "engine": "linear" if lio else "split", "versions": versions()}
        totals: dict[str, float] = {}
        pp = None
        if method == "exact":
            with torch.no_grad():
                eff, base = edge_effects(model, c.tokens, graph, delta, target, attention_mask=c.attention_mask, batch_size=batch_size)
            scores = (eff - base).mean(1)
            settings.update(clean=float(base.mean()), per_example=(eff - base).cpu().tolist())
        else:
            settings["n_steps"] = 1 if method == "eap" else 2 if method == "clean_corrupted" else n_steps
            if method == "eap_ig_activations":
                grads, totals = _receiver_paths(model, c, graph, delta, target, n_steps, batch_size)
            elif grads is None:
                grads = _receiver_grads(model, c, x, graph, ref, clean_out, target, method, n_steps, batch_size, lio)
            scores, pp = _contract(graph, delta, grads, per_position)
        return EdgeScores(es, scores.detach().float().cpu(), method, settings, totals,
                          None if pp is None else pp.detach().float().cpu())


def _receiver_hooks(graph: Graph) -> list[str]:
    return list(dict.fromkeys(graph.io.receiver(e.receiver, e.input)[0] for e in graph.edges))


def _contract(graph: Graph, delta: Tensor, grads: dict[str, Tensor], per_position: bool = False) -> tuple[Tensor, Tensor | None]:
    """``score_e = Σ_{b,pos,d} Δ_s · g_r`` for every edge (``grads``: per receiver hook);
    with ``per_position`` also the terms ``[edge, batch, pos]`` before the sum over ``b, pos``.

    Per receiver hook one matrix product ``Δ [senders, b·pos·d] @ g [b·pos·d, slots]`` over
    the upstream senders (``Δ`` flattened once)."""
    out = torch.empty(len(graph.edges), device=delta.device)
    first = next(iter(grads.values()))
    pp = torch.empty(len(graph.edges), first.shape[0], first.shape[1], device=delta.device) if per_position else None
    d = delta.expand(first.shape[0], *delta.shape[1:]) if delta.shape[0] == 1 else delta
    d = d.float()
    flat = None if per_position else d.permute(2, 0, 1, 3).reshape(d.shape[2], -1)  # [sender, b·pos·d]
    s_index = graph.sender_index
    by_hook: dict[str, list[tuple[int, int, int]]] = {}
    for i, e in enumerate(graph.edges):
        hook, idx = graph.io.receiver(e.receiver, e.input)
        by_hook.setdefault(hook, []).append((i, s_index[e.sender], idx[1] if idx else 0))
    for hook, items in by_hook.items():
        g = grads[hook].float()
        g = g if g.ndim == 4 else g[:, :, None]  # [b, pos, slot, d]
        n_up = 1 + max(si for _, si, _ in items)
        if per_position:
            full = torch.einsum("bpsd,bprd->bpsr", d[:, :, :n_up], g)
            m = full.sum((0, 1))
        else:
            m = flat[:n_up] @ g.permute(0, 1, 3, 2).reshape(-1, g.shape[2])  # type: ignore[index]
        ids = torch.tensor([i for i, _, _ in items], device=out.device)
        rows = torch.tensor([si for _, si, _ in items], device=m.device)
        cols = torch.tensor([ri for _, _, ri in items], device=m.device)
        out[ids] = m[rows, cols].to(out.device)
        if pp is not None:
            pp[ids] = full[:, :, rows, cols].permute(2, 0, 1)
    return out, pp


def _grad_run(model: Any, tokens: Tensor, mask: Tensor | None, target: Callable, names: list[str], n: int, input_values: Tensor | None, linear: Any = None, capture: Any = None) -> dict[str, Tensor]:
    """``∂(Σ target / n)/∂x`` at every hook in ``names`` for one forward of ``tokens`` rows
    (``input_values``: replaces ``blocks.0.hook_resid_pre``). With ``linear``, the per-head
    ``hook_{q,k,v}_input`` gradients come from ``hook_{q,k,v}`` and ``ln1``'s VJP. With
    ``capture`` (a :class:`mechattr.circuits._run.Setup` whose clean outputs are deferred),
    this forward also supplies its clean sender outputs."""
    leaves: dict[str, Tensor] = {}
    resid: dict[int, Tensor] = {}
    asked = list(names)
    qkv_layers = sorted({int(k.split(".")[1]) for k in names if k.endswith("_input")}) if linear is not None else []
    if qkv_layers:
        names = [k for k in names if not k.endswith("_input")] + [f"blocks.{layer}.attn.hook_{w}" for layer in qkv_layers for w in "qkv"]

    def leaf(name: str) -> Callable:
        def add(x: Tensor, hook: Any = None) -> Tensor:
            d = torch.zeros_like(x, requires_grad=True)
            leaves[name] = d
            return x + d

        return add

    hooks = []
    if input_values is not None:
        hooks.append(("blocks.0.hook_resid_pre", lambda x, hook=None: input_values.to(x.dtype) + 0 * x))
    hooks += [(k, leaf(k)) for k in names]

    def keep(layer: int) -> Callable:
        def fn(x: Tensor, hook: Any = None) -> Tensor:
            resid[layer] = x.detach()
            return x

        return fn

    hooks += [(f"blocks.{layer}.hook_resid_pre", keep(layer)) for layer in qkv_layers]
    seen: dict[str, Tensor] = {}

    def grab(name: str) -> Callable:
        def fn(x: Tensor, hook: Any = None) -> Tensor:
            seen[name] = x.detach()
            return x

        return fn

    if capture is not None:
        hooks += [(k, grab(k)) for k in output_hooks(capture.graph, capture.linear)]
    with hooked(model, hooks), torch.enable_grad():
        f = run_target(model, tokens, target, attention_mask=mask, n_examples=n)
        check_finite(f, "target")
        gs = torch.autograd.grad(f.sum() / n, [leaves[k] for k in names], allow_unused=True)
    out = {k: (torch.zeros_like(leaves[k]) if g is None else g.detach()) for k, g in zip(names, gs)}
    if capture is not None:
        with torch.no_grad():
            capture.set_clean(stack_outputs(seen, capture.graph, capture.linear))
    for layer in qkv_layers:
        per = linear.input_grads(layer, resid[layer], {w: out.pop(f"blocks.{layer}.attn.hook_{w}") for w in "qkv"})
        for w, g in per.items():
            out[f"blocks.{layer}.hook_{w}_input"] = g
    return {k: out[k] for k in asked}


def _receiver_grads(model: Any, c: Any, x: Any, graph: Graph, ref: Tensor | None, clean_out: Tensor | None, target: Callable, method: str, n_steps: int, batch_size: int | None, linear: Any = None, capture: Any = None) -> dict[str, Tensor]:
    """Receiver gradients averaged over the method's points (``eap``: clean; ``clean_corrupted``:
    clean and corrupted; ``eap_ig_inputs``: the input path)."""
    names = _receiver_hooks(graph)
    B = c.shape[0]
    if method == "eap":
        return _grad_run(model, c.tokens, c.attention_mask, target, names, B, None, linear, capture)
    if method == "clean_corrupted":
        g1 = _grad_run(model, c.tokens, c.attention_mask, target, names, B, None, linear, capture)
        g2 = _grad_run(model, x.tokens, x.attention_mask, target, names, B, None, linear)
        return {k: (g1[k] + g2[k]) / 2 for k in names}
    i_in = graph.sender_index[Input()]
    x_clean, x_ref = clean_out[:, :, i_in], ref[:, :, i_in].expand_as(clean_out[:, :, i_in])
    alphas = torch.arange(1, n_steps + 1, dtype=torch.float32, device=c.tokens.device) / n_steps
    acc: dict[str, Tensor] = {}
    per = max(1, max_rows(model, c.shape[1], batch_size, c.tokens.device) // B)
    for sl in row_chunks(n_steps, per):
        a = alphas[sl].repeat_interleave(B)[:, None, None]
        vals = x_ref.repeat(len(a) // B, 1, 1) + a * (x_clean - x_ref).repeat(len(a) // B, 1, 1)
        mask = None if c.attention_mask is None else c.attention_mask.repeat(len(a) // B, 1)
        g = _grad_run(model, c.tokens.repeat(len(a) // B, 1), mask, target, names, B, vals, linear)
        for k, v in g.items():
            v = v.reshape(len(a) // B, B, *v.shape[1:]).sum(0)
            acc[k] = acc[k] + v if k in acc else v
    return {k: v / n_steps for k, v in acc.items()}


def _receiver_paths(model: Any, c: Any, graph: Graph, delta: Tensor, target: Callable, n_steps: int, batch_size: int | None) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Integrated gradients along each receiver input's own path (module docstring).

    Rows are ``(receiver, node, example)``; a receiver's rows add ``α · Δx_r`` at its input
    and read the gradient there. Returns the integrated gradients per receiver hook and, per
    receiver, ``Σ_k w_k g·Δx_r`` (its completeness total)."""
    B, n_pos = c.shape
    alphas, weights = SCHEDULES.get("gausslegendre")(n_steps)
    alphas, weights = alphas.float().to(c.tokens.device), weights.float().to(c.tokens.device)
    recv: dict[tuple, list[int]] = {}
    for e in graph.edges:
        recv.setdefault((e.receiver, e.input), []).append(graph.sender_index[e.sender])
    keys = list(recv)
    d = delta.expand(B, *delta.shape[1:]) if delta.shape[0] == 1 else delta
    dx = {k: d[:, :, sorted(set(v))].sum(2) for k, v in recv.items()}  # [B, pos, d_model]
    names = _receiver_hooks(graph)
    grads = {n: None for n in names}
    totals: dict[str, float] = {}
    jobs = [(j, k) for j in range(len(keys)) for k in range(n_steps)]
    per = max(1, max_rows(model, n_pos, batch_size, c.tokens.device) // B)
    for sl in row_chunks(len(jobs), per):
        chunk = jobs[sl]
        hooks = []
        leaves: dict[str, Tensor] = {}
        by_hook: dict[str, list[tuple[int, int, int, tuple]]] = {}
        for row, (j, k) in enumerate(chunk):
            node, w = keys[j]
            hook, idx = graph.io.receiver(node, w)
            by_hook.setdefault(hook, []).append((row, j, k, idx))

        def make(name: str, items: list, n_rows: int = len(chunk), leaves: dict = leaves) -> Callable:
            def fn(act: Tensor, hook: Any = None) -> Tensor:
                a = act.reshape(n_rows, B, *act.shape[1:]).clone()
                for row, j, k, idx in items:
                    sel = (row, slice(None), *([slice(None), idx[1]] if idx else []))
                    a[sel] = a[sel] + alphas[k] * dx[keys[j]].to(act.dtype)
                leaf = torch.zeros_like(a, requires_grad=True)
                leaves[name] = leaf
                return (a + leaf).reshape(act.shape)

            return fn

        hooks = [(h, make(h, items)) for h, items in by_hook.items()]
        with hooked(model, hooks), torch.enable_grad():
            f = run_target(model, c.tokens.repeat(len(chunk), 1), target, attention_mask=c.attention_mask, n_examples=B)
            check_finite(f, "target along a receiver path")
            hs = list(leaves)
            gs = torch.autograd.grad(f.sum() / B, [leaves[h] for h in hs], allow_unused=True)
        for h, g in zip(hs, gs):
            if g is None:
                continue
            for row, j, k, idx in by_hook[h]:
                gr = g[row].detach() * weights[k]  # [B, pos, (head,) d]
                if grads[h] is None:
                    grads[h] = torch.zeros_like(g[0], dtype=torch.float32)
                if idx:
                    grads[h][:, :, idx[1]] += gr[:, :, idx[1]].float()
                    part = (gr[:, :, idx[1]].float() * dx[keys[j]].float()).sum()
                else:
                    grads[h] += gr.float()
                    part = (gr.float() * dx[keys[j]].float()).sum()
                name = str(keys[j][0]) + (f".{keys[j][1]}" if keys[j][1] else "")
                totals[name] = totals.get(name, 0.0) + float(part)
    for h in names:
        if grads[h] is None:
            raise ValueError(f"no gradient reached receiver hook {h}: the target does not depend on it")
    return grads, totals  # type: ignore[return-value]


__all__ = ["METHODS", "EdgeScores", "attribute_edges"]
