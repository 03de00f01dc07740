"""Circuits: edge attribution (EAP, EAP-IG, exact), discovery (top-n, threshold, greedy,
ACDC) and evaluation (faithfulness, curves, completeness, minimality) over the typed graph
ids of :mod:`mechattr.components` (``Input``, ``Head``, ``MLP``, ``Logits``, ``Edge``).

Names load on first access (PEP 562), so ``mechattr.circuits.names`` stays light."""

from __future__ import annotations

from mechattr._lazy import lazy_names
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


__getattr__, __dir__ = lazy_names(__name__, _LAZY)


__all__ = ["ABLATIONS", "METHODS", "SELECTIONS", *_LAZY]
