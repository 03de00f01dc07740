"""Token embeddings in the space attribution happens in: the value at ``hook_embed``.

Token attribution integrates over ``hook_embed``; a token-id baseline or a ``pad``/``mask``
replacement must be that token's ``hook_embed`` value on *this* model, which is not
always a row of ``W_E``: Gemma multiplies embeddings by √d_model, Bloom applies a
LayerNorm to them, and a bridge's ``hook_embed`` fires on whatever the HF embedding
module returns. :func:`embed_tokens` runs the model's own embedding path up to
``hook_embed`` (and no further), so the values are right by definition on every model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechattr.runtime.device import model_device
from mechattr.runtime.hooks import forward_until

_CHUNK = 4096


def embed_tokens(model: Any, ids: Tensor) -> Tensor:
    """``hook_embed`` values ``[*ids.shape, d_model]`` of token ids (each run on its own,
    so no positional information enters; values are detached, on the model's device)."""
    ids = torch.as_tensor(ids).long()
    vocab = int(model.cfg.d_vocab)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"token ids outside the vocabulary 0..{vocab - 1} (min {int(ids.min())}, max {int(ids.max())})")
    flat = ids.reshape(-1).to(model_device(model))
    uniq, inverse = torch.unique(flat, return_inverse=True)
    out = []
    for chunk in uniq.split(_CHUNK):
        with torch.no_grad():
            out.append(forward_until(model, chunk[:, None], "hook_embed")[:, 0].detach())
    emb = torch.cat(out) if out else torch.zeros(0, int(model.cfg.d_model), device=flat.device)
    return emb[inverse].reshape(*ids.shape, emb.shape[-1])


def vocab_embeddings(model: Any) -> Tensor:
    """``[d_vocab, d_model]``: the ``hook_embed`` value of every token."""
    return embed_tokens(model, torch.arange(int(model.cfg.d_vocab)))
