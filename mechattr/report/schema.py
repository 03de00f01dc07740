"""The ``report.json`` schema: versioned, deterministic (sorted keys, no timestamps).

Top level: ``schema`` (``"mechattr.validation_report"``), ``schema_version``, ``settings``,
``versions``, ``str_tokens``, ``token_maps``, ``faithfulness``, ``curves``, ``agreement``,
``completeness``, ``sanity``, ``heads``, ``flow``, ``circuit`` (optional), ``sections`` (registered
sections' data), ``claims`` (each with ``verdict``, ``outcome``, ``reason`` and ``tests`` with intervals and
p-values), ``skipped``. Version 2: typed verdicts (issue 11). Non-finite floats are written as ``null``.
"""

from __future__ import annotations

import json
from typing import Any

from mechattr.io import to_jsonable

SCHEMA_NAME = "mechattr.validation_report"
SCHEMA_VERSION = 2
FIELDS = ("settings", "versions", "str_tokens", "token_maps", "faithfulness", "curves", "agreement",
          "completeness", "sanity", "heads", "flow", "circuit", "sections", "skipped")


def report_to_dict(report: Any) -> dict[str, Any]:
    """The report as JSON-able data (tensors → lists); timings are left out."""
    d: dict[str, Any] = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION}
    for f in FIELDS:
        d[f] = to_jsonable(getattr(report, f))
    d["claims"] = to_jsonable([c.to_dict() for c in report.claims])
    return d


def report_from_dict(d: dict[str, Any]) -> Any:
    """Rebuild a :class:`~mechattr.validation.ValidationReport` from :func:`report_to_dict` output."""
    from mechattr.validation.report import ValidationReport
    from mechattr.validation.verdicts import Claim

    if d.get("schema") != SCHEMA_NAME:
        raise ValueError(f"not a mechattr validation report (schema={d.get('schema')!r})")
    if d.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"report schema_version {d.get('schema_version')!r}; this mechattr reads {SCHEMA_VERSION}")
    kw = {f: d.get(f) for f in FIELDS}
    kw = {k: v for k, v in kw.items() if v is not None or k == "flow"}
    return ValidationReport(**kw, claims=[Claim.from_dict(c) for c in d.get("claims", [])])


def dumps(report: Any) -> str:
    """Deterministic JSON text of the report."""
    return json.dumps(report_to_dict(report), indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False)


def loads(text: str) -> Any:
    return report_from_dict(json.loads(text))
