"""Circuits: edge attribution (EAP, EAP-IG, exact), discovery (top-n, threshold, greedy,
ACDC) and evaluation (faithfulness, curves, completeness, minimality) over the typed graph
ids of :mod:`mechattr.components` (``Input``, ``Head``, ``MLP``, ``Logits``, ``Edge``)."""

from mechattr.circuits.circuit import Circuit
from mechattr.circuits.discovery import SELECTIONS, acdc, discover_circuit
from mechattr.circuits.evaluation import (
    CircuitEvaluation,
    FaithfulnessCurve,
    evaluate_circuit,
    faithfulness_curve,
    roc_auc,
)
from mechattr.circuits.scores import METHODS, EdgeScores, attribute_edges
from mechattr.components import Edge, Input, Logits, model_edges, parse_edge

__all__ = [
    "METHODS",
    "SELECTIONS",
    "Circuit",
    "CircuitEvaluation",
    "Edge",
    "EdgeScores",
    "FaithfulnessCurve",
    "Input",
    "Logits",
    "acdc",
    "attribute_edges",
    "discover_circuit",
    "evaluate_circuit",
    "faithfulness_curve",
    "model_edges",
    "parse_edge",
    "roc_auc",
]
