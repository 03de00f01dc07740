"""Shared setup of every circuit call: inputs, the graph, sender outputs and references."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from mechattr.components import model_edges, parse_edge
from mechattr.inputs import prepare_pair, prepare_tokens
from mechattr.interventions.edges import (
    ABLATIONS,
    Graph,
    reference_outputs,
    run_circuits,
    sender_outputs,
)
from mechattr.targets import check_target_rows


def check_args(clean: Any, corrupted: Any, target: Any) -> None:
    """Argument kinds first (a target where ``corrupted`` goes, text as a target, …), before
    any model check, so the message names the real mistake."""
    from mechattr.checks import check_target_arg, check_tokens_arg

    check_tokens_arg(clean, "clean")
    if corrupted is not None:
        check_tokens_arg(corrupted, "corrupted")
    check_target_arg(target)


def prepare_inputs(model: Any, clean: Any, corrupted: Any, ablation: str, attention_mask: Any) -> tuple[Any, Any]:
    """Validated ``(clean, corrupted or None)`` batches; ``patch`` needs ``corrupted``."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; allowed: {list(ABLATIONS)}")
    if corrupted is None:
        if ablation == "patch":
            raise ValueError("ablation='patch' needs a corrupted input (or use ablation='mean'|'zero')")
        return prepare_tokens(model, clean, attention_mask, name="clean"), None
    return prepare_pair(model, clean, corrupted, attention_mask)


class Setup:
    """Inputs, graph (every edge, or ``edges``), clean and reference sender outputs; call
    inside ``model_guard`` and ``split_io``. :meth:`run` evaluates ablated-edge masks."""

    def __init__(self, model: Any, io: Any, clean: Any, corrupted: Any, target: Callable, ablation: str,
                 attention_mask: Any, batch_size: int | None, edges: Sequence[Any] | None = None, linear: Any = None,
                 defer_clean: bool = False):
        self.c, self.x = prepare_inputs(model, clean, corrupted, ablation, attention_mask)
        check_target_rows(target, self.c.shape[0])
        self.model, self.target, self.batch_size = model, target, batch_size
        self.edges = model_edges(model) if edges is None else [parse_edge(e, model) for e in edges]
        if not self.edges:
            raise ValueError("edges is empty: pass at least one edge (or None for every edge)")
        self.index = {e: i for i, e in enumerate(self.edges)}
        self.graph = Graph.of(model, io, self.edges)
        self.ablation, self.linear = ablation, linear
        with torch.no_grad():
            self.corr_out = None if self.x is None else sender_outputs(model, self.x.tokens, self.graph, self.x.attention_mask, linear)
            if not defer_clean:  # else the caller's own clean forward supplies them (set_clean)
                self.set_clean(sender_outputs(model, self.c.tokens, self.graph, self.c.attention_mask, linear))

    def set_clean(self, clean_out: Tensor) -> None:
        """The clean sender outputs (and the references that depend on them)."""
        self.clean_out = clean_out
        self.ref = reference_outputs(clean_out, self.ablation, self.corr_out)

    def mask(self, keep: Iterable[Any] = (), knock: Iterable[Any] = (), restrict: bool = True) -> Tensor:
        """Ablated edges: all outside ``keep`` (when ``restrict``) plus those leaving ``knock``."""
        m = torch.full((len(self.edges),), restrict, dtype=torch.bool)
        for e in keep:
            m[self.index[e]] = False
        knock = set(knock)
        if knock:
            for i, e in enumerate(self.edges):
                if e.sender in knock:
                    m[i] = True
        return m

    def run(self, masks: Tensor | list[Tensor]) -> Tensor:
        """``[variants, batch]`` targets under each ablated-edge mask."""
        masks = torch.stack(masks) if isinstance(masks, list) else masks
        return run_circuits(self.model, self.c.tokens, self.graph, self.ref, masks, self.target,
                            attention_mask=self.c.attention_mask, batch_size=self.batch_size)
