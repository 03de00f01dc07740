"""Context-mixing token attribution: value zeroing (Mohebbi et al. 2023) and ALTI (Ferrando et al. 2022).

Both measure, per layer ``l``, how much token ``k`` is mixed into the representation of token
``q``: a row-stochastic matrix ``C_l [batch, q, k]`` (rows of real query positions sum to 1;
causal models give 0 above the diagonal). The token map for the target position is row
``target_pos`` of the layers combined (``aggregate``): ``"rollout"`` (default, as both papers
aggregate: ``R = C_{L-1} ⋯ C_1 C_0``, no extra identity since ``C_l`` already accounts for
the residual stream), ``"last"`` (``C_{L-1}`` alone) or an int (that layer's ``C_l``). The
per-layer matrices come back in ``extras["mixing"]`` ``[batch, n_layers, pos, pos]`` and the
combined one in ``extras["combined"]`` ``[batch, pos, pos]``. Scores are ``≥ 0``, one per token.
Architecture access lives in :mod:`mechattr.runtime.mixing`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechattr.attribution.tokens import Ctx, MethodOutput, register
from mechattr.runtime.chunks import max_rows, row_chunks
from mechattr.runtime.mixing import (
    attention_terms,
    block_output,
    can_start_mid_way,
    require_value_edits,
)

AGGREGATES = ("rollout", "last")
QUERY_CHUNK_FLOATS = 2**24  # ALTI: T_q(x_k) built for this many floats of queries at a time


def _check_aggregate(aggregate: Any, n_layers: int) -> None:
    if isinstance(aggregate, bool) or not (aggregate in AGGREGATES or (isinstance(aggregate, int) and -n_layers <= aggregate < n_layers)):
        raise ValueError(f"aggregate must be one of {list(AGGREGATES)} or a layer index in [-{n_layers}, {n_layers - 1}], got {aggregate!r}")


def _normalize_rows(c: Tensor) -> Tensor:
    """Divide each row by its sum (all-zero rows stay 0)."""
    s = c.sum(-1, keepdim=True)
    return torch.where(s > 0, c / s.clamp_min(1e-30), torch.zeros_like(c))


def combine(mixing: Tensor, aggregate: Any) -> Tensor:
    """``[batch, pos, pos]`` from per-layer ``mixing [batch, L, pos, pos]``: rollout
    ``C_{L-1} ⋯ C_0``, the last layer, or layer ``aggregate``."""
    if aggregate == "rollout":
        out = mixing[:, 0]
        for layer in range(1, mixing.shape[1]):
            out = mixing[:, layer] @ out
        return out
    return mixing[:, -1] if aggregate == "last" else mixing[:, aggregate]


def _output(ctx: Ctx, mixing: Tensor, aggregate: Any) -> MethodOutput:
    comb = combine(mixing, aggregate)
    rows = torch.arange(comb.shape[0], device=comb.device)
    scores = comb[rows, ctx.target_pos.to(comb.device)]
    return MethodOutput(scores, extras={"mixing": mixing.cpu(), "combined": comb.cpu(), "options": {"aggregate": aggregate}})


def _query_rows(ctx: Ctx) -> Tensor:
    """``[batch, pos, 1]`` 1 at real query positions (padding rows are left 0)."""
    return ctx.real.float()[..., None]


@register("value_zeroing", per_dim=False, cite="Mohebbi et al. 2023, Quantifying Context Mixing in Transformers")
def value_zeroing(ctx: Ctx, aggregate: Any = "rollout") -> MethodOutput:
    """Value zeroing (Mohebbi et al. 2023): how much a layer's output at ``q`` changes when
    token ``k``'s value vectors are zeroed.

    For each layer ``l`` and key ``k``: zero ``blocks.l.attn.hook_v`` at position ``k`` (every
    head), rerun block ``l`` from its cached input, and take ``C_l[q, k] = 1 − cos(x̃_q^{¬k},
    x_q)`` at ``blocks.l.hook_resid_post``; rows normalised to sum 1 (the paper's
    normalisation). All keys of a layer are variants stacked along the batch (row ``k·batch +
    i``), in chunks of ``batch_size`` rows. Layers combined by ``aggregate`` (module
    docstring; the paper reports per-layer maps and rolls them out across layers).
    """
    model = ctx.model
    L = model.cfg.n_layers
    _check_aggregate(aggregate, L)
    require_value_edits(model, "value_zeroing")
    toks, mask = ctx.tokens, ctx.batch.attention_mask
    n, P = toks.shape
    names = [f"blocks.{layer}.hook_{w}" for layer in range(L) for w in ("resid_pre", "resid_post")]
    from mechattr.runtime.cache import cache_activations

    acts = cache_activations(model, toks, names, attention_mask=mask)
    size = max_rows(model, P, ctx.batch_size, toks.device)
    rows = torch.arange(P * n, device=toks.device)
    mixing = torch.zeros(n, L, P, P, device=toks.device)
    start = can_start_mid_way(model)
    for layer in range(L):
        pre, post = acts[f"blocks.{layer}.hook_resid_pre"], acts[f"blocks.{layer}.hook_resid_post"].float()
        for sl in row_chunks(rows.shape[0], size):
            k, e = rows[sl] // n, rows[sl] % n

            def zero_k(v: Tensor, k: Tensor = k) -> Tensor:
                keep = torch.ones(v.shape[:2], dtype=v.dtype, device=v.device)
                keep[torch.arange(v.shape[0], device=v.device), k] = 0
                return v * keep[..., None, None]

            out = block_output(model, layer, toks[e], pre[e] if start else None, zero_k, None if mask is None else mask[e]).float()
            dist = 1 - torch.nn.functional.cosine_similarity(out, post[e], dim=-1, eps=1e-12)  # [rows, q]
            mixing[e, layer, :, k] = dist.clamp_min(0)
        causal = torch.ones(P, P, device=toks.device).tril().bool()
        key_ok = ctx.real.bool()[:, None, :] & causal[None]
        mixing[:, layer] = _normalize_rows(mixing[:, layer] * key_ok) * _query_rows(ctx)
    return _output(ctx, mixing, aggregate)


@register("alti", per_dim=False, cite="Ferrando et al. 2022, Measuring the Mixing of Contextual Information in the Transformer")
def alti(ctx: Ctx, aggregate: Any = "rollout") -> MethodOutput:
    """ALTI (Ferrando et al. 2022): distance-based contributions of token ``k`` to token ``q``
    through attention, residual connection and input norm, rolled out across layers.

    Per layer the attention step is ``y_q = Σ_k T_q(x_k) + b_O`` with ``T_q(x_k) = δ_qk x_k +
    Σ_h A^h_qk (L_k(x_k) W_V^h + b_V^h) W_O^h`` and ``L_k`` the norm as a linear map at token
    ``k`` given its statistics (:mod:`mechattr.runtime.mixing`); the contribution is
    ``c_qk = max(0, ‖y_q‖₁ − ‖y_q − T_q(x_k)‖₁)``, rows normalised to sum 1 (the paper's eq. 8–9;
    MLPs act per token and are not mixing). Layers combined by ``aggregate`` (default rollout,
    as in the paper). Raises ``ValueError`` on models where the decomposition does not hold.
    """
    L = ctx.model.cfg.n_layers
    _check_aggregate(aggregate, L)
    b, P = ctx.tokens.shape
    step = max(1, QUERY_CHUNK_FLOATS // max(1, b * P * ctx.model.cfg.d_model))
    mats = []
    for terms, y in attention_terms(ctx.model, ctx.tokens, ctx.batch.attention_mask):
        c = torch.zeros(b, P, P, device=y.device)
        for q0 in range(0, P, step):
            qs = slice(q0, min(P, q0 + step))
            d = (y[:, qs, None, :] - terms(qs)).abs().sum(-1)  # [b, q, k]: ‖y_q − T_q(x_k)‖₁
            c[:, qs] = (y[:, qs].abs().sum(-1)[:, :, None] - d).clamp_min(0)
        mats.append(_normalize_rows(c * ctx.real.float()[:, None, :]) * _query_rows(ctx))
    return _output(ctx, torch.stack(mats, 1), aggregate)
