"""``ValidationReport``: every number of a validation run, its settings, and how to save it.

``save(dir)`` writes ``report.json`` (schema :data:`mechattr.report.schema.SCHEMA_VERSION`,
no timestamps: the same seed gives byte-identical JSON) and ``report.html`` (one offline
page, plotly.js embedded once). ``load(dir)`` reads the JSON back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechattr.validation.verdicts import CONFIRMED, Claim


@dataclass
class ValidationReport:
    """Results of :func:`mechattr.validate`.

    ``settings`` (model, target, methods, k, removal, seed, …), ``versions``,
    ``str_tokens [batch][pos]``; ``token_maps {method: [batch][pos]}``;
    ``faithfulness {method: {...}}`` (comp/suff/LO summaries with controls, per-example
    values), ``curves {method: {...}}`` (deletion/insertion), ``agreement``,
    ``completeness {method: {...}}``, ``sanity {method: {...}}``;
    ``heads {"atp": [L][H], "ablation": {mode: [L][H]}, "path_patch": [L][H], "links": [L][H]}``;
    ``flow [batch][pos]`` (attention flow to the target position); ``circuit`` (the circuit
    section's data, :class:`mechattr.report.circuit.CircuitReport`, when asked for); ``claims`` with their
    tests and verdicts; ``sections`` (registered report sections' data,
    :mod:`mechattr.validation.sections`); ``skipped`` steps with the reason; ``timings`` (seconds, HTML only —
    never in the JSON, which must be deterministic).
    """

    settings: dict[str, Any]
    versions: dict[str, str]
    str_tokens: list[list[str]]
    token_maps: dict[str, Any] = field(default_factory=dict)
    faithfulness: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, Any] = field(default_factory=dict)
    completeness: dict[str, Any] = field(default_factory=dict)
    sanity: dict[str, Any] = field(default_factory=dict)
    heads: dict[str, Any] = field(default_factory=dict)
    flow: Any = None
    circuit: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ access
    def claim(self, claim_id: str) -> Claim:
        """The claim with id ``claim_id`` (``KeyError`` listing the ids otherwise)."""
        for c in self.claims:
            if c.id == claim_id:
                return c
        raise KeyError(f"no claim {claim_id!r}; claims: {[c.id for c in self.claims]}")

    def verdicts(self) -> dict[str, str]:
        """``{claim id: verdict}`` (``confirmed``, ``refuted``, ``redundant: necessary as part of {…}``,
        ``inconclusive``, ``underpowered``, ``untested``)."""
        return {c.id: c.verdict for c in self.claims}

    def confirmed(self) -> list[str]:
        return [c.id for c in self.claims if c.verdict == CONFIRMED]

    def __repr__(self) -> str:
        st = self.settings
        counts: dict[str, int] = {}
        for c in self.claims:
            counts[c.verdict_kind] = counts.get(c.verdict_kind, 0) + 1
        lines = [f"ValidationReport({st.get('model', 'model')}, {st.get('n_examples')} examples, profile "
                 f"{st.get('profile', '?')}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ")"]
        for c in self.claims[:30]:
            v = c.verdict if len(c.verdict) <= 60 else c.verdict[:59] + "…"
            lines.append(f"  {c.id[:44]:<44} {v}")
        if len(self.claims) > 30:
            lines.append(f"  … {len(self.claims) - 30} more")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The verdict table for notebooks (the full page: :meth:`save`)."""
        from mechattr.report.html import verdict_html

        return verdict_html(self)

    def summary_frame(self) -> Any:
        """One row per claim: kind, source, verdict, number of tests, the reason in numbers."""
        import pandas as pd

        rows = []
        for c in self.claims:
            rows.append({
                "claim": c.id, "kind": c.kind, "source": c.source, "verdict": c.verdict,
                "tests": str(len(c.tests)),
                "numbers": c.reason or "; ".join(f"{t.test}: {t.effect:.4g} vs {t.threshold:.4g}" for t in c.tests),
            })
        return pd.DataFrame(rows, columns=["claim", "kind", "source", "verdict", "tests", "numbers"])

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict in the versioned schema (no timings)."""
        from mechattr.report.schema import report_to_dict

        return report_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ValidationReport:
        from mechattr.report.schema import report_from_dict

        return report_from_dict(d)

    def save(self, directory: str | Path) -> Path:
        """Write ``report.json`` and ``report.html`` into ``directory``; returns the directory."""
        from mechattr.report.html import render_html
        from mechattr.report.schema import dumps

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(dumps(self), encoding="utf-8")
        (out / "report.html").write_text(render_html(self), encoding="utf-8")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> ValidationReport:
        """Read ``report.json`` from ``directory`` (or a path to the JSON file)."""
        from mechattr.report.schema import loads

        p = Path(directory)
        if p.is_dir():
            p = p / "report.json"
        return loads(p.read_text(encoding="utf-8"))
