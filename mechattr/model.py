"""Model loading, device/dtype helpers, TransformerBridge support, and the model guard.

Every public mechattr function runs inside :func:`model_guard`, which restores the user's
model after the call — also when the call raises: hooks added during the call removed,
parameter ``.grad`` and ``requires_grad`` as before, train/eval mode and TransformerLens
flags (``use_split_qkv_input``, ``use_attn_result``, ``use_hook_mlp_in``, ``use_attn_in``)
restored. Weights are never written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from mechattr.runtime.arch import (
    check_model,  # noqa: F401 (re-exported)
    supports_start_at_layer,  # noqa: F401 (re-exported)
)
from mechattr.runtime.attention import fix_masked_rows
from mechattr.runtime.device import default_device, model_device, model_dtype  # noqa: F401
from mechattr.runtime.hooks import library_hook_ids, model_modules, release_graphs, tensor_attrs
from mechattr.runtime.tl import is_bridge, set_config_flags  # noqa: F401 (is_bridge re-exported)

TL_FLAGS = ("use_split_qkv_input", "use_attn_result", "use_hook_mlp_in", "use_attn_in")
from mechattr.runtime.loading import ORGANISM_PREFIX  # noqa: E402,F401


# --------------------------------------------------------------------------- the guard
def _hook_dicts(module: torch.nn.Module) -> list[dict]:
    names = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_state_dict_hooks",
    )
    return [getattr(module, n) for n in names if isinstance(getattr(module, n, None), dict)]


@contextlib.contextmanager
def model_guard(model: torch.nn.Module, *, eval_mode: bool = True, freeze_params: bool = True) -> Iterator[torch.nn.Module]:
    """Scope in which mechattr may hook and differentiate ``model``; restores it in ``finally``.

    Inside the scope the model is in eval mode (``eval_mode``) and its parameters do not
    require grad (``freeze_params``: we differentiate with respect to activations only,
    which skips weight-gradient work). On exit — normal or exceptional — we remove every
    hook added during the scope (pre-existing user hooks, and TransformerLens's own lazily
    wired bridge hooks, stay), restore each module's
    ``training`` flag, each parameter's ``requires_grad`` and ``.grad``, and the
    TransformerLens config flags. Nested guards are safe: each restores its own snapshot.
    """
    from mechattr.checks import check_model_arg

    check_model_arg(model)  # e.g. a model name string: say so instead of "'str' has no attribute 'modules'"
    modules = model_modules(model)
    hook_keys = [[set(d.keys()) for d in _hook_dicts(m)] for m in modules]
    lens_handles = [
        (m, list(getattr(m, "fwd_hooks", []) or []), list(getattr(m, "bwd_hooks", []) or []))
        for m in modules
        if hasattr(m, "fwd_hooks")
    ]
    training = [m.training for m in modules]
    cached = tensor_attrs(modules)  # a bridge's per-forward caches (release_graphs)
    fixes: list = []
    params = list(model.parameters())
    req = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    grad_vals = [g.detach().clone() if g is not None else None for g in grads]
    cfg = getattr(model, "cfg", None)
    flags = {f: getattr(cfg, f) for f in TL_FLAGS if cfg is not None and hasattr(cfg, f)}
    try:
        if eval_mode and any(training):  # eval() walks a bridge's tree twice: only when needed
            model.eval()
        if freeze_params:
            for p in params:
                p.requires_grad_(False)
        fixes = fix_masked_rows(model)  # bridges: finite gradients through fully masked rows (removed below)
        yield model
    finally:
        for h in fixes:
            h.remove()
        release_graphs(modules, cached)
        added = [(d, k) for m, keys in zip(modules, hook_keys) for d, before in zip(_hook_dicts(m), keys) for k in d if k not in before]
        if added:
            owned = library_hook_ids(model, modules)  # TransformerLens's own lazily wired hooks stay
            for d, k in added:
                if k not in owned:
                    del d[k]
        for m, fwd, bwd in lens_handles:
            m.fwd_hooks = fwd
            m.bwd_hooks = bwd
        for m, t in zip(modules, training):
            if m.training != t:
                m.training = t
        for p, r, g, v in zip(params, req, grads, grad_vals):
            if g is not None and v is not None:
                g.copy_(v)
            p.grad = g
            p.requires_grad_(r)
        set_config_flags(model, {f: v for f, v in flags.items() if getattr(cfg, f) != v})


@contextlib.contextmanager
def tl_flags(model: Any, **flags: bool) -> Iterator[None]:
    """Temporarily set TransformerLens flags (e.g. ``use_split_qkv_input=True``)."""
    for f in flags:
        if f not in TL_FLAGS:
            raise ValueError(f"unknown TransformerLens flag {f!r}; known: {list(TL_FLAGS)}")
    old = set_config_flags(model, flags)
    try:
        yield
    finally:
        set_config_flags(model, old)


# --------------------------------------------------------------------------- loading
from mechattr.runtime.loading import ModelNotFoundError, load_model  # noqa: E402,F401
