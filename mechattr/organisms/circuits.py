"""Finding each organism's circuit from attention scores and ablations (recorded on the card).

- induction (trained and planted): previous-token heads = layer-0 heads whose mean
  attention from ``i`` to ``i-1`` is at least ``threshold``; induction heads = layer-1 heads
  whose mean attention from the last position to the answer's earlier position
  (``source_positions[:, 0]``) is at least ``threshold``.
- ioi / sentiment: heads (and MLPs) whose single mean ablation lowers accuracy by at least
  ``min_drop``, heads labelled by what they attend to (see :func:`ablation_circuit`).

Each function returns ``(circuit, evidence)``: role -> component strings, and the numbers
behind it (accuracies under single-head and joint mean ablation, attention scores).
"""

from __future__ import annotations

from typing import Any

import torch

from mechattr.components import MLP, Head
from mechattr.organisms.analysis import (
    ablated_logits,
    answer_accuracy,
    attention_to,
    fmt,
    mlp_ablated_logits,
    patterns,
    prev_token_score,
    single_head_ablation,
)
from mechattr.organisms.tasks import Task
from mechattr.runtime.tl import HookedTransformer

EVAL_N, EVAL_SEED = 500, 777


def _r(x: torch.Tensor) -> list:
    return [[round(v, 3) for v in row] for row in x.tolist()] if x.ndim == 2 else [round(v, 3) for v in x.tolist()]


@torch.no_grad()
def induction_circuit(model: HookedTransformer, task: Task, threshold: float = 0.5) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Previous-token heads (layer 0) and induction heads (layer 1) by attention score."""
    b = task.sample(EVAL_N, EVAL_SEED)
    pats = patterns(model, b.tokens)
    prev = prev_token_score(pats[0])
    ind = attention_to(pats[1], b.source_positions[:, 0])
    H = model.cfg.n_heads
    prev_heads = [Head(0, h) for h in range(H) if prev[h] >= threshold]
    ind_heads = [Head(1, h) for h in range(H) if ind[h] >= threshold]
    single = single_head_ablation(model, b, "mean")
    both = prev_heads + ind_heads
    evidence = {
        "accuracy_clean": round(answer_accuracy(model(b.tokens), b.answers), 4),
        "layer0_prev_token_attention": _r(prev),
        "layer1_attention_last_to_answer_source": _r(ind),
        "accuracy_single_head_mean_ablation": _r(single),
        "accuracy_circuit_mean_ablation": round(answer_accuracy(ablated_logits(model, b.tokens, both, "mean"), b.answers), 4),
        "accuracy_previous_token_mean_ablation": round(answer_accuracy(ablated_logits(model, b.tokens, prev_heads, "mean"), b.answers), 4),
        "accuracy_induction_mean_ablation": round(answer_accuracy(ablated_logits(model, b.tokens, ind_heads, "mean"), b.answers), 4),
        "eval": f"task.sample({EVAL_N}, seed={EVAL_SEED})",
    }
    return {"previous_token": fmt(prev_heads), "induction": fmt(ind_heads)}, evidence


def _query_key(pat: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mean attention ``[n_layers, n_heads]`` from per-row query ``q`` to key ``k`` (rows with ``k < 0`` skipped)."""
    ok = k >= 0
    rows = torch.arange(pat.shape[1])[ok]
    # advanced indices (rows, q, k) around a slice put the row axis first: [rows, layer, head]
    return pat[:, rows, :, q[ok], k[ok]].mean(0) if ok.any() else torch.zeros(pat.shape[0], pat.shape[2])


def role_scores(name: str, pats: torch.Tensor, b) -> dict[str, torch.Tensor]:
    """Attention scores ``[n_layers, n_heads]`` that name a head's role, per organism.

    ioi: ``name_mover`` last → IO; ``subject_attender`` last → S1 or S2; ``duplicate_token``
    S2 → S1; ``previous_token`` i → i-1. sentiment: ``polarity_reader`` last → polarity word;
    ``negator_reader`` last → its negator; ``negation_detector`` polarity word → its negator
    (the previous position); ``previous_token`` i → i-1.
    """
    last = torch.full((pats.shape[1],), pats.shape[-1] - 1)
    prev = pats.diagonal(offset=-1, dim1=-2, dim2=-1).mean((1, 3))
    i = b.info
    if name == "ioi":
        return {
            "name_mover": _query_key(pats, last, i["io"]),
            "subject_attender": _query_key(pats, last, i["s1"]) + _query_key(pats, last, i["s2"]),
            "duplicate_token": _query_key(pats, i["s2"], i["s1"]),
            "previous_token": prev,
        }
    return {
        "polarity_reader": _query_key(pats, last, i["polarity"]),
        "negator_reader": _query_key(pats, last, i["negator"]),
        "negation_detector": _query_key(pats, i["polarity"], i["negator"]),
        "previous_token": prev,
    }


@torch.no_grad()
def ablation_circuit(
    model: HookedTransformer, task: Task, min_drop: float = 0.05, chance: float = 0.5, margin: float = 0.1,
    min_role_score: float = 0.3,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Heads found by mean ablation, labelled by attention role.

    The circuit holds every head whose single mean ablation lowers accuracy by at least
    ``min_drop``; if ablating them together leaves accuracy above ``chance + margin``, heads
    are added greedily (the one whose addition lowers the joint accuracy most) until it does
    not. Each head gets the role (:func:`role_scores`) with the highest score if that is at
    least ``min_role_score``, else ``other``. MLPs whose single mean ablation lowers accuracy
    by at least ``min_drop`` are listed under ``mlp``.
    """
    b = task.sample(EVAL_N, EVAL_SEED)
    base = answer_accuracy(model(b.tokens), b.answers)
    single = single_head_ablation(model, b, "mean")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads = [Head(layer, h) for layer in range(L) for h in range(H) if base - single[layer, h] >= min_drop]

    def joint(hs: list[Head]) -> float:
        return answer_accuracy(ablated_logits(model, b.tokens, hs, "mean"), b.answers) if hs else base

    greedy: list[str] = []
    while joint(heads) > chance + margin and len(heads) < L * H:
        rest = [Head(layer, h) for layer in range(L) for h in range(H) if Head(layer, h) not in heads]
        best = min(rest, key=lambda c: joint(heads + [c]))
        heads.append(best)
        greedy.append(str(best))
    scores = role_scores(task.name, patterns(model, b.tokens), b)
    circuit: dict[str, list[Head]] = {}
    for hd in sorted(heads):
        role, s = max(((r, v[hd.layer, hd.head].item()) for r, v in scores.items()), key=lambda t: t[1])
        circuit.setdefault(role if s >= min_role_score else "other", []).append(hd)
    mlp_acc = [round(answer_accuracy(mlp_ablated_logits(model, b.tokens, MLP(layer)), b.answers), 3) for layer in range(L)]
    mlps = [f"MLP{layer}" for layer in range(L) if base - mlp_acc[layer] >= min_drop]
    evidence = {
        "accuracy_clean": round(base, 4),
        "accuracy_single_head_mean_ablation": _r(single),
        "accuracy_circuit_mean_ablation": round(joint(heads), 4),
        "heads_added_greedily": greedy,
        "accuracy_single_mlp_mean_ablation": mlp_acc,
        **{f"attention_{r}": _r(v) for r, v in scores.items()},
        "eval": f"task.sample({EVAL_N}, seed={EVAL_SEED}); min_drop={min_drop}",
    }
    out = {r: fmt(v) for r, v in circuit.items()}
    if mlps:
        out["mlp"] = mlps
    return out, evidence

