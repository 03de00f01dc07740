"""Removal operators and the batched engine that evaluates a target on perturbed inputs.

A *removal* takes a set of token positions out of an input. Which positions may be removed
(the *features*) is fixed by :func:`removable_mask`: real tokens (attention mask 1) up to
the first position the target reads, never a BOS token or padding. Operators
(:class:`Removal`):

- ``zero``   — the token embedding at ``hook_embed`` becomes the zero vector ("zero padding",
  as in the AIEG paper's appendix A.4); positional embeddings stay.
- ``pad``    — the token embedding becomes the pad token's ``hook_embed`` value.
- ``mask``   — the token embedding becomes the mask token's ``hook_embed`` value.
- ``delete`` — the token is taken out of the sequence: the kept tokens are right-aligned,
  the freed slots on the left are padding (attention mask 0), so later tokens move to
  earlier position ids and the target is read at its token's new index.

All variants of one call are stacked along the batch dimension (variant-major: row
``v · batch + b`` is variant ``v`` of example ``b``) and run in chunks of ``batch_size``
rows with :func:`mechattr.targets.run_target`.
"""

from __future__ import annotations

import enum
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechattr.inputs import Batch
from mechattr.runtime.chunks import max_rows, n_read_of, row_chunks
from mechattr.targets import Target, check_finite, check_target_rows, run_target


class Removal(str, enum.Enum):
    """How a token is removed (see the module docstring)."""

    ZERO = "zero"
    PAD = "pad"
    MASK = "mask"
    DELETE = "delete"


def parse_removal(removal: Any) -> Removal:
    """``"zero"|"pad"|"mask"|"delete"`` (or a :class:`Removal`) → :class:`Removal`."""
    if isinstance(removal, Removal):
        return removal
    try:
        return Removal(removal)
    except ValueError:
        raise ValueError(
            f"unknown removal operator {removal!r}; allowed: {[r.value for r in Removal]}"
        ) from None


def bos_id(model: Any, bos: Any = "auto") -> int | None:
    """The BOS token id never counted as a feature: ``bos`` if an int, the tokenizer's for
    ``"auto"`` (``None`` without a tokenizer or when the model does not prepend BOS)."""
    if bos is None or (isinstance(bos, int) and not isinstance(bos, bool)):
        return bos
    if bos != "auto":
        raise ValueError(f"bos must be 'auto', None or a token id, got {bos!r}")
    tok = getattr(model, "tokenizer", None)
    if tok is None or not getattr(model.cfg, "default_prepend_bos", True):
        return None
    return getattr(tok, "bos_token_id", None)


def target_read_positions(target: Any, batch: Batch) -> Tensor:
    """``[batch]`` first position the target reads (last position for plain callables)."""
    b, n = batch.shape
    if isinstance(target, Target):
        return target.positions(b, n, batch.attention_mask, batch.tokens.device)[:, 0]
    from mechattr.targets import last_positions

    return last_positions(batch.attention_mask, b, n, batch.tokens.device)


def removable_mask(model: Any, batch: Batch, target: Any, *, bos: Any = "auto") -> Bool[Tensor, "batch pos"]:
    """Which positions count as features: real tokens at or before the target's read
    position, excluding a leading BOS token (the first real token when its id is BOS)."""
    tokens = batch.tokens
    real = batch.mask_or_ones().bool()
    b, n = tokens.shape
    pos = torch.arange(n, device=tokens.device)[None, :]
    upto = pos <= target_read_positions(target, batch)[:, None]
    ok = real & upto
    bid = bos_id(model, bos)
    if bid is not None:
        first = real.long().argmax(-1)
        is_bos = tokens.gather(1, first[:, None])[:, 0] == bid
        ok[torch.arange(b, device=tokens.device)[is_bos], first[is_bos]] = False
    if not bool(ok.any(-1).all()):
        rows = (~ok.any(-1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} have no removable token (only BOS/padding before the target position)")
    return ok


def replacement_embedding(model: Any, removal: Removal, replacement_id: int | None) -> Tensor | None:
    """``[d_model]`` embedding substituted by ``pad``/``mask`` (``None`` for ``zero``/``delete``)."""
    if removal in (Removal.ZERO, Removal.DELETE):
        return None
    tid = replacement_id
    if tid is None:
        tok = getattr(model, "tokenizer", None)
        attr = "pad_token_id" if removal is Removal.PAD else "mask_token_id"
        tid = getattr(tok, attr, None) if tok is not None else None
        if tid is None:
            raise ValueError(
                f"removal={removal.value!r} needs a {removal.value} token: the tokenizer has no "
                f"{attr}; pass replacement_id=<token id> or use removal='zero'"
            )
    if not 0 <= int(tid) < model.cfg.d_vocab:
        raise ValueError(f"replacement_id {tid} outside the vocabulary 0..{model.cfg.d_vocab - 1}")
    from mechattr.runtime.embedding import embed_tokens

    return embed_tokens(model, torch.tensor(int(tid)))


def _delete_rows(tokens: Tensor, real: Tensor, keep: Tensor, read_pos: Tensor, fill: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-align the kept real tokens of each row; new read position of the target."""
    rows, n = tokens.shape
    kept = keep & real
    new_tok = torch.full_like(tokens, fill)
    new_mask = torch.zeros_like(tokens)
    # new index of kept position j: n - (#kept at positions >= j)
    from_right = kept.flip(-1).long().cumsum(-1).flip(-1)
    new_idx = n - from_right
    r, c = kept.nonzero(as_tuple=True)
    new_tok[r, new_idx[r, c]] = tokens[r, c]
    new_mask[r, new_idx[r, c]] = 1
    pos = torch.arange(n, device=tokens.device)[None, :]
    before = kept & (pos <= read_pos[:, None])
    if not bool(before.any(-1).all()):
        bad = (~before.any(-1)).nonzero().flatten().tolist()
        raise ValueError(
            f"removal='delete' would delete every token up to the target position (stacked rows "
            f"{bad[:5]}); prepend a BOS token (never removed) or use another removal operator"
        )
    last_kept = torch.where(before, pos, -1).max(-1).values
    new_pos = new_idx.gather(1, last_kept[:, None])[:, 0]
    return new_tok, new_mask, new_pos


def _with_pos(target: Target, pos: Tensor) -> Target:
    from mechattr.targets import LinearCombination

    if isinstance(target, LinearCombination):
        return LinearCombination([(a, _with_pos(t, pos)) for a, t in target.terms])
    new = object.__new__(type(target))
    new.__dict__.update(target.__dict__)
    new.pos = pos
    return new


def perturbed_values(
    model: Any,
    batch: Batch,
    target: Target,
    keep: Bool[Tensor, "variants batch pos"],
    removal: Any = "zero",
    *,
    batch_size: int | None = None,
    replacement_id: int | None = None,
) -> Float[Tensor, "variants batch"]:
    """``target`` on every variant ``keep[v]`` of the batch (positions with ``False`` removed).

    Call inside ``model_guard`` and ``torch.no_grad``. ``target`` must be a
    :class:`mechattr.targets.Target` (it is indexed per stacked row).
    """
    op = parse_removal(removal)
    v, b, n = keep.shape
    if (b, n) != batch.shape:
        raise ValueError(f"keep masks are {tuple(keep.shape)} but the batch is {batch.shape}")
    dev = batch.tokens.device
    rows = v * b
    ex = torch.arange(rows, device=dev) % b
    tokens = batch.tokens.repeat(v, 1)
    real = batch.mask_or_ones().bool().repeat(v, 1)
    keep_rows = keep.to(dev).reshape(rows, n) | ~real
    mask_rows = None if batch.attention_mask is None else batch.attention_mask.repeat(v, 1)
    check_target_rows(target, b)
    full = target.take(ex)
    if op is Removal.DELETE:
        read = target_read_positions(full, Batch(tokens, mask_rows))
        tokens, mask_rows, new_pos = _delete_rows(tokens, real, keep_rows, read, fill=int(batch.tokens[0, 0]))
        full = _with_pos(full, new_pos)
    repl = replacement_embedding(model, op, replacement_id)
    bs = max_rows(model, n, batch_size, dev, n_read=n_read_of(full))
    out = []
    for sl in row_chunks(rows, bs):
        r0, r1 = sl.start, sl.stop
        sl = torch.arange(r0, r1, device=dev)
        t = full.take(sl)
        m = None if mask_rows is None else mask_rows[r0:r1]
        hooks = []
        if op is not Removal.DELETE:
            k = keep_rows[r0:r1, :, None]

            def hook(act: Tensor, hook: Any, k: Tensor = k) -> Tensor:
                r = torch.zeros((), dtype=act.dtype, device=act.device) if repl is None else repl.to(act)
                return torch.where(k, act, r)

            hooks = [("hook_embed", hook)]
        with model.hooks(fwd_hooks=hooks):
            out.append(run_target(model, tokens[r0:r1], t, attention_mask=m))
    vals = torch.cat(out).reshape(v, b)
    return check_finite(vals, "target on perturbed inputs")
