"""``planted_induction``: an induction circuit written analytically, not trained.

Residual stream (``d_model = 3·d_vocab + n_ctx``, no LayerNorm) split into one-hot
subspaces: ``TOK`` (the current token, written by ``W_E``), ``POS`` (the position, written
by ``W_pos``), ``PREV`` (the previous token, written by the previous-token head) and
``OUT`` (the predicted token, written by the induction head and read by ``W_U``).

- Previous-token head ``L0H{PREV_HEAD}``: query reads ``POS_i`` → ``e_i``, key reads
  ``POS_j`` → ``e_{j+1}``, so the score is ``S·[j = i-1]`` (positional QK); OV copies
  ``TOK_j`` into ``PREV``. Position 0 (BOS) can only attend to itself.
- Induction head ``L1H{INDUCTION_HEAD}``: query reads ``TOK_i``, key reads ``PREV_j``
  (K-composition with the previous-token head), score ``S·[x_{j-1} = x_i]``; OV copies
  ``TOK_j`` into ``OUT``; ``W_U`` maps ``OUT_t`` to logit ``t`` with gain ``G``.

Every other head, and all biases, are exactly zero, so paths that do not exist contribute
exactly zero (ablating a non-circuit head changes no logit at all).
"""

from __future__ import annotations

import torch

from mechattr.runtime.tl import HookedTransformer, HookedTransformerConfig, require_hooked

PREV_HEAD = 1
INDUCTION_HEAD = 2
SCORE = 20.0  # attention logit of the matching key (others get 0)
GAIN = 10.0  # logit of the copied token


def planted_config(d_vocab: int = 64, n_ctx: int = 24, n_heads: int = 4) -> dict:
    """``HookedTransformerConfig`` keyword arguments of the planted model."""
    return dict(
        n_layers=2, d_model=3 * d_vocab + n_ctx, n_ctx=n_ctx, d_head=max(d_vocab, n_ctx),
        n_heads=n_heads, d_vocab=d_vocab, attn_only=True, normalization_type=None,
        positional_embedding_type="standard", act_fn="relu", d_mlp=None, seed=None,
    )


def subspaces(d_vocab: int, n_ctx: int) -> dict[str, slice]:
    """Residual-stream slices of the one-hot subspaces ``TOK``, ``POS``, ``PREV``, ``OUT``."""
    v, p = d_vocab, n_ctx
    return {"TOK": slice(0, v), "POS": slice(v, v + p), "PREV": slice(v + p, 2 * v + p), "OUT": slice(2 * v + p, 3 * v + p)}


@torch.no_grad()
def zeroed_model(config: dict, name: str) -> HookedTransformer:
    """A HookedTransformer of ``config`` with every parameter exactly zero (CPU, float32), for
    writing a planted circuit into (TransformerLens 3 only; TL 4 loads the shipped weights)."""
    require_hooked(f"building the {name} organism")
    model = HookedTransformer(HookedTransformerConfig(**config, init_weights=False), move_to_device=False)
    for p in model.parameters():
        p.zero_()
    return model


@torch.no_grad()
def build_planted(d_vocab: int = 64, n_ctx: int = 24, n_heads: int = 4) -> HookedTransformer:
    """The planted induction model (CPU, float32, eval mode, no tokenizer attached)."""
    if n_heads <= max(PREV_HEAD, INDUCTION_HEAD):
        raise ValueError(f"n_heads must exceed {max(PREV_HEAD, INDUCTION_HEAD)}, got {n_heads}")
    model = zeroed_model(planted_config(d_vocab, n_ctx, n_heads), "planted_induction")
    cfg = model.cfg
    sub = subspaces(d_vocab, n_ctx)
    tok, pos, prev, out = (torch.arange(s.start, s.stop) for s in (sub["TOK"], sub["POS"], sub["PREV"], sub["OUT"]))
    v, scale = torch.arange(d_vocab), cfg.d_head**0.5
    model.embed.W_E[v, tok] = 1.0
    model.pos_embed.W_pos[torch.arange(n_ctx), pos] = 1.0

    a0 = model.blocks[0].attn
    i = torch.arange(n_ctx)
    a0.W_Q[PREV_HEAD, pos[i], i] = SCORE * scale  # query at i -> e_i
    a0.W_K[PREV_HEAD, pos[i[:-1]], i[:-1] + 1] = 1.0  # key at j -> e_{j+1}
    a0.W_V[PREV_HEAD, tok, v] = 1.0
    a0.W_O[PREV_HEAD, v, prev] = 1.0

    a1 = model.blocks[1].attn
    a1.W_Q[INDUCTION_HEAD, tok, v] = SCORE * scale  # query: current token
    a1.W_K[INDUCTION_HEAD, prev, v] = 1.0  # key: previous token (K-composition)
    a1.W_V[INDUCTION_HEAD, tok, v] = 1.0
    a1.W_O[INDUCTION_HEAD, v, out] = 1.0

    model.unembed.W_U[out, v] = GAIN
    return model.eval()
