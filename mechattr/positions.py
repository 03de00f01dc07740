"""Positions a target reads, and the one padding rule of mechattr.

Every function that reads a position (targets, attention flow's output position, token
attribution's target position) resolves it here: a negative position counts back from each
row's *last real token* (so right-, left- and un-padded batches read the same tokens), a
non-negative one is absolute, and reading padding is a ``ValueError``.
"""

from __future__ import annotations

import torch
from torch import Tensor

PosSpec = int | str | Tensor


def last_positions(attention_mask: Tensor | None, batch: int, n_pos: int, device: torch.device) -> Tensor:
    """Index of the last non-pad position per row (``n_pos - 1`` without a mask)."""
    if attention_mask is None:
        return torch.full((batch,), n_pos - 1, dtype=torch.long, device=device)
    m = attention_mask.to(device).long()
    idx = torch.arange(n_pos, device=device).expand_as(m)
    return (idx * m).argmax(-1) if m.shape[-1] else torch.zeros(batch, dtype=torch.long, device=device)


def resolve_positions(pos: PosSpec, batch: int, n_pos: int, attention_mask: Tensor | None, device: torch.device) -> Tensor:
    """Turn a position spec into a ``[batch]`` long tensor of non-negative positions.

    The one padding rule of mechattr: a negative position counts back from each row's
    *last real token* (``-1`` is the last non-pad token, ``-2`` the one before), so right-
    and left-padded batches read the same tokens as unpadded ones; without a mask (or
    with left padding) that is the usual ``pos + n_pos``. Non-negative positions are
    absolute. A position that lands on padding raises ``ValueError``.
    """
    if isinstance(pos, str):
        if pos != "last":
            raise ValueError(f"unknown position {pos!r}; use an int, a [batch] tensor or 'last'")
        return last_positions(attention_mask, batch, n_pos, device)
    p = torch.as_tensor(pos, device=device).long()
    if p.ndim == 0:
        p = p.expand(batch)
    if p.shape != (batch,):
        raise ValueError(f"positions must be an int or a [batch={batch}] tensor, got shape {tuple(p.shape)}")
    end = last_positions(attention_mask, batch, n_pos, device) + 1
    p = torch.where(p < 0, p + end, p)
    if (p < 0).any() or (p >= n_pos).any():
        raise ValueError(f"target position out of range for a sequence of {n_pos} tokens: {pos!r}")
    check_not_padding(p[:, None], attention_mask)
    return p


def check_not_padding(idx: Tensor, attention_mask: Tensor | None) -> None:
    """``ValueError`` if any position ``idx[b, i]`` is padding under ``attention_mask``."""
    if attention_mask is None:
        return
    m = attention_mask.to(idx.device).long()
    hit = m.gather(1, idx.clamp(0, m.shape[1] - 1)) == 0
    if bool(hit.any()):
        rows = sorted(set(hit.nonzero()[:, 0].tolist()))
        raise ValueError(
            f"the target reads a padding position in rows {rows[:10]} (positions "
            f"{idx[rows[0]].tolist()} of row {rows[0]}); negative positions count from each "
            f"row's last real token — give a position inside the real tokens"
        )


def has_right_padding(attention_mask: Tensor | None) -> bool:
    """Whether some row has a pad after a real token."""
    if attention_mask is None:
        return False
    m = attention_mask.long()
    return bool((m[:, 1:] < m[:, :-1]).any())
