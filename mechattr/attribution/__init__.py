"""Attribution: tokens, components (heads, MLPs, residual), attention, generation.

Submodules load on first attribute access (``mechattr.attribution.tokens.method_names()``
works right after ``import mechattr``), so importing the package costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    """PEP 562: ``mechattr.attribution.<submodule>`` imported on first access."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        raise
