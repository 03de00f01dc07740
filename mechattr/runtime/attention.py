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

import sys
from typing import Any

import torch

from mechattr.runtime.memo import per_model
from mechattr.runtime.tl import is_bridge


def _attention_bridge() -> Any:
    """TransformerLens's ``AttentionBridge`` class, or ``None`` while no bridge can exist
    (TransformerLens's bridge not imported: imported lazily, so ``import mechattr`` stays fast)."""
    if "transformer_lens.model_bridge" not in sys.modules:
        return None
    try:
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    except ImportError:  # pragma: no cover - TransformerLens without the bridge
        return None
    return AttentionBridge

_FIX_TAG = "_mechattr_masked_row_fix"


def _attn_modules(model: Any) -> list:
    blocks = getattr(model, "blocks", None) or []
    return [getattr(b, "attn", None) for b in blocks if getattr(b, "attn", None) is not None]


def _live(attn: Any, scores: bool = False) -> bool:
    AttentionBridge = _attention_bridge()
    if AttentionBridge is None or not isinstance(attn, AttentionBridge):
        return True
    if type(attn).forward is not AttentionBridge.forward:
        return True  # the subclass rebuilds attention and fires the hooks inside it
    # a native module takes the pattern hook as ``pattern_fn`` (inside the computation) but
    # computes its scores itself: hook_attn_scores fires afterwards
    return (not scores) and bool(getattr(getattr(attn, "original_component", None), "accepts_pattern_fn", False))


def pattern_hooks_live(model: Any, *, scores: bool = False) -> bool:
    """Whether edits of (and gradients at) ``hook_pattern`` (``scores=True``:
    ``hook_attn_scores``) reach the output."""
    if not is_bridge(model):
        return True
    return all(_live(a, scores) for a in _attn_modules(model))


def require_pattern_hooks(model: Any, what: str, *, scores: bool = False) -> None:
    """Raise ``ValueError`` if ``what`` (an edit of or a gradient at the pattern, or with
    ``scores=True`` at the pre-softmax scores) would be lost."""
    if pattern_hooks_live(model, scores=scores):
        return
    from mechattr.runtime.arch import arch

    hook = "hook_attn_scores" if scores else "hook_pattern"
    raise ValueError(
        f"{what} needs {hook} inside the attention computation, but this TransformerBridge "
        f"({arch(model).architecture or type(model).__name__}) computes it inside the wrapped module and "
        f"fires the hook on the result afterwards, so edits and gradients there would be silently lost. "
        "Use a head-output site (hook_z) instead, or an architecture whose bridge rebuilds attention"
    )


@per_model
def resid_mid_live(model: Any) -> bool:
    """Whether an edit at ``blocks.L.hook_resid_mid`` reaches the residual stream (the skip
    connection around the MLP), not only the MLP's input — TransformerLens's native
    bridge module aliases ``hook_resid_mid`` to ``ln2.hook_in``. Measured once per model:
    add 1 at layer 0's ``hook_resid_mid`` while holding ``hook_mlp_out`` at its clean value;
    ``hook_resid_post`` must move by exactly 1."""
    if not is_bridge(model):
        return True
    from mechattr.runtime.arch import arch
    from mechattr.runtime.cache import cache_activations
    from mechattr.runtime.device import model_device

    a = arch(model)
    names = ("blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post")
    live = True
    if not a.attn_only and all(a.has_hook(n) for n in names):
        toks = torch.arange(min(4, a.n_ctx), device=model_device(model))[None] % a.d_vocab
        clean = cache_activations(model, toks, names[1:])
        hold = [(names[0], lambda act, hook: act + 1.0), (names[1], lambda act, hook: clean[names[1]].to(act.dtype))]
        edited = cache_activations(model, toks, names[2:], fwd_hooks=hold)[names[2]]
        live = bool(torch.allclose(edited - clean[names[2]], torch.ones_like(edited), atol=1e-3))
    return live


def require_live(model: Any, hook_names: Any, what: str) -> None:
    """Raise ``ValueError`` if an edit of (or a gradient at) any of ``hook_names`` would be
    silently lost on this model: pattern and score hooks fired after the attention
    (:func:`require_pattern_hooks`), ``hook_resid_mid`` that is only the MLP's input
    (:func:`resid_mid_live`)."""
    names = list(hook_names)
    if any(n.endswith("hook_pattern") for n in names):
        require_pattern_hooks(model, what)
    if any(n.endswith("hook_attn_scores") for n in names):
        require_pattern_hooks(model, what, scores=True)
    if any(n.endswith("hook_resid_mid") for n in names) and not resid_mid_live(model):
        raise ValueError(
            f"{what}: on this TransformerBridge hook_resid_mid is the MLP's input only (an edit there "
            f"misses the residual skip connection), so the result would be silently wrong; edit "
            f"hook_resid_pre of the next block or hook_attn_out / hook_mlp_out instead"
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
    AttentionBridge = _attention_bridge()
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
