"""mechattr: mechanistic attribution for TransformerLens models.

Public API (re-exports only; heavier submodules load on first use). See the README and
``shared/design.md`` for the contract.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from mechattr import targets
from mechattr.components import (
    MLP,
    Edge,
    Head,
    Input,
    Logits,
    all_heads,
    all_mlps,
    model_edges,
    parse_component,
    parse_components,
    parse_edge,
)
from mechattr.inputs import Batch, prepare_tokens
from mechattr.model import ModelNotFoundError, load_model, model_guard

# name -> module that defines it (imported lazily on first access)
_LAZY = {
    "attribute_tokens": "mechattr.attribution.tokens",
    "attribute_generation": "mechattr.attribution.tokens",
    "TokenAttribution": "mechattr.attribution.result",
    "attribute_heads": "mechattr.attribution.components",
    "attribute_resid": "mechattr.attribution.components",
    "attribute_mlps": "mechattr.attribution.components",
    "attribute_neurons": "mechattr.attribution.components",
    "ComponentAttribution": "mechattr.attribution.component_result",
    "attention_to_tokens": "mechattr.attribution.attention",
    "attribute_attention": "mechattr.attribution.attention",
    "attention_rollout": "mechattr.graph",
    "attention_flow": "mechattr.graph",
    "attention_graph": "mechattr.graph",
    "run_ablated": "mechattr.interventions.ablation",
    "ablation_scan": "mechattr.interventions.ablation",
    "activation_patch": "mechattr.interventions.patching",
    "path_patch": "mechattr.interventions.patching",
    "attribute_edges": "mechattr.circuits",
    "discover_circuit": "mechattr.circuits",
    "evaluate_circuit": "mechattr.circuits",
    "faithfulness_curve": "mechattr.circuits",
    "Circuit": "mechattr.circuits",
    "EdgeScores": "mechattr.circuits",
    "validate": "mechattr.validation",
    "ValidationReport": "mechattr.validation",
}
_SUBMODULES = ("organisms", "faithfulness", "attribution", "interventions", "circuits", "graph", "validation", "report", "sweep")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"mechattr.{name}")
    raise AttributeError(f"module 'mechattr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = [
    "__version__",
    "targets",
    "Head",
    "MLP",
    "all_heads",
    "all_mlps",
    "parse_component",
    "parse_components",
    "Edge",
    "Input",
    "Logits",
    "model_edges",
    "parse_edge",
    "Batch",
    "prepare_tokens",
    "load_model",
    "model_guard",
    "ModelNotFoundError",
    *_LAZY,
    *_SUBMODULES,
]
