"""Interventions on one variant engine: ablation, activation patching, path patching.

Public functions (re-exported lazily): :func:`run_ablated`, :func:`ablation_scan`
(``ablation.py``), :func:`activation_patch`, :func:`path_patch` (``patching.py``),
:class:`InterventionResult` (``result.py``); the engine is ``variants.py``.
"""

from __future__ import annotations

from mechattr._lazy import lazy_names

_LAZY = {
    "run_ablated": "mechattr.interventions.ablation",
    "ablation_scan": "mechattr.interventions.ablation",
    "activation_patch": "mechattr.interventions.patching",
    "path_patch": "mechattr.interventions.patching",
    "InterventionResult": "mechattr.interventions.result",
    "Mode": "mechattr.interventions.variants",
    "Edit": "mechattr.interventions.variants",
    "Variant": "mechattr.interventions.variants",
    "run_variants": "mechattr.interventions.variants",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)


__all__ = list(_LAZY)
