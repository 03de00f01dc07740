"""Verdicts: one test's effect, interval and null, and the words a claim's outcome is given in.

A :class:`TestResult` holds an intervention's effect (mean over examples of the per-example
change), its bootstrap interval, and its comparison with a *null* — the same intervention on
matched controls, or (for answer-token targets) the same intervention's effect re-read for
random other answer tokens. :func:`decide` turns the primary test of a claim into an outcome:

- ``confirmed``: the Holm-adjusted p-value against the null is ≤ α **and** the interval of
  ``|effect|`` lies entirely at or above ``min_effect``;
- ``refuted``: the interval of ``|effect|`` lies entirely below ``min_effect``;
- ``underpowered``: fewer than :data:`MIN_CONTROLS` possible matched controls and no other
  null, or fewer than :data:`MIN_EXAMPLES` examples (no interval);
- ``inconclusive``: anything else (the reason says which half failed);
- ``redundant: necessary as part of {…}``: set by the group analysis
  (:mod:`mechattr.validation.components`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mechattr.validation.stats import ALPHA, magnitude_interval

CONFIRMED, REFUTED, REDUNDANT = "confirmed", "refuted", "redundant"
UNDERPOWERED, INCONCLUSIVE, UNTESTED = "underpowered", "inconclusive", "untested"
NOT_CONFIRMED = "not confirmed"  # the old word; kept for callers comparing against it
OUTCOMES = (CONFIRMED, REDUNDANT, INCONCLUSIVE, UNDERPOWERED, REFUTED, UNTESTED)
MIN_CONTROLS = 20  # fewer possible matched controls: the control quantile cannot decide
MIN_EXAMPLES = 4  # fewer examples: no bootstrap interval, no confirmation or refutation
MAX_STORED_CONTROLS = 200


@dataclass
class TestResult:
    """One intervention test of a claim.

    ``effect`` mean over examples; ``ci_low``/``ci_high`` its bootstrap interval;
    ``threshold`` the null's ``1 − α`` quantile (of ``|null|`` when two-sided); ``p`` the
    Monte Carlo p-value, ``p_adj`` after Holm over the claim's family; ``null`` which null
    (``"matched heads"``, ``"random answer tokens"``, ``"random rankings"``, …);
    ``n_controls`` draws used, ``n_possible`` distinct controls that exist (``-1``: unbounded);
    ``primary``: the test that decides the claim's outcome.
    """

    test: str
    effect: float
    threshold: float
    n_controls: int
    confirmed: bool
    controls: list[float] = field(default_factory=list)
    rule: str = ""
    ci_low: float | None = None
    ci_high: float | None = None
    p: float | None = None
    p_adj: float | None = None
    null: str = ""
    n_possible: int = -1
    min_effect: float | None = None
    primary: bool = False
    outcome: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(test: str, effect: float, controls: Any, *, two_sided: bool = False, sign: int = 1, q: float = 0.95) -> TestResult | None:
    """A :class:`TestResult` of ``effect`` against the ``q`` quantile of ``controls`` (no
    interval); ``None`` when there are no controls. Lower-is-better tests use ``sign=-1``."""
    c = torch.as_tensor(controls, dtype=torch.float64).flatten()
    if c.numel() == 0:
        return None
    if two_sided:
        val, ref, rule = abs(float(effect)), c.abs(), f"|effect| > q{int(q * 100)}(|controls|)"
    elif sign < 0:
        val, ref, rule = -float(effect), -c, f"effect < q{int(round((1 - q) * 100))}(controls)"
    else:
        val, ref, rule = float(effect), c, f"effect > q{int(q * 100)}(controls)"
    thr = float(torch.quantile(ref, q))
    shown = thr if sign > 0 or two_sided else -thr
    p = float((1 + (ref >= val).sum()) / (1 + ref.numel()))
    kept = [float(x) for x in c[:MAX_STORED_CONTROLS]]
    return TestResult(test, float(effect), shown, int(c.numel()), bool(val > thr), kept, rule, p=p)


@dataclass
class Claim:
    """A tested claim as reported: ``id``, ``kind`` (``tokens``, ``head``, ``set``, ``link``,
    ``circuit``), ``subject`` (what it is about), ``source`` (``auto``: found by attribution;
    ``user``; ``card``: documented; ``member``: a head of a claimed group), its tests, the
    outcome (``verdict``) and the reason in plain words."""

    id: str
    kind: str
    subject: dict[str, Any]
    source: str = "auto"
    tests: list[TestResult] = field(default_factory=list)
    note: str = ""
    outcome: str = ""
    reason: str = ""

    def add(self, t: TestResult | None) -> None:
        if t is not None:
            self.tests.append(t)

    @property
    def primary(self) -> TestResult | None:
        return next((t for t in self.tests if t.primary), self.tests[0] if self.tests else None)

    @property
    def verdict(self) -> str:
        """The outcome word(s); without a decided outcome, the majority of the tests' quantile checks."""
        if self.outcome:
            return self.outcome
        if not self.tests:
            return UNTESTED
        return CONFIRMED if sum(t.confirmed for t in self.tests) * 2 > len(self.tests) else NOT_CONFIRMED

    @property
    def verdict_kind(self) -> str:
        """``verdict`` without its detail (``"redundant"`` for ``"redundant: necessary as part of {…}"``)."""
        return self.verdict.split(":")[0]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "subject": self.subject, "source": self.source,
                "verdict": self.verdict, "outcome": self.outcome, "reason": self.reason, "note": self.note,
                "tests": [t.to_dict() for t in self.tests]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Claim:
        return cls(d["id"], d["kind"], d["subject"], d.get("source", "auto"),
                   [TestResult(**t) for t in d.get("tests", [])], d.get("note", ""), d.get("outcome", ""), d.get("reason", ""))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def decide(t: TestResult, n_examples: int, alpha: float = ALPHA) -> tuple[str, str]:
    """``(outcome, reason)`` of a primary test whose ``p_adj`` is set (module docstring)."""
    if n_examples < MIN_EXAMPLES or t.ci_low is None or t.ci_high is None:
        return UNDERPOWERED, f"{n_examples} example(s): no interval over examples (needs ≥ {MIN_EXAMPLES})"
    lo, hi = magnitude_interval(t.ci_low, t.ci_high)
    me = float(t.min_effect or 0.0)
    ci = f"|effect| {_fmt(abs(t.effect))}, 95% CI [{_fmt(lo)}, {_fmt(hi)}]"
    if hi < me:
        return REFUTED, f"{ci} entirely below the minimum effect {_fmt(me)}"
    if t.p is None:
        return UNDERPOWERED, (f"{ci}; only {max(t.n_possible, 0)} matched controls exist (< {MIN_CONTROLS}) "
                             "and no other null applies")
    sig = t.p_adj is not None and t.p_adj <= alpha
    if sig and lo >= me:
        return CONFIRMED, f"{ci} ≥ minimum {_fmt(me)}; p = {t.p:.3g} (Holm {t.p_adj:.3g}) vs {t.null}"
    why = [] if sig else [f"not beyond the null ({t.null}: p = {t.p:.3g}, Holm {t.p_adj:.3g} > {alpha})"]
    if lo < me:
        why.append(f"CI reaches below the minimum effect {_fmt(me)}")
    return INCONCLUSIVE, f"{ci}; " + "; ".join(why)
