"""Which hooks hold the query and key vectors whose scaled dot product is the attention score.

AtP*'s QK fix (and anything else that recomputes attention scores from ``q`` and ``k``)
needs ``scores[t, s] = q_t · k_s / scale`` at some pair of hook points. Which pair, and
which scale, differs by model: rotary models rotate after ``hook_q`` (a HookedTransformer
exposes the rotated vectors at ``hook_rot_q``/``hook_rot_k``; a bridge may not), GPT-Neo
does not scale at all (and its bridge config says it does), some models divide by the
layer index, soft-capping and ALiBi add non-linear or positional terms. Rather than trust a
config, :func:`qk_layout` *measures* it once per model: one short forward caching the
candidate hooks and ``hook_pattern`` (not ``hook_attn_scores``, which some bridges fire
with the pattern), a least-squares fit of the scale per layer from the log-pattern, and a
check that the fit is exact. Where no pair of hooks reproduces the scores, the layout says
so and callers raise a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mechattr.runtime.arch import arch
from mechattr.runtime.cache import cache_activations
from mechattr.runtime.device import model_device
from mechattr.runtime.memo import per_model


@dataclass(frozen=True)
class QKLayout:
    """Per layer: the query and key hooks and the scale, or ``None`` where no pair fits."""

    q_hooks: tuple[str | None, ...]
    k_hooks: tuple[str | None, ...]
    scales: tuple[float | None, ...]
    reason: tuple[str, ...]

    def ok(self, layer: int) -> bool:
        return self.scales[layer] is not None


def _candidates(model: Any, layer: int) -> list[tuple[str, str]]:
    a = arch(model)
    pre = f"blocks.{layer}.attn."
    pairs = [(pre + "hook_rot_q", pre + "hook_rot_k"), (pre + "hook_q", pre + "hook_k")]
    return [(q, k) for q, k in pairs if a.has_hook(q) and a.has_hook(k)]


def _fit(q: torch.Tensor, k: torch.Tensor, pattern: torch.Tensor) -> float | None:
    """``scale`` with ``pattern = softmax(q·k/scale)`` over the attended keys of each query
    (log-pattern and q·k compared after removing each row's mean), or ``None`` if no
    scale reproduces the pattern."""
    q, k, p = q.double(), k.double(), pattern.double()
    if k.shape[2] != q.shape[2]:  # grouped-query attention
        k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    qk = torch.einsum("bthd,bshd->bhts", q, k)
    live = p > 1e-20
    n = live.sum(-1, keepdim=True)
    if int((n > 1).sum()) < 2:
        return None
    lp = torch.where(live, p.log(), torch.zeros_like(p))
    qk0 = torch.where(live, qk, torch.zeros_like(qk))
    y = torch.where(live, lp - lp.sum(-1, keepdim=True) / n, torch.zeros_like(lp))
    x = torch.where(live, qk0 - qk0.sum(-1, keepdim=True) / n, torch.zeros_like(qk0))
    denom = float((x * y).sum())
    if denom <= 0:
        return None
    scale = float((x * x).sum()) / denom
    err = (x / scale - y).abs().max()
    return scale if float(err) <= 1e-3 * (1.0 + float(y.abs().max())) else None


@per_model
def qk_layout(model: Any) -> QKLayout:
    """Measure, per layer, hooks ``(q, k)`` and ``scale`` with ``scores = q·k / scale``."""
    a = arch(model)
    n = max(2, min(8, a.n_ctx))
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, a.d_vocab, (2, n), generator=g).to(model_device(model))
    names: list[str] = []
    for layer in range(a.n_layers):
        names.append(f"blocks.{layer}.attn.hook_pattern")
        for q, k in _candidates(model, layer):
            names += [q, k]
    acts = cache_activations(model, toks, [x for x in names if a.has_hook(x)], allow_missing=True) if names else {}
    qs, ks, scales, why = [], [], [], []
    for layer in range(a.n_layers):
        p = acts.get(f"blocks.{layer}.attn.hook_pattern")
        found = None
        for qn, kn in _candidates(model, layer):
            if p is None or qn not in acts or kn not in acts:
                continue
            scale = _fit(acts[qn], acts[kn], p)
            if scale is not None:
                found = (qn, kn, scale)
                break
        if found is None:
            qs.append(None)
            ks.append(None)
            scales.append(None)
            why.append("no hook pair reproduces hook_pattern as softmax(q·k/scale) (rotation after hook_q, ALiBi, soft-capping or a missing hook)")
        else:
            qs.append(found[0])
            ks.append(found[1])
            scales.append(found[2])
            why.append("")
    return QKLayout(tuple(qs), tuple(ks), tuple(scales), tuple(why))
