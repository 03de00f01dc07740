"""Deep copies of models that survive TransformerLens's per-forward caches.

TransformerLens 4's native bridge attention keeps the last forward's pre-LayerNorm residual
on the module (``_captured_pre_ln_residual``); after a forward with gradients on it is a
non-leaf tensor, which ``copy.deepcopy`` refuses. Such caches are overwritten by the next
forward, so the copy gets them detached.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


def deepcopy_model(model: torch.nn.Module) -> Any:
    """``copy.deepcopy(model)``, with any non-leaf tensor a submodule holds as a plain
    attribute (a per-forward cache, never a parameter or buffer) copied detached."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        for v in vars(m).values():
            if isinstance(v, torch.Tensor) and not v.is_leaf:
                memo[id(v)] = v.detach().clone()
    return copy.deepcopy(model, memo)
