"""The memory budget: how many bytes one chunk of rows may use, and what one row needs.

A budget is bytes of *working* memory (activations, saved tensors, gradients, logits) on
top of the model's weights. Where it comes from, first match wins:

1. an explicit ``max_memory=`` (bytes, or a string such as ``"2GB"``, ``"512MiB"``);
2. the innermost ``with memory_budget(...)`` around the call (a :class:`contextvars.ContextVar`,
   so threads and asyncio tasks each see their own and nothing global is left changed);
3. ``DEFAULT_FRACTION`` of the free memory of the model's device: free GPU memory
   (``torch.cuda.mem_get_info``), else available RAM (``psutil`` when installed, else
   ``MemAvailable`` in ``/proc/meminfo``, else ``FALLBACK_FREE``).

Per-row needs (:func:`row_bytes`) are an estimate from the model's shapes, calibrated on
TransformerLens's HookedTransformer by counting the tensors autograd saves
(``torch.autograd.graph.saved_tensors_hooks``, GPT-2-small widths, 64–512 tokens; fit
exact to <0.1 %): per layer and row a forward+backward keeps ``pos·(11·d_model + 3·d_mlp)``
values plus ``2.25·n_heads·pos²`` for the attention scores and pattern, and the backward
adds one layer's transients. See docs/internals.md ("Memory budget").
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

DEFAULT_FRACTION = 0.25  # of the device's free memory, when no budget is given
FALLBACK_FREE = 4 << 30  # bytes assumed free when the OS cannot tell us
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_BUDGET: contextvars.ContextVar[int | None] = contextvars.ContextVar("mechattr_memory_budget", default=None)


def parse_bytes(value: Any, name: str = "max_memory") -> int:
    """Bytes from a positive int/float or a string ``"<number><unit>"`` (units: B, kB/MB/GB/TB
    — powers of 1000 — and KiB/MiB/GiB/TiB — powers of 1024; case-insensitive)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be bytes (a positive number) or a string such as '2GB'; got {value!r}")
    if isinstance(value, (int, float)):
        if not (value >= 1 and value != float("inf")):
            raise ValueError(f"{name} must be a positive, finite number of bytes (≥ 1); got {value!r}")
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(f"{name}={value!r} is not a size; use bytes or '<number><unit>' with unit in B, kB, MB, GB, TB, KiB, MiB, GiB, TiB")
        return parse_bytes(float(m.group(1)) * _UNITS[unit], name)
    raise ValueError(f"{name} must be bytes (int) or a string such as '2GB'; got {type(value).__name__} {value!r}")


@contextmanager
def memory_budget(max_memory: Any) -> Iterator[int]:
    """Within the block every mechattr function plans its chunks for ``max_memory`` bytes of
    working memory (``None``: back to the default). Nested blocks: the innermost wins; the
    previous budget is restored on exit (context-local, never a global left changed)."""
    nbytes = None if max_memory is None else parse_bytes(max_memory)
    token = _BUDGET.set(nbytes)
    try:
        yield nbytes
    finally:
        _BUDGET.reset(token)


def current_budget() -> int | None:
    """The budget set by the innermost :func:`memory_budget` block, or ``None``."""
    return _BUDGET.get()


def free_bytes(device: Any) -> int:
    """Free memory of ``device``: ``torch.cuda.mem_get_info`` on CUDA, else available RAM."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return FALLBACK_FREE


def budget_bytes(device: Any, max_memory: Any = None) -> tuple[int, str]:
    """``(bytes, source)``: ``max_memory`` if given, else the :func:`memory_budget` in force,
    else ``DEFAULT_FRACTION`` of :func:`free_bytes`. ``source`` says which (for messages)."""
    if max_memory is not None:
        return parse_bytes(max_memory), "set by max_memory="
    ctx = _BUDGET.get()
    if ctx is not None:
        return ctx, "set by the memory_budget(...) in force"
    return int(free_bytes(device) * DEFAULT_FRACTION), f"default ({DEFAULT_FRACTION:.0%} of free memory on {torch.device(device).type})"


def _shapes(model: Any) -> tuple[int, int, int, int, int, int]:
    cfg = getattr(model, "cfg", None)
    d_model = int(getattr(cfg, "d_model", None) or 1)
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d_model)
    n_heads = int(getattr(cfg, "n_heads", None) or 1)
    n_layers = int(getattr(cfg, "n_layers", None) or 1)
    d_vocab = int(getattr(cfg, "d_vocab", None) or 1)
    dtype = getattr(cfg, "dtype", None)
    elem = torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 4
    return n_layers, d_model, d_mlp, n_heads, d_vocab, elem


def row_bytes(model: Any, n_pos: int, *, backward: bool, n_read: int | None = None, checkpoint: bool = False, fan_out: int = 1) -> int:
    """Estimated peak working bytes of ONE row of ``n_pos`` tokens.

    ``backward=False`` (forward only, no autograd graph): one layer's live tensors — the
    attention scores, masked scores and pattern ``3·n_heads·pos²``, q/k/v/z and the
    residual ``8·pos·d_model``, the MLP hidden ``2·pos·d_mlp`` — plus the readout.
    ``backward=True``: every layer's saved tensors ``L·(pos·(11·d_model + 3·d_mlp) +
    2.25·n_heads·pos²)`` plus one layer's backward transients (``3·n_heads·pos² +
    2·pos·d_mlp + 4·pos·d_model``) plus the readout ×3 (logits, log-softmax, grad).
    ``checkpoint=True`` (recompute each block in the backward): the residual at every
    layer boundary plus one layer's saved tensors and transients.
    The readout is ``n_read·d_vocab`` (a target reading ``n_read`` positions; ``None``:
    every position, as a plain callable sees full logits). ``fan_out``: the backward runs
    for that many output cotangents at once (a vmapped backward: transients × ``fan_out``).
    Bytes use the model's dtype.
    """
    L, d, dm, H, V, elem = _shapes(model)
    p = max(1, int(n_pos))
    read = (p if n_read is None else max(1, min(int(n_read), p))) * V
    layer_saved = p * (11 * d + 3 * dm) + 2.25 * H * p * p
    transient = 3 * H * p * p + 2 * p * dm + 4 * p * d
    if not backward:
        floats = transient + 4 * p * d + read
    elif checkpoint:  # boundaries + the block before the first boundary + the one being recomputed
        floats = (L + 2) * p * d + 2 * layer_saved + transient + 3 * read
    else:
        floats = L * layer_saved + max(1, fan_out) * transient + (2 + max(1, fan_out)) * read
    return int(floats * elem)


def fmt_bytes(n: int | float) -> str:
    """``1.5 GB``-style (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"
