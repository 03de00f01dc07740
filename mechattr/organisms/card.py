"""Model cards: what an organism is, how it was made, how well it does, and its circuit.

A card is stored as JSON next to the weights (``weights/<name>.json``) and rendered as
markdown by :meth:`Card.to_markdown` (``cards/<name>.md``, ``docs/organisms.md``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Card:
    """One organism's card.

    ``architecture`` holds the ``HookedTransformerConfig`` keyword arguments the weights
    were made with; ``training`` the recipe (seed, steps, batch size, lr, final loss);
    ``accuracy`` the top-1 accuracy of the answer at the last position on fresh samples
    (``accuracy_eval`` says which); ``circuit`` maps a role to component strings
    (``"L1H2"``, ``"MLP0"``); ``evidence`` holds the measurements behind the circuit;
    ``corruptions`` maps each of the task's corruptions (``"value"``, ``"key"``) to what it
    changes, the mean answer logit clean and corrupted, and the components it reaches
    (:mod:`mechattr.organisms.corruptions`).
    """

    name: str
    description: str
    architecture: dict[str, Any]
    training: dict[str, Any]
    accuracy: float
    circuit: dict[str, list[str]]
    notes: str = ""
    accuracy_eval: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    corruptions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Card:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Card:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_markdown(self) -> str:
        """The card as a markdown section (``## name`` heading)."""
        a = self.architecture
        arch = (
            f"{a.get('n_layers')} layers, d_model {a.get('d_model')}, {a.get('n_heads')} heads "
            f"(d_head {a.get('d_head')}), "
            + ("attention-only" if a.get("attn_only") else f"MLPs (d_mlp {a.get('d_mlp')})")
            + f", normalization {a.get('normalization_type')}, vocab {a.get('d_vocab')}, "
            f"n_ctx {a.get('n_ctx')}"
        )
        lines = [f"## {self.name}", "", self.description, "", f"- **Architecture:** {arch}."]
        t = ", ".join(f"{k}={v}" for k, v in self.training.items())
        lines.append(f"- **Training:** {t}.")
        ev = ", ".join(f"{k}={v}" for k, v in self.accuracy_eval.items())
        lines.append(f"- **Accuracy:** {self.accuracy:.4f}" + (f" ({ev})." if ev else "."))
        lines += ["", "| role | components |", "|---|---|"]
        for role, comps in self.circuit.items():
            lines.append(f"| {role} | {', '.join(comps)} |")
        if self.corruptions:
            lines += ["", "Corruptions (`batch.corruptions`; *reaches*: components whose corrupted activation, patched "
                      "alone into the clean run, moves the mean answer logit by at least 10 % of clean − corrupted):", "",
                      "| corruption | what it changes | answer logit clean → corrupted | reaches (patching effect) |",
                      "|---|---|---|---|"]
            for name, c in self.corruptions.items():
                reach = ", ".join(f"{k} ({v:+.2f})" for k, v in c.get("reaches", {}).items()) or "none alone"
                lines.append(f"| `{name}` | {c.get('changes', '')} | {c.get('answer_logit_clean')} → "
                             f"{c.get('answer_logit_corrupted')} | {reach} |")
        if self.evidence:
            lines += ["", "Evidence:", ""]
            for k, v in self.evidence.items():
                lines.append(f"- `{k}`: {v}")
        if self.notes:
            lines += ["", self.notes]
        return "\n".join(lines) + "\n"
