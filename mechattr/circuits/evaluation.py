"""Circuit evaluation: faithfulness, the faithfulness-vs-size curve, completeness, minimality.

Running a circuit ``C`` means ablating every edge outside it (:func:`mechattr.interventions.
edges.run_circuits`: each receiver input gets the reference output of each absent sender,
as in EAP-IG's ``evaluate_graph`` and ACDC). With ``T(·)`` the batch-mean target,
``M`` the full model and ``∅`` the empty circuit (every edge ablated):

- normalised faithfulness ``(T(C) − T(∅)) / (T(M) − T(∅))`` (Hanna et al. 2024, eq. 2);
- the faithfulness curve of a ranking: the circuits of its top-``k`` edges for a grid of
  ``k``, and its area over ``k / n_edges ∈ [0, 1]`` (trapezoid rule);
- Wang et al. 2022 (*Interpretability in the Wild*, §4): **completeness** — for node sets
  ``K ⊆ C`` knocked out (every edge leaving ``K`` ablated), ``|T(C∖K) − T(M∖K)|`` should be
  small (we report it for ``K = ∅``, each single node, and ``n_subsets`` random subsets);
  **minimality** — each node ``v`` of ``C`` should matter: ``max_K |T(C∖(K∪{v})) −
  T(C∖K)|`` over ``K = ∅`` and the same random subsets.
All of it runs as one batch of variants per call.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mechattr.circuits._run import Setup, check_args
from mechattr.circuits.circuit import ensure_circuit
from mechattr.circuits.scores import EdgeScores
from mechattr.components import MLP, Head
from mechattr.io import versions
from mechattr.model import check_model, model_guard
from mechattr.runtime.split import split_io


@dataclass
class CircuitEvaluation:
    """Targets of the circuit, the full model and the empty circuit, and the faithfulness.

    ``per_example``: ``{"circuit": [...], "full": [...], "empty": [...]}`` target values.
    ``completeness`` / ``minimality``: ``{node set or node: |Δ|}`` (when requested)."""

    faithfulness: float
    target_circuit: float
    target_full: float
    target_empty: float
    n_edges: int
    per_example: dict[str, list[float]] = field(default_factory=dict)
    completeness: dict[str, float] = field(default_factory=dict)
    minimality: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"CircuitEvaluation(faithfulness={self.faithfulness:.3f}, {self.n_edges} edges, "
                f"T(circuit)={self.target_circuit:.4g}, T(full)={self.target_full:.4g}, T(empty)={self.target_empty:.4g})")


@dataclass
class FaithfulnessCurve:
    """Faithfulness of the top-``k`` circuits of a ranking; ``area`` over ``k/n_edges``."""

    counts: list[int]
    faithfulness: list[float]
    area: float
    n_edges: int
    settings: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"FaithfulnessCurve({len(self.counts)} points, area={self.area:.3f}, {self.n_edges} edges)"

    def plot(self, title: str = "faithfulness vs circuit size") -> Any:
        from mechattr.report import figures

        return figures.curves(self.counts, {"faithfulness": self.faithfulness}, title=title, xlabel="edges in circuit",
                              ylabel="normalised faithfulness")


def _faith(tc: float, tf: float, te: float) -> float:
    if abs(tf - te) <= 1e-12 * max(1.0, abs(tf)):
        warnings.warn(f"the full model and the empty circuit give the same target ({tf:.6g}): faithfulness is undefined (NaN)",
                      UserWarning, stacklevel=3)
        return float("nan")
    return (tc - te) / (tf - te)


def evaluate_circuit(
    model: Any,
    circuit: Any,
    clean: Any,
    corrupted: Any,
    target: Callable,
    *,
    ablation: str = "patch",
    completeness: bool = False,
    n_subsets: int = 8,
    seed: int = 0,
    batch_size: int | None = None,
    attention_mask: Any = None,
) -> CircuitEvaluation:
    """Normalised faithfulness of ``circuit`` (and Wang et al.'s completeness and minimality
    with ``completeness=True``; module docstring)."""
    check_model(model)
    circ = ensure_circuit(circuit, model)
    if not isinstance(n_subsets, int) or n_subsets < 0:
        raise ValueError(f"n_subsets must be an int >= 0, got {n_subsets!r}")
    check_args(clean, corrupted, target)
    with model_guard(model), split_io(model) as io, torch.no_grad():
        r = Setup(model, io, clean, corrupted, target, ablation, attention_mask, batch_size)
        unknown = [str(e) for e in circ.edges if e not in r.index]
        if unknown:
            raise ValueError(f"circuit edges not in this model's graph: {unknown[:5]}")
        masks = [r.mask(circ.edges), r.mask(restrict=False), r.mask()]
        labels: list[tuple[str, str]] = []
        if completeness:
            nodes = [n for n in circ.nodes if isinstance(n, (Head, MLP))]
            rng = random.Random(seed)
            subsets = [frozenset()] + [frozenset({n}) for n in nodes]
            subsets += [frozenset(rng.sample(nodes, rng.randint(1, len(nodes)))) for _ in range(n_subsets if nodes else 0)]
            for k in dict.fromkeys(subsets):
                name = "{" + ", ".join(sorted(map(str, k))) + "}"
                masks += [r.mask(circ.edges, k), r.mask(knock=k, restrict=False)]
                labels.append(("completeness", name))
            for v in nodes:
                for k in dict.fromkeys([frozenset()] + subsets[len(nodes) + 1:]):
                    k = k - {v}
                    masks += [r.mask(circ.edges, k | {v}), r.mask(circ.edges, k)]
                    labels.append(("minimality", str(v)))
        out = r.run(masks)
        means = out.mean(1).tolist()
        tc, tf, te = means[:3]
        comp: dict[str, float] = {}
        mini: dict[str, float] = {}
        for j, (kind, name) in enumerate(labels):
            d = abs(means[3 + 2 * j] - means[4 + 2 * j])
            book = comp if kind == "completeness" else mini
            book[name] = max(book.get(name, 0.0), d)
        settings = {"ablation": ablation, "n_subsets": n_subsets, "seed": seed, "versions": versions()}
        return CircuitEvaluation(
            _faith(tc, tf, te), tc, tf, te, len(circ.edges),
            {"circuit": out[0].tolist(), "full": out[1].tolist(), "empty": out[2].tolist()}, comp, mini, settings,
        )


def faithfulness_curve(
    model: Any,
    scores: EdgeScores,
    clean: Any,
    corrupted: Any,
    target: Callable,
    *,
    counts: Sequence[int] | None = None,
    ablation: str = "patch",
    absolute: bool = True,
    batch_size: int | None = None,
    attention_mask: Any = None,
) -> FaithfulnessCurve:
    """Faithfulness of the top-``k`` edges of ``scores`` for each ``k`` in ``counts``
    (default: ~20 geometric steps from 1 to every edge), and the area under it."""
    check_model(model)
    if not isinstance(scores, EdgeScores):
        raise TypeError(f"scores must be EdgeScores (from attribute_edges), got {type(scores).__name__}")
    n = len(scores.edges)
    if counts is None:
        counts = sorted({0, n} | {int(round(x)) for x in torch.logspace(0, torch.log10(torch.tensor(float(n))), 20).tolist()})
    counts = [int(k) for k in counts]
    bad = [k for k in counts if not 0 <= k <= n]
    if bad:
        raise ValueError(f"counts must lie in 0..{n} (the number of scored edges), got {bad}")
    order = (scores.scores.abs() if absolute else scores.scores).argsort(descending=True, stable=True).tolist()
    check_args(clean, corrupted, target)
    with model_guard(model), split_io(model) as io, torch.no_grad():
        r = Setup(model, io, clean, corrupted, target, ablation, attention_mask, batch_size)
        masks = [r.mask(restrict=False), r.mask()]
        masks += [r.mask([scores.edges[i] for i in order[:k]]) for k in counts]
        means = r.run(masks).mean(1).tolist()
    tf, te = means[0], means[1]
    faith = [_faith(v, tf, te) for v in means[2:]]
    xs = [k / max(n, 1) for k in counts]
    area = float(sum((xs[i + 1] - xs[i]) * (faith[i + 1] + faith[i]) / 2 for i in range(len(xs) - 1)))
    return FaithfulnessCurve(counts, faith, area, n, {"method": scores.method, "ablation": ablation, "absolute": absolute,
                                                     "target_full": tf, "target_empty": te})


def roc_auc(scores: EdgeScores, true_edges: Iterable[Any], *, absolute: bool = True) -> float:
    """ROC AUC of ranking ``scores.edges`` by ``|score|`` (signed with ``absolute=False``)
    against the ground-truth edge set ``true_edges``: the probability that a true edge
    outranks a false one, ties counting one half (Mann–Whitney U / (n_true · n_false)).
    ``ValueError`` if either class is empty or a true edge is not scored."""
    from mechattr.components import parse_edge

    if not isinstance(scores, EdgeScores):
        raise TypeError(f"scores must be EdgeScores, got {type(scores).__name__}")
    truth = {parse_edge(e) for e in true_edges}
    missing = sorted(str(e) for e in truth - set(scores.edges))
    if missing:
        raise ValueError(f"true edges not among the scored edges: {missing[:5]}")
    s = (scores.scores.abs() if absolute else scores.scores).double()
    is_true = torch.tensor([e in truth for e in scores.edges])
    pos, neg = s[is_true], s[~is_true]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"ROC AUC needs true and false edges; got {len(pos)} true and {len(neg)} false")
    gt = (pos[:, None] > neg[None, :]).double().sum()
    eq = (pos[:, None] == neg[None, :]).double().sum()
    return float((gt + 0.5 * eq) / (len(pos) * len(neg)))
