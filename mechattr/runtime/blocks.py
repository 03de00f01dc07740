"""Partial transformer blocks (HookedTransformer fast paths): the last block only where a target reads, blocks entered mid-way.

A target reads the logits at a few positions ``idx`` per row. The last block's output at
position ``p`` needs keys and values at every position but the query, attention output,
MLP, final LayerNorm and unembedding only at ``p``: :func:`last_block_logits` computes
exactly that, firing the block's hook points (hooks on query-side activations see
``[rows, k, ...]``: the engine's edits know this, see ``variants.intervene``).
:func:`block_from` runs a block from a cached ``z`` or cached ``q, k, v`` (for variants
that change nothing earlier in it). Both are used for standard pre-LN GPT-style blocks
(:func:`supported`); other models take the full forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.utilities.attention import simple_attn_linear

from mechattr.runtime.readout import final_logits
from mechattr.runtime.tl import is_hooked

try:  # TransformerLens 3.x only (4.x has no HookedTransformer components)
    from transformer_lens.components import Attention, TransformerBlock
except ImportError:  # pragma: no cover - TransformerLens 4
    Attention = TransformerBlock = None  # type: ignore[assignment,misc]

_QUERY_SUFFIXES = (
    "attn.hook_q", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
    "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post",
    "mlp.hook_pre_linear", "hook_mlp_out", "hook_resid_post",
)


def supported(model: Any) -> bool:
    """Whether :func:`last_block_logits` reproduces ``model``'s last block exactly."""
    if not is_hooked(model) or TransformerBlock is None:
        return False
    cfg = model.cfg
    blk = model.blocks[-1]
    soft = getattr(cfg, "attn_scores_soft_cap", -1.0)
    out_soft = getattr(cfg, "output_logits_soft_cap", -1.0)
    return (
        type(blk) is TransformerBlock
        and type(blk.attn) is Attention
        and cfg.positional_embedding_type == "standard"
        and cfg.attention_dir == "causal"
        and cfg.normalization_type in ("LN", "LNPre", "RMS", "RMSPre", None)
        and not cfg.use_split_qkv_input
        and not cfg.use_attn_in
        and not cfg.use_attn_result
        and not cfg.use_hook_mlp_in
        and not cfg.parallel_attn_mlp
        and not getattr(cfg, "use_normalization_before_and_after", False)
        and not getattr(cfg, "use_qk_norm", False)
        and getattr(cfg, "clip_qkv", None) is None
        and not getattr(cfg, "use_logn_attn", False)
        and not getattr(cfg, "use_attention_sinks", False)
        and not getattr(cfg, "load_in_4bit", False)
        and cfg.n_key_value_heads is None
        and (soft is None or soft <= 0)
        and (out_soft is None or out_soft <= 0)
        and (cfg.attn_types is None or all(t == "global" for t in cfg.attn_types))
        and getattr(cfg, "original_architecture", None) not in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
    )


def query_side_hooks(model: Any) -> frozenset:
    """Hook names of the last block that hold only the target's positions."""
    pre = f"blocks.{model.cfg.n_layers - 1}."
    return frozenset(pre + s for s in _QUERY_SUFFIXES)


QKV_SUFFIXES = frozenset(("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern"))
POST_ATTN_SUFFIXES = frozenset(
    ("attn.hook_z", "hook_attn_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized",
     "mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear", "hook_mlp_out", "hook_resid_post")
)


def take(x: Tensor, idx: Tensor) -> Tensor:
    """``x[r, idx[r, i]]`` along the position axis (axis 1) of ``[rows, pos, ...]``."""
    shape = list(x.shape)
    shape[1] = idx.shape[1]
    return x.gather(1, idx.reshape(*idx.shape, *[1] * (x.ndim - 2)).expand(shape))


_take = take


def _attn_out(model: Any, layer: int, z: Tensor) -> Tensor:
    a, cfg = model.blocks[layer].attn, model.cfg
    w = a.W_O.reshape(cfg.n_heads * cfg.d_head, cfg.d_model).T.contiguous()
    return F.linear(z.reshape(z.shape[0], z.shape[1], -1), w, a.b_O)


def _after_attn(model: Any, layer: int, x: Tensor, attn_out: Tensor) -> Tensor:
    """``hook_attn_out`` … ``hook_resid_post`` of block ``layer`` given its attention output."""
    blk = model.blocks[layer]
    attn_out = blk.hook_attn_out(attn_out)
    if model.cfg.attn_only:
        return blk.hook_resid_post(x + attn_out)
    resid_mid = blk.hook_resid_mid(x + attn_out)
    return blk.hook_resid_post(resid_mid + blk.hook_mlp_out(blk.mlp(blk.ln2(resid_mid))))


def attend(a: Any, q: Tensor, k: Tensor, v: Tensor, qpos: Tensor | None, attention_mask: Tensor | None, *, hooks: bool = True) -> Tensor:
    """Causal attention of queries at positions ``qpos`` (``[rows, k]``; all when ``None``).

    Fires ``hook_attn_scores``, ``hook_pattern`` and ``hook_z`` (unless ``hooks=False``:
    then ``q, k, v`` may hold a subset of the heads); same operations as
    TransformerLens's ``AbstractAttention.forward`` for standard attention.
    """
    fire = (lambda hp, x: hp(x)) if hooks else (lambda hp, x: x)
    n_pos = k.shape[1]
    keys = torch.arange(n_pos, device=k.device)
    if qpos is None:
        qpos = keys[None].expand(k.shape[0], n_pos)
    scores = q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1) / a.attn_scale  # [rows, head, k, pos]
    allowed = keys[None, None, :] <= qpos[:, :, None]  # [rows, k, pos]
    if attention_mask is not None:
        allowed = allowed & attention_mask.to(k.device).bool()[:, None, :]
    scores = torch.where(allowed[:, None], scores, a.IGNORE.to(scores.device))
    scores = fire(a.hook_attn_scores, scores)
    pattern = F.softmax(scores, dim=-1)
    if attention_mask is not None:  # a fully masked query row (padding) gives NaN: 0 as in TL
        pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
    pattern = fire(a.hook_pattern, pattern).to(v.dtype)
    return fire(a.hook_z, (pattern @ v.permute(0, 2, 1, 3)).permute(0, 2, 1, 3))  # [rows, k, head, d_head]


def run_blocks(model: Any, start: int, stop: int, resid: Float[Tensor, "rows pos d_model"], attention_mask: Tensor | None = None) -> Tensor:
    """Blocks ``start … stop-1`` from the residual entering ``start`` (``model(resid,
    start_at_layer=start, stop_at_layer=stop)``): same operations and hook points as
    ``TransformerBlock.forward``, without TransformerLens's per-call overhead."""
    for layer in range(start, stop):
        blk = model.blocks[layer]
        a = blk.attn
        x = blk.hook_resid_pre(resid)
        n = blk.ln1(x)
        q, k, v = (hp(simple_attn_linear(n, w, b)) for hp, w, b in ((a.hook_q, a.W_Q, a.b_Q), (a.hook_k, a.W_K, a.b_K), (a.hook_v, a.W_V, a.b_V)))
        z = attend(a, q, k, v, None, attention_mask)
        resid = _after_attn(model, layer, x, _attn_out(model, layer, z))
    return resid


def block_from(
    model: Any,
    layer: int,
    resid_pre: Float[Tensor, "rows pos d_model"],
    *,
    z: Tensor | None = None,
    qkv: tuple[Tensor, Tensor, Tensor] | None = None,
    idx: Tensor | None = None,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Block ``layer``'s output from its input and cached ``z`` or cached ``(q, k, v)``.

    For variants that change nothing in block ``layer`` before ``hook_z`` (given ``z``:
    fires ``hook_z`` on) or before ``hook_q/k/v`` (given ``qkv``: fires them, recomputes
    the pattern): LayerNorm and projections are not recomputed. With ``idx`` (``[rows, k]``)
    only those positions are computed (keys and values still at every position).
    Returns ``[rows, pos or k, d_model]``.
    """
    a = model.blocks[layer].attn
    x = resid_pre if idx is None else take(resid_pre, idx)
    if z is not None:
        z = a.hook_z(z if idx is None else take(z, idx))
    else:
        if qkv is None:
            raise ValueError("block_from needs z or qkv")
        q, k, v = qkv
        q = a.hook_q(q if idx is None else take(q, idx))
        z = attend(a, q, a.hook_k(k), a.hook_v(v), idx, attention_mask)
    return _after_attn(model, layer, x, _attn_out(model, layer, z))


def last_block_logits(
    model: Any,
    resid: Float[Tensor, "rows pos d_model"],
    idx: Int[Tensor, "rows k"],
    attention_mask: Tensor | None = None,
) -> Float[Tensor, "rows k vocab"]:
    """Logits at positions ``idx`` from the residual entering the last block.

    Same operations as ``TransformerBlock.forward`` + ``ln_final`` + ``unembed``, with
    queries, attention output, MLP and unembedding computed at ``idx`` only.
    """
    blk = model.blocks[-1]
    a = blk.attn
    cfg = model.cfg
    x = blk.hook_resid_pre(resid)
    n = blk.ln1(x)
    q = a.hook_q(simple_attn_linear(_take(n, idx), a.W_Q, a.b_Q))  # [rows, k, head, d_head]
    k = a.hook_k(simple_attn_linear(n, a.W_K, a.b_K))  # [rows, pos, head, d_head]
    v = a.hook_v(simple_attn_linear(n, a.W_V, a.b_V))
    z = attend(a, q, k, v, idx, attention_mask)
    last = cfg.n_layers - 1
    return final_logits(model, _after_attn(model, last, take(x, idx), _attn_out(model, last, z)))
