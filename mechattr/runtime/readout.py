"""The readout: final norm + unembedding, computed only where a target reads.

On a HookedTransformer the engines stop before the final norm (``stop_at_layer``); on a
TransformerBridge they stop at the unembedding's input (:func:`forward_to_readout`) where
:func:`readout_live` has verified that this reproduces the model's logits."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechattr.runtime.hooks import forward_until
from mechattr.runtime.tl import is_bridge


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


# ----------------------------------------------------------------------------- bridges
# A HookedTransformer stops before the final norm with ``stop_at_layer``; a bridge has no
# such argument. There we end the forward at the unembedding's input (``unembed.hook_in``,
# after the final norm) by raising from a hook, and unembed only the positions a target
# reads. Whether that reproduces the model's logits (no soft-capping, scaling or other op
# after the unembedding) is measured once per model.
READOUT_HOOK = "unembed.hook_in"
_LIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forward_to_readout(model: Any, inp: Tensor, **kw: Any) -> Tensor:
    """The unembedding's input ``[rows, pos, d_model]`` of a bridge's forward on ``inp``
    (tokens), without computing the unembedding; gradients flow through it."""
    return forward_until(model, inp, READOUT_HOOK, **kw)


def readout_live(model: Any) -> bool | None:
    """Whether :func:`forward_to_readout` + :func:`unembed` at chosen positions gives this
    bridge's own logits there: ``True``/``False`` once measured, ``None`` before (and
    ``False`` for a model that is not a bridge). Measured by :func:`logits_checking_readout`
    on the first real forward, so no extra forward ever runs."""
    if not is_bridge(model):
        return False
    try:
        return _LIVE.get(model)
    except TypeError:  # pragma: no cover - unhashable module
        return False


def logits_checking_readout(model: Any, inp: Tensor, idx: Tensor, **kw: Any) -> Tensor:
    """Full logits of ``model(inp, **kw)``; on a bridge whose readout is not yet measured,
    the same forward also captures the unembedding's input and records whether unembedding
    it at positions ``idx [rows, k]`` reproduces the logits there (no soft-capping, scaling
    or other op after the unembedding)."""
    if not is_bridge(model) or readout_live(model) is not None or READOUT_HOOK not in (getattr(model, "hook_dict", None) or {}):
        return model(inp, **kw)
    store: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any = None) -> Tensor:
        store["x"] = act
        return act

    with model.hooks(fwd_hooks=[(READOUT_HOOK, keep)]):
        logits = model(inp, **kw)
    live = False
    if "x" in store:
        with torch.no_grad():
            x = store["x"].detach()
            sel = x.gather(1, idx[:, :, None].to(x.device).expand(-1, -1, x.shape[-1]))
            mine = unembed(model, sel).float()
            ref = logits.detach().gather(1, idx[:, :, None].to(logits.device).expand(-1, -1, logits.shape[-1])).float()
            live = mine.shape == ref.shape and bool(torch.allclose(mine, ref, atol=1e-4, rtol=1e-4))
    try:
        _LIVE[model] = live
    except TypeError:  # pragma: no cover
        pass
    return logits
