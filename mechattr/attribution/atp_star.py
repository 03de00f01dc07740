"""AtP* over attention heads (Kramár et al. 2024): the QK fix and GradDrop.

Nodes are each head's query, key and value vectors (as in the paper); a head's score is the
sum of its nodes' estimates, so it estimates the sum of the per-node patching effects (not
the effect of patching the whole head output — for that node AtP over ``hook_z`` already
uses the exact change of the head's own softmax):

- **values** (linear in the output): ``Σ_{t,s} A[t,s] (v'_s − v_s) · ∂F/∂z_t`` — AtP.
- **queries** (QK fix): the pattern row of each query ``t`` is recomputed *exactly* with
  the corrupted query, ``A'_t = softmax(S_t + (q'_t − q_t)·Kᵀ/scale)``, and only the
  pattern → output step is linearised: ``Σ_s (A'[t,s] − A[t,s]) · ∂F/∂A[t,s]``.
- **keys** (QK fix, one key node ``s`` at a time): changing key ``s`` shifts one score per
  query, ``δ_t = q_t·(k'_s − k_s)/scale``; the exact new row gives
  ``(A'[t,s] − A[t,s]) · (∂F/∂A[t,s] − m_{t,−s})`` with ``A'[t,s] = σ(logit A[t,s] + δ_t)``
  and ``m_{t,−s}`` the attention-weighted mean gradient over the other keys.

The query/key hooks and the scale are measured per model by the runtime
(:func:`mechattr.runtime.qk.qk_layout`: rotated vectors where the model rotates, no scale
on GPT-Neo, …); a model whose scores are not ``q·k/scale`` (ALiBi, soft-capping) gets a
clear error. ``∂F/∂A[t,s] = ∂F/∂z_t · v_s`` and ``∂F/∂z`` come from one backward at the clean run.
**GradDrop**: for each layer ``ℓ`` the backward is repeated with the gradient through
layer ℓ's writes to the residual (``hook_attn_out``, ``hook_mlp_out``) set to zero, and
``ĉ(n) = 1/(L−1) · Σ_ℓ |ĉ_ℓ(n)|`` (an unsigned magnitude; ``L = 1`` gives ``|ĉ|``).
Per-position scores put query effects at the query position and key/value effects at the
key position; with GradDrop a node is a head (or, with ``per_position``, a head at one
position) and the magnitude is taken per node.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mechattr.attribution import _sites
from mechattr.attribution.component_methods import COMPONENT_METHODS, Ctx
from mechattr.runtime.qk import qk_layout


def attn_scale(model: Any, layer: int) -> float:
    """The divisor of ``q·k`` in the attention scores of ``layer`` (measured by the runtime,
    :func:`mechattr.runtime.qk.qk_layout`)."""
    return _layout(model, layer)[2]


def _layout(model: Any, layer: int) -> tuple[str, str, float]:
    lay = qk_layout(model)
    if not lay.ok(layer):
        raise ValueError(
            f"atp_star's QK fix needs attention scores = q·k/scale at hook points of the model; in "
            f"layer {layer} {lay.reason[layer]}. Use method='atp'"
        )
    return lay.q_hooks[layer], lay.k_hooks[layer], lay.scales[layer]  # type: ignore[return-value]


def _qkv_names(model: Any, layer: int) -> tuple[str, str, str]:
    q, k, _ = _layout(model, layer)
    return q, k, f"blocks.{layer}.attn.hook_v"


def _heads(x: Tensor, n_heads: int) -> Tensor:
    """``[b, p, kv_heads, d]`` → ``[b, p, n_heads, d]`` (grouped-query attention: query head
    ``h`` reads key/value head ``h // group``, :meth:`mechattr.runtime.arch.Arch.kv_head`)."""
    return x if x.shape[2] == n_heads else x.repeat_interleave(n_heads // x.shape[2], dim=2)


def head_effects(A: Tensor, gz: Tensor, q: Tensor, k: Tensor, v: Tensor, q2: Tensor, k2: Tensor, v2: Tensor, scale: float, *, qk_fix: bool = True) -> Tensor:
    """Per-node AtP* estimates of every head of one layer, ``[3, batch, pos, head]`` for the
    (query, key, value) nodes: query effects at the query position, key and value effects at
    the key position. Float64 inside.

    ``A [b, h, t, s]`` clean pattern; ``gz [b, t, h, d]`` = ``∂F/∂z``; ``q, k, v`` clean and
    ``q2, k2, v2`` corrupted ``[b, p, h, d]``. ``qk_fix=False`` linearises the softmax too
    (plain AtP of the query/key nodes, ``dA = A ⊙ (δS − ⟨A, δS⟩)``).
    """
    A, gz = A.double(), gz.double()
    q, k, v, q2, k2, v2 = (x.double() for x in (q, k, v, q2, k2, v2))
    live = A > 0
    zero = torch.zeros_like(A)
    gA = torch.einsum("bthd,bshd->bhts", gz, v)  # ∂F/∂A[t, s]
    # values: Σ_t A[t,s] (v'_s − v_s)·∂F/∂z_t  -> at key position s
    val = torch.einsum("bhts,bshd,bthd->bsh", A, v2 - v, gz)  # (clean pattern; values are linear)
    dS_q = torch.where(live, torch.einsum("bthd,bshd->bhts", q2 - q, k) / scale, zero)
    dS_k = torch.where(live, torch.einsum("bthd,bshd->bhts", q, k2 - k) / scale, zero)
    if qk_fix:
        # The pattern's logits in float64 from q·k/scale (the runtime checked that they
        # reproduce the pattern): a saturated float32 pattern (A = 1 − 6e-8 or exactly 1)
        # carries no usable logit, and 1 − A would be all rounding error.
        S = torch.where(live, torch.einsum("bthd,bshd->bhts", q, k) / scale, torch.full_like(A, -math.inf))
        logA = torch.log_softmax(S, -1)
        A = torch.where(live, logA.exp(), zero)
        gA_A = A * gA
        Ag = gA_A.sum(-1, keepdim=True)  # ⟨A_t, ∂F/∂A_t⟩
        # queries: the exact new row softmax(S_t + δS_t)
        A_q = torch.where(live, torch.softmax(logA + dS_q, -1), zero)
        qry = ((A_q - A) * gA).sum(-1)
        # keys, one node at a time: one logit of each row moves by δ; closed form with
        # logit A = S_s − logsumexp_{o≠s} S_o and m = the others' A-weighted mean gradient
        logit, m_other = _key_terms(S, logA, gA, gA_A, Ag, live)
        A_k = torch.where(live, torch.sigmoid(logit + dS_k), zero)
        key = torch.where(live, (A_k - A) * (gA - m_other), zero).sum(2)
    else:
        Ag = (A * gA).sum(-1, keepdim=True)  # ⟨A_t, ∂F/∂A_t⟩
        qry = ((A * (dS_q - (A * dS_q).sum(-1, keepdim=True))) * gA).sum(-1)
        key = (A * dS_k * (gA - Ag)).sum(2)
    return torch.stack([qry.transpose(1, 2), key.transpose(1, 2), val]).float()


def _key_terms(S: Tensor, logA: Tensor, gA: Tensor, gA_A: Tensor, Ag: Tensor, live: Tensor) -> tuple[Tensor, Tensor]:
    """Per ``(t, s)``: ``logit A[t,s] = S_s − logsumexp_{o≠s} S_o`` and ``m_{t,−s} =
    Σ_{o≠s} A[t,o] ∂F/∂A[t,o] / (1 − A[t,s])``, exact also where ``A[t,s]`` rounds to 1.

    Only a row's largest weight can be near 1; for every other key ``1 − A ≥ ½`` and the
    subtractive forms are exact. At the row's argmax the others are summed directly.
    """
    one_minus = -torch.expm1(logA)  # 1 − A (≥ ½ off the argmax)
    logit = logA - one_minus.clamp_min(1e-300).log()
    m_other = (Ag - gA_A) / one_minus.clamp_min(1e-300)
    top = S.argmax(-1, keepdim=True)  # [b, h, t, 1]
    others = S.scatter(-1, top, -math.inf)
    has_other = torch.isfinite(others).any(-1, keepdim=True)
    lse_o = torch.logsumexp(others, -1, keepdim=True)
    w_o = torch.where(has_other, torch.softmax(torch.where(has_other, others, torch.zeros_like(others)), -1), torch.zeros_like(S))
    w_o = torch.where(torch.isfinite(others), w_o, torch.zeros_like(w_o))
    m_top = (w_o * gA).sum(-1, keepdim=True)
    logit_top = torch.where(has_other, S.gather(-1, top) - lse_o, torch.full_like(lse_o, math.inf))
    logit = logit.scatter(-1, top, logit_top)
    m_other = m_other.scatter(-1, top, torch.where(has_other, m_top, torch.zeros_like(m_top)))
    return torch.where(live, logit, torch.zeros_like(logit)), m_other


def _estimates(ctx: Ctx, corr: dict[str, Tensor], drop: int | None) -> Tensor:
    """``[3, n_layers, batch, pos, head]`` node estimates (q, k, v), GradDrop of layer ``drop``."""
    model, L, H = ctx.model, ctx.n_layers, ctx.model.cfg.n_heads
    zn = [f"blocks.{layer}.attn.hook_z" for layer in range(L)]

    def stop(ex: Tensor) -> list:
        if drop is None:
            return []
        names = [f"blocks.{drop}.hook_attn_out"]
        if not getattr(model.cfg, "attn_only", False):
            names.append(f"blocks.{drop}.hook_mlp_out")
        return [(n, lambda x, hook: x.detach()) for n in names]

    _, grads, _ = _sites.grads_at(model, ctx.toks, ctx.mask, ctx.target, zn, batch_size=ctx.batch_size, extra_hooks=stop)
    clean = ctx.extras["_clean_cache"]
    out = []
    for layer in range(L):
        qn, kn, vn = _qkv_names(model, layer)
        q, k, v = (_heads(clean[n], H) for n in (qn, kn, vn))
        q2, k2, v2 = (_heads(corr[n], H) for n in (qn, kn, vn))
        A = clean[f"blocks.{layer}.attn.hook_pattern"]
        out.append(head_effects(A, grads[zn[layer]], q, k, v, q2, k2, v2, attn_scale(model, layer), qk_fix=ctx.options.get("qk_fix", True)))
    return torch.stack(out, 1)


@COMPONENT_METHODS.register("atp_star")
def atp_star(ctx: Ctx) -> Tensor:
    """AtP* (Kramár et al. 2024) over heads: QK fix (``qk_fix=False``: plain AtP of the
    q/k/v nodes), plus GradDrop unless ``grad_drop=False`` (then the result is signed and the
    per-node parts are kept in ``ctx.extras["parts"]``). See the module docstring."""
    if ctx.kind != "heads":
        raise ValueError(f"atp_star is defined for attention heads (kind='heads'), not kind={ctx.kind!r}; use 'atp'")
    model = ctx.model
    L = ctx.n_layers
    names = [n for layer in range(L) for n in (*_qkv_names(model, layer), f"blocks.{layer}.attn.hook_pattern")]
    corr = _sites.cache(model, ctx.need_corrupted("atp_star"), ctx.mask, names, ctx.batch_size)
    ctx.extras["_clean_cache"] = _sites.cache(model, ctx.toks, ctx.mask, names, ctx.batch_size)
    try:
        per_pos = bool(ctx.options.get("per_position"))
        if not ctx.options.get("grad_drop", True):
            est = _estimates(ctx, corr, None)
            ctx.extras["parts"] = {"q": est[0], "k": est[1], "v": est[2]}
            return est.sum(0)
        # GradDrop: |estimate| per node (a head, or a head at one position), averaged over
        # the L backward passes with one layer's residual writes cut (1/(L−1) Σ_ℓ).
        dims = (1,) if per_pos else (1, 2)
        drops = [None] if L == 1 else list(range(L))
        total = sum(_estimates(ctx, corr, drop).sum(0).sum(dims, keepdim=True).abs() for drop in drops)
        out = torch.zeros(L, ctx.toks.shape[0], ctx.toks.shape[1], model.cfg.n_heads, device=total.device)
        idx = (slice(None), slice(0, 1)) if per_pos else (slice(None), slice(0, 1), slice(0, 1))
        out[idx] = total / max(L - 1, 1)
        return out
    finally:
        ctx.extras.pop("_clean_cache", None)
