"""Causal validation of attribution claims: :func:`validate` → :class:`ValidationReport`.

``claims.py`` (typed claims), ``verdicts.py`` (test results, verdict words, the decision),
``stats.py`` (bootstrap, p-values, Holm), ``controls.py`` (matched controls, the answer-token
null), ``components.py`` (head and set claims on one batch of variants), ``token_maps.py``,
``links.py``, ``sections.py`` (report-section registry), ``pipeline.py`` (the straight line),
``report.py`` (the report dataclass; writing in :mod:`mechattr.report`).
"""

from mechattr.validation.claims import (
    CONFIRMED,
    INCONCLUSIVE,
    NOT_CONFIRMED,
    REDUNDANT,
    REFUTED,
    UNDERPOWERED,
    CircuitClaim,
    Claim,
    HeadClaim,
    LinkClaim,
    SetClaim,
    TestResult,
    TokenMapClaim,
    edge_effects,
    link_strength,
    parse_claims,
)
from mechattr.validation.pipeline import PROFILES, validate
from mechattr.validation.report import ValidationReport
from mechattr.validation.sections import register_section

__all__ = ["validate", "ValidationReport", "Claim", "TestResult", "edge_effects", "link_strength", "CONFIRMED", "NOT_CONFIRMED",
           "REFUTED", "REDUNDANT", "UNDERPOWERED", "INCONCLUSIVE", "TokenMapClaim", "HeadClaim", "SetClaim", "LinkClaim",
           "CircuitClaim", "parse_claims", "PROFILES", "register_section"]
