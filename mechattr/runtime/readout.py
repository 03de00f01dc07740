"""The readout: final norm + unembedding, computed only where a target reads."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor


def logits_at(model: Any, resid: Float[Tensor, "batch pos d_model"], positions: Int[Tensor, "batch k"]) -> Float[Tensor, "batch k vocab"]:
    """Final LayerNorm + unembedding applied only at ``positions`` of the final residual."""
    sel = resid.gather(1, positions.to(resid.device)[:, :, None].expand(-1, -1, resid.shape[-1]))
    return final_logits(model, sel)


def final_logits(model: Any, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """Final LayerNorm (absent when ``normalization_type`` is None) and unembedding."""
    ln = getattr(model, "ln_final", None)
    return unembed(model, ln(resid) if ln is not None else resid)


def unembed(model: Any, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """``resid @ W_U + b_U`` through the model's unembedding hooks.

    TransformerLens's ``Unembed.forward`` copies ``W_U.T`` on every call (51 MB at GPT-2's
    vocabulary); multiplying by ``W_U`` directly gives the same numbers without the copy.
    Falls back to ``model.unembed`` for modules without ``W_U`` (e.g. bridges).
    """
    u = model.unembed
    if not (hasattr(u, "W_U") and hasattr(u, "hook_in") and hasattr(u, "hook_out") and hasattr(u, "b_U")):
        return u(resid)
    return u.hook_out(torch.addmm(u.b_U, u.hook_in(resid).reshape(-1, resid.shape[-1]), u.W_U).reshape(*resid.shape[:-1], -1))
