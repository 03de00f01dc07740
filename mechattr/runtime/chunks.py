"""The one chunking policy: how many rows one forward (or forward + backward) takes.

``batch_size`` given by the user always wins (validated here). Otherwise rows are planned
from a byte budget (:mod:`mechattr.runtime.memory`: ``max_memory=``, the innermost
``with memory_budget(...)``, else a fraction of the device's free memory) divided by the
estimated bytes of one row (:func:`mechattr.runtime.memory.row_bytes`, from the model's
shapes: layers, widths, attention patterns ``n_heads·pos²``, the unembedding only at the
positions the target reads).

* Forward-only engines (:func:`max_rows`): on CPU additionally at most ``CPU_CHUNK_TOKENS``
  tokens (``rows · pos``) per chunk — measured fastest per row on both the organisms
  (32 rows × 32 tokens ran 15–20 % faster than 64 or 2048 rows) and GPT-2-small (16–64
  rows at 32 tokens, 8–16 at 128, 1–2 at 512; one 512-row chunk was 60 % slower per row:
  the MLP hidden falls out of cache) — and at most ``DEFAULT_MAX_ROWS`` elsewhere.
* Gradient engines (:func:`grad_plan`): as many rows as the budget allows, at most
  ``GRAD_MAX_ROWS``; on CPU at most ``CPU_GRAD_TOKENS`` tokens per chunk (IG on
  GPT-2-small, idle 2-core CPU, ms per path step: 32 tokens 117/104/92/95 at 8/16/32/64
  rows; 128 tokens 409/407/428/590 at 2/4/8/16; 256 tokens 961/907/957/1225 at 1/2/4/8;
  512 tokens 2219/2047/2620 at 1/2/4 — 1024 tokens per chunk is within 5 % of the best
  at every length, 2048 was 17 % over one forward+backward per step at 512 tokens). When one row does not fit, the plan asks for recomputation
  (``checkpoint=True``: each block's activations are recomputed in the backward, so only
  the layer boundaries stay alive); when even that does not fit, a ``ValueError`` names
  the budget and the need.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mechattr.runtime.memory import budget_bytes, fmt_bytes, row_bytes

DEFAULT_MAX_ROWS = 2048
GRAD_MAX_ROWS = 4096
CPU_CHUNK_TOKENS = 1024
CPU_GRAD_TOKENS = 1024
# A shared path's batched backward (one cotangent per generation step) on CPU: at most this
# many tokens (cotangents × rows × pos) per backward call. IG of 32 generated tokens after a
# 32-token prompt on GPT-2-small, 8 steps: 61.4 / 45.5 / 40.2 / 36.2 / 36.7 / 40.6 s with
# groups of 32 / 16 / 8 / 4 / 2 / 1 cotangents (2016 … 63 tokens).
CPU_FANOUT_TOKENS = 256


def check_batch_size(batch_size: Any) -> None:
    """``ValueError`` unless ``batch_size`` is ``None`` or a positive int."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int (rows per forward pass) or None, got {batch_size!r}")


def n_read_of(target: Any) -> int | None:
    """Positions a target reads per row (``Target.k``); ``None`` (every position) for a plain callable."""
    from mechattr.targets import Target

    return int(target.k) if isinstance(target, Target) else None


def _device_of(model: Any, device: Any = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):  # pragma: no cover
        return torch.device("cpu")


def _too_big(what: str, need: int, budget: int, source: str) -> ValueError:
    return ValueError(f"{what} needs about {fmt_bytes(need)} of working memory, more than the memory budget "
                      f"of {fmt_bytes(budget)} ({source}); raise max_memory= (or the memory_budget(...) in force), "
                      f"or shorten the input")


def max_rows(model: Any, n_pos: int, batch_size: int | None, device: torch.device | str, *, n_read: int | None = 1, max_memory: Any = None) -> int:
    """Rows per forward (no gradients): ``batch_size`` when given; else as many as the memory
    budget allows (:func:`~mechattr.runtime.memory.row_bytes` with ``backward=False``,
    ``n_read`` positions unembedded per row), and on CPU also within ``CPU_CHUNK_TOKENS``
    tokens per chunk (cache-sized), else at most ``DEFAULT_MAX_ROWS``; ≥ 1. ``ValueError``
    when a single row exceeds the budget."""
    if batch_size is not None:
        check_batch_size(batch_size)
        return batch_size
    dev = torch.device(device)
    budget, source = budget_bytes(dev, max_memory)
    need = row_bytes(model, n_pos, backward=False, n_read=n_read)
    fit = budget // max(need, 1)
    if fit < 1:
        raise _too_big(f"one forward row of {n_pos} tokens", need, budget, source)
    if dev.type != "cpu":
        return int(min(DEFAULT_MAX_ROWS, fit))
    return int(max(1, min(fit, CPU_CHUNK_TOKENS // max(1, n_pos))))


@dataclass(frozen=True)
class GradPlan:
    """Rows per forward+backward, whether blocks are recomputed in the backward, and the
    budget and per-row estimate the plan came from (bytes)."""

    rows: int
    checkpoint: bool
    budget: int
    row_bytes: int
    source: str


def grad_plan(model: Any, n_pos: int, *, n_read: int | None = None, batch_size: int | None = None,
              max_memory: Any = None, device: Any = None, can_checkpoint: bool = True, fan_out: int = 1) -> GradPlan:
    """Plan a gradient engine's chunks: ``batch_size`` rows when given (no recomputation); else
    ``budget // row_bytes(backward=True)`` rows, within ``GRAD_MAX_ROWS`` and, on CPU,
    ``CPU_GRAD_TOKENS // n_pos``; when one row does not fit and ``can_checkpoint``, one row at a
    time with every block recomputed in the backward (if that fits); else ``ValueError``.
    ``fan_out``: each row's backward runs for that many outputs at once (a batched backward)."""
    dev = _device_of(model, device)
    budget, source = budget_bytes(dev, max_memory)
    need = row_bytes(model, n_pos, backward=True, n_read=n_read, fan_out=fan_out)
    if batch_size is not None:
        check_batch_size(batch_size)
        return GradPlan(batch_size, False, budget, need, source)
    fit = budget // max(need, 1)
    if fit >= 1:
        cap = GRAD_MAX_ROWS if dev.type != "cpu" else max(1, CPU_GRAD_TOKENS // max(1, n_pos))
        return GradPlan(int(min(fit, cap)), False, budget, need, source)
    ck = row_bytes(model, n_pos, backward=True, n_read=n_read, checkpoint=True)
    if can_checkpoint and ck <= budget:
        return GradPlan(1, True, budget, ck, source)
    what = f"one forward+backward row of {n_pos} tokens" + (" even with every block recomputed" if can_checkpoint else "")
    raise _too_big(what, ck if can_checkpoint else need, budget, source)


def grad_rows(model: Any, n_pos: int, *, n_read: int | None = None, max_memory: Any = None) -> int:
    """Rows per forward+backward within the memory budget (:func:`grad_plan`; 1 when a
    row needs recomputation)."""
    return grad_plan(model, n_pos, n_read=n_read, max_memory=max_memory).rows


def fanout_group(n_out: int, tokens: int, device: torch.device | str) -> int:
    """Cotangents per batched backward when one forward of ``tokens`` tokens feeds ``n_out``
    outputs (a shared path): all of them on an accelerator, on CPU at most
    ``CPU_FANOUT_TOKENS`` tokens' worth (≥ 1) so the batched backward stays cache-sized."""
    if torch.device(device).type != "cpu":
        return n_out
    return max(1, min(n_out, CPU_FANOUT_TOKENS // max(1, tokens)))


def row_chunks(n_rows: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` rows covering ``0 … n_rows``."""
    for i in range(0, n_rows, max(1, size)):
        yield slice(i, min(n_rows, i + size))
