"""Activation patching at every standard site, batched; path patching lives in ``path_patching``.

Activation patching (Heimersheim & Nanda 2024, "How to use and interpret activation
patching"): run one input and overwrite a single component's activation with its value
from the other input. ``direction="denoise"`` runs ``corrupted`` and patches in ``clean``
activations (TransformerLens's ``patching.get_act_patch_*`` convention: same numbers),
``"noise"`` runs ``clean`` and patches in ``corrupted``. Each entry is the batch-mean
target of one patched run; all patched runs are variants of one batched engine run.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from mechattr.inputs import prepare_pair
from mechattr.interventions.path_patching import path_patch
from mechattr.interventions.result import InterventionResult
from mechattr.interventions.variants import (
    Edit,
    Mode,
    Variant,
    base_hooks,
    run_variants,
)
from mechattr.io import versions
from mechattr.model import check_model, model_guard
from mechattr.runtime.arch import arch
from mechattr.runtime.attention import require_pattern_hooks
from mechattr.runtime.cache import cache_pair
from mechattr.targets import check_target_rows

__all__ = ["Site", "Direction", "activation_patch", "path_patch"]


class Site(Enum):
    """Where to patch: a residual/block output per layer, or one head's vectors/pattern."""

    RESID_PRE = "resid_pre"
    ATTN_OUT = "attn_out"
    MLP_OUT = "mlp_out"
    HEAD_OUT = "head_out"
    HEAD_Q = "head_q"
    HEAD_K = "head_k"
    HEAD_V = "head_v"
    PATTERN = "pattern"

    @property
    def hook(self) -> str:
        """Hook suffix inside ``blocks.L.``."""
        return {
            "resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
            "head_out": "attn.hook_z", "head_q": "attn.hook_q", "head_k": "attn.hook_k",
            "head_v": "attn.hook_v", "pattern": "attn.hook_pattern",
        }[self.value]

    @property
    def per_head(self) -> bool:
        return self.value.startswith("head") or self is Site.PATTERN

    def index(self, head: int | None, pos: int | None) -> tuple:
        """Index into one example's activation (``pattern``: ``pos`` is the query position)."""
        p = slice(None) if pos is None else pos
        if not self.per_head:
            return () if pos is None else (pos,)
        if self is Site.PATTERN:
            return (head,) if pos is None else (head, pos)
        return (p, head)


class Direction(Enum):
    """``denoise``: run corrupted, patch in clean. ``noise``: run clean, patch in corrupted."""

    DENOISE = "denoise"
    NOISE = "noise"


def _parse(enum: type[Enum], value: Any, what: str) -> Any:
    if isinstance(value, enum):
        return value
    names = [m.value for m in enum]  # type: ignore[attr-defined]
    if isinstance(value, str) and value in names:
        return enum(value)
    raise ValueError(f"unknown {what} {value!r}; allowed: {names}")


def activation_patch(
    model: Any,
    clean: Any,
    corrupted: Any,
    target: Callable | None = None,
    *,
    site: str | Site = "head_out",
    per_position: bool = False,
    direction: str | Direction = "denoise",
    batch_size: int | None = None,
    attention_mask: Any = None,
    return_result: bool = False,
) -> Tensor | InterventionResult:
    """Batch-mean target with one component's activation patched, for every component.

    Sites ``resid_pre``, ``attn_out``, ``mlp_out`` give ``[n_layers]`` (``[n_layers, pos]``
    with ``per_position``); ``head_out`` (``hook_z``), ``head_q|k|v`` and ``pattern``
    (``hook_pattern``; per position = per query position) give ``[n_layers, n_heads]``
    (``[n_layers, n_heads, pos]``). Float32 on the model's device; ``return_result=True``
    gives an :class:`InterventionResult` (with the unpatched ``clean``/``corrupted`` means).

    Grouped- and multi-query attention: at ``head_k``/``head_v`` the component is the
    *key/value head* — ``hook_k``/``hook_v`` hold ``n_kv_heads`` heads — so the grid is
    ``[n_layers, n_kv_heads]`` (entries named ``L{layer}KV{kv}``), and patching key/value
    head ``kv`` changes the keys/values of every query head of its group
    (:meth:`mechattr.runtime.arch.Arch.query_heads`). For one query head's own key or value
    input, use :func:`path_patch` receivers ``(layer, h, "k"|"v")``.
    """
    check_model(model)
    with model_guard(model), torch.no_grad():
        s = _parse(Site, site, "site")
        d = _parse(Direction, direction, "direction")
        if not isinstance(per_position, bool):
            raise ValueError(f"per_position must be True or False, got {per_position!r}")
        if s is Site.PATTERN:
            require_pattern_hooks(model, "activation_patch(site='pattern')")
        if s is Site.MLP_OUT and model.cfg.attn_only:
            raise ValueError("site='mlp_out' but the model is attention-only (it has no MLPs)")
        c, x = prepare_pair(model, clean, corrupted, attention_mask)
        check_target_rows(target, c.shape[0])
        base, src = (x, c) if d is Direction.DENOISE else (c, x)
        n_l, n_pos = model.cfg.n_layers, c.shape[1]
        hooks = [f"blocks.{layer}.{s.hook}" for layer in range(n_l)]
        n_h = arch(model).heads_at(hooks[0])  # head_k/head_v under GQA/MQA: the key/value heads
        kv = n_h != arch(model).n_heads
        heads: list[int | None] = list(range(n_h)) if s.per_head else [None]
        positions: list[int | None] = list(range(n_pos)) if per_position else [None]
        plan = [(layer, h, p) for layer in range(n_l) for h in heads for p in positions]
        # one stacked forward caches the source activations and the base run's entry points
        names = base_hooks(model, [Variant((Edit(hooks[layer], s.index(h, p), Mode.ZERO),)) for layer, h, p in plan])
        acts, base_cache = cache_pair(model, src, base, hooks, names)
        variants, names = [Variant((), "unpatched_base")], []
        for layer, h, p in plan:
            hook = hooks[layer]
            if p is None or p == 0:
                names.append(f"{s.value}{layer}" if h is None else f"L{layer}KV{h}" if kv else f"L{layer}H{h}")
            variants.append(Variant((Edit(hook, s.index(h, p), Mode.PATCH, acts[hook]),), names[-1]))
        out = run_variants(model, base.tokens, variants, target, attention_mask=base.attention_mask, batch_size=batch_size, base_cache=base_cache)
        means = out.mean(1).float()
        shape = [n_l] + ([n_h] if s.per_head else []) + ([n_pos] if per_position else [])
        scores = means[1:].reshape(shape)
    if not return_result:
        return scores
    with model_guard(model), torch.no_grad():
        other = run_variants(model, src.tokens, [Variant()], target, attention_mask=src.attention_mask)
    base_name, src_name = ("corrupted", "clean") if d is Direction.DENOISE else ("clean", "corrupted")
    settings = {"site": s.value, "direction": d.value, "per_position": per_position, "batch_size": batch_size,
                base_name: float(means[0]), src_name: float(other.mean()),
                "target": target.describe() if hasattr(target, "describe") else repr(target), "versions": versions()}
    axes = ("layer",) + (("head",) if s.per_head else ()) + (("pos",) if per_position else ())
    return InterventionResult(scores, names, axes, "activation_patch", settings)
