"""Deep copies of models that survive TransformerLens's per-forward caches.

TransformerLens 4's native bridge attention keeps the last forward's pre-LayerNorm residual
on the module (``_captured_pre_ln_residual``); after a forward with gradients on it is a
non-leaf tensor, which ``copy.deepcopy`` refuses. Such caches are overwritten by the next
forward, so the copy gets them detached.

A bridge's blocks also wire "capture" hooks lazily on their first forward (the pre-LayerNorm
residual for split-qkv forks, ``hook_mlp_in``): closures over the block's *own* submodules.
``copy.deepcopy`` copies the hook dicts but not the closures, so a copy's forward would
write the captured residual onto the original model's attention (leaving the copy's autograd
graph there) and fire the original's ``hook_mlp_in``. The copy's capture hooks are torn
down, and its blocks wire their own on its first forward.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


def deepcopy_model(model: torch.nn.Module) -> Any:
    """``copy.deepcopy(model)``, with any non-leaf tensor a submodule holds as a plain
    attribute (a per-forward cache, never a parameter or buffer) copied detached."""
    from mechattr.runtime.hooks import model_modules

    memo: dict[int, Any] = {}
    for m in model_modules(model):  # a bridge's wrapped HF model is copied too, outside its tree
        for v in vars(m).values():
            if isinstance(v, torch.Tensor) and not v.is_leaf:
                memo[id(v)] = v.detach().clone()
    work = copy.deepcopy(model, memo)
    for m in work.modules():
        teardown = getattr(m, "_teardown_capture_hooks", None)
        if callable(teardown) and getattr(m, "_capture_hook_handles", None):
            teardown()  # rewired on the copy's first forward, over the copy's own modules
    return work
