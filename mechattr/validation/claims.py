"""Typed claims: frozen, ordered dataclasses that say what is claimed, not how it is tested.

- :class:`TokenMapClaim` — "the top-``k`` tokens of ``method``'s map matter";
- :class:`HeadClaim` — "head ``h`` matters" (necessity by ablation);
- :class:`SetClaim` — "the head set ``S`` matters" (necessity: ablate ``S``; sufficiency:
  ablate every other head); each member also gets a :class:`HeadClaim` so redundancy shows;
- :class:`LinkClaim` — "head ``h`` reads the top token of ``method`` at the target position";
- :class:`CircuitClaim` — "these edges are the circuit" (Wang et al. 2022's faithfulness,
  completeness and minimality).

:func:`parse_claims` turns the old forms (``["L1H2", ["L1H0", "L1H1"]]``,
``{"name": "L1H2" | [heads]}``, ``{"heads": [...]}``) and typed claims into a list of typed
claims. The reported results are :class:`mechattr.validation.verdicts.Claim` records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mechattr.components import Head, parse_component
from mechattr.validation.links import edge_effects, link_strength
from mechattr.validation.verdicts import (
    CONFIRMED,
    INCONCLUSIVE,
    NOT_CONFIRMED,
    REDUNDANT,
    REFUTED,
    UNDERPOWERED,
    UNTESTED,
    Claim,
    TestResult,
    compare,
)


@dataclass(frozen=True, order=True)
class TokenMapClaim:
    """The top-``k`` tokens (fraction or count) of ``method``'s attribution map matter."""

    method: str
    k: float = 0.2
    source: str = "auto"

    @property
    def id(self) -> str:
        return f"tokens:{self.method}"


@dataclass(frozen=True, order=True)
class HeadClaim:
    """Head ``head`` matters for the target (ablating it changes the target)."""

    head: Head
    name: str = ""
    source: str = "user"

    @property
    def heads(self) -> tuple[Head, ...]:
        return (self.head,)

    @property
    def id(self) -> str:
        return f"heads:{self.name or self.head}"


@dataclass(frozen=True, order=True)
class SetClaim:
    """The heads ``heads`` (≥ 2, sorted, distinct) matter together."""

    heads: tuple[Head, ...]
    name: str = ""
    source: str = "user"

    def __post_init__(self) -> None:
        if len(self.heads) < 2 or len(set(self.heads)) != len(self.heads):
            raise ValueError(f"a SetClaim needs ≥ 2 distinct heads, got {[str(h) for h in self.heads]}; use HeadClaim for one")
        object.__setattr__(self, "heads", tuple(sorted(self.heads)))

    @property
    def id(self) -> str:
        return f"heads:{self.name or '+'.join(map(str, self.heads))}"


@dataclass(frozen=True, order=True)
class LinkClaim:
    """Head ``head`` moves the top token of ``method``'s map to the target position."""

    head: Head
    method: str
    source: str = "auto"

    @property
    def id(self) -> str:
        return f"link:top token({self.method})→{self.head}"


@dataclass(frozen=True, order=True)
class CircuitClaim:
    """The edges ``edges`` (``"L0H1->L1H2.k"`` strings) are the circuit."""

    edges: tuple[str, ...]
    name: str = "circuit"
    source: str = "user"

    @property
    def id(self) -> str:
        return f"circuit:{self.name}"


ComponentClaim = HeadClaim | SetClaim
TypedClaim = TokenMapClaim | HeadClaim | SetClaim | LinkClaim | CircuitClaim
TYPED = (TokenMapClaim, HeadClaim, SetClaim, LinkClaim, CircuitClaim)


def _is_head_spec(x: Any) -> bool:
    return isinstance(x, (str, Head)) or (isinstance(x, tuple) and len(x) == 2 and all(isinstance(i, int) for i in x))


def _heads(model: Any, spec: Any) -> tuple[Head, ...]:
    specs = [spec] if _is_head_spec(spec) else list(spec) if isinstance(spec, (list, tuple, set, frozenset)) else [spec]
    out = []
    for s in specs:
        comp = parse_component(s, model)
        if not isinstance(comp, Head):
            raise ValueError(f"claims must be heads ('L1H2', Head(1, 2)) or lists of heads; got {comp}")
        out.append(comp)
    if not out:
        raise ValueError("a head claim is empty: give at least one head")
    return tuple(sorted(set(out)))


def component_claim(model: Any, spec: Any, name: str = "", source: str = "user") -> ComponentClaim:
    """A :class:`HeadClaim` (one head) or :class:`SetClaim` (several) from head shorthand."""
    hs = _heads(model, spec)
    return HeadClaim(hs[0], name, source) if len(hs) == 1 else SetClaim(hs, name, source)


def parse_claims(model: Any, claims: Any, source: str = "user") -> list[TypedClaim]:
    """Typed claims from typed claims, heads / lists of heads, or ``{name: head or [heads]}``
    (the key ``"heads"`` with a list value means a list of separate head claims)."""
    if claims is None:
        return []
    if isinstance(claims, TYPED):
        claims = [claims]
    out: list[TypedClaim] = []
    if isinstance(claims, dict):
        for k, v in claims.items():
            if isinstance(v, TYPED):
                out.append(v)
            elif k == "heads" and isinstance(v, (list, tuple)) and not _is_head_spec(v):
                out += [component_claim(model, h, "", source) for h in v]
            else:
                out.append(component_claim(model, v, str(k), source))
    else:
        for c in claims:
            out.append(c if isinstance(c, TYPED) else component_claim(model, c, "", source))
    ids = [c.id for c in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"claims {dup} are given more than once")
    return out


__all__ = [
    "TokenMapClaim", "HeadClaim", "SetClaim", "LinkClaim", "CircuitClaim", "parse_claims", "component_claim",
    "Claim", "TestResult", "compare", "edge_effects", "link_strength",
    "CONFIRMED", "REFUTED", "REDUNDANT", "UNDERPOWERED", "INCONCLUSIVE", "UNTESTED", "NOT_CONFIRMED",
]
