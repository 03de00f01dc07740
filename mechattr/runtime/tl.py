"""The one place that knows which TransformerLens is installed.

TransformerLens 3.x ships ``HookedTransformer`` and ``TransformerBridge``; 4.x removed
``HookedTransformer`` (``TransformerBridge`` is the only model class) and moved
``transformer_lens.utils`` to ``transformer_lens.utilities``. Everything in mechattr that
needs a TransformerLens name imports it from here; nothing else tests the version.

TransformerLens (and through it transformers) takes seconds to import, so nothing here
imports it until a name that needs it is used: ``TL_VERSION``/``TL_MAJOR``/``HAS_HOOKED``
come from the package metadata, :func:`is_hooked`/:func:`is_bridge` answer ``False`` while
TransformerLens is not imported (no model of it can exist then), and the class and
function names (``HookedTransformer``, ``get_act_name``, ...) resolve on first access
(PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from typing import Any

try:
    TL_VERSION = importlib.metadata.version("transformer-lens")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
    TL_VERSION = "0"
TL_MAJOR = int(TL_VERSION.split(".")[0] or 0)
HAS_HOOKED = TL_MAJOR < 4  # TransformerLens 4 removed HookedTransformer

# name -> candidate (module, attribute) pairs, first importable wins; None when none is
_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "HookedTransformer": (("transformer_lens", "HookedTransformer"),),
    "HookedTransformerConfig": (("transformer_lens", "HookedTransformerConfig"),),
    "TransformerBridge": (("transformer_lens.model_bridge", "TransformerBridge"),),
    "get_act_name": (("transformer_lens.utils", "get_act_name"), ("transformer_lens.utilities", "get_act_name")),
    "get_attention_mask": (("transformer_lens.utils", "get_attention_mask"),
                           ("transformer_lens.utilities", "get_attention_mask")),
    "simple_attn_linear": (("transformer_lens.utilities.attention", "simple_attn_linear"),),
}
_OPTIONAL = {"HookedTransformer", "HookedTransformerConfig", "TransformerBridge"}  # None when absent


def _resolve(name: str) -> Any:
    for mod, attr in _NAMES[name]:
        try:
            value = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            continue
        return None if name in ("HookedTransformer", "HookedTransformerConfig") and not HAS_HOOKED else value
    if name in _OPTIONAL:
        return None
    raise ImportError(f"transformer-lens {TL_VERSION} has no {name}")


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = _resolve(name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _get(name: str) -> Any:
    return globals()[name] if name in globals() else __getattr__(name)


def is_hooked(model: Any) -> bool:
    """True for a TransformerLens ``HookedTransformer`` (never on TransformerLens 4)."""
    if not HAS_HOOKED or "transformer_lens" not in sys.modules:  # no HookedTransformer can exist yet
        return False
    cls = _get("HookedTransformer")
    return cls is not None and isinstance(model, cls)


def is_bridge(model: Any) -> bool:
    """True for a TransformerLens ``TransformerBridge``."""
    if "transformer_lens.model_bridge" not in sys.modules:  # no bridge can exist yet
        return False
    cls = _get("TransformerBridge")
    return cls is not None and isinstance(model, cls)


def require_hooked(what: str) -> Any:
    """``HookedTransformer``, or a clear error naming ``what`` needs it."""
    cls = _get("HookedTransformer") if HAS_HOOKED else None
    if cls is None:
        raise RuntimeError(
            f"{what} needs TransformerLens's HookedTransformer, which TransformerLens "
            f"{TL_VERSION} no longer has; use a TransformerBridge (load_model(..., bridge=True)) "
            f"or install transformer-lens>=3.9,<4"
        )
    return cls


__all__ = [
    "HAS_HOOKED",
    "TL_MAJOR",
    "TL_VERSION",
    "is_bridge",
    "is_hooked",
    "require_hooked",
    *_NAMES,  # HookedTransformer, HookedTransformerConfig, TransformerBridge, get_act_name, ...
]


def set_config_flags(model: Any, flags: dict[str, bool]) -> dict[str, bool]:
    """Set TransformerLens config flags (``use_split_qkv_input`` …) through ``model.set_<flag>``
    where it exists (it rewires hooks), else on ``model.cfg``; returns the previous values."""
    old = {f: bool(getattr(model.cfg, f, False)) for f in flags}
    for f, v in flags.items():
        setter = getattr(model, f"set_{f}", None)
        if callable(setter):
            setter(v)
        else:
            setattr(model.cfg, f, v)
    return old
