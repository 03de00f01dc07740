"""Statistics of verdicts: bootstrap intervals, Monte Carlo p-values, Holm–Bonferroni, sequential stops.

- :func:`bootstrap_ci`: percentile interval of the mean over examples (Efron & Tibshirani
  1993, ch. 13): resample the ``n`` examples with replacement ``n_boot`` times (seeded).
- :func:`mc_pvalue`: ``(1 + #{null ≥ stat}) / (1 + n_null)`` — the Monte Carlo p-value of a
  statistic against draws from its null (Davison & Hinkley 1997, eq. 4.11); never 0.
- :func:`holm`: Holm (1979) step-down adjusted p-values, ``p̃_(i) = max_{j ≤ i} min(1,
  (m − j + 1) p_(j))``; a family's rejections at ``α`` control its family-wise error rate.
- :func:`decided_not_significant`: the sequential stop of Besag & Clifford (1991): with
  ``k`` null draws already at least as extreme after ``n`` of at most ``n_max`` draws, the
  final p-value is at least ``(k + 1) / (n_max + 1)``; once that exceeds ``α`` (the loosest
  Holm level) no further draw can make the test significant, so drawing stops and the
  verdict equals the full-draw verdict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

ALPHA = 0.05
CONF = 0.95


def bootstrap_ci(per_example: Tensor, *, n_boot: int = 1000, seed: int = 0, conf: float = CONF) -> tuple[float, float]:
    """Percentile bootstrap interval of ``per_example.mean()`` (``[n]``); ``(nan, nan)`` when ``n < 2``."""
    x = torch.as_tensor(per_example, dtype=torch.float64).flatten()
    n = x.numel()
    if n < 2:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(n, (int(n_boot), n), generator=g)
    means = x[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - conf) / 2, (1 + conf) / 2], dtype=torch.float64)).tolist()
    return float(lo), float(hi)


def magnitude_interval(lo: float, hi: float) -> tuple[float, float]:
    """Interval of ``|μ|`` implied by an interval ``[lo, hi]`` of ``μ``."""
    if lo <= 0.0 <= hi:
        return 0.0, max(abs(lo), abs(hi))
    a, b = abs(lo), abs(hi)
    return min(a, b), max(a, b)


def mc_pvalue(stat: float, null: Tensor) -> float:
    """One-sided Monte Carlo p-value of ``stat`` (larger is more extreme) against ``null``."""
    c = torch.as_tensor(null, dtype=torch.float64).flatten()
    return float((1 + (c >= stat).sum()) / (1 + c.numel()))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order (see the module docstring)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [0.0] * m
    run = 0.0
    for rank, i in enumerate(order):
        run = max(run, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = run
    return out


def decided_not_significant(n_extreme: int, n_max: int, alpha: float = ALPHA) -> bool:
    """True when ``n_extreme`` null draws at least as extreme already make the final
    Monte Carlo p-value (of at most ``n_max`` draws) exceed ``alpha`` (Besag & Clifford 1991)."""
    return (n_extreme + 1) / (n_max + 1) > alpha
