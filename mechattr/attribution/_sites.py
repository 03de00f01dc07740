"""Plumbing shared by component, residual and attention attribution.

A *site* is a hook whose activation we read, differentiate or replace. Helpers here:
cache activations at many sites in one forward, take the gradient of the batch-mean target
with respect to many sites in one forward + backward (zero-valued leaves added at each
site, so each gradient is the total derivative with everything downstream recomputed), and
integrate gradients along a straight path at several sites *jointly*.

Rows are chunked by ``batch_size`` along the batch dimension. A plain-callable target (not
a :class:`mechattr.targets.Target`) sees the whole batch at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from mechattr.attribution.paths import default_batch_size
from mechattr.runtime.attention import require_live
from mechattr.runtime.cache import cache_activations
from mechattr.runtime.chunks import check_batch_size, row_chunks
from mechattr.targets import Target, check_finite, check_target_rows, run_target

Hook = tuple[str, Callable]


def chunks(n: int, size: int) -> Iterator[Tensor]:
    """Row-index tensors of at most ``size`` rows covering ``0..n-1``."""
    for sl in row_chunks(n, size):
        yield torch.arange(sl.start, sl.stop)


def row_size(model: Any, toks: Tensor, target: Callable, batch_size: int | None, per_row: int = 1) -> int:
    """Rows per forward: ``batch_size`` (default: the path engine's estimate); a plain
    callable target needs whole batches, so it gets every row at once."""
    check_batch_size(batch_size)
    n = toks.shape[0]
    if not isinstance(target, Target):
        return n * per_row
    return batch_size or default_batch_size(model, toks.shape[1])


def masked_fill_value(dtype: torch.dtype) -> float:
    """The finite stand-in for ``-inf`` in masked attention scores."""
    return float(torch.finfo(dtype).min) / 4


@contextlib.contextmanager
def finite_masked_scores(model: Any, mask: Tensor | None) -> Iterator[None]:
    """With padding, replace ``-inf`` attention scores by a large finite negative.

    Real rows are unchanged (their masked weights stay exactly 0); fully masked pad rows
    become uniform instead of NaN → 0, which only touches pad positions (no real query
    attends to a pad key). It keeps backward passes free of the NaN that a fully masked
    softmax row produces on some backends (TransformerBridge).
    """
    if mask is None or bool(mask.all()):
        yield
        return

    def fill(x: Tensor, hook: Any) -> Tensor:
        return x.masked_fill(torch.isneginf(x), masked_fill_value(x.dtype))

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_attn_scores", fill) for layer in range(model.cfg.n_layers)]):
        yield


def zero_pads(name: str, x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero ``x`` (an activation, gradient or attribution at hook ``name``) at padding
    positions (``mask == 0``): query rows and key columns of ``[batch, head, q, k]`` attention
    hooks, dim 1 otherwise. Pads carry nothing, and some backends (the TransformerBridge)
    give NaN gradients on fully masked rows."""
    if mask is None:
        return x
    pad = (mask == 0).to(x.device)
    attn = name.endswith(("hook_pattern", "hook_attn_scores"))
    if x.ndim < (4 if attn else 2) or tuple(x.shape[-2:] if attn else x.shape[:2]) != (tuple(pad.shape[1:]) * 2 if attn else tuple(pad.shape)):
        return x  # not laid out over every position (e.g. the final LN at the target positions only)
    if attn:
        drop = pad[:, None, :, None] | pad[:, None, None, :]
    else:
        drop = pad.view(*pad.shape, *[1] * (x.ndim - 2))
    return x.masked_fill(drop, 0)


def run_rows(model: Any, toks: Tensor, mask: Tensor | None, target: Callable, ex: Tensor, hooks: Sequence[Hook]) -> Tensor:
    """Target values ``[rows]`` for the examples ``ex`` (rows may repeat examples)."""
    check_target_rows(target, toks.shape[0])
    t = target.take(ex.to(toks.device)) if isinstance(target, Target) else target
    m = None if mask is None else mask[ex]
    n_ex = None if isinstance(target, Target) else toks.shape[0]
    with model.hooks(fwd_hooks=list(hooks)):
        return run_target(model, toks[ex], t, attention_mask=m, n_examples=n_ex).float()


def cache(model: Any, toks: Tensor, mask: Tensor | None, names: Sequence[str], batch_size: int | None = None) -> dict[str, Tensor]:
    """Activations at ``names`` for every row (no grad), concatenated over chunks of
    ``batch_size`` rows (:func:`mechattr.interventions.variants.cache_activations` per chunk)."""
    size = batch_size or default_batch_size(model, toks.shape[1])
    parts = [cache_activations(model, toks[ex], names, attention_mask=None if mask is None else mask[ex])
             for ex in chunks(toks.shape[0], size)]
    return {n: torch.cat([p[n] for p in parts]) for n in dict.fromkeys(names)}


def grads_at(
    model: Any,
    toks: Tensor,
    mask: Tensor | None,
    target: Callable,
    names: Sequence[str],
    *,
    batch_size: int | None = None,
    extra_hooks: Callable[[Tensor], Sequence[Hook]] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """Activations, ``∂(batch-mean target)/∂activation`` at every site, and the target values.

    One forward + one backward per chunk. ``extra_hooks(ex)`` adds hooks for the chunk's
    rows (e.g. GradDrop's stop-gradients). Returns ``(acts, grads, f [batch])``.
    """
    require_live(model, names, "a gradient there")
    n = toks.shape[0]
    size = row_size(model, toks, target, batch_size)
    acts: dict[str, list[Tensor]] = {k: [] for k in names}
    grads: dict[str, list[Tensor]] = {k: [] for k in names}
    fs = []
    for ex in chunks(n, size):
        leaves: dict[str, Tensor] = {}

        def leaf(name: str, store: dict[str, Tensor] = leaves) -> Callable:
            def add(x: Tensor, hook: Any) -> Tensor:
                d = torch.zeros_like(x, requires_grad=True)
                store[name] = d
                acts[name].append(x.detach())
                return x + d

            return add

        hooks = [(k, leaf(k)) for k in names] + list(extra_hooks(ex) if extra_hooks else [])
        with torch.enable_grad():
            f = run_rows(model, toks, mask, target, ex, hooks)
            check_finite(f, "target")
            gs = torch.autograd.grad(f.sum() / n, [leaves[k] for k in names], allow_unused=True)
        for k, g in zip(names, gs):
            g = torch.zeros_like(leaves[k]) if g is None else g.detach()
            grads[k].append(zero_pads(k, g, None if mask is None else mask[ex]))
        fs.append(f.detach())
    return {k: torch.cat(v) for k, v in acts.items()}, {k: torch.cat(v) for k, v in grads.items()}, torch.cat(fs)


def joint_path(
    model: Any,
    toks: Tensor,
    mask: Tensor | None,
    target: Callable,
    inputs: dict[str, Tensor],
    baselines: dict[str, Tensor],
    alphas: Tensor,
    weights: Tensor,
    *,
    batch_size: int | None = None,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Integrated gradients at several sites moved *together* along one straight path.

    Every site ``s`` is replaced by ``b_s + α·(x_s − b_s)`` in the same forward (``α`` from
    the path engine's :func:`mechattr.attribution.paths.schedule`); returns
    ``G_s = Σ_k w_k ∂(batch-mean F)/∂a_s |_{α_k}`` per site, and ``F`` at the two ends
    (``α = 1`` and ``α = 0``), each ``[batch]``. The multi-hook counterpart of
    :func:`mechattr.attribution.paths.path_integral` (which moves one hook): fold into the
    engine as ``hook_name=[...]`` when it grows that option.
    """
    n = toks.shape[0]
    S = alphas.shape[0]
    names = list(inputs)
    size = row_size(model, toks, target, batch_size, per_row=S)
    rows = S * n
    G = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in inputs.items()}
    s_of, e_of = torch.arange(rows) // n, torch.arange(rows) % n
    for r in chunks(rows, size):
        s, e = s_of[r], e_of[r]
        a = alphas.to(toks.device)[s].float()
        acts = {}
        for k in names:
            x, b = inputs[k].float()[e], baselines[k].float()[e]
            acts[k] = (b + a.view(-1, *[1] * (x.ndim - 1)) * (x - b)).to(inputs[k].dtype).requires_grad_(True)

        def put(name: str, store: dict[str, Tensor] = acts) -> Callable:
            def rep(x: Tensor, hook: Any) -> Tensor:
                return store[name]

            return rep

        with torch.enable_grad():
            f = run_rows(model, toks, mask, target, e.to(toks.device), [(k, put(k)) for k in names])
            check_finite(f, "target along the path")
            gs = torch.autograd.grad(f.sum() / n, [acts[k] for k in names], allow_unused=True)
        w = weights.to(toks.device)[s].float()
        for k, g in zip(names, gs):
            if g is not None:
                g = zero_pads(k, g.float(), None if mask is None else mask[e])
                G[k].index_add_(0, e.to(toks.device), g * w.view(-1, *[1] * (g.ndim - 1)))
    ends = []
    for src in (inputs, baselines):
        vals = []
        for ex in chunks(n, row_size(model, toks, target, batch_size)):
            hooks = [(k, (lambda v: lambda x, hook: v)(src[k][ex])) for k in names]
            with torch.no_grad():
                vals.append(run_rows(model, toks, mask, target, ex.to(toks.device), hooks))
        ends.append(check_finite(torch.cat(vals), "target at the path ends"))
    return G, ends[0], ends[1]
