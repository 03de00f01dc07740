"""mechattr: mechanistic attribution for TransformerLens models.

Public API (re-exports only; heavier submodules load on first use). See the README and
``shared/design.md`` for the contract.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # the names below load on first access (see _LAZY)
    from mechattr.components import (  # noqa: F401
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
    from mechattr.inputs import Batch, prepare_tokens  # noqa: F401
    from mechattr.model import ModelNotFoundError, load_model, model_guard  # noqa: F401

# The light names: torch loads with them (targets, components, inputs, model), TransformerLens
# only when a model is touched. Nothing is imported by `import mechattr` itself, so that
# `mechattr --help` and `import mechattr` are instant (benchmarks/startup.md).
_LIGHT = {
    **dict.fromkeys(("Head", "MLP", "Edge", "Input", "Logits", "all_heads", "all_mlps", "model_edges",
                     "parse_component", "parse_components", "parse_edge"), "mechattr.components"),
    **dict.fromkeys(("Batch", "prepare_tokens"), "mechattr.inputs"),
    **dict.fromkeys(("ModelNotFoundError", "load_model", "model_guard"), "mechattr.model"),
}

# name -> module that defines it (imported lazily on first access)
_LAZY = {
    "attribute_tokens": "mechattr.attribution.tokens",
    "attribute_generation": "mechattr.attribution.tokens",
    "attribute_interactions": "mechattr.attribution.interactions",
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
    "memory_budget": "mechattr.runtime.memory",
    "ValidationReport": "mechattr.validation",
}
_SUBMODULES = ("organisms", "faithfulness", "attribution", "interventions", "circuits", "graph", "validation", "report", "sweep")


def __getattr__(name: str) -> Any:
    """PEP 562: a public name's module is imported on first access (then cached here)."""
    if name in _LAZY or name in _LIGHT:
        value = getattr(importlib.import_module(_LAZY.get(name) or _LIGHT[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES or name == "targets":
        return importlib.import_module(f"mechattr.{name}")
    raise AttributeError(f"module 'mechattr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_LIGHT) | set(_SUBMODULES) | {"targets"})


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
