"""Dataset sweeps: any analysis over a dataset, streamed to Parquet shards, resumable, aggregated from disk.

``mechattr.sweep(model, dataset, analysis, out, ...)`` runs a sweep (this package is
callable: its module object forwards calls to :func:`mechattr.sweep.runner.sweep`), and
``mechattr.sweep.aggregate`` reads the shards back (means with bootstrap CIs, per token and
per position, a summary page). ``mechattr.sweep.analyses`` is the registry of analyses,
``mechattr.sweep.datasets`` reads and checks datasets, ``mechattr.sweep.shards`` the output
layout. See docs/sweeps.md.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def sweep(model: Any, dataset: Any, analysis: str, out: Any, **kwargs: Any) -> Any:
    """Run ``analysis`` over ``dataset`` into ``out``: see :func:`mechattr.sweep.runner.sweep`."""
    from mechattr.sweep.runner import sweep as run

    return run(model, dataset, analysis, out, **kwargs)


class _CallableModule(types.ModuleType):
    """``mechattr.sweep`` is both this package and the function :func:`sweep`."""

    def __call__(self, model: Any, dataset: Any, analysis: str, out: Any, **kwargs: Any) -> Any:
        return sweep(model, dataset, analysis, out, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["sweep"]
