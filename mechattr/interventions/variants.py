"""The variant engine: many interventions on one forward pass, stacked along the batch.

A *variant* is a forward pass of the base input with a few *edits*; an edit replaces part
of one activation (a hook point) with values given by a :class:`Mode` — zero, a mean, a
resampled reference row, or the activation of another run (patching). Every ablation and
patch in mechattr goes through the one core :func:`intervene` (pyvene's
``_do_intervention_by_swap`` in spirit).

The engine (:func:`run_variants`) stacks ``V`` variants × ``B`` examples variant-major
(row ``v·B + b`` is example ``b`` under variant ``v``), installs one hook per site that
applies each row block's edits, and chunks by ``batch_size`` rows. Variants whose first
edit is at layer ``L`` start from the base run's cached residual at layer ``L``
(``start_at_layer``; HookedTransformer only). With a :class:`mechattr.targets.Target` the
last block, the final LayerNorm and the unembedding run only where the target reads
(:mod:`mechattr.runtime.blocks`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechattr.model import model_guard
from mechattr.runtime import blocks as lastblock
from mechattr.runtime.arch import supports_start_at_layer
from mechattr.runtime.attention import require_live
from mechattr.runtime.cache import LAYER_RE as _LAYER_RE
from mechattr.runtime.cache import cache_activations as _cache
from mechattr.runtime.chunks import max_rows
from mechattr.runtime.hooks import hooked
from mechattr.targets import Target, check_finite, check_target_rows, run_target, target_values


class Mode(Enum):
    """What an edit writes: zeros, a reference mean, resampled reference rows, a patch, or
    the activation plus a difference (``ADD``: row ``b`` gets ``values[b]`` added)."""

    ZERO = "zero"
    MEAN = "mean"
    RESAMPLE = "resample"
    PATCH = "patch"
    ADD = "add"

    @classmethod
    def parse(cls, mode: Any, allowed: Sequence[Mode] | None = None) -> Mode:
        """``Mode`` from a string or a ``Mode``; ``ValueError`` listing the allowed ones."""
        allowed = list(allowed or cls)
        names = [m.value for m in allowed]
        if isinstance(mode, cls) and mode in allowed:
            return mode
        if isinstance(mode, str) and mode in names:
            return cls(mode)
        raise ValueError(f"unknown mode {mode!r}; allowed: {names}")


@dataclass(frozen=True, eq=False)
class Edit:
    """Replace ``activation[example][index]`` at hook ``hook`` (full name) per ``mode``.

    ``index`` indexes one example's activation (no batch axis): e.g. ``(slice(None), h)``
    for head ``h`` of ``hook_z`` (``[pos, head, d_head]``), ``(h,)`` for its pattern.
    ``values`` has the activation's shape with a leading axis of ``B`` (one row per
    example: PATCH, RESAMPLE) or ``1`` (MEAN); ``None`` for ZERO.
    """

    hook: str
    index: tuple
    mode: Mode
    values: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.values is None) != (self.mode is Mode.ZERO):
            raise ValueError(f"{self.mode} edit at {self.hook}: values must be given iff the mode is not ZERO")

    @property
    def layer(self) -> int | None:
        m = _LAYER_RE.match(self.hook)
        return int(m.group(1)) if m else None


@dataclass(frozen=True, eq=False)
class Variant:
    """One forward pass of the base input with ``edits`` applied in order."""

    edits: tuple[Edit, ...] = ()
    name: str = ""

    def start_layer(self, n_layers: int) -> int | None:
        """First layer this variant changes (``None``: it edits embeddings, run from tokens)."""
        if not self.edits:
            return n_layers - 1
        layers = [e.layer for e in self.edits]
        return None if any(x is None for x in layers) else min(layers)  # type: ignore[type-var]


def pos_axis(hook: str) -> int:
    """Position (query) axis of one example's activation at ``hook``."""
    return 1 if hook.endswith(("hook_pattern", "hook_attn_scores")) else 0


def intervene(act: Tensor, rows: slice, edit: Edit, pos_idx: Tensor | None = None, n_pos: int | None = None) -> None:
    """The one intervention core: ``act[rows][edit.index] ← values`` (in place).

    By ``edit.mode``: ``ZERO`` writes 0; ``MEAN`` broadcasts its single row of values;
    ``RESAMPLE`` and ``PATCH`` write values row ``b`` into example ``b``; ``ADD`` adds values
    row ``b`` (or a single broadcast row) to example ``b``.
    ``rows`` is a block of ``B`` rows, one per example. ``pos_idx`` (``[B, k]``),
    when given, says the activation holds only positions ``pos_idx`` of each row (the
    last block at the target's positions, of a sequence of ``n_pos``); the edit then
    writes its values where its index meets those positions.
    """
    if pos_idx is None:
        sel = (rows, *edit.index)
        if edit.mode is Mode.ADD:
            act[sel] = act[sel] + edit.values[(slice(None), *edit.index)].to(act.device, act.dtype)  # type: ignore[index]
            return
        act[sel] = 0.0 if edit.values is None else edit.values[(slice(None), *edit.index)].to(act.dtype)
        return
    block = act[rows]
    ax = pos_axis(edit.hook)
    full = list(block.shape[1:])
    full[ax] = int(n_pos if n_pos is not None else edit.values.shape[1 + ax])  # type: ignore[union-attr]
    # which entries of one example's full activation the edit writes, gathered at pos_idx
    mask = torch.zeros(full, dtype=torch.bool, device=act.device)
    mask[edit.index] = True
    g = _gather_pos(mask[None].expand(block.shape[0], *full), pos_idx, ax)
    if edit.values is None:
        new = torch.zeros_like(block)
    else:
        v = edit.values.to(act.device, act.dtype)
        v = v.expand(block.shape[0], *v.shape[1:]) if v.shape[0] == 1 else v
        new = _gather_pos(v, pos_idx, ax)
        if edit.mode is Mode.ADD:
            new = block + new
    act[rows] = torch.where(g, new, block)


def _gather_pos(x: Tensor, pos_idx: Tensor, ax: int) -> Tensor:
    """``x[b, ..., pos_idx[b, i], ...]`` along example axis ``ax`` (tensor axis ``ax + 1``)."""
    dim = ax + 1
    shape = [1] * x.ndim
    shape[0], shape[dim] = pos_idx.shape
    idx = pos_idx.reshape(shape)
    tgt = list(x.shape)
    tgt[dim] = pos_idx.shape[1]
    return x.gather(dim, idx.expand(tgt))


# ----------------------------------------------------------------------------- hooks
@dataclass
class _Chunk:
    """Variants of one forward pass: slot ``j`` owns rows ``[j·B, (j+1)·B)``."""

    variants: list[Variant]
    n_examples: int
    n_pos: int = 0
    pos_idx: Tensor | None = None  # set while the last block runs at target positions
    sub_hooks: frozenset = field(default_factory=frozenset)

    def hooks(self) -> list[tuple[str, Callable]]:
        """One hook per site; each applies every slot's edits at that site."""
        by_site: dict[str, list[tuple[int, Edit]]] = {}
        for j, var in enumerate(self.variants):
            for e in var.edits:
                by_site.setdefault(e.hook, []).append((j, e))
        return [(name, self._hook(name, edits)) for name, edits in by_site.items()]

    def _hook(self, name: str, edits: list[tuple[int, Edit]]) -> Callable:
        b = self.n_examples

        def hook(act: Tensor, hook: Any = None) -> Tensor:
            sub = self.pos_idx if name in self.sub_hooks else None
            act = act.clone()  # a bridge may hand a hook the residual itself (hook_mlp_in): never edit it in place
            for j, e in edits:
                rows = slice(j * b, (j + 1) * b)
                intervene(act, rows, e, None if sub is None else sub[rows], self.n_pos)
            return act

        return hook


def cache_activations(model: Any, tokens: Tensor, names: Sequence[str], *, attention_mask: Tensor | None = None, variants: Sequence[Variant] = ()) -> dict[str, Tensor]:
    """Activations at ``names`` of one forward pass of ``tokens`` with ``variants``' edits
    (stacked variant-major: ``V·B`` rows); :func:`mechattr.runtime.cache_activations`."""
    hooks = edit_hooks(variants, tokens.shape[0], tokens.shape[1]) if variants else []
    return _cache(model, tokens, names, attention_mask=attention_mask, fwd_hooks=hooks, repeat=len(variants) or 1)


def edit_hooks(variants: Sequence[Variant], n_examples: int, n_pos: int) -> list[tuple[str, Callable]]:
    """``(hook name, fn)`` pairs applying ``variants``' edits to a variant-major stack."""
    return _Chunk(list(variants), n_examples, n_pos).hooks()


# ----------------------------------------------------------------------------- engine
def run_variants(
    model: Any,
    tokens: Tensor,
    variants: Sequence[Variant],
    target: Callable,
    *,
    attention_mask: Tensor | None = None,
    batch_size: int | None = None,
    base_cache: dict[str, Tensor] | None = None,
) -> Float[Tensor, "variants batch"]:
    """Target values of every variant: ``out[v, b]`` = target of example ``b`` under ``v``.

    ``tokens`` ``[B, pos]`` is the base input. Variants are grouped by the first layer
    ``L`` they edit; each group starts from the base run's ``blocks.L.hook_resid_pre``
    (cached here, or given in ``base_cache`` by full hook name) when the model supports
    ``start_at_layer``, and from the tokens otherwise. Groups whose edits at ``L`` all
    come after the attention (``hook_z`` … ``hook_resid_post``) start from the base
    run's ``blocks.L.attn.hook_z`` instead, skipping block ``L``'s attention; groups
    whose edits at ``L`` start at ``hook_q/k/v`` or the pattern start from the cached
    ``q, k, v`` (skipping LayerNorm and projections).
    ``batch_size`` caps the rows per forward (rounded down to whole variants, ≥ 1;
    default :func:`max_rows`: cache-sized on CPU, ``DEFAULT_MAX_ROWS`` elsewhere).
    """
    with model_guard(model), torch.no_grad():
        require_live(model, {e.hook for v in variants for e in v.edits}, "an intervention")
        check_target_rows(target, tokens.shape[0])
        return _run_variants(model, tokens, variants, target, attention_mask, batch_size, base_cache)


def _run_variants(model: Any, tokens: Tensor, variants: Sequence[Variant], target: Callable, attention_mask: Tensor | None, batch_size: int | None, base_cache: dict[str, Tensor] | None) -> Tensor:
    B, n_pos = tokens.shape
    per = max(1, max_rows(model, n_pos, batch_size, tokens.device) // B)
    entries = _entries(model, variants)
    names = base_hooks(model, variants)
    base = dict(base_cache or {})
    missing = sorted(n for n in names if n not in base)
    if missing:
        base.update(cache_activations(model, tokens, missing, attention_mask=attention_mask))
    out = torch.empty(len(variants), B, device=tokens.device)
    order = sorted(range(len(variants)), key=lambda i: (-1 if entries[i][0] is None else entries[i][0], entries[i][1]))
    i = 0
    while i < len(order):
        s, kind = entries[order[i]]
        group = [order[i]]
        while len(group) < per and i + len(group) < len(order) and entries[order[i + len(group)]] == (s, kind):
            group.append(order[i + len(group)])
        i += len(group)
        chunk = _Chunk([variants[g] for g in group], B, n_pos)
        inp = tokens if s is None else base[f"blocks.{s}.hook_resid_pre"]
        inp = inp.repeat(len(group), *[1] * (inp.ndim - 1))
        mid: dict[str, Any] = {}
        if kind == "z":
            mid["z"] = base[f"blocks.{s}.attn.hook_z"].repeat(len(group), 1, 1, 1)
        elif kind == "qkv":
            mid["qkv"] = tuple(base[f"blocks.{s}.attn.hook_{w}"].repeat(len(group), 1, 1, 1) for w in "qkv")
        vals = _forward_target(model, inp, target, chunk, start=s, attention_mask=attention_mask, n_examples=B, mid=mid)
        out[group] = vals.reshape(len(group), B).to(out.device)
    return check_finite(out, "target under an intervention")


def _entries(model: Any, variants: Sequence[Variant]) -> list[tuple[int | None, str]]:
    use_start = supports_start_at_layer(model)
    mid_ok = use_start and lastblock.supported(model)
    return [_entry(v, model.cfg.n_layers, mid_ok) if use_start else (None, "resid") for v in variants]


def base_hooks(model: Any, variants: Sequence[Variant]) -> list[str]:
    """Hooks of the base run that :func:`run_variants` starts ``variants`` from."""
    names = set()
    for s, kind in _entries(model, variants):
        if s is not None:
            names.add(f"blocks.{s}.hook_resid_pre")
        if kind == "z":
            names.add(f"blocks.{s}.attn.hook_z")
        elif kind == "qkv":
            names |= {f"blocks.{s}.attn.hook_{w}" for w in "qkv"}
    return sorted(names)


def _entry(v: Variant, n_layers: int, mid_ok: bool) -> tuple[int | None, str]:
    """(first layer ``L``, where to enter it): ``"z"`` if all edits in ``L`` come after the
    attention, ``"qkv"`` if they start at ``hook_q/k/v`` or the pattern, else ``"resid"``."""
    s = v.start_layer(n_layers)
    if s is None or not mid_ok:
        return s, "resid"
    pre = f"blocks.{s}."
    at = [e.hook[len(pre):] for e in v.edits if e.hook.startswith(pre)]
    if not at:
        return s, "resid"
    if all(h in lastblock.POST_ATTN_SUFFIXES for h in at):
        return s, "z"
    if all(h in lastblock.POST_ATTN_SUFFIXES or h in lastblock.QKV_SUFFIXES for h in at):
        return s, "qkv"
    return s, "resid"


def _forward_target(model: Any, inp: Tensor, target: Callable, chunk: _Chunk, *, start: int | None, attention_mask: Tensor | None, n_examples: int, mid: dict[str, Any] | None = None) -> Tensor:
    """Run one chunk from ``start`` to target values.

    ``inp``: tokens (``start=None``) or the residual entering block ``start``; ``mid``:
    cached ``{"z": z}`` or ``{"qkv": (q, k, v)}`` of block ``start`` to enter it there.
    """
    rows, n_pos = inp.shape[0], inp.shape[1]
    mask_rows = None if attention_mask is None else attention_mask.repeat(rows // n_examples, 1)
    fast = isinstance(target, Target) and lastblock.supported(model)
    last = model.cfg.n_layers - 1
    mid = mid or {}
    with hooked(model, chunk.hooks()):
        if mid and start is not None and start < last:
            inp = lastblock.block_from(model, start, inp, attention_mask=mask_rows, **mid)
            start, mid = start + 1, {}
        if not fast:
            if mid:  # plain callable target, entering the last block inside it
                logits = lastblock.final_logits(model, lastblock.block_from(model, last, inp, attention_mask=mask_rows, **mid))
                return target_values(target, logits, attention_mask, n_examples=n_examples)
            return run_target(model, inp, target, attention_mask=attention_mask, start_at_layer=start, n_examples=n_examples)
        t = target if rows == n_examples else target.take(torch.arange(rows, device=inp.device) % n_examples)
        idx = t.positions(rows, n_pos, mask_rows, inp.device)
        if not mid and start is not None and start < last:
            inp = lastblock.run_blocks(model, start, last, inp, mask_rows)
        elif start is None:
            kw: dict[str, Any] = {"stop_at_layer": last}
            if mask_rows is not None:
                kw["attention_mask"] = mask_rows
            inp = model(inp, **kw)
        chunk.pos_idx, chunk.sub_hooks = idx, lastblock.query_side_hooks(model)
        try:
            if mid:
                resid = lastblock.block_from(model, last, inp, idx=idx, attention_mask=mask_rows, **mid)
                logits = lastblock.final_logits(model, resid)
            else:
                logits = lastblock.last_block_logits(model, inp, idx, mask_rows)
        finally:
            chunk.pos_idx, chunk.sub_hooks = None, frozenset()
        return t.from_selected(logits).float()
