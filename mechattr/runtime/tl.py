"""The one place that knows which TransformerLens is installed.

TransformerLens 3.x ships ``HookedTransformer`` and ``TransformerBridge``; 4.x removed
``HookedTransformer`` (``TransformerBridge`` is the only model class) and moved
``transformer_lens.utils`` to ``transformer_lens.utilities``. Everything in mechattr that
needs a TransformerLens name imports it from here; nothing else tests the version.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

try:
    TL_VERSION = importlib.metadata.version("transformer-lens")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
    TL_VERSION = "0"
TL_MAJOR = int(TL_VERSION.split(".")[0] or 0)

try:  # TransformerLens 3.x
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:  # TransformerLens 4.x: the bridge is the only model class
    HookedTransformer = None  # type: ignore[assignment,misc]
    HookedTransformerConfig = None  # type: ignore[assignment,misc]

try:
    from transformer_lens.model_bridge import TransformerBridge
except ImportError:  # pragma: no cover - TransformerLens < 3
    TransformerBridge = None  # type: ignore[assignment,misc]

try:  # 3.x
    from transformer_lens.utils import get_act_name, get_attention_mask
except ImportError:  # 4.x
    from transformer_lens.utilities import get_act_name, get_attention_mask  # type: ignore[no-redef]

from transformer_lens.utilities.attention import simple_attn_linear  # noqa: E402 (3.x and 4.x)

HAS_HOOKED = HookedTransformer is not None


def is_hooked(model: Any) -> bool:
    """True for a TransformerLens ``HookedTransformer`` (never on TransformerLens 4)."""
    return HookedTransformer is not None and isinstance(model, HookedTransformer)


def is_bridge(model: Any) -> bool:
    """True for a TransformerLens ``TransformerBridge``."""
    return TransformerBridge is not None and isinstance(model, TransformerBridge)


def require_hooked(what: str) -> Any:
    """``HookedTransformer``, or a clear error naming ``what`` needs it."""
    if HookedTransformer is None:
        raise RuntimeError(
            f"{what} needs TransformerLens's HookedTransformer, which TransformerLens "
            f"{TL_VERSION} no longer has; use a TransformerBridge (load_model(..., bridge=True)) "
            f"or install transformer-lens>=3.9,<4"
        )
    return HookedTransformer


__all__ = [
    "HAS_HOOKED",
    "HookedTransformer",
    "HookedTransformerConfig",
    "TL_MAJOR",
    "TL_VERSION",
    "TransformerBridge",
    "get_act_name",
    "get_attention_mask",
    "is_bridge",
    "is_hooked",
    "require_hooked",
    "simple_attn_linear",
]
