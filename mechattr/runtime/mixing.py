"""Context-mixing access (value zeroing, ALTI): blocks re-run from cached inputs with value
vectors edited, and the attention output split into per-(query, key) terms, checked per model.

Value zeroing (Mohebbi et al. 2023) needs one block's output with some tokens' value vectors
zeroed. :func:`block_output` runs block ``layer`` alone from its cached input on a
HookedTransformer (``start_at_layer`` / ``stop_at_layer``) and, on models that cannot start
mid-way (TransformerBridge, shortformer positions), the full forward ended at that block's
``hook_resid_post``. :func:`require_value_edits` raises where an edit of ``hook_v`` would be
silently lost (a bridge whose attention fires ``hook_v`` outside the computation).

ALTI (Ferrando et al. 2022) needs each block's attention written as a sum over keys:

    y_q = x_q + attn_out_q = Σ_k T_q(x_k) + b_O,    T_q(x_k) = δ_qk x_k + Σ_h A^h_qk v^h_k W_O^h,

with ``v^h_k = L_k(x_k) W_V^h + b_V^h`` and ``L_k`` the block's input norm (LayerNorm or
RMSNorm) as the affine map it is at token ``k`` given ``x_k``'s statistics. The norm acts
per token, so ``L_k(x_k)`` is exactly what the model computes and ``hook_v`` holds it times
``W_V``. :func:`attention_terms` reads ``hook_resid_pre``, ``hook_v``, ``hook_pattern`` and
``hook_attn_out`` and checks the identity on the very activations it returns: a model where
it fails (a norm after the attention, as Gemma 2's, or value/pattern hooks outside the
computation) gets a ``ValueError``. Rotary and ALiBi positions, grouped-query attention
(query head ``h`` reads value head ``h // group``), RMSNorm and soft-capped scores are fine:
they change ``A`` or ``v``, not the sum. With parallel attention and MLP the MLP reads
``x_q`` only (no mixing), so ``y_q = x_q + attn_out_q`` is still the mixing step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechattr.runtime.arch import arch
from mechattr.runtime.cache import cache_activations
from mechattr.runtime.hooks import forward_until, hooked
from mechattr.runtime.memo import per_model

MIX_ATOL = 1e-4
MIX_RTOL = 1e-3


def can_start_mid_way(model: Any) -> bool:
    """Whether a block can run alone from its cached input (HookedTransformer, positions not
    re-added inside attention)."""
    a = arch(model)
    return a.start_at_layer and a.positional != "shortformer"


def block_output(
    model: Any,
    layer: int,
    tokens: Tensor,
    resid_pre: Tensor | None,
    v_edit: Callable[[Tensor], Tensor],
    attention_mask: Tensor | None = None,
) -> Float[Tensor, "rows pos d_model"]:
    """``blocks.{layer}.hook_resid_post`` of rows whose ``blocks.{layer}.attn.hook_v`` is
    ``v_edit(v)`` (``v`` ``[rows, pos, n_kv_heads, d_head]``).

    ``resid_pre`` ``[rows, pos, d_model]`` is the cached input of block ``layer``: where the
    model can start mid-way (:func:`can_start_mid_way`) only that block runs; otherwise the
    forward of ``tokens`` ``[rows, pos]`` runs up to that block's output and ends there.
    """
    hooks = [(f"blocks.{layer}.attn.hook_v", lambda act, hook=None: v_edit(act))]
    kw: dict[str, Any] = {} if attention_mask is None else {"attention_mask": attention_mask}
    with torch.no_grad(), hooked(model, hooks):
        if resid_pre is not None and can_start_mid_way(model):
            return model(resid_pre, start_at_layer=layer, stop_at_layer=layer + 1, **kw)
        return forward_until(model, tokens, f"blocks.{layer}.hook_resid_post", **kw)


@per_model
def _value_edits_live(model: Any) -> bool:
    """Zeroing every value vector of block 0 must move its output (measured once)."""
    from mechattr.runtime.device import model_device

    a = arch(model)
    name = "blocks.0.attn.hook_v"
    if not a.has_hook(name) or not a.has_hook("blocks.0.hook_resid_post"):
        return False
    toks = (torch.arange(min(5, a.n_ctx), device=model_device(model)) % a.d_vocab)[None]
    clean = cache_activations(model, toks, ["blocks.0.hook_resid_post"])["blocks.0.hook_resid_post"]
    zeroed = block_output(model, 0, toks, None, torch.zeros_like)
    return not torch.allclose(clean, zeroed.to(clean.dtype))


def require_value_edits(model: Any, what: str) -> None:
    """Raise ``ValueError`` if an edit of ``hook_v`` would not reach the block's output."""
    if not _value_edits_live(model):
        a = arch(model)
        raise ValueError(
            f"{what} zeroes value vectors at blocks.L.attn.hook_v, but on this model ({a.kind}, "
            f"{a.architecture or 'unknown architecture'}) that hook is missing or fires outside the "
            "attention computation, so the edit would be silently lost"
        )


def _names(layer: int) -> list[str]:
    return [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_v", f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.hook_attn_out"]


def attention_terms(
    model: Any, tokens: Tensor, attention_mask: Tensor | None = None
) -> Iterator[tuple[Callable[[slice], Tensor], Float[Tensor, "batch q d_model"]]]:
    """Per layer, ``(terms, y)``: ``terms(qs)`` gives ``T[b, q, k] = T_q(x_k)`` for the query
    positions ``qs`` (a slice; ``[batch, |qs|, pos, d_model]``, so callers bound the memory of
    the ``pos × pos × d_model`` tensor) and ``y[b, q] = x_q + attn_out_q`` (module
    docstring), float32, from one clean forward. Checks ``Σ_k T_q(x_k) + b_O = y`` on these
    activations and raises ``ValueError`` where it fails."""
    a = arch(model)
    names = [n for layer in range(a.n_layers) for n in _names(layer)]
    missing = [n for n in names if not a.has_hook(n)]
    if missing:
        raise ValueError(f"ALTI needs the hook points {missing[:4]} (resid_pre, v, pattern, attn_out), which this model ({a.architecture or a.kind}) lacks")
    acts = cache_activations(model, tokens, names, attention_mask=attention_mask)
    for layer in range(a.n_layers):
        low = acts[f"blocks.{layer}.hook_attn_out"].dtype  # half precision: its own rounding
        rtol = max(MIX_RTOL, 4 * torch.finfo(low).eps) if low.is_floating_point else MIX_RTOL
        x, v, pat, out = (acts[n].float() for n in _names(layer))
        attn = model.blocks[layer].attn
        W_O = attn.W_O.detach().float().to(x.device)  # [n_heads, d_head, d_model]
        b_O = attn.b_O.detach().float().to(x.device) if getattr(attn, "b_O", None) is not None else torch.zeros(x.shape[-1], device=x.device)
        if v.shape[2] != pat.shape[1]:  # grouped-query attention: head h reads value head h // group
            v = v.repeat_interleave(pat.shape[1] // v.shape[2], dim=2)
        vo = torch.einsum("bkhe,hed->bkhd", v, W_O)  # each head's output per value vector
        y = x + out
        err = (torch.einsum("bhqk,bkhd->bqd", pat, vo) + x + b_O - y).abs().max()
        tol = MIX_ATOL + rtol * y.abs().max()
        if not bool(err <= tol):
            raise ValueError(
                f"ALTI: block {layer}'s attention output is not Σ_h Σ_k A·v·W_O + b_O on this model "
                f"({a.architecture or a.kind}; max error {float(err):.2e}): a norm after the attention or "
                "value/pattern hooks outside the attention computation; its contributions would be wrong"
            )

        def terms(qs: slice, pat: Tensor = pat, vo: Tensor = vo, x: Tensor = x) -> Tensor:
            T = torch.einsum("bhqk,bkhd->bqkd", pat[:, :, qs], vo)
            q = torch.arange(x.shape[1], device=x.device)[qs]
            T[:, torch.arange(q.numel(), device=x.device), q] += x[:, q]  # δ_qk x_k
            return T

        yield terms, y


__all__ = ["attention_terms", "block_output", "can_start_mid_way", "require_value_edits"]
