"""Attention-pattern facts of TransformerBridges: where pattern hooks are live, and NaN-free
gradients through fully masked rows.

Live pattern hooks. A bridge whose attention component is TransformerLens's plain
``AttentionBridge`` (GPT-J, GPT-Neo and OPT on TransformerLens 3.9 and 4.3) delegates the
whole attention to the HF module and fires ``hook_pattern`` (and ``hook_attn_scores``, with
the *post*-softmax weights) on the weights HF returns, after the output is computed: edits
there are ignored and gradients there are zero. Subclasses that rebuild attention
(``JointQKVAttentionBridge``, ``PositionEmbeddingsAttentionBridge``, Bloom's, ...) and
native modules that take a ``pattern_fn`` (``accepts_pattern_fn``) run the pattern through
the hook inside the computation. :func:`pattern_hooks_live` tells them apart;
:func:`require_pattern_hooks` raises a clear error where edits or gradients would be
silently lost.

Fully masked rows. In compatibility mode a bridge masks with ``-inf``; a query row whose
keys are all masked (a left-pad query position) gives ``softmax = NaN``, which the bridge
replaces by 0 in the forward pass — but softmax's backward still multiplies by the NaN
weights, so every gradient of that batch row is NaN. :func:`fix_masked_rows` adds, for the
scope of a model guard, a hook on ``hook_attn_scores`` that sets such rows to 0 (finite
softmax) and one on ``hook_pattern`` that zeroes them again: the forward pass is unchanged
(those rows are 0, as on a HookedTransformer) and their gradient is 0 instead of NaN.
"""

from __future__ import annotations

from typing import Any

import torch

from mechattr.runtime.tl import is_bridge

try:
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
except ImportError:  # pragma: no cover - TransformerLens without the bridge
    AttentionBridge = None  # type: ignore[assignment,misc]

_FIX_TAG = "_mechattr_masked_row_fix"


def _attn_modules(model: Any) -> list:
    blocks = getattr(model, "blocks", None) or []
    return [getattr(b, "attn", None) for b in blocks if getattr(b, "attn", None) is not None]


def _live(attn: Any) -> bool:
    if AttentionBridge is None or not isinstance(attn, AttentionBridge):
        return True
    if type(attn).forward is not AttentionBridge.forward:
        return True  # the subclass rebuilds attention and fires the hooks inside it
    return bool(getattr(getattr(attn, "original_component", None), "accepts_pattern_fn", False))


def pattern_hooks_live(model: Any) -> bool:
    """Whether edits of (and gradients at) ``hook_pattern`` / ``hook_attn_scores`` reach the output."""
    if not is_bridge(model):
        return True
    return all(_live(a) for a in _attn_modules(model))


def require_pattern_hooks(model: Any, what: str) -> None:
    """Raise ``ValueError`` if ``what`` (an edit of or a gradient at the pattern) would be lost."""
    if pattern_hooks_live(model):
        return
    from mechattr.runtime.arch import arch

    raise ValueError(
        f"{what} needs hook_pattern/hook_attn_scores inside the attention computation, but this "
        f"TransformerBridge ({arch(model).architecture or type(model).__name__}) runs attention inside "
        f"the HF module and fires those hooks on the returned weights afterwards, so edits and "
        f"gradients there would be silently lost (TransformerLens's plain AttentionBridge). Use a "
        f"head-output site (hook_z) instead, or an architecture whose bridge rebuilds attention"
    )


def _scores_hook(state: dict):
    def hook(module: Any, inputs: Any, output: Any) -> Any:
        state.clear()
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return None
        full = torch.isneginf(output).all(-1, keepdim=True)
        if not bool(full.any()):
            return None
        state["full"] = full
        return output.masked_fill(full, 0.0)

    setattr(hook, _FIX_TAG, True)
    return hook


def _pattern_hook(state: dict):
    def hook(module: Any, inputs: Any, output: Any) -> Any:
        full = state.pop("full", None)
        if full is None or not isinstance(output, torch.Tensor) or full.shape[:-1] != output.shape[:-1]:
            return None
        return output.masked_fill(full, 0.0)

    setattr(hook, _FIX_TAG, True)
    return hook


def fix_masked_rows(model: Any) -> list:
    """Add the fully-masked-row hooks (see the module docstring) where needed; return the handles.

    Only on bridges in compatibility mode, at attention components that rebuild attention
    and fire ``hook_attn_scores`` inside it (HF's own attention masks with a finite minimum). Idempotent: a model that
    already carries the hooks (an enclosing guard) gets none. The caller removes the handles
    (``model_guard`` removes every hook added in its scope).
    """
    if not is_bridge(model) or not getattr(model, "compatibility_mode", False):
        return []
    handles = []
    for attn in _attn_modules(model):
        if AttentionBridge is None or type(attn).forward is AttentionBridge.forward:
            continue  # HF's attention (finite masks) or a native module: no hook_attn_scores inside
        scores, pattern = getattr(attn, "hook_attn_scores", None), getattr(attn, "hook_pattern", None)
        if scores is None or pattern is None:
            continue
        if any(getattr(h, _FIX_TAG, False) for h in scores._forward_hooks.values()):
            continue
        state: dict = {}
        handles.append(scores.register_forward_hook(_scores_hook(state)))
        handles.append(pattern.register_forward_hook(_pattern_hook(state)))
    return handles
