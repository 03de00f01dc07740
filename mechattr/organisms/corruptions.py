"""What each of a task's corruptions reaches in an organism, measured by activation patching (for the card).

For every corruption ``c`` in ``TaskBatch.corruptions`` (``"value"``, ``"key"``): the mean
answer logit on clean and on corrupted rows, and the components whose corrupted activation,
patched alone into the clean run (``activation_patch(direction="noise")``: a head's
``hook_z``, an MLP's ``hook_mlp_out``), moves the mean answer logit by at least
``REACH`` × |clean − corrupted| (Meng et al. 2022's causal tracing, one component at a
time; Heimersheim & Nanda 2024 on noising). A component a corruption does not reach has
(near) zero patching effect under it, whatever its role.
"""

from __future__ import annotations

from typing import Any

import torch

REACH = 0.1  # fraction of |clean - corrupted| a single patch must move the target to count as reached


def _name(component: str) -> str:
    """``activation_patch``'s ``mlp_out3`` as the cards write it (``MLP3``)."""
    return "MLP" + component[len("mlp_out"):] if component.startswith("mlp_out") else component


@torch.no_grad()
def corruption_evidence(model: Any, task: Any, n: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per corruption: what it changes (the task's note), the mean answer logit clean and
    corrupted, and the components it reaches (name → patching effect, largest first)."""
    from mechattr import activation_patch

    b = task.sample(n, seed)
    rows = torch.arange(len(b))
    clean = float(model(b.tokens)[rows, -1, b.answers].mean())
    sites = ["head_out"] + ([] if getattr(model.cfg, "attn_only", False) else ["mlp_out"])
    out: dict[str, dict[str, Any]] = {}
    for name, corrupted in b.corruptions.items():
        corr = float(model(corrupted)[rows, -1, b.answers].mean())
        effects: dict[str, float] = {}
        for site in sites:
            r = activation_patch(model, b.tokens, corrupted, b.target, site=site, direction="noise", return_result=True)
            base = float(r.settings["clean"])
            effects |= {_name(c): float(v) - base for c, v in zip(r.components, r.scores.flatten().tolist())}
        floor = REACH * abs(clean - corr)
        reached = sorted(((c, e) for c, e in effects.items() if abs(e) >= floor and floor > 0), key=lambda ce: -abs(ce[1]))
        out[name] = {
            "changes": task.corruption_notes[name],
            "answer_logit_clean": round(clean, 3),
            "answer_logit_corrupted": round(corr, 3),
            "reaches": {c: round(e, 3) for c, e in reached},
        }
    return out
