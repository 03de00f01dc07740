"""The one activation cache: activations at named hook points of one forward pass."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mechattr.runtime.arch import supports_start_at_layer
from mechattr.runtime.hooks import _Stop, hooked

LAYER_RE = re.compile(r"^blocks\.(\d+)\.")
EMBED_HOOKS = ("hook_embed", "hook_pos_embed")  # fire before block 0


def hook_layer(name: str) -> int | None:
    """Block index of a ``blocks.L.…`` hook name (``None`` for embeddings/final hooks)."""
    m = LAYER_RE.match(name)
    return int(m.group(1)) if m else None


def cache_activations(
    model: Any,
    tokens: Tensor,
    names: Sequence[str],
    *,
    attention_mask: Tensor | None = None,
    fwd_hooks: Sequence[tuple[str, Callable]] = (),
    repeat: int = 1,
    allow_missing: bool = False,
) -> dict[str, Tensor]:
    """Activations at ``names`` (full hook names) of one forward pass of ``tokens``.

    ``fwd_hooks`` run before the caching hooks (edits); ``repeat`` stacks the tokens that
    many times (variant-major) first. Activations are keyed by the requested name (a
    bridge may fire an aliased hook under another name). On a HookedTransformer the forward
    stops after the last block it needs (before block 0 for embedding hooks). ``ValueError`` naming any hook that never fired
    (unless ``allow_missing``: a bridge may list hook points its architecture never fires).
    """
    names = list(dict.fromkeys(names))
    store: dict[str, Tensor] = {}

    # A model without ``stop_at_layer`` (a bridge) ends its forward once every name has
    # fired (each hook point fires once per forward; later edits cannot change them).
    stop_early = not supports_start_at_layer(model)

    def grabber(name: str) -> Callable:
        def grab(act: Tensor, hook: Any) -> Tensor:
            store[name] = act.detach().clone()
            if stop_early and len(store) == len(names):
                raise _Stop
            return act

        return grab

    inp = tokens.repeat(repeat, 1) if repeat > 1 else tokens
    mask = None if attention_mask is None else attention_mask.repeat(repeat, 1)
    kw: dict[str, Any] = {} if mask is None else {"attention_mask": mask}
    # blocks each name needs run (0: an embedding hook); None: a hook after the blocks
    layers = [hook_layer(x) for x in names]
    ends = [0 if x in EMBED_HOOKS else (None if L is None else L + 1) for x, L in zip(names, layers)]
    if supports_start_at_layer(model) and names and all(e is not None for e in ends):
        kw["stop_at_layer"] = max(ends)  # type: ignore[type-var]
    try:
        with torch.no_grad(), hooked(model, [*fwd_hooks, *[(x, grabber(x)) for x in names]]):
            model(inp, **kw)
    except _Stop:
        pass
    missing = [x for x in names if x not in store]
    if missing and not allow_missing:
        raise ValueError(f"the model has no hook points {missing}")
    return store


def cache_pair(model: Any, src: Any, base: Any, src_names: list[str], base_names: list[str]) -> tuple[dict, dict]:
    """``src`` activations at ``src_names`` and ``base`` ones at ``base_names``, one forward.

    ``src`` and ``base`` are :class:`mechattr.inputs.Batch` of the same shape.
    """
    B = src.shape[0]
    mask = None
    if src.attention_mask is not None or base.attention_mask is not None:
        mask = torch.cat([src.mask_or_ones(), base.mask_or_ones()])
    names = sorted(set(src_names) | set(base_names))
    acts = cache_activations(model, torch.cat([src.tokens, base.tokens]), names, attention_mask=mask)
    return {n: acts[n][:B] for n in src_names}, {n: acts[n][B:] for n in base_names}
