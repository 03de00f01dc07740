"""Circuit discovery: edges selected from scores (top-n, threshold, greedy) or pruned by ACDC.

- ``topn`` / ``threshold`` (EAP-IG's ``apply_topn`` / ``apply_threshold``, Hanna et al.
  2024): the ``n`` edges of largest ``|score|`` (signed score with ``absolute=False``), or
  every edge with ``|score| ≥ threshold``.
- ``greedy`` (EAP-IG's ``apply_greedy``): grow from the logits: the candidates are the
  edges into the logits; repeatedly add the best-scoring candidate and make its sender's
  incoming edges candidates, until ``n`` edges.
- ``acdc`` (Conmy et al. 2023, *Towards Automated Circuit Discovery*): start from the full
  graph; visit receivers in reverse topological order (logits first) and, for each of its
  incoming edges (latest sender first), ablate it for good if that changes the batch-mean
  target by less than ``tau`` (``|T(H∖e) − T(H)| < τ``, target units) given everything
  ablated so far. A receiver left with no outgoing edges loses its incoming edges without
  a test (it can no longer reach the logits). A receiver's edges are evaluated in batches
  of speculative prefixes (variant ``j`` ablates the first ``j`` candidates of the batch):
  the batch length doubles after a batch of removals and drops to one after a kept edge,
  so a long run of removals costs a few forward batches and at most about twice the
  sequential rows are run. The result is exactly sequential ACDC's.

``prune=True`` (the default; EAP-IG's ``prune``) keeps only edges on a path from the input
to the logits inside the selected set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mechattr.circuits._run import Setup, check_args
from mechattr.circuits.circuit import Circuit
from mechattr.circuits.names import SELECTIONS
from mechattr.circuits.scores import EdgeScores, attribute_edges
from mechattr.components import Edge, Input, Logits, node_order
from mechattr.io import versions
from mechattr.model import check_model, model_guard
from mechattr.runtime.split import split_io


def discover_circuit(
    model: Any,
    clean: Any,
    corrupted: Any,
    target: Callable | None,
    *,
    method: str = "eap_ig_inputs",
    selection: str = "topn",
    n: int | None = None,
    threshold: float | None = None,
    tau: float | None = None,
    ablation: str = "patch",
    absolute: bool = True,
    prune: bool = True,
    scores: EdgeScores | None = None,
    n_steps: int = 10,
    batch_size: int | None = None,
    attention_mask: Any = None,
) -> Circuit:
    """A circuit for ``target`` on ``clean`` vs ``corrupted`` (module docstring).

    ``selection="topn"`` needs ``n``, ``"threshold"`` ``threshold``, ``"greedy"`` ``n``,
    ``"acdc"`` ``tau ≥ 0`` (``method`` is then unused: ACDC patches for real). Scores come
    from :func:`mechattr.circuits.attribute_edges` with ``method`` unless ``scores`` is given.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; allowed: {list(SELECTIONS)}")
    if selection == "acdc":
        if tau is None or not isinstance(tau, (int, float)) or isinstance(tau, bool) or not tau >= 0:
            raise ValueError(f"ACDC needs a threshold tau >= 0 (target units), got tau={tau!r}")
        return acdc(model, clean, corrupted, target, tau=float(tau), ablation=ablation, prune=prune,
                    batch_size=batch_size, attention_mask=attention_mask)
    if selection in ("topn", "greedy") and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"selection={selection!r} needs n, a positive number of edges, got n={n!r}")
    if selection == "threshold" and (threshold is None or not isinstance(threshold, (int, float)) or not threshold >= 0):
        raise ValueError(f"selection='threshold' needs threshold >= 0, got {threshold!r}")
    if scores is None:
        scores = attribute_edges(model, clean, corrupted, target, method=method, ablation=ablation, n_steps=n_steps,
                                 batch_size=batch_size, attention_mask=attention_mask)
    elif not isinstance(scores, EdgeScores):
        raise TypeError(f"scores must be EdgeScores (from attribute_edges), got {type(scores).__name__}")
    s = scores.scores.abs() if absolute else scores.scores
    if selection == "topn":
        chosen = [scores.edges[i] for i in s.argsort(descending=True, stable=True)[:n].tolist()]
    elif selection == "threshold":
        chosen = [e for e, v in zip(scores.edges, s.tolist()) if v >= threshold]
    else:
        chosen = greedy(scores.edges, s.tolist(), n)  # type: ignore[arg-type]
    if prune:
        chosen = prune_edges(chosen)
    settings = {"method": scores.method, "selection": selection, "n": n, "threshold": threshold, "absolute": absolute,
                "prune": prune, "ablation": scores.settings.get("ablation", ablation), "versions": versions()}
    if model is not None:
        settings["n_layers"] = model.cfg.n_layers
    kept = scores.as_dict()
    if not chosen:
        return Circuit.empty(settings=settings)
    return Circuit.from_edges(chosen, scores={e: kept[e] for e in chosen}, settings=settings)


def greedy(edges: Sequence[Edge], values: Sequence[float], n: int) -> list[Edge]:
    """EAP-IG's ``apply_greedy``: grow ``n`` edges backwards from the logits by best score."""
    into: dict[Any, list[int]] = {}
    for i, e in enumerate(edges):
        into.setdefault(e.receiver, []).append(i)
    chosen: list[int] = []
    cand = set(into.get(Logits(), []))
    reached = {Logits()}
    while cand and len(chosen) < n:
        i = max(cand, key=lambda j: (values[j], -j))
        cand.discard(i)
        chosen.append(i)
        s = edges[i].sender
        if s not in reached:
            reached.add(s)
            cand |= set(into.get(s, []))
    return [edges[i] for i in chosen]


def prune_edges(edges: Sequence[Edge]) -> list[Edge]:
    """The edges on some path input → … → logits within ``edges``."""
    edges = list(dict.fromkeys(edges))
    fwd = {Input()}
    for e in sorted(edges, key=lambda e: node_order(e.receiver)):
        if e.sender in fwd:
            fwd.add(e.receiver)
    back = {Logits()}
    for e in sorted(edges, key=lambda e: node_order(e.sender), reverse=True):
        if e.receiver in back:
            back.add(e.sender)
    return [e for e in edges if e.sender in fwd and e.receiver in back]


def acdc(
    model: Any,
    clean: Any,
    corrupted: Any,
    target: Callable,
    *,
    tau: float,
    ablation: str = "patch",
    prune: bool = True,
    edges: Sequence[Any] | None = None,
    batch_size: int | None = None,
    attention_mask: Any = None,
) -> Circuit:
    """ACDC (module docstring): the edges whose ablation changes the target by ``≥ tau``."""
    check_model(model)
    if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not tau >= 0:
        raise ValueError(f"tau must be >= 0, got {tau!r}")
    check_args(clean, corrupted, target)
    with model_guard(model), split_io(model) as io, torch.no_grad():
        run = Setup(model, io, clean, corrupted, target, ablation, attention_mask, batch_size, edges)
        es = run.edges

        def evaluate(masks: torch.Tensor) -> list[float]:
            return run.run(masks).mean(1).tolist()

        ablated = torch.zeros(len(es), dtype=torch.bool)
        current = evaluate(ablated[None])[0]
        parallel = io.parallel
        into: dict[Any, list[int]] = {}
        out_of: dict[Any, list[int]] = {}
        for i, e in enumerate(es):
            into.setdefault(e.receiver, []).append(i)
            out_of.setdefault(e.sender, []).append(i)
        n_evals = 1
        for r in sorted(into, key=lambda n: node_order(n, parallel), reverse=True):
            cand = sorted(into[r], key=lambda i: (node_order(es[i].sender, parallel), es[i].input or ""), reverse=True)
            if not isinstance(r, Logits) and bool(ablated[out_of.get(r, [])].all()):
                ablated[cand] = True  # r reaches nothing any more
                continue
            width = 1  # speculative prefix length: doubles after a batch of removals, resets after a keep
            while cand:
                batch = cand[:width]
                masks = ablated.repeat(len(batch), 1)
                for j in range(len(batch)):
                    masks[j:, batch[j]] = True
                vals = evaluate(masks)
                n_evals += len(batch)
                for j, i in enumerate(batch):
                    if abs(vals[j] - current) < tau:
                        ablated[i] = True
                        current = vals[j]
                    else:
                        cand = cand[j + 1:]
                        width = 1
                        break
                else:
                    cand = cand[len(batch):]
                    width *= 2
        kept = [e for e, a in zip(es, ablated.tolist()) if not a]
        if prune:
            kept = prune_edges(kept)
        settings = {"method": "acdc", "selection": "acdc", "tau": tau, "ablation": ablation, "prune": prune, "n_layers": model.cfg.n_layers,
                    "target_circuit": current, "n_evaluated": n_evals, "versions": versions()}
        if not kept:
            return Circuit.empty(settings=settings)
        return Circuit.from_edges(kept, settings=settings)
