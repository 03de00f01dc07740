"""Report sections as a registry: ``name → (compute, render)``; a new section is one entry.

``compute(ctx) -> dict | None`` runs inside :func:`mechattr.validate` with the run's context
(:class:`Context`: model, batch, target, the report so far, per-head numbers) and returns
JSON-able data, stored in ``report.sections[name]`` (and ``report.json``); ``render(data) ->
str`` turns that data into HTML for ``report.html`` (it must escape what it prints). Sections
render in registration order after the verdict table. Register with :func:`register_section`
(``overwrite=True`` to replace one); unknown names raise an error listing the known ones.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Context:
    """What a section's ``compute`` may read."""

    model: Any
    batch: Any
    target: Any
    report: Any
    min_effect: float
    atp: dict[str, dict[str, Any]] = field(default_factory=dict)  # corruption → {"noising"|"denoising": [L, H]}
    solo: dict[str, float] = field(default_factory=dict)  # head → effect of ablating it alone (primary mode)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Section:
    title: str
    compute: Callable[[Context], dict[str, Any] | None]
    render: Callable[[dict[str, Any]], str]


SECTIONS: dict[str, Section] = {}


def register_section(name: str, title: str, compute: Callable, render: Callable, *, overwrite: bool = False) -> None:
    """Add a report section (module docstring)."""
    if name in SECTIONS and not overwrite:
        raise ValueError(f"section {name!r} is already registered; pass overwrite=True to replace it")
    SECTIONS[name] = Section(title, compute, render)


def section(name: str) -> Section:
    if name not in SECTIONS:
        raise KeyError(f"unknown report section {name!r}; known: {sorted(SECTIONS)}")
    return SECTIONS[name]


def compute_sections(ctx: Context) -> dict[str, Any]:
    out = {}
    for name, s in SECTIONS.items():
        data = s.compute(ctx)
        if data is not None:
            out[name] = data
    return out


def render_sections(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``[(anchor, title, html)]`` for every registered section that has data."""
    return [(name, SECTIONS[name].title, SECTIONS[name].render(data[name])) for name in SECTIONS if name in data]


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _load_builtin() -> None:
    from mechattr.validation import disagreements  # noqa: F401  (registers its section)


_load_builtin()
