"""Facts measured or derived once per model object."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def per_model(fn: Callable[[Any], T]) -> Callable[[Any], T]:
    """``fn(model)`` computed once per model object, weakly keyed (dropped with the model);
    an unhashable argument is computed every time."""
    cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @functools.wraps(fn)
    def once(model: Any) -> T:
        try:
            return cache[model]
        except KeyError:
            pass
        except TypeError:  # pragma: no cover - unhashable
            return fn(model)
        out = fn(model)
        cache[model] = out
        return out

    return once
