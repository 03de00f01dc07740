"""Typed component ids (``Head``, ``MLP``), parsing of ``"L3H5"`` / ``"MLP3"``, hook names.

Components are frozen, ordered dataclasses that know their own hook name and tensor index
(as auto-circuit's ``Edge.patch_idx``). Shorthand is resolved once at the entry point with
``transformer_lens.utils.get_act_name``; engines see full hook names only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mechattr.runtime.tl import get_act_name

_HEAD_RE = re.compile(r"^\s*L?(\d+)\s*[H.:,]\s*(\d+)\s*$", re.IGNORECASE)
_MLP_RE = re.compile(r"^\s*MLP\s*(\d+)\s*$|^\s*L(\d+)\s*MLP\s*$|^\s*M(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Head:
    """Attention head ``head`` of layer ``layer``. Ablated/patched at ``blocks.L.attn.hook_z``."""

    layer: int
    head: int

    @property
    def hook_name(self) -> str:
        return get_act_name("z", self.layer)

    @property
    def index(self) -> tuple:
        """Index into the hook's ``[batch, pos, head, d_head]`` activation."""
        return (slice(None), slice(None), self.head)

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    def check(self, model: Any) -> Head:
        check_layer(model, self.layer)
        n = model.cfg.n_heads
        if not 0 <= self.head < n:
            raise ValueError(f"head {self.head} out of range for {self}: model has heads 0..{n - 1}")
        return self


@dataclass(frozen=True, order=True)
class MLP:
    """The MLP of layer ``layer``. Ablated/patched at ``blocks.L.hook_mlp_out``."""

    layer: int

    @property
    def hook_name(self) -> str:
        return get_act_name("mlp_out", self.layer)

    @property
    def index(self) -> tuple:
        return (slice(None),)

    def __str__(self) -> str:
        return f"MLP{self.layer}"

    def check(self, model: Any) -> MLP:
        check_layer(model, self.layer)
        if getattr(model.cfg, "attn_only", False):
            raise ValueError(f"{self}: the model is attention-only and has no MLPs")
        return self


Component = Head | MLP


def check_layer(model: Any, layer: int) -> int:
    """Raise ``ValueError`` unless ``0 <= layer < n_layers``."""
    n = model.cfg.n_layers
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
        raise ValueError(f"layer {layer!r} out of range: model has layers 0..{n - 1}")
    return layer


def parse_component(spec: Any, model: Any | None = None) -> Component:
    """Parse ``Head``/``MLP``, ``"L3H5"``, ``"3.5"``, ``(3, 5)``, ``"MLP3"`` into a component.

    With ``model`` given, the layer/head are range-checked against its config.
    """
    comp: Component
    if isinstance(spec, (Head, MLP)):
        comp = spec
    elif isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(x, int) for x in spec):
        comp = Head(int(spec[0]), int(spec[1]))
    elif isinstance(spec, str):
        m = _HEAD_RE.match(spec)
        if m:
            comp = Head(int(m.group(1)), int(m.group(2)))
        else:
            m = _MLP_RE.match(spec)
            if not m:
                raise ValueError(
                    f"cannot parse component {spec!r}; use 'L3H5' (or '3.5') for a head, "
                    f"'MLP3' for an MLP, a (layer, head) tuple, or Head/MLP objects"
                )
            comp = MLP(int(next(g for g in m.groups() if g is not None)))
    else:
        raise TypeError(f"cannot interpret {spec!r} ({type(spec).__name__}) as a component")
    if model is not None:
        comp.check(model)
    return comp


def parse_components(specs: Any, model: Any | None = None) -> list[Component]:
    """Parse a component or a list of them; raises on an empty list."""
    if isinstance(specs, (str, Head, MLP)) or (
        isinstance(specs, tuple) and len(specs) == 2 and all(isinstance(x, int) for x in specs)
    ):
        specs = [specs]
    out = [parse_component(s, model) for s in specs]
    if not out:
        raise ValueError("no components given: pass at least one Head/MLP")
    return out


def all_heads(model: Any) -> list[Head]:
    """Every head, in (layer, head) order."""
    return [Head(layer, h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def all_mlps(model: Any) -> list[MLP]:
    """Every MLP (empty for attention-only models)."""
    if getattr(model.cfg, "attn_only", False):
        return []
    return [MLP(layer) for layer in range(model.cfg.n_layers)]


def hook_name(name: str, layer: int | None = None, model: Any | None = None) -> str:
    """Canonical hook name via ``transformer_lens.utils.get_act_name`` (layer range-checked)."""
    if layer is not None and model is not None:
        check_layer(model, layer)
    if "." in name and layer is None:
        return name
    return get_act_name(name, layer)
