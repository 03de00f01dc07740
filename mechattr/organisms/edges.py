"""The planted organisms' circuits as graph edges: exact by construction, for checking circuit methods.

Edge semantics (EAP, Syed et al. 2023; ACDC, Conmy et al. 2023): patching ``s -> r`` adds
``ref_s − clean_s`` to receiver ``r``'s input only (``ref_s``: the sender's output on the
task's ``corrupted`` batch for ``"patch"``, zero for ``"zero"``); everything downstream
recomputes. For each planted organism we record

- ``circuit``: the edges of the full mechanism (``circuit_edges(name, ablation=None)``);
- the active edges under an ablation: those whose single-edge effect on the task's target
  (the answer's logit) is nonzero (``circuit_edges(name, "patch" | "zero")``); every other
  edge of ``model_edges(model)`` has effect 0 (``|Δ| < 1e-6``);
- what ACDC returns (greedy pruning by real patching in reverse topological order —
  receivers from the logits back, each receiver's senders latest first — removing an edge
  when ``|Δ target| < τ``) at threshold ``τ = acdc_threshold(name)`` (answer-logit units;
  the answer logit is 10): ``acdc_edges(name, ablation)``.

``tests/circuits/test_planted_edges.py`` verifies every list with a one-forward-per-edge
reference. Where the methods disagree is written in :data:`NOTES` (and the cards).
"""

from __future__ import annotations

from typing import Any

ABLATIONS = ("patch", "zero")
ACDC_TAU = 1.0

_IND_CIRCUIT = ["input->L0H1.q", "input->L0H1.k", "input->L0H1.v", "input->L1H2.q", "L0H1->L1H2.k", "input->L1H2.v", "L1H2->logits"]
_MLP_CIRCUIT = [
    "input->L0H2.q", "input->L0H2.k", "input->L0H2.v", "input->MLP0", "L0H2->MLP0",
    "input->L1H0.q", "input->L1H0.k", "MLP0->L1H0.v", "L1H0->logits",
]
_BACKUP_CIRCUIT = [
    "input->L0H3.q", "input->L0H3.k", "input->L0H3.v", "input->L1H1.q", "L0H3->L1H1.q",
    "input->L1H1.k", "input->L1H1.v", "L0H3->logits", "L1H1->logits",
]

EDGES: dict[str, dict[str, list[str]]] = {
    "planted_induction": {
        "circuit": _IND_CIRCUIT,
        # the corruption changes only the answer token's earlier occurrence
        "patch": ["input->L1H2.v", "L1H2->logits"],
        "zero": _IND_CIRCUIT,
        "acdc_patch": ["input->L1H2.v", "L1H2->logits"],
        "acdc_zero": _IND_CIRCUIT,
    },
    "planted_mlp": {
        "circuit": _MLP_CIRCUIT,
        # the corruption changes tokens only (positions stay): every QK edge is inert
        "patch": ["input->L0H2.v", "input->MLP0", "L0H2->MLP0", "MLP0->L1H0.v", "L1H0->logits"],
        "zero": _MLP_CIRCUIT,
        "acdc_patch": ["input->L0H2.v", "input->MLP0", "L0H2->MLP0", "MLP0->L1H0.v", "L1H0->logits"],
        "acdc_zero": _MLP_CIRCUIT,
    },
    "planted_backup": {
        "circuit": _BACKUP_CIRCUIT,
        "patch": ["input->L0H3.v", "L0H3->logits"],
        "zero": ["input->L0H3.q", "input->L0H3.k", "L0H3->L1H1.q", "input->L1H1.k", "L0H3->logits"],
        "acdc_patch": ["input->L0H3.v", "L0H3->logits"],
        "acdc_zero": ["input->L0H3.q", "input->L0H3.k", "input->L0H3.v", "L0H3->logits"],
    },
}

NOTES: dict[str, str] = {
    "planted_induction": "Edges: with the task's corruption (ablation 'patch') only the induction head's value "
    "path is active (input->L1H2.v, L1H2->logits = -G each); every other edge, the previous-token head's "
    "included, is exactly 0, because the corrupted token is never the query's match. Under 'zero' all 7 "
    "circuit edges are active, but the QK edges (input->L0H1.q/k/v, input->L1H2.q, L0H1->L1H2.k) act through "
    "saturated softmaxes, so EAP (first-order) scores them ~0 while the exact effect is ~-9.",
    "planted_mlp": "Edges: under 'patch' the value path input->L0H2.v, input->MLP0, L0H2->MLP0, MLP0->L1H0.v, "
    "L1H0->logits is active (-G each); the QK edges are inert (positions do not change). The MLP is an AND: "
    "EAP scores its three input-side edges -2G (the ReLU unit of the clean pair has slope 2, the corrupted "
    "pair's unit is off), exact patching -G. Under 'zero' all 9 circuit edges are active; EAP scores the QK "
    "edges ~0 (saturated softmax).",
    "planted_backup": "Edges: under 'patch' (x_1 replaced; the primary still writes its flag, the backup stays "
    "silent) single-edge patching, EAP and ACDC agree: input->L0H3.v, L0H3->logits (-G each). Under 'zero' "
    "they disagree: L0H3->L1H1.q (the flag) is +G exactly (the backup then writes the answer too) but ~0 by "
    "EAP (the backup's softmax is saturated on BOS); input->L0H3.v is 0 exactly (the backup compensates) but "
    "-G by EAP; ACDC (tau=1) prunes L1H1->logits first (the silent backup changes nothing), so it returns "
    "input->L0H3.q/k/v and L0H3->logits, not the backup edges whose single-edge effects are large.",
}


def names() -> list[str]:
    """Organisms with documented edges (sorted)."""
    return sorted(EDGES)


def _entry(name: Any) -> dict[str, list[str]]:
    if not isinstance(name, str) or name not in EDGES:
        raise ValueError(f"no documented edges for organism {name!r}; known: {names()}")
    return EDGES[name]


def _check_ablation(ablation: Any, allow_none: bool) -> None:
    allowed = ([None] if allow_none else []) + list(ABLATIONS)
    if ablation not in allowed:
        raise ValueError(f"ablation {ablation!r} unknown; allowed: {allowed}")


def circuit_edges(name: str, ablation: str | None = "patch") -> list[str]:
    """Edges (as ``parse_edge`` strings) of organism ``name``: the active set under
    ``ablation`` (``"patch"``: the task's corrupted batch; ``"zero"``), or with
    ``ablation=None`` the full mechanism. Ordered as ``model_edges`` (by receiver, then sender)."""
    _check_ablation(ablation, allow_none=True)
    return list(_entry(name)["circuit" if ablation is None else ablation])


def acdc_threshold(name: str) -> float:
    """The ACDC threshold ``τ`` (answer-logit units) at which :func:`acdc_edges` holds."""
    _entry(name)
    return ACDC_TAU


def acdc_edges(name: str, ablation: str = "patch") -> list[str]:
    """The edges ACDC keeps at ``τ = acdc_threshold(name)`` under ``ablation``."""
    _check_ablation(ablation, allow_none=False)
    return list(_entry(name)[f"acdc_{ablation}"])


def card_evidence(name: str) -> dict[str, Any]:
    """The edge lists as card evidence entries (empty for organisms without documented edges)."""
    if name not in EDGES:
        return {}
    return {
        "circuit_edges": circuit_edges(name, None),
        "active_edges_patch": circuit_edges(name, "patch"),
        "active_edges_zero": circuit_edges(name, "zero"),
        "acdc_tau": ACDC_TAU,
        "acdc_edges_patch": acdc_edges(name, "patch"),
        "acdc_edges_zero": acdc_edges(name, "zero"),
    }
