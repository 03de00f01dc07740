"""Circuits: edge attribution (EAP, EAP-IG, exact), discovery (top-n, threshold, greedy,
ACDC) and evaluation (faithfulness, curves, completeness, minimality) over the typed graph
ids of :mod:`mechattr.components` (``Input``, ``Head``, ``MLP``, ``Logits``, ``Edge``).

Names load on first access (PEP 562), so ``mechattr.circuits.names`` stays light."""

from __future__ import annotations

import importlib
from typing import Any

from mechattr.circuits.names import ABLATIONS, METHODS, SELECTIONS

_LAZY = {
    "Circuit": "mechattr.circuits.circuit",
    "acdc": "mechattr.circuits.discovery",
    "discover_circuit": "mechattr.circuits.discovery",
    "CircuitEvaluation": "mechattr.circuits.evaluation",
    "FaithfulnessCurve": "mechattr.circuits.evaluation",
    "evaluate_circuit": "mechattr.circuits.evaluation",
    "faithfulness_curve": "mechattr.circuits.evaluation",
    "roc_auc": "mechattr.circuits.evaluation",
    "EdgeScores": "mechattr.circuits.scores",
    "attribute_edges": "mechattr.circuits.scores",
    "Edge": "mechattr.components",
    "Input": "mechattr.components",
    "Logits": "mechattr.components",
    "model_edges": "mechattr.components",
    "parse_edge": "mechattr.components",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mechattr.circuits' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["ABLATIONS", "METHODS", "SELECTIONS", *_LAZY]
