"""The one chunking policy: how many rows one forward (or forward + backward) takes.

``batch_size`` given by the user always wins (validated here). Otherwise forward-only
engines (:func:`max_rows`) take cache-sized chunks on CPU — ``rows · pos · max(d_model,
d_mlp)`` within ``CPU_CHUNK_FLOATS`` floats (on the benchmark model 32-row chunks ran
15–20 % faster than 64 or 2048) — and ``DEFAULT_MAX_ROWS`` on an accelerator; gradient
engines (:func:`grad_rows`) size chunks from an activation-memory estimate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

DEFAULT_MAX_ROWS = 2048
CPU_CHUNK_FLOATS = 2**19


def check_batch_size(batch_size: Any) -> None:
    """``ValueError`` unless ``batch_size`` is ``None`` or a positive int."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int (rows per forward pass) or None, got {batch_size!r}")


def max_rows(model: Any, n_pos: int, batch_size: int | None, device: torch.device | str) -> int:
    """Rows per forward: ``batch_size`` when given; else on CPU as many as keep
    ``rows · n_pos · max(d_model, d_mlp)`` within ``CPU_CHUNK_FLOATS`` (cache-sized
    chunks), at least 1; else ``DEFAULT_MAX_ROWS``."""
    if batch_size is not None:
        check_batch_size(batch_size)
        return batch_size
    if torch.device(device).type != "cpu":
        return DEFAULT_MAX_ROWS
    cfg = getattr(model, "cfg", None)
    width = max(int(getattr(cfg, "d_model", None) or 1), int(getattr(cfg, "d_mlp", None) or 1))
    return max(1, CPU_CHUNK_FLOATS // (max(1, n_pos) * width))


def grad_rows(model: Any, n_pos: int) -> int:
    """Rows per forward+backward that fit comfortably: ~1 GiB of activations on CPU,
    a quarter of free memory on CUDA (estimate: 40 floats per layer·pos·d_model, plus the
    attention patterns)."""
    cfg = model.cfg
    per_row = cfg.n_layers * n_pos * (40 * cfg.d_model + 4 * cfg.n_heads * n_pos) * 4 + 4 * n_pos * cfg.d_vocab
    try:
        dev = next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        dev = torch.device("cpu")
    budget = 1 << 30
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        budget = free // 4
    return int(max(1, min(4096, budget // max(per_row, 1))))


def row_chunks(n_rows: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` rows covering ``0 … n_rows``."""
    for i in range(0, n_rows, max(1, size)):
        yield slice(i, min(n_rows, i + size))
