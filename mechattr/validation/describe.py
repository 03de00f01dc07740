"""Words and small claims for the report: the target in words, what a profile ran, circuit claims."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mechattr.inputs import Batch
from mechattr.targets import Target
from mechattr.validation.claims import CircuitClaim
from mechattr.validation.verdicts import Claim, TestResult


def target_words(model: Any, target: Target, batch: Batch) -> list[str]:
    """The target in words per example (first 8), e.g. ``logit of 't5' at position 23``."""
    from mechattr.validation.controls import ANSWER_TARGETS, answer_ids

    pos = target.positions(batch.shape[0], batch.shape[1], batch.attention_mask, batch.tokens.device)[:, 0].tolist()
    words = []
    for b in range(min(8, batch.shape[0])):
        if isinstance(target, ANSWER_TARGETS):
            ids = answer_ids(target)
            tid = int(ids if ids.ndim == 0 else ids[b])
            tok = model.to_string(torch.tensor([tid])) if getattr(model, "tokenizer", None) is not None else str(tid)
            words.append(f"{target.name} of {tok!r} at position {pos[b]}")
        else:
            words.append(f"{target.name} at position {pos[b]}")
    return words


def profile_words(profile: str, n_draws: int, n_ctrl: int, prof: dict, modes: Sequence[str], curve_draws: int, adaptive: bool) -> str:
    steps = prof.get("path_steps")
    return (f"profile {profile}: up to {n_draws} random rankings for token claims"
            + (" (the fewest that reach Holm's strictest level over the methods)" if not prof["n_draws"] else "")
            + (f", path methods at {steps} steps first (the method's default when completeness fails)" if steps else "")
            + f", up to {n_ctrl} matched head sets per "
            f"claim (or {prof['answer_draws']} random-answer draws when fewer than 20 exist), {prof['link_draws']} random "
            f"source tokens per link, ablation modes {', '.join(modes)} (first decides), {curve_draws} random curves, "
            f"sanity check {_sanity_words(prof)}, attention flow {'on' if prof['flow'] else 'off'}, "
            f"path patching of every head to the logits {'on' if prof['path_patch'] else 'off'}; "
            f"controls {'adaptive (stop when decided)' if adaptive else 'all drawn'}")


def circuit_claim(model: Any, batch: Batch, corrupted: torch.Tensor, target: Target, c: CircuitClaim, seed: int,
                   batch_size: int | None) -> Claim:
    """Wang et al. 2022 checks of a claimed circuit: confirmed when normalised faithfulness is
    in [0.8, 1.2] and every node's minimality score is above 0."""
    from mechattr.circuits.evaluation import evaluate_circuit

    ev = evaluate_circuit(model, list(c.edges), batch.tokens, corrupted, target, completeness=True, seed=seed,
                          batch_size=batch_size, attention_mask=batch.attention_mask)
    rec = Claim(c.id, "circuit", {"edges": list(c.edges)}, c.source)
    rec.add(TestResult("faithfulness (T(C) − T(∅)) / (T(M) − T(∅))", ev.faithfulness, 0.8, 0, bool(0.8 <= ev.faithfulness <= 1.2),
                       rule="confirmed in [0.8, 1.2]", primary=True))
    worst = max(ev.completeness.values(), default=0.0)
    rec.add(TestResult("completeness: max |T(C∖K) − T(M∖K)|", worst, float("nan"), len(ev.completeness), True,
                       rule="reported (Wang et al. 2022 §4)"))
    low = min(ev.minimality.values(), default=float("nan"))
    rec.add(TestResult("minimality: min over nodes of max |T(C∖(K∪{v})) − T(C∖K)|", low, 0.0, len(ev.minimality), low > 0,
                       rule="every node must matter (> 0)"))
    f = ev.faithfulness
    rec.outcome = "confirmed" if (f == f and 0.8 <= f <= 1.2 and low > 0) else "refuted" if (f == f and f < 0.5) else "inconclusive"
    rec.reason = f"faithfulness {f:.3g}, completeness gap ≤ {worst:.3g}, smallest minimality {low:.3g}"
    return rec


def _sanity_words(prof: dict) -> str:
    if not prof["sanity"]:
        return "off"
    st = prof.get("sanity_stages")
    return ("on (first method, every cascade stage)" if st is None
            else f"on (first method, {st} cascade stages evenly spaced from the unembedding to the fully randomized model)")
