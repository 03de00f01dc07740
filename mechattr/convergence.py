"""Completeness of path integrals: is a path attribution's convergence delta small enough?

One rule for every path method (token IG and its relatives, IG over heads, residual
streams and attention) and for the report: ``|δ| ≤ rtol · |F(x) − F(x')| + atol`` with
``rtol = 5 %`` by default (Sundararajan et al. 2017, §3: completeness).
"""

from __future__ import annotations

import warnings

from torch import Tensor

CONVERGENCE_RTOL = 0.05
CONVERGENCE_ATOL = 1e-4


class ConvergenceWarning(UserWarning):
    """A path integral's completeness error is a large fraction of the gap it explains."""


def convergence_report(delta: Tensor, gap: Tensor, what: str, *, rtol: float = CONVERGENCE_RTOL, atol: float = CONVERGENCE_ATOL, warn: bool = True,
                       advice: str | None = None) -> dict:
    """Judge a path integral by its convergence delta (Sundararajan et al. 2017, §3:
    completeness ``Σ attributions = F(x) − F(x')``).

    ``ok`` iff ``|δ| ≤ rtol · |F(x) − F(x')| + atol`` everywhere (default: 5 % of the gap).
    When it fails, a :class:`ConvergenceWarning` says so (more ``n_steps``, another
    schedule, or a baseline nearer the input; ``advice`` replaces that sentence for methods
    whose error is not a quadrature error, e.g. DeepLIFT). Returns a JSON-able summary
    ``{"ok", "max_abs_delta", "max_rel_delta", "rtol", "atol"}`` for results and reports.
    """
    d = delta.detach().float().abs().reshape(-1).cpu()
    g = gap.detach().float().abs().reshape(-1).cpu().expand_as(d) if gap.numel() == 1 else gap.detach().float().abs().reshape(-1).cpu()
    ok = bool((d <= rtol * g + atol).all()) if d.numel() else True
    rel = float((d / g.clamp_min(1e-12)).max()) if d.numel() else 0.0
    out = {"ok": ok, "max_abs_delta": float(d.max()) if d.numel() else 0.0, "max_rel_delta": rel, "rtol": rtol, "atol": atol}
    if not ok and warn:
        warnings.warn(
            f"{what}: the attributions do not sum to F(x) − F(x') — completeness error |δ| up to "
            f"{out['max_abs_delta']:.3g} ({rel:.0%} of |F(x) − F(x')|, allowed {rtol:.0%}); "
            + (advice or "the path integral has not converged: raise n_steps or use a baseline the model maps smoothly to the input"),
            ConvergenceWarning, stacklevel=3,
        )
    return out
